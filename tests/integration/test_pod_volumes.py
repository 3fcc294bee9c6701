"""Pod volumes on a real wasmlet node, each a WASI preopened directory at its mountPath:
emptyDir shared between containers, configMap and secret (items, modes, updates reaching the
files), downwardAPI, hostPath with subPath, the service account token projected by the
apiserver's admission, readOnly mounts, and clear failures for what a module cannot mount."""

from __future__ import annotations

import base64
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import Pods, delete_quietly, unique, wait_for

from wasmlet import paths
from wasmlet.kube.client import ApiError, Client

pytestmark = pytest.mark.integration

NS = "/api/v1/namespaces/default"


@pytest.fixture
def objects(admin: Client) -> Iterator[list[str]]:
    created: list[str] = []
    yield created
    for path in created:
        delete_quietly(admin, path)


def configmap(admin: Client, objects: list[str], name: str, data: dict[str, str]) -> None:
    admin.post(
        f"{NS}/configmaps",
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": data},
    )
    objects.append(f"{NS}/configmaps/{name}")


def probe(name: str, image: str, *args: str, mounts: list[dict[str, Any]]) -> dict[str, Any]:
    return {"name": name, "image": image, "args": list(args), "volumeMounts": mounts}


def finished_logs(pods: Pods, name: str, container: str | None = None) -> str:
    def done() -> dict[str, Any] | None:
        phase = pods.get(name).get("status", {}).get("phase")
        return {"phase": phase} if phase in {"Succeeded", "Failed"} else None

    wait_for(f"pod {name} to finish", done, timeout=90)
    return pods.logs(name, **({"container": container} if container else {}))


def test_empty_dir_is_shared_and_read_only_mounts_refuse_writes(pods: Pods, fsprobe: str) -> None:
    name = unique("scratch")
    data = {"name": "data", "mountPath": "/data"}
    pods.create(
        name,
        fsprobe,
        {"args": ["cat", "/data/greeting"], "volumeMounts": [data]},
        restartPolicy="Never",
        volumes=[{"name": "data", "emptyDir": {}}],
        initContainers=[
            probe("writer", fsprobe, "write", "/data/greeting", "hello from init", mounts=[data]),
            probe("reader", fsprobe, "write", "/data/other", "x", mounts=[{**data, "readOnly": True}]),
        ],
    )

    def reader_done() -> dict[str, Any] | None:
        statuses = pods.get(name).get("status", {}).get("initContainerStatuses") or []
        return next((s for s in statuses if s["name"] == "reader" and "terminated" in s["state"]), None)

    reader = wait_for("the read-only writer to fail", reader_done, timeout=60)
    assert reader["state"]["terminated"]["exitCode"] == 1
    assert pods.logs(name, container="reader").startswith("/data/other: error: ")
    assert pods.logs(name, container="writer") == "wrote /data/greeting\n"
    assert pods.get(name)["status"]["phase"] == "Failed"  # an init container failed, restartPolicy Never


def test_configmap_and_secret_files_with_items_and_modes(
    pods: Pods, admin: Client, fsprobe: str, objects: list[str]
) -> None:
    cm, sec = unique("settings"), unique("credentials")
    configmap(admin, objects, cm, {"app.ini": "[app]\ncolor=blue", "unused": "x"})
    admin.post(
        f"{NS}/secrets",
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": sec},
            "data": {"password": base64.b64encode(b"s3cret").decode()},
        },
    )
    objects.append(f"{NS}/secrets/{sec}")
    name = unique("files")
    pods.create(
        name,
        fsprobe,
        {
            "args": ["cat", "/etc/app/conf/app.ini", "/etc/app/unused", "/secrets/password"],
            "volumeMounts": [
                {"name": "config", "mountPath": "/etc/app"},
                {"name": "creds", "mountPath": "/secrets"},
            ],
        },
        restartPolicy="Never",
        volumes=[
            {
                "name": "config",
                "configMap": {"name": cm, "items": [{"key": "app.ini", "path": "conf/app.ini"}]},
            },
            {"name": "creds", "secret": {"secretName": sec, "defaultMode": 0o644}},
        ],
    )
    logs = finished_logs(pods, name)
    assert "/etc/app/conf/app.ini: [app]\ncolor=blue\n" in logs
    assert "/etc/app/unused: error: " in logs  # not among the items
    assert "/secrets/password: s3cret\n" in logs
    uid = pods.get(name)["metadata"]["uid"]
    secret_file = (
        pods.node.data_dir / "pods" / uid / "volumes" / "kubernetes.io~secret" / "creds" / "password"
    )
    mode = stat.S_IMODE(secret_file.stat().st_mode)
    assert mode & stat.S_IROTH == 0, oct(mode)  # secrets are never world-readable


