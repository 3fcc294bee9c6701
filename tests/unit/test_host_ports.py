"""Host ports at admission: kubelet's NodePorts rule (wasmlet.pod.admission, pure)."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from wasmlet.pod.admission import EVERY_ADDRESS, NODE_PORTS, Rejection, host_ports, port_conflict

MESSAGE = "Predicate NodePorts failed: node(s) didn't have free ports for the requested pod ports"


def port(host_port: int | None, protocol: str | None = None, host_ip: str | None = None) -> dict[str, Any]:
    entry: dict[str, Any] = {"containerPort": 8080}
    if host_port is not None:
        entry["hostPort"] = host_port
    if protocol is not None:
        entry["protocol"] = protocol
    if host_ip is not None:
        entry["hostIP"] = host_ip
    return entry


def pod(*ports: dict[str, Any], more: tuple[dict[str, Any], ...] = ()) -> dict[str, Any]:
    containers = [{"name": "c", "ports": list(ports)}]
    if more:
        containers.append({"name": "d", "ports": list(more)})
    return {"metadata": {"name": "p", "namespace": "default"}, "spec": {"containers": containers}}


def test_the_rejection_is_kubelets() -> None:
    assert Rejection("NodePorts", MESSAGE) == NODE_PORTS
    assert ipaddress.ip_address(EVERY_ADDRESS).is_unspecified


def test_host_ports_of_every_container_with_defaults_filled_in() -> None:
    p = pod(
        port(8080),
        port(53, "UDP", "10.0.0.5"),
        port(None),  # a containerPort only: takes nothing on the node
        port(0),
        more=(port(9090, "SCTP", ""),),
    )
    assert host_ports(p) == {
        (EVERY_ADDRESS, "TCP", 8080),
        ("10.0.0.5", "UDP", 53),
        (EVERY_ADDRESS, "SCTP", 9090),
    }


@pytest.mark.parametrize(
    "p",
    [
        {},
        {"spec": None},
        {"spec": {}},
        {"spec": {"containers": None}},
        {"spec": {"containers": [{"name": "c"}]}},
        {"spec": {"containers": [{"name": "c", "ports": None}]}},
    ],
)
def test_pods_without_ports_take_none(p: dict[str, Any]) -> None:
    assert host_ports(p) == set()
    assert port_conflict(p, [pod(port(80))]) is None


def test_a_host_port_given_as_a_string_is_a_number() -> None:
    assert host_ports(pod({"hostPort": "8080"})) == {(EVERY_ADDRESS, "TCP", 8080)}


@pytest.mark.parametrize(
    ("wanted", "taken"),
    [
        (port(8080), port(8080)),  # both on every address
        (port(8080, "TCP"), port(8080)),  # TCP is the default protocol
        (port(8080, host_ip="10.0.0.5"), port(8080)),  # the other on every address
        (port(8080), port(8080, host_ip="10.0.0.5")),  # this one on every address
        (port(8080, host_ip=EVERY_ADDRESS), port(8080, host_ip="10.0.0.5")),  # 0.0.0.0 is every address
        (port(8080, host_ip="10.0.0.5"), port(8080, host_ip=EVERY_ADDRESS)),
        (port(8080, host_ip="10.0.0.5"), port(8080, host_ip="10.0.0.5")),  # the same address
        (port(8080, host_ip=""), port(8080, host_ip="10.0.0.5")),  # an empty hostIP is unset
        (port(53, "UDP"), port(53, "UDP")),
    ],
)
def test_the_same_protocol_and_port_on_a_shared_address_conflict(
    wanted: dict[str, Any], taken: dict[str, Any]
) -> None:
    assert port_conflict(pod(wanted), [pod(port(9999)), pod(taken)]) == NODE_PORTS
    rejection = port_conflict(pod(port(1), wanted), [pod(taken)])
    assert rejection is not None
    assert (rejection.reason, rejection.message) == ("NodePorts", MESSAGE)


@pytest.mark.parametrize(
    ("wanted", "taken"),
    [
        (port(8080), port(8081)),  # another port
        (port(53, "UDP"), port(53)),  # another protocol
        (port(53, "UDP"), port(53, "SCTP")),
        (port(8080, host_ip="10.0.0.5"), port(8080, host_ip="10.0.0.6")),  # other specific addresses
        (port(8080), port(None)),  # the admitted pod takes no host port
        (port(None), port(8080)),
    ],
)
def test_other_ports_protocols_or_specific_addresses_do_not_conflict(
    wanted: dict[str, Any], taken: dict[str, Any]
) -> None:
    assert port_conflict(pod(wanted), [pod(taken)]) is None


def test_no_admitted_pods_no_conflict() -> None:
    assert port_conflict(pod(port(8080)), []) is None


def test_a_port_taken_by_another_container_of_an_admitted_pod_conflicts() -> None:
    admitted = [pod(port(80), more=(port(8443, host_ip="10.0.0.5"),))]
    assert port_conflict(pod(port(8443)), admitted) == NODE_PORTS
    assert port_conflict(pod(port(8443, host_ip="10.0.0.6")), admitted) is None


def test_admitted_may_be_any_iterable() -> None:
    assert port_conflict(pod(port(80)), iter([pod(port(80))])) == NODE_PORTS
    assert port_conflict(pod(port(80)), (p for p in [pod(port(81))])) is None
