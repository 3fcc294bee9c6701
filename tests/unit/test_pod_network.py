"""Pod IPs from the node's podCIDR (wasmlet.network.pod_network), with the host faked."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import pytest

from wasmlet.network.addresses import AddressError
from wasmlet.network.interface import InterfaceError
from wasmlet.network.pod_network import PodNetwork, host_network

NODE_IP = "192.0.2.10"
GUARDED = ("10.244.0.0/16", "10.96.0.0/12")


class FakeHost:
    """Records the calls made on the host; ``fail`` names a call that raises InterfaceError."""

    def __init__(self, fail: str = "") -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.fail = fail

    def _record(self, *call: Any) -> None:
        self.calls.append(call)
        if call[0] == self.fail:
            raise InterfaceError(f"`ip {call[0]}` failed: Operation not permitted")

    def ensure_bridge(self) -> None:
        self._record("ensure_bridge")

    def keep_on_machine(self, cidrs: Sequence[str]) -> None:
        self._record("keep_on_machine", tuple(cidrs))

    def make_local(self, cidr: str) -> None:
        self._record("make_local", cidr)

    def unmake_local(self, cidr: str) -> None:
        self._record("unmake_local", cidr)


def pod(uid: str, host: bool = False, pod_ip: str = "") -> dict[str, Any]:
    return {
        "metadata": {"name": f"pod-{uid}", "namespace": "default", "uid": uid},
        "spec": {"hostNetwork": True} if host else {},
        "status": {"podIP": pod_ip} if pod_ip else {},
    }


def test_start_routes_the_guarded_ranges_into_the_bridge() -> None:
    host = FakeHost()
    PodNetwork(NODE_IP, GUARDED, host=host).start()
    assert host.calls == [("ensure_bridge",), ("keep_on_machine", GUARDED)]


def test_start_with_no_guarded_range_touches_nothing() -> None:
    host = FakeHost()
    PodNetwork(NODE_IP, (), host=host).start()
    assert host.calls == []


def test_start_fails_when_the_host_refuses_the_guard() -> None:
    host = FakeHost(fail="keep_on_machine")
    with pytest.raises(InterfaceError, match="Operation not permitted"):
        PodNetwork(NODE_IP, GUARDED, host=host).start()


def test_pods_use_the_node_ip_until_the_node_has_a_pod_cidr() -> None:
    network = PodNetwork(NODE_IP, host=FakeHost())
    assert network.pod_cidr == ""
    assert network.ips(pod("a")) == (NODE_IP,)
    network.release("a")  # nothing to free
    network.use_pod_cidr("")  # no podCIDR yet: still the node IP
    assert network.ips(pod("a")) == (NODE_IP,)


def test_the_pod_cidr_is_made_local_and_pods_get_their_own_addresses() -> None:
    host = FakeHost()
    network = PodNetwork(NODE_IP, GUARDED, host=host)
    network.use_pod_cidr("10.244.3.0/24")
    assert host.calls == [("ensure_bridge",), ("make_local", "10.244.3.0/24")]
    assert network.pod_cidr == "10.244.3.0/24"
    assert network.ips(pod("a")) == ("10.244.3.2",)
    assert network.ips(pod("b")) == ("10.244.3.3",)
    assert network.ips(pod("a")) == ("10.244.3.2",)  # the same pod, the same address


def test_the_pod_cidr_is_taken_once_only() -> None:
    host = FakeHost()
    network = PodNetwork(NODE_IP, host=host)
    network.use_pod_cidr("10.244.3.0/24")
    network.use_pod_cidr("10.244.9.0/24")
    network.use_pod_cidr("10.244.3.0/24")
    assert host.calls == [("ensure_bridge",), ("make_local", "10.244.3.0/24")]
    assert network.pod_cidr == "10.244.3.0/24"
    assert network.ips(pod("a")) == ("10.244.3.2",)


def test_host_network_pods_get_the_node_ip_and_take_no_address() -> None:
    network = PodNetwork(NODE_IP, host=FakeHost())
    network.use_pod_cidr("10.244.3.0/30")  # one pod address
    assert host_network(pod("h", host=True))
    assert not host_network(pod("a"))
    assert not host_network({"metadata": {"uid": "x"}})
    assert network.ips(pod("h", host=True)) == (NODE_IP,)
    assert network.ips(pod("a")) == ("10.244.3.2",)  # the only address was still free


def test_a_pod_gets_the_address_it_reported_before_a_restart() -> None:
    network = PodNetwork(NODE_IP, host=FakeHost())
    network.use_pod_cidr("10.244.3.0/24")
    assert network.ips(pod("a", pod_ip="10.244.3.42")) == ("10.244.3.42",)
    # a podIP of the node (from before the node had a podCIDR) is not in range: a new address
    assert network.ips(pod("b", pod_ip=NODE_IP)) == ("10.244.3.2",)


def test_release_frees_the_pods_address() -> None:
    network = PodNetwork(NODE_IP, host=FakeHost())
    network.use_pod_cidr("10.244.3.0/30")  # one pod address
    assert network.ips(pod("a")) == ("10.244.3.2",)
    with pytest.raises(AddressError, match="all 1 pod addresses are in use"):
        network.ips(pod("b"))
    network.release("a")
    assert network.ips(pod("b")) == ("10.244.3.2",)


@pytest.mark.parametrize("failing", ["ensure_bridge", "make_local"])
def test_a_host_failure_leaves_pods_on_the_node_ip(failing: str, caplog: pytest.LogCaptureFixture) -> None:
    host = FakeHost(fail=failing)
    network = PodNetwork(NODE_IP, host=host)
    with caplog.at_level(logging.WARNING, logger="wasmlet.network.pod_network"):
        network.use_pod_cidr("10.244.3.0/24")
    assert network.pod_cidr == ""
    assert network.ips(pod("a")) == (NODE_IP,)
    assert host.calls[-1][0] == failing
    assert "make_local" not in {call[0] for call in host.calls[:-1]}
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert f"pods use the node IP {NODE_IP}" in warnings[0]
    assert "10.244.3.0/24" in warnings[0]
    assert "Operation not permitted" in warnings[0]


@pytest.mark.parametrize("cidr", ["fd00:10:244::/64", "10.244.3.0/31", "not-a-cidr"])
def test_a_pod_cidr_that_cannot_hold_pods_leaves_them_on_the_node_ip_without_touching_the_host(
    cidr: str, caplog: pytest.LogCaptureFixture
) -> None:
    host = FakeHost()
    network = PodNetwork(NODE_IP, host=host)
    with caplog.at_level(logging.WARNING, logger="wasmlet.network.pod_network"):
        network.use_pod_cidr(cidr)
    assert host.calls == []
    assert network.pod_cidr == ""
    assert network.ips(pod("a")) == (NODE_IP,)
    assert any(cidr in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)


def test_stop_makes_the_range_no_longer_local_and_a_failure_is_only_logged() -> None:
    host = FakeHost()
    network = PodNetwork(NODE_IP, GUARDED, host)
    network.stop()  # no range yet: nothing to undo
    assert host.calls == []
    network.use_pod_cidr("10.244.8.0/22")
    network.stop()
    assert host.calls[-1] == ("unmake_local", "10.244.8.0/22")
    failing = FakeHost(fail="unmake_local")
    other = PodNetwork(NODE_IP, GUARDED, failing)
    other.use_pod_cidr("10.244.12.0/22")
    other.stop()  # logged, not raised: the node stops anyway
    assert failing.calls[-1] == ("unmake_local", "10.244.12.0/22")