def test_downward_api_and_host_path_sub_path(host_path_pods: Pods, fsprobe: str, tmp_path: Path) -> None:
    host = tmp_path / "host"
    (host / "sub").mkdir(parents=True)
    (host / "sub" / "note").write_text("from the host")
    name = unique("downward")
    host_path_pods.create(
        name,
        fsprobe,
        {
            "args": ["cat", "/info/labels", "/info/name", "/host/note"],
            "volumeMounts": [
                {"name": "info", "mountPath": "/info"},
                {"name": "host", "mountPath": "/host", "subPath": "sub", "readOnly": True},
            ],
        },
        restartPolicy="Never",
        volumes=[
            {
                "name": "info",
                "downwardAPI": {
                    "items": [
                        {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
                        {"path": "name", "fieldRef": {"fieldPath": "metadata.name"}},
                    ]
                },
            },
            {"name": "host", "hostPath": {"path": str(host), "type": "Directory"}},
        ],
    )
    logs = finished_logs(host_path_pods, name)
    assert f'/info/labels: app="{name}"\n' in logs
    assert f"/info/name: {name}\n" in logs
    assert "/host/note: from the host\n" in logs


def test_the_service_account_token_volume_is_mounted(pods: Pods, fsprobe: str) -> None:
    name = unique("sa")
    sa_dir = "/var/run/secrets/kubernetes.io/serviceaccount"
    pods.create(name, fsprobe, {"args": ["cat", f"{sa_dir}/namespace"]}, restartPolicy="Never")
    assert finished_logs(pods, name) == f"{sa_dir}/namespace: default\n"
    mounts = pods.get(name)["spec"]["containers"][0]["volumeMounts"]
    assert [m["mountPath"] for m in mounts] == [sa_dir]  # added by the ServiceAccount admission plugin
    token = unique("token")
    pods.create(token, fsprobe, {"args": ["size", f"{sa_dir}/token"]}, restartPolicy="Never")
    size = finished_logs(pods, token)
    assert size.startswith(f"{sa_dir}/token: ") and int(size.split()[1]) > 100


def test_a_configmap_change_reaches_the_mounted_file(
    pods: Pods, admin: Client, fsprobe: str, objects: list[str]
) -> None:
    cm = unique("live")
    configmap(admin, objects, cm, {"color": "blue"})
    name = unique("watch")
    pods.create(
        name,
        fsprobe,
        {"args": ["watch", "/cfg/color"], "volumeMounts": [{"name": "cfg", "mountPath": "/cfg"}]},
        volumes=[{"name": "cfg", "configMap": {"name": cm}}],
    )
    pods.wait_state(name, "running")
    wait_for("the first content", lambda: "/cfg/color: blue\n" in pods.logs(name), timeout=30)
    admin.patch(f"{NS}/configmaps/{cm}", {"data": {"color": "green"}})
    # kubelet syncs mounted ConfigMaps about once a minute; so does wasmlet.
    wait_for("the new content", lambda: "/cfg/color: green\n" in pods.logs(name), timeout=120)
    assert pods.container(name)["restartCount"] == 0


def test_a_missing_configmap_is_a_failed_mount_until_it_appears(
    pods: Pods, admin: Client, fsprobe: str, objects: list[str]
) -> None:
    cm = unique("later")
    name = unique("waits")
    pods.create(
        name,
        fsprobe,
        {"args": ["cat", "/cfg/k"], "volumeMounts": [{"name": "cfg", "mountPath": "/cfg"}]},
        restartPolicy="Never",
        volumes=[{"name": "cfg", "configMap": {"name": cm}}],
    )

    def failed_mount() -> str | None:
        return next((e["message"] for e in pods.events(name) if e["reason"] == "FailedMount"), None)

    message = wait_for("a FailedMount event", failed_mount, timeout=30)
    assert message == f'MountVolume.SetUp failed for volume "cfg" : configmap "{cm}" not found'
    assert pods.get(name)["status"]["phase"] == "Pending"
    configmap(admin, objects, cm, {"k": "v"})
    assert finished_logs(pods, name) == "/cfg/k: v\n"


@pytest.mark.parametrize(
    ("volume", "cause"),
    [
        (
            {"persistentVolumeClaim": {"claimName": "data"}},
            "persistentVolumeClaim volumes are not supported by wasmlet",
        ),
        (
            {"hostPath": {"path": "{allowed}/a-file", "type": "File"}},
            "a WASI module can only mount directories",
        ),
    ],
    ids=["pvc", "hostpath-file"],
)
def test_volumes_a_module_cannot_mount_fail_clearly(
    host_path_pods: Pods,
    fsprobe: str,
    volume: dict[str, Any],
    cause: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    pods = host_path_pods  # a namespace where Pod Security allows hostPath: the node decides
    if "hostPath" in volume:
        allowed = tmp_path_factory.getbasetemp()
        (allowed / "a-file").write_text("a file")
        volume = {
            "hostPath": {**volume["hostPath"], "path": volume["hostPath"]["path"].format(allowed=allowed)}
        }
    name = unique("unmountable")
    pods.create(
        name,
        fsprobe,
        {"args": ["ls", "/v"], "volumeMounts": [{"name": "v", "mountPath": "/v"}]},
        volumes=[{"name": "v", **volume}],
        nodeName=pods.node.name,  # the scheduler would hold a pod with an unbound claim Pending
    )

    def failed_mount() -> str | None:
        return next((e["message"] for e in pods.events(name) if e["reason"] == "FailedMount"), None)

    assert cause in wait_for("a FailedMount event", failed_mount, timeout=30)
    assert pods.get(name)["status"]["phase"] == "Pending"


def test_an_empty_dir_over_its_size_limit_evicts_the_pod(pods: Pods, fsprobe: str) -> None:
    name = unique("hog")
    pods.create(
        name,
        fsprobe,
        {
            "args": ["fill", "/scratch/big", str(4 * 2**20)],
            "volumeMounts": [{"name": "s", "mountPath": "/scratch"}],
        },
        volumes=[{"name": "s", "emptyDir": {"sizeLimit": "1Mi"}}],
    )

    def evicted() -> dict[str, Any] | None:
        status = pods.get(name).get("status", {})
        return status if status.get("phase") == "Failed" else None

    status = wait_for(f"pod {name} to be evicted", evicted, timeout=60)
    assert status["reason"] == "Evicted"
    assert 'Usage of EmptyDir volume "s" exceeds the limit "1Mi"' in status["message"]
    assert "terminated" in status["containerStatuses"][0]["state"]


def test_several_containers_run_side_by_side_and_share_a_volume(pods: Pods, fsprobe: str) -> None:
    name = unique("pair")
    data = [{"name": "d", "mountPath": "/d"}]
    pods.create(
        name,
        fsprobe,
        volumes=[{"name": "d", "emptyDir": {}}],
        containers=[
            probe("watcher", fsprobe, "watch", "/d/note", mounts=data),
            probe("writer", fsprobe, "fill", "/d/note", "3", mounts=data),
        ],
    )

    def both_running() -> list[dict[str, Any]] | None:
        statuses = pods.get(name).get("status", {}).get("containerStatuses") or []
        return statuses if len(statuses) == 2 and all("running" in s["state"] for s in statuses) else None

    wait_for(f"both containers of {name} running", both_running, timeout=60)
    wait_for(
        "the watcher to see the writer's file",
        lambda: "/d/note: \0\0\0\n" in pods.logs(name, container="watcher"),
        timeout=30,
    )
    assert pods.logs(name, container="writer") == "filled /d/note\n"
    assert pods.get(name)["status"]["phase"] == "Running"


@pytest.mark.parametrize(
    "where", ["/", "{data_dir}", "{cluster_dir}/pki", "/etc"], ids=["root", "data", "pki", "etc"]
)
def test_a_host_path_the_node_does_not_allow_fails_the_pod_naming_the_field_and_the_flag(
    host_path_pods: Pods, fsprobe: str, where: str
) -> None:
    """Seen by an attacker: ``hostPath: /`` read the cluster CA key and the admin kubeconfig."""
    path = where.format(data_dir=host_path_pods.node.data_dir, cluster_dir=paths.cluster_dir())
    name = unique("hostpath")
    host_path_pods.create(
        name,
        fsprobe,
        {"args": ["ls", "/host"], "volumeMounts": [{"name": "host", "mountPath": "/host"}]},
        volumes=[{"name": "host", "hostPath": {"path": path}}],
    )
    status = wait_for(
        "the pod to fail", lambda: (s := host_path_pods.get(name)["status"]).get("phase") == "Failed" and s
    )
    assert status["reason"] == "HostPathNotAllowed"
    assert status["message"].startswith(f"Pod was rejected: spec.volumes[0].hostPath.path: {path} ")
    assert "--allowed-host-paths" in status["message"] or "node's state" in status["message"]
    assert host_path_pods.wait_event(name, "HostPathNotAllowed")["type"] == "Warning"
    assert not (host_path_pods.node.data_dir / "pods" / host_path_pods.get(name)["metadata"]["uid"]).exists()


def test_the_clusters_pod_security_default_refuses_a_host_path_before_it_reaches_the_node(
    pods: Pods, fsprobe: str
) -> None:
    """The control_plane role enforces Pod Security ``baseline`` unless a namespace opts down."""
    volumes = [{"name": "host", "hostPath": {"path": "/"}}]
    with pytest.raises(ApiError) as refused:
        pods.create(unique("hostpath"), fsprobe, volumes=volumes)
    assert refused.value.status == 403
    assert 'violates PodSecurity "baseline:latest": hostPath volumes (volume "host")' in str(refused.value)
