"""The node-local interface of the pods' addresses, ``wasmlet0``: an empty Linux bridge.

* The node's podCIDR is a ``local`` route on it (in the ``local`` table): every address of the
  range is this machine's at once (what Linux calls AnyIP), so a pod's listener binds its address
  with no per-pod command, and an address with no pod refuses connections at once.
* The cluster's pod and Service ranges are routed into it: a bridge with no ports delivers nothing,
  so a packet for another node's pod or for a ClusterIP that nothing translated stays on the
  machine ("No route to host"), never the default route. A ``blackhole`` route would do that too,
  but it would also refuse locally sent packets before kube-proxy's DNAT could turn a ClusterIP
  into a pod address; a route into the bridge lets the DNAT happen.

Every change is an idempotent ``ip`` command (iproute2), run as the node's user: wasmlet needs
CAP_NET_ADMIN for them (root has it).
"""

from __future__ import annotations

import ipaddress
import subprocess
from collections.abc import Sequence

BRIDGE = "wasmlet0"
IP = "ip"


class InterfaceError(Exception):
    """An ``ip`` command failed; the message names the command and what it said."""


def _ip(*args: str) -> str:
    command = [IP, *args]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise InterfaceError(f"`{' '.join(command)}` could not run: {exc}") from None
    if done.returncode != 0:
        said = (done.stderr or done.stdout).strip()
        raise InterfaceError(f"`{' '.join(command)}` failed: {said}")
    return done.stdout


def ensure_bridge() -> None:
    """``wasmlet0`` exists and is up."""
    if _ip("-o", "link", "show", "type", "bridge").find(f": {BRIDGE}:") < 0:
        try:
            _ip("link", "add", BRIDGE, "type", "bridge")
        except InterfaceError as exc:
            if "File exists" not in str(exc):  # made by another node on this machine meanwhile
                raise
    _ip("link", "set", BRIDGE, "up")


def keep_on_machine(cidrs: Sequence[str]) -> None:
    """Route each range into ``wasmlet0`` (the cluster's pod and Service ranges)."""
    for cidr in cidrs:
        _ip("route", "replace", str(ipaddress.ip_network(cidr)), "dev", BRIDGE)


def make_local(cidr: str) -> None:
    """Every address of ``cidr`` (the node's podCIDR) is this machine's."""
    _ip("route", "replace", "local", str(ipaddress.ip_network(cidr)), "dev", BRIDGE, "table", "local")


def unmake_local(cidr: str) -> None:
    """Undo :func:`make_local` (gone already: nothing to do)."""
    try:
        _ip("route", "del", "local", str(ipaddress.ip_network(cidr)), "dev", BRIDGE, "table", "local")
    except InterfaceError as exc:
        if "No such process" not in str(exc) and "Cannot find device" not in str(exc):
            raise


def route_of(address: str) -> str:
    """What ``ip route get`` says of ``address``: the route a packet to it takes (for checks)."""
    return _ip("route", "get", address).splitlines()[0].strip()
