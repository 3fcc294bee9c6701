"""Helpers shared by the integration tests: playbooks and module tasks, conditions, tokens, CSRs."""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import json
import os
import secrets
import string
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import wasmtime
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from wasmlet_proc import WasmletNode, running_node

from wasmlet import pki
from wasmlet.kube.client import ApiError, Client
from wasmlet.oci.push import push_module
from wasmlet.ops import tokens

ROOT = Path(__file__).resolve().parents[2]
ANSIBLE_PLAYBOOK = str(Path(sys.executable).with_name("ansible-playbook"))

SECURE_REGISTRY = {
    "registry_name": "registry-secure",
    "registry_port": 5001,
    "registry_tls": True,
    "registry_auth_users": [{"username": "wasmlet-ci", "password": "integration-secret"}],
}


# The cluster's ranges as the control_plane role's defaults set them, kept on the machine by nodes.
CLUSTER_CIDR = "10.244.0.0/16"
SERVICE_CIDR = "10.96.0.0/12"
POD_NETWORK = ("--cluster-cidr", CLUSTER_CIDR, "--service-cidr", SERVICE_CIDR)


def run_playbook(playbook: str, extra_vars: dict[str, object] | None = None) -> str:
    """Run a playbook of this collection against the local inventory; return its output."""
    return run_playbook_file(ROOT / "playbooks" / playbook, extra_vars)


def run_playbook_file(
    path: Path, extra_vars: dict[str, object] | None = None, inventory: Path | None = None
) -> str:
    """Run any playbook (against the local inventory by default), from the checkout; return its output."""
    cmd = [ANSIBLE_PLAYBOOK, "-i", str(inventory or ROOT / "inventories/local"), str(path)]
    if extra_vars:
        cmd += ["-e", json.dumps(extra_vars)]
    proc = subprocess.run(
        cmd, cwd=ROOT, capture_output=True, text=True, check=False, env={**os.environ, "ANSIBLE_NOCOLOR": "1"}
    )
    if proc.returncode != 0:
        raise AssertionError(
            f"{path.name} failed ({proc.returncode}):\n{proc.stdout[-6000:]}\n{proc.stderr[-3000:]}"
        )
    return proc.stdout


@dataclass(frozen=True)
class Step:
    """One module task: ``wasmlet.kube.<module>`` with ``args``, optionally in check mode."""

    module: str
    args: dict[str, Any] = field(default_factory=dict)
    check_mode: bool = False


def run_modules(tmp_path: Path, *steps: Step) -> list[dict[str, Any]]:
    """Run ``steps`` in order in one playbook on localhost; return each task's registered result.

    Every task is ``register``-ed with ``ignore_errors``, so a failing module shows up as a result
    with ``failed: true`` (see :func:`task_failed`) instead of failing the playbook.
    """
    playbook_dir = tmp_path / unique("play")
    playbook_dir.mkdir()
    out = playbook_dir / "results.json"
    tasks: list[dict[str, Any]] = [
        {
            "name": f"Step {index}: {step.module}",
            f"wasmlet.kube.{step.module}": step.args,
            "register": f"step_{index}",
            "ignore_errors": True,
            "check_mode": step.check_mode,
        }
        for index, step in enumerate(steps)
    ]
    names = ", ".join(f"step_{index}" for index in range(len(steps)))
    tasks.append(
        {
            "name": "Save the results",
            "ansible.builtin.copy": {"content": f"{{{{ [{names}] | to_json }}}}", "dest": str(out)},
            "check_mode": False,
        }
    )
    play = [{"name": "Run wasmlet.kube modules", "hosts": "localhost", "gather_facts": False, "tasks": tasks}]
    playbook = playbook_dir / "play.yml"
    playbook.write_text(json.dumps(play, indent=2))
    run_playbook_file(playbook)
    results: list[dict[str, Any]] = json.loads(out.read_text())
    assert len(results) == len(steps)
    return results


def task_ok(result: dict[str, Any]) -> dict[str, Any]:
    """``result`` of a :func:`run_modules` step, asserting the module did not fail."""
    assert not result.get("failed"), result.get("msg")
    return result


def task_failed(result: dict[str, Any]) -> dict[str, Any]:
    """``result`` of a :func:`run_modules` step, asserting the module failed."""
    assert result.get("failed") is True, result
    return result


