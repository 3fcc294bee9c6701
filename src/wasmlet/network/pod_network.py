"""What the pod controller asks of the network: each pod's IPs, given before its containers start
(where kubelet would make the pod's sandbox) and freed when the pod is removed.

A pod gets its own address from the node's podCIDR (``spec.podCIDR``, allocated by the controller
manager) once that range is local on ``wasmlet0``; ``hostNetwork`` pods, and every pod of a node
that has no podCIDR (or may not configure the interface), use the node's IP, as before pod IPs.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from wasmlet.network import interface
from wasmlet.network.addresses import PodAddresses

log = logging.getLogger(__name__)


class Interface(Protocol):
    """The calls made on the host (:mod:`wasmlet.network.interface`; fakes in unit tests)."""

    def ensure_bridge(self) -> None: ...

    def keep_on_machine(self, cidrs: Sequence[str]) -> None: ...

    def make_local(self, cidr: str) -> None: ...

    def unmake_local(self, cidr: str) -> None: ...


class _Host:
    ensure_bridge = staticmethod(interface.ensure_bridge)
    keep_on_machine = staticmethod(interface.keep_on_machine)
    make_local = staticmethod(interface.make_local)
    unmake_local = staticmethod(interface.unmake_local)


def host_network(pod: Mapping[str, Any]) -> bool:
    return bool((pod.get("spec") or {}).get("hostNetwork"))


class PodNetwork:
    def __init__(self, node_ip: str, guarded: Sequence[str] = (), host: Interface | None = None) -> None:
        self.node_ip = node_ip
        self.guarded = tuple(guarded)  # the cluster's pod and Service ranges
        self._host: Interface = host or _Host()
        self._addresses: PodAddresses | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        """Keep the cluster's ranges on the machine, before any pod runs; InterfaceError if the
        node may not (wasmlet then refuses to start: a guard asked for must be in place)."""
        if self.guarded:
            self._host.ensure_bridge()
            self._host.keep_on_machine(self.guarded)
            log.info("routes of %s kept on this machine (%s)", ", ".join(self.guarded), interface.BRIDGE)

    @property
    def pod_cidr(self) -> str:
        return self._addresses.cidr if self._addresses is not None else ""

    def use_pod_cidr(self, cidr: str) -> None:
        """The Node's ``spec.podCIDR`` (set once by the controller manager): make it local and
        give pods addresses from it. A failure is logged and pods keep using the node's IP."""
        with self._lock:
            if not cidr or self._addresses is not None:
                return
            try:
                addresses = PodAddresses(cidr)
                self._host.ensure_bridge()
                self._host.make_local(addresses.cidr)
            except Exception as exc:  # AddressError, InterfaceError: the node still runs pods
                log.warning("pods use the node IP %s: podCIDR %s cannot be used: %s", self.node_ip, cidr, exc)
                return
            self._addresses = addresses
        log.info(
            "pod IPs come from podCIDR %s (%d addresses, local on %s)", cidr, addresses.size, interface.BRIDGE
        )

    def stop(self) -> None:
        """The node stops: its range is no longer local (the cluster's ranges stay routed into
        the bridge, which other nodes on this host may share)."""
        addresses = self._addresses
        if addresses is None:
            return
        try:
            self._host.unmake_local(addresses.cidr)
        except Exception as exc:  # stopping anyway: say so
            log.warning("podCIDR %s stays local on %s: %s", addresses.cidr, interface.BRIDGE, exc)

    def ips(self, pod: Mapping[str, Any]) -> tuple[str, ...]:
        """The pod's IPs: its own address, or the node's IP (AddressError when the range is full)."""
        addresses = self._addresses
        if addresses is None or host_network(pod):
            return (self.node_ip,)
        uid = str(pod["metadata"]["uid"])
        reported = str((pod.get("status") or {}).get("podIP") or "")
        return (addresses.assign(uid, wanted=reported),)

    def release(self, uid: str) -> None:
        if self._addresses is not None:
            self._addresses.release(uid)
