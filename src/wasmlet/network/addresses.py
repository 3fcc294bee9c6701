"""IP addresses of a node's podCIDR, one per pod, as the CNI's host-local IPAM hands them out:
the network address, the first host address (the interface's) and the broadcast address are never
given; addresses go round the range so a pod's address is not reused as soon as it is freed."""

from __future__ import annotations

import ipaddress
import threading


class AddressError(Exception):
    """No address can be given; the message names the range and the cause."""


class PodAddresses:
    def __init__(self, cidr: str) -> None:
        try:
            network = ipaddress.ip_network(cidr)
        except ValueError as exc:
            raise AddressError(f"podCIDR {cidr!r}: {exc}") from None
        if not isinstance(network, ipaddress.IPv4Network):
            raise AddressError(f"podCIDR {cidr}: wasmlet gives pods IPv4 addresses only")
        if network.num_addresses < 4:
            raise AddressError(f"podCIDR {cidr}: too small to hold a pod address (at least a /30)")
        self.cidr = str(network)
        self.network = network
        self.gateway = str(network.network_address + 1)  # kept for the interface, as CNI bridges keep it
        self._first = 2
        self._last = network.num_addresses - 2
        self._next = self._first
        self._held: dict[str, str] = {}  # uid -> address
        self._holders: dict[str, str] = {}  # address -> uid
        self._lock = threading.Lock()

    @property
    def size(self) -> int:
        """How many pods the range can hold at once."""
        return self._last - self._first + 1

    def assign(self, uid: str, wanted: str = "") -> str:
        """The pod's address: the one it holds, else ``wanted`` (what it reported before a restart)
        when that is in range and free, else the next free one."""
        with self._lock:
            held = self._held.get(uid)
            if held is not None:
                return held
            if wanted and self._free(wanted):
                return self._take(uid, wanted)
            for offset in range(self.size):
                index = self._first + (self._next - self._first + offset) % self.size
                address = str(self.network.network_address + index)
                if address not in self._holders:
                    self._next = index + 1 if index < self._last else self._first
                    return self._take(uid, address)
        raise AddressError(f"podCIDR {self.cidr}: all {self.size} pod addresses are in use")

    def release(self, uid: str) -> None:
        with self._lock:
            address = self._held.pop(uid, None)
            if address is not None:
                del self._holders[address]

    def holder(self, address: str) -> str | None:
        with self._lock:
            return self._holders.get(address)

    def _free(self, address: str) -> bool:
        try:
            ip = ipaddress.IPv4Address(address)
        except ValueError:
            return False
        index = int(ip) - int(self.network.network_address)
        return self._first <= index <= self._last and address not in self._holders

    def _take(self, uid: str, address: str) -> str:
        self._held[uid] = address
        self._holders[address] = uid
        return address
