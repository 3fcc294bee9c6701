"""How much memory the node has, how much is left, and how much each module's linear memory holds.

The node's memory is the host's, or less when wasmlet runs in a memory cgroup with a limit (a
container, a systemd unit with ``MemoryMax``): past that limit the kernel's OOM killer would end
the whole node, every pod with it, so the cgroup is what eviction must watch. ``available`` is
the smaller of the host's ``MemAvailable`` and the cgroup's limit less its working set (usage
less inactive file pages, as the kubelet computes ``memory.available`` from cgroupfs).

A module's memory is the resident size of its linear memory: the pages it has touched, read from
``/proc/self/smaps`` for the address range the memory was reserved at. wasmtime reserves 4 GiB
for a 32-bit memory and never moves it, so that range holds the module's pages and nothing else.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

RESERVATION = 4 << 30  # wasmtime's address space reservation for a 32-bit linear memory
_UNLIMITED = 1 << 62  # cgroup v1 says "no limit" with a page-rounded 2**63 - 1


@dataclass(frozen=True)
class MemoryObservation:
    capacity: int  # bytes: MemTotal, or the cgroup limit when smaller
    available: int  # bytes the node can still use before the kernel must reclaim or kill


def _meminfo(proc: Path) -> dict[str, int]:
    fields: dict[str, int] = {}
    for line in (proc / "meminfo").read_text().splitlines():
        name, _sep, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            fields[name] = int(parts[0]) * 1024
    return fields


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return None if text == "max" or not text.isdigit() else int(text)


def _stat_field(path: Path, name: str) -> int:
    try:
        for line in path.read_text().splitlines():
            key, _sep, value = line.partition(" ")
            if key == name and value.strip().isdigit():
                return int(value)
    except OSError:
        pass
    return 0


def _own_cgroup(proc: Path, cgroup_root: Path) -> tuple[int, int] | None:
    """(limit, working set) of the memory cgroup this process is in, or None when it has no limit."""
    try:
        lines = (proc / "self" / "cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _id, controllers, path = line.split(":", 2)
        relative = path.lstrip("/")
        if "memory" in controllers.split(","):  # cgroup v1
            directory = cgroup_root / "memory" / relative
            limit = _read_int(directory / "memory.limit_in_bytes")
            usage = _read_int(directory / "memory.usage_in_bytes")
            inactive = _stat_field(directory / "memory.stat", "total_inactive_file")
            break
        if controllers == "" and (cgroup_root / "cgroup.controllers").exists():  # cgroup v2
            directory = cgroup_root / relative
            limit = _read_int(directory / "memory.max")
            usage = _read_int(directory / "memory.current")
            inactive = _stat_field(directory / "memory.stat", "inactive_file")
            break
    else:
        return None
    if limit is None or usage is None or limit >= _UNLIMITED:
        return None
    return limit, max(usage - inactive, 0)


def observe(proc: Path = Path("/proc"), cgroup_root: Path = Path("/sys/fs/cgroup")) -> MemoryObservation:
    info = _meminfo(proc)
    capacity = info.get("MemTotal", 0)
    available = info.get("MemAvailable", info.get("MemFree", 0))
    cgroup = _own_cgroup(proc, cgroup_root)
    if cgroup is not None:
        limit, working_set = cgroup
        capacity = min(capacity, limit)
        available = min(available, max(limit - working_set, 0))
    return MemoryObservation(capacity, available)


def resident_bytes(bases: Iterable[int], smaps: Path = Path("/proc/self/smaps")) -> dict[int, int]:
    """For each linear memory base address, the bytes resident in its reservation."""
    starts = sorted(set(bases))
    usage = dict.fromkeys(starts, 0)
    if not starts:
        return usage
    owner: int | None = None
    with smaps.open() as lines:
        for line in lines:
            head = line.split(" ", 1)[0]
            if not head.endswith(":"):  # a mapping's header, "lo-hi perms offset dev inode path"
                low = int(head.split("-", 1)[0], 16)
                owner = _owner(starts, low)
            elif owner is not None and line.startswith("Rss:"):
                usage[owner] += int(line.split()[1]) * 1024
    return usage


def _owner(starts: list[int], address: int) -> int | None:
    """The base whose reservation holds ``address`` (``starts`` sorted), if any."""
    index = bisect.bisect_right(starts, address) - 1
    if index >= 0 and address < starts[index] + RESERVATION:
        return starts[index]
    return None
