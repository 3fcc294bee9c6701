"""Admission: which pods this node takes (wasmlet.pod.admission, pure)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from wasmlet.pod.admission import Rejection, fit, not_wasm, pod_requests

ALLOCATABLE = {"cpu": "2", "memory": "1Gi", "pods": "3"}


def pod(*containers: dict[str, Any], init: tuple[dict[str, Any], ...] = (), **spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "p", "namespace": "default"},
        "spec": {"containers": list(containers), "initContainers": list(init), **spec},
    }


def container(cpu: str | None = None, memory: str | None = None, limits: bool = False) -> dict[str, Any]:
    values = {k: v for k, v in {"cpu": cpu, "memory": memory}.items() if v is not None}
    return {"name": "c", "resources": {"limits" if limits else "requests": values}}


def test_requests_sum_containers_take_the_largest_init_container_and_add_overhead() -> None:
    p = pod(
        container("250m", "64Mi"),
        container("250m", "64Mi"),
        init=(container("1", "16Mi"), container("100m", "512Mi")),
        overhead={"cpu": "10m"},
    )
    assert pod_requests(p) == {"cpu": Decimal("1.010"), "memory": Decimal(512 * 2**20)}


def test_a_limit_without_a_request_requests_the_limit() -> None:
    assert pod_requests(pod(container(memory="128Mi", limits=True)))["memory"] == 128 * 2**20


def test_a_pod_that_fits_is_admitted() -> None:
    assert fit(pod(container("1", "512Mi")), [pod(container("1", "512Mi"))], ALLOCATABLE) is None


def test_pod_count_is_checked_first_with_kubelets_message() -> None:
    rejection = fit(pod(), [pod(), pod(), pod()], ALLOCATABLE)
    assert rejection == Rejection(
        "OutOfpods", "Node didn't have enough resource: pods, requested: 1, used: 3, capacity: 3"
    )


@pytest.mark.parametrize(
    ("wanted", "reason", "message"),
    [
        (
            container("1500m"),
            "OutOfcpu",
            "Node didn't have enough resource: cpu, requested: 1500, used: 1000, capacity: 2000",
        ),
        (
            container(memory="600Mi"),
            "OutOfmemory",
            "Node didn't have enough resource: memory, requested: 629145600, used: 536870912, "
            "capacity: 1073741824",
        ),
    ],
)
def test_requests_over_what_is_left_are_refused(wanted: dict[str, Any], reason: str, message: str) -> None:
    assert fit(pod(wanted), [pod(container("1", "512Mi"))], ALLOCATABLE) == Rejection(reason, message)


def test_unparsable_quantities_name_the_container() -> None:
    with pytest.raises(ValueError, match="container c memory"):
        pod_requests(pod(container(memory="lots")))


DAEMONSET = {"ownerReferences": [{"kind": "DaemonSet", "name": "kube-proxy", "apiVersion": "apps/v1"}]}


def test_a_daemonset_pod_tolerating_everything_is_not_wasm() -> None:
    p = pod(tolerations=[{"operator": "Exists"}])
    p["metadata"].update(DAEMONSET)
    rejection = not_wasm(p)
    assert rejection is not None
    assert rejection.reason == "NotWasm"
    assert "default/p" in rejection.message
    assert "kubernetes.io/arch=wasm32-wasi" in rejection.message


@pytest.mark.parametrize(
    "toleration",
    [
        {"key": "kubernetes.io/arch", "operator": "Equal", "value": "wasm32-wasi", "effect": "NoSchedule"},
        {"key": "kubernetes.io/arch", "operator": "Exists"},
        {"key": "kubernetes.io/arch", "value": "wasm32-wasi"},
    ],
)
def test_a_daemonset_meant_for_wasm_nodes_runs(toleration: dict[str, Any]) -> None:
    p = pod(tolerations=[{"operator": "Exists"}, toleration])
    p["metadata"].update(DAEMONSET)
    assert not_wasm(p) is None


def test_pods_not_owned_by_a_daemonset_are_not_judged_by_tolerations() -> None:
    assert not_wasm(pod(tolerations=[{"operator": "Exists"}])) is None
