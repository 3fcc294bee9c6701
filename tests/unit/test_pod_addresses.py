"""Pod addresses from a node's podCIDR (wasmlet.network.addresses, pure)."""

from __future__ import annotations

import ipaddress
import re
import threading

import pytest

from wasmlet.network.addresses import AddressError, PodAddresses


def test_a_range_is_normalised_and_keeps_its_first_host_address_for_the_gateway() -> None:
    addresses = PodAddresses("10.244.1.0/24")
    assert addresses.cidr == "10.244.1.0/24"
    assert addresses.network == ipaddress.IPv4Network("10.244.1.0/24")
    assert addresses.gateway == "10.244.1.1"
    assert addresses.size == 253  # 256 less the network, the gateway and the broadcast address


def test_addresses_are_given_in_order_from_the_second_host_address() -> None:
    addresses = PodAddresses("10.244.1.0/24")
    assert [addresses.assign(f"uid-{n}") for n in range(3)] == ["10.244.1.2", "10.244.1.3", "10.244.1.4"]
    assert addresses.holder("10.244.1.3") == "uid-1"
    assert addresses.holder("10.244.1.5") is None


def test_a_pod_keeps_the_address_it_holds() -> None:
    addresses = PodAddresses("10.244.1.0/24")
    first = addresses.assign("a")
    addresses.assign("b")
    assert addresses.assign("a") == first
    assert addresses.assign("a", wanted="10.244.1.100") == first  # held beats wanted


def test_a_full_range_never_gives_the_network_gateway_or_broadcast_address() -> None:
    addresses = PodAddresses("192.168.7.8/29")  # .8 network, .9 gateway, .15 broadcast
    assert addresses.size == 5
    given = {addresses.assign(f"uid-{n}") for n in range(5)}
    assert given == {f"192.168.7.{n}" for n in range(10, 15)}
    with pytest.raises(
        AddressError, match=re.escape("podCIDR 192.168.7.8/29: all 5 pod addresses are in use")
    ):
        addresses.assign("one-too-many")


def test_the_smallest_range_holds_one_pod() -> None:
    addresses = PodAddresses("10.0.0.4/30")
    assert addresses.size == 1
    assert addresses.assign("a") == "10.0.0.6"
    with pytest.raises(AddressError, match=re.escape("podCIDR 10.0.0.4/30: all 1 pod addresses are in use")):
        addresses.assign("b")
    addresses.release("a")
    assert addresses.assign("b") == "10.0.0.6"


def test_wanted_is_honoured_when_it_is_free_and_in_range() -> None:
    addresses = PodAddresses("10.244.1.0/24")
    assert addresses.assign("a", wanted="10.244.1.77") == "10.244.1.77"
    assert addresses.holder("10.244.1.77") == "a"
    # wanted does not move where the next free address is looked for
    assert addresses.assign("b") == "10.244.1.2"


@pytest.mark.parametrize(
    "wanted",
    [
        "10.244.1.0",  # the network address
        "10.244.1.1",  # the gateway
        "10.244.1.255",  # the broadcast address
        "10.244.2.7",  # another node's range
        "10.0.0.1",
        "fd00::5",
        "not-an-ip",
        "10.244.1.300",
    ],
)
def test_wanted_outside_the_pod_addresses_is_not_given(wanted: str) -> None:
    addresses = PodAddresses("10.244.1.0/24")
    assert addresses.assign("a", wanted=wanted) == "10.244.1.2"


def test_wanted_that_another_pod_holds_is_not_given() -> None:
    addresses = PodAddresses("10.244.1.0/24")
    taken = addresses.assign("a")
    assert addresses.assign("b", wanted=taken) == "10.244.1.3"
    assert addresses.holder(taken) == "a"


def test_a_freed_address_is_not_given_again_at_once() -> None:
    addresses = PodAddresses("10.244.1.0/24")
    first = addresses.assign("a")
    addresses.assign("b")
    addresses.release("a")
    assert addresses.holder(first) is None
    assert addresses.assign("c") == "10.244.1.4"
    # ... but it can be asked for by the pod that had it (a restart reporting its podIP)
    assert addresses.assign("a", wanted=first) == first


def test_addresses_go_round_the_range_and_take_the_freed_ones_after_the_last() -> None:
    addresses = PodAddresses("10.1.0.0/29")  # pod addresses .2 to .6
    for name in "abcde":
        addresses.assign(name)
    addresses.release("b")  # .3
    addresses.release("d")  # .5
    assert addresses.assign("f") == "10.1.0.3"  # wrapped round from the last (.6)
    assert addresses.assign("g") == "10.1.0.5"
    with pytest.raises(AddressError):
        addresses.assign("h")


def test_releasing_an_unknown_pod_changes_nothing() -> None:
    addresses = PodAddresses("10.1.0.0/30")
    addresses.assign("a")
    addresses.release("nobody")
    assert addresses.holder("10.1.0.2") == "a"
    with pytest.raises(AddressError):
        addresses.assign("b")


@pytest.mark.parametrize(
    ("cidr", "message"),
    [
        ("fd00:10:244::/64", "podCIDR fd00:10:244::/64: wasmlet gives pods IPv4 addresses only"),
        ("10.0.0.0/31", "podCIDR 10.0.0.0/31: too small to hold a pod address (at least a /30)"),
        ("10.0.0.7/32", "podCIDR 10.0.0.7/32: too small to hold a pod address"),
        ("10.244.1.5/24", "podCIDR '10.244.1.5/24': "),  # host bits set
        ("nonsense", "podCIDR 'nonsense': "),
        ("", "podCIDR '': "),
    ],
)
def test_ranges_that_cannot_be_used_are_refused_naming_the_range(cidr: str, message: str) -> None:
    with pytest.raises(AddressError, match="^" + re.escape(message)):
        PodAddresses(cidr)


def test_pods_assigned_at_once_from_many_threads_get_distinct_addresses() -> None:
    addresses = PodAddresses("10.2.0.0/24")
    results: dict[str, str] = {}
    lock = threading.Lock()

    def assign(prefix: str) -> None:
        for n in range(25):
            uid = f"{prefix}-{n}"
            address = addresses.assign(uid)
            with lock:
                results[uid] = address

    threads = [threading.Thread(target=assign, args=(f"t{n}",)) for n in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 250
    assert len(set(results.values())) == 250
    assert all(addresses.holder(address) == uid for uid, address in results.items())
    for n in range(3):  # 253 addresses, 250 given
        addresses.assign(f"late-{n}")
    with pytest.raises(AddressError):
        addresses.assign("late-3")