@dataclass(frozen=True)
class Cluster:
    admin_kubeconfig: Path
    pki: Path
    run_dir: Path
    kubectl: Path

    def admin(self) -> Client:
        return Client.from_kubeconfig(self.admin_kubeconfig)


@dataclass(frozen=True)
class Registry:
    host: str
    ca: Path | None = None
    username: str | None = None
    password: str | None = None


T = TypeVar("T")
_ALPHABET = string.ascii_lowercase + string.digits


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = 60.0, interval: float = 0.2) -> T:
    """Poll ``probe`` until it returns something truthy; fail naming ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


def random_string(length: int) -> str:
    return "".join(secrets.choice(_ALPHABET) for _position in range(length))


def unique(prefix: str) -> str:
    return f"{prefix}-{random_string(6)}"


def create_bootstrap_token(admin: Client, ttl: dt.timedelta = dt.timedelta(hours=1)) -> str:
    """A bootstrap token Secret as kubeadm (and Krustlet's bootstrap.sh) makes it."""
    return tokens.create(admin, ttl, description="wasmlet integration test").token


def post_csr(
    client: Client,
    name: str,
    signer: str,
    usages: list[str],
    node: str,
    *,
    dns_names: tuple[str, ...] = (),
    ip_addresses: tuple[str, ...] = (),
) -> ec.EllipticCurvePrivateKey:
    key = ec.generate_private_key(ec.SECP256R1())
    request = pki.build_csr(key, f"system:node:{node}", ["system:nodes"], dns_names, ip_addresses)
    client.post(
        "/apis/certificates.k8s.io/v1/certificatesigningrequests",
        {
            "apiVersion": "certificates.k8s.io/v1",
            "kind": "CertificateSigningRequest",
            "metadata": {"name": name},
            "spec": {
                "request": base64.b64encode(request).decode(),
                "signerName": signer,
                "usages": usages,
                "expirationSeconds": 3600,
            },
        },
    )
    return key


def get_csr(client: Client, name: str) -> dict[str, Any]:
    csr: dict[str, Any] = client.get(f"/apis/certificates.k8s.io/v1/certificatesigningrequests/{name}")
    return csr


def issued_certificate(client: Client, name: str) -> x509.Certificate | None:
    cert = get_csr(client, name).get("status", {}).get("certificate")
    return x509.load_pem_x509_certificate(base64.b64decode(cert)) if cert else None


def delete_quietly(client: Client, path: str) -> None:
    try:
        client.delete(path)
    except ApiError as exc:
        if exc.status != 404:
            raise


def approve_csr(admin: Client, name: str) -> None:
    """Approve a CSR as `kubectl certificate approve` does."""
    csr = get_csr(admin, name)
    csr["status"] = {
        "conditions": [
            {
                "type": "Approved",
                "status": "True",
                "reason": "KubectlApprove",
                "message": "approved by the wasmlet integration test",
            }
        ]
    }
    admin.put(f"/apis/certificates.k8s.io/v1/certificatesigningrequests/{name}/approval", csr)


def node_ready(admin: Client, name: str) -> dict[str, Any] | None:
    try:
        node: dict[str, Any] = admin.get(f"/api/v1/nodes/{name}")
    except ApiError:
        return None
    ready = [c for c in node.get("status", {}).get("conditions", []) if c["type"] == "Ready"]
    return node if ready and ready[0]["status"] == "True" else None


# -- pods on a wasmlet node ----------------------------------------------------------
MODULES = ROOT / "tests" / "modules"
SEED_TOLERATIONS = [
    {"key": "node.kubernetes.io/network-unavailable", "operator": "Exists", "effect": "NoSchedule"},
    {"key": "kubernetes.io/arch", "operator": "Equal", "value": "wasm32-wasi", "effect": "NoExecute"},
    {"key": "kubernetes.io/arch", "operator": "Equal", "value": "wasm32-wasi", "effect": "NoSchedule"},
]


def push_wat(registry: Registry, name: str, tmp_path: Path, media: str = "wasm-to-oci") -> str:
    wasm = tmp_path / f"{name}.wasm"
    wasm.write_bytes(wasmtime.wat2wasm((MODULES / f"{name}.wat").read_text()))
    ref = f"{registry.host}/{unique(name)}:v1"
    push_module(ref, wasm, media_type=media, insecure_registries={registry.host})
    return ref


def pod_manifest(
    name: str, node: str, image: str, container: dict[str, Any] | None = None, **spec: Any
) -> dict[str, Any]:
    """A pod for ``node`` with the seed's tolerations; ``container`` adds fields to its one container."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "nodeSelector": {"kubernetes.io/hostname": node},
            "tolerations": SEED_TOLERATIONS,
            "containers": [
                {
                    "name": name.rsplit("-", 1)[0],
                    "image": image,
                    "imagePullPolicy": "Always",
                    **(container or {}),
                }
            ],
            **spec,
        },
    }


class Pods:
    def __init__(self, admin: Client, node: WasmletNode, namespace: str = "default") -> None:
        self.admin = admin
        self.node = node
        self.namespace = namespace
        self.path = f"/api/v1/namespaces/{namespace}"
        self.created: list[str] = []

    def create(self, name: str, image: str, container: dict[str, Any] | None = None, **spec: Any) -> str:
        manifest = pod_manifest(name, self.node.name, image, container, **spec)
        self.admin.post(f"{self.path}/pods", manifest)
        self.created.append(name)
        return name

    def get(self, name: str) -> dict[str, Any]:
        pod: dict[str, Any] = self.admin.get(f"{self.path}/pods/{name}")
        return pod

    def container(self, name: str) -> dict[str, Any]:
        statuses: list[dict[str, Any]] = self.get(name).get("status", {}).get("containerStatuses") or [{}]
        return statuses[0]

    def wait_state(
        self, name: str, state: str, reason: str | None = None, timeout: float = 60
    ) -> dict[str, Any]:
        def probe() -> dict[str, Any] | None:
            st = self.container(name).get("state", {}).get(state)
            if st is not None and (reason is None or st.get("reason") == reason):
                return dict(st)
            return None

        try:
            return wait_for(f"pod {name} to be {state} {reason or ''}", probe, timeout=timeout)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; its container status: {self.container(name)}") from None

    def events(self, name: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self.admin.get(
            f"{self.path}/events", {"fieldSelector": f"involvedObject.name={name}"}
        )["items"]
        return items

    def wait_event(
        self, name: str, reason: str | None = None, message: str | None = None, timeout: float = 30
    ) -> dict[str, Any]:
        """The first event of pod ``name`` with this reason and/or message. Nodes post events in
        the background (as the kubelet does), so one may arrive after the status it explains."""

        def probe() -> dict[str, Any] | None:
            for event in self.events(name):
                if (reason is None or event["reason"] == reason) and (
                    message is None or event["message"] == message
                ):
                    return event
            return None

        return wait_for(f"an event {reason or ''} {message or ''} of pod {name}", probe, timeout=timeout)

    def logs(self, name: str, **params: str) -> str:
        status, body = self.admin.raw("GET", f"{self.path}/pods/{name}/log", params=params)
        assert status == 200, body
        return body.decode()


def tracked_pods(admin: Client, node: WasmletNode, namespace: str = "default") -> Iterator[Pods]:
    """Pods for a fixture to yield from: the pods a test created are deleted after it."""
    pods = Pods(admin, node, namespace)
    yield pods
    for name in pods.created:
        delete_quietly(admin, f"{pods.path}/pods/{name}?gracePeriodSeconds=0")


@contextlib.contextmanager
def joined_node(
    admin: Client, tmp_path: Path, name: str, ip: str, *extra: str, cgroup: Path | None = None
) -> Iterator[WasmletNode]:
    """A real wasmlet node on ``ip``:10250, Ready, its serving CSR approved and the kubelet API up."""
    with running_node(admin, tmp_path, name, ip, 10250, *extra, cgroup=cgroup) as node:
        wait_for(f"node {name} to be Ready", lambda: node_ready(admin, name), timeout=60)
        message = (
            f"BOOTSTRAP: TLS certificate requires manual approval. Run kubectl certificate approve {name}-tls"
        )
        wait_for("the approval message", lambda: message in node.log(), timeout=30)
        approve_csr(admin, f"{name}-tls")
        wait_for("the kubelet API to listen", lambda: "kubelet API on https://" in node.log(), timeout=30)
        try:
            yield node
        finally:
            delete_quietly(admin, f"/apis/certificates.k8s.io/v1/certificatesigningrequests/{name}-tls")
