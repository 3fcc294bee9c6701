"""The collection's modules run for real, through ansible-playbook, against the real cluster and registry.

Each test writes a small playbook into ``tmp_path`` that runs module tasks on localhost (every task
``register``-ed with ``ignore_errors``), dumps the registered results to JSON and reads them back,
then checks the cluster or registry directly.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
import wasmtime
from helpers import (
    Cluster,
    Registry,
    Step,
    create_bootstrap_token,
    delete_quietly,
    get_csr,
    issued_certificate,
    post_csr,
    run_modules,
    task_ok,
    unique,
    wait_for,
)

from wasmlet import pki
from wasmlet.kube import kubeconfig
from wasmlet.kube.client import ApiError, Client
from wasmlet.oci.client import RegistryClient, RegistryOptions
from wasmlet.oci.manifest import (
    CNCF_WASM_CONFIG,
    OCI_MANIFEST,
    WASM_TO_OCI_CONFIG,
    build_module_manifest,
    digest_of,
)
from wasmlet.oci.reference import parse_reference
from wasmlet.ops import tokens

pytestmark = pytest.mark.integration

CLIENT_SIGNER = "kubernetes.io/kube-apiserver-client-kubelet"
SERVING_SIGNER = "kubernetes.io/kubelet-serving"
CSRS = "/apis/certificates.k8s.io/v1/certificatesigningrequests"
SECRETS = "/api/v1/namespaces/kube-system/secrets"
SERVING_USAGES = ["digital signature", "server auth"]
NODE_IP = "127.0.0.9"


def _whoami(cluster: Cluster, token: str) -> str:
    creds = kubeconfig.load(cluster.admin_kubeconfig)
    bootstrap = kubeconfig.Credentials(creds.server, creds.ca_pem, None, None, token)
    with Client(bootstrap) as client:
        review = client.post(
            "/apis/authentication.k8s.io/v1/selfsubjectreviews",
            {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"},
        )
    return str(review["status"]["userInfo"]["username"])


def _rejected(cluster: Cluster, token: str) -> bool:
    try:
        _whoami(cluster, token)
    except ApiError as exc:
        assert exc.status == 401, exc
        return True
    return False


def _secret_exists(admin: Client, token_id: str) -> bool:
    try:
        admin.get(f"{SECRETS}/bootstrap-token-{token_id}")
    except ApiError as exc:
        if exc.status == 404:
            return False
        raise
    return True


# --- bootstrap_token --------------------------------------------------------------------------------


@pytest.fixture
def token_ids(admin: Client) -> Iterator[set[str]]:
    """Ids of the tokens a test made; their Secrets are deleted afterwards."""
    made: set[str] = set()
    yield made
    for token_id in made:
        delete_quietly(admin, f"{SECRETS}/bootstrap-token-{token_id}")


def test_bootstrap_token_is_created_once_then_reused(
    cluster: Cluster, admin: Client, tmp_path: Path, token_ids: set[str]
) -> None:
    conf = tmp_path / "config" / "bootstrap.conf"
    args = {"kubeconfig": str(cluster.admin_kubeconfig), "bootstrap_kubeconfig": str(conf)}
    first, second = run_modules(tmp_path, Step("bootstrap_token", args), Step("bootstrap_token", args))
    token_ids.add(str(first.get("token_id")))

    assert task_ok(first)["changed"] is True
    assert conf.stat().st_mode & 0o777 == 0o600
    token = kubeconfig.load(conf).token or ""
    token_id = token.split(".", 1)[0]
    assert tokens.TOKEN_RE.match(token)
    assert first["token_id"] == token_id
    assert token.split(".", 1)[1] not in json.dumps(first), "the secret half must not be returned"
    assert _whoami(cluster, token) == f"system:bootstrap:{token_id}"
    assert conf.read_bytes() == tokens.render_bootstrap_kubeconfig(
        kubeconfig.load(cluster.admin_kubeconfig), token
    )

    assert task_ok(second)["changed"] is False
    assert second["token_id"] == token_id
    assert second["expiration"] == first["expiration"]
    assert kubeconfig.load(conf).token == token


def test_bootstrap_token_rotate_then_absent(
    cluster: Cluster, admin: Client, tmp_path: Path, token_ids: set[str]
) -> None:
    conf = tmp_path / "bootstrap.conf"
    args = {"kubeconfig": str(cluster.admin_kubeconfig), "bootstrap_kubeconfig": str(conf)}
    (created,) = run_modules(tmp_path, Step("bootstrap_token", args))
    old = kubeconfig.load(conf).token or ""
    token_ids.add(old.split(".", 1)[0])
    assert task_ok(created)["changed"] is True

    (rotated,) = run_modules(tmp_path, Step("bootstrap_token", {**args, "rotate": True}))
    new = kubeconfig.load(conf).token or ""
    new_id = new.split(".", 1)[0]
    token_ids.add(new_id)
    assert task_ok(rotated)["changed"] is True
    assert rotated["token_id"] == new_id
    assert new != old
    assert new_id != old.split(".", 1)[0]
    assert conf.stat().st_mode & 0o777 == 0o600
    assert _whoami(cluster, new) == f"system:bootstrap:{new_id}"

    absent_check, absent, again = run_modules(
        tmp_path,
        Step("bootstrap_token", {**args, "state": "absent"}, check_mode=True),
        Step("bootstrap_token", {**args, "state": "absent"}),
        Step("bootstrap_token", {**args, "state": "absent"}),
    )
    assert task_ok(absent_check)["changed"] is True
    assert task_ok(absent)["changed"] is True
    assert absent["token_id"] == new_id
    assert not _secret_exists(admin, new_id)
    assert task_ok(again)["changed"] is False
    # The apiserver's token authenticator reads Secrets through an informer: allow it to catch up.
    wait_for(f"token {new_id} to stop authenticating", lambda: _rejected(cluster, new), timeout=10)


def test_bootstrap_token_absent_by_token_id(
    cluster: Cluster, admin: Client, tmp_path: Path, token_ids: set[str]
) -> None:
    token_id = create_bootstrap_token(admin).split(".", 1)[0]
    token_ids.add(token_id)
    args = {"kubeconfig": str(cluster.admin_kubeconfig), "token_id": token_id, "state": "absent"}
    (absent,) = run_modules(tmp_path, Step("bootstrap_token", args))
    assert task_ok(absent)["changed"] is True
    assert absent["token_id"] == token_id
    assert not _secret_exists(admin, token_id)


def test_bootstrap_token_check_mode_on_a_fresh_path_writes_nothing(
    cluster: Cluster, admin: Client, tmp_path: Path
) -> None:
    conf = tmp_path / "fresh" / "bootstrap.conf"
    before = {item["metadata"]["name"] for item in admin.get(SECRETS)["items"]}
    args = {"kubeconfig": str(cluster.admin_kubeconfig), "bootstrap_kubeconfig": str(conf)}
    (checked,) = run_modules(tmp_path, Step("bootstrap_token", args, check_mode=True))
    assert task_ok(checked)["changed"] is True
    assert not conf.exists()
    assert not conf.parent.exists()
    after = {item["metadata"]["name"] for item in admin.get(SECRETS)["items"]}
    assert {name for name in after - before if name.startswith("bootstrap-token-")} == set()


# --- csr_approve -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class NodeIdentity:
    name: str
    client: Client


@pytest.fixture(scope="module")
def node_identity(cluster: Cluster) -> Iterator[NodeIdentity]:
    """A Node ``n`` (InternalIP 127.0.0.9) and a client authenticated as ``system:node:n``,
    its certificate obtained by TLS bootstrap with a bootstrap token."""
    name = unique("csr-node")
    client_csr = f"{name}-client"
    with cluster.admin() as admin:
        token = create_bootstrap_token(admin)
        creds = kubeconfig.load(cluster.admin_kubeconfig)
        try:
            admin.post("/api/v1/nodes", {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}})
            admin.patch(
                f"/api/v1/nodes/{name}/status",
                {
                    "status": {
                        "addresses": [
                            {"type": "InternalIP", "address": NODE_IP},
                            {"type": "Hostname", "address": name},
                        ]
                    }
                },
            )
            bootstrap = kubeconfig.Credentials(creds.server, creds.ca_pem, None, None, token)
            with Client(bootstrap) as as_bootstrap:
                key = post_csr(
                    as_bootstrap, client_csr, CLIENT_SIGNER, ["digital signature", "client auth"], name
                )
            cert = wait_for(f"CSR {client_csr} to be signed", lambda: issued_certificate(admin, client_csr))
            node_creds = kubeconfig.Credentials(
                creds.server, creds.ca_pem, pki.cert_pem(cert), pki.key_pem(key), None
            )
            with Client(node_creds) as as_node:
                yield NodeIdentity(name, as_node)
        finally:
            delete_quietly(admin, f"{CSRS}/{client_csr}")
            delete_quietly(admin, f"/api/v1/nodes/{name}")
            delete_quietly(admin, f"{SECRETS}/bootstrap-token-{token.split('.', 1)[0]}")


@pytest.fixture
def serving_csrs(admin: Client) -> Iterator[list[str]]:
    """Names of the CSRs a test posted; deleted afterwards."""
    names: list[str] = []
    yield names
    for name in names:
        delete_quietly(admin, f"{CSRS}/{name}")


def _post_serving(node: NodeIdentity, names: list[str], suffix: str, ips: tuple[str, ...]) -> str:
    csr_name = f"{node.name}-{suffix}"
    names.append(csr_name)
    post_csr(
        node.client,
        csr_name,
        SERVING_SIGNER,
        SERVING_USAGES,
        node.name,
        dns_names=(node.name,),
        ip_addresses=ips,
    )
    return csr_name


def _conditions(admin: Client, name: str) -> list[str]:
    return [c["type"] for c in (get_csr(admin, name).get("status") or {}).get("conditions") or []]


def test_csr_approve_approves_a_valid_serving_csr_once(
    cluster: Cluster, admin: Client, tmp_path: Path, node_identity: NodeIdentity, serving_csrs: list[str]
) -> None:
    name = _post_serving(node_identity, serving_csrs, "tls", (NODE_IP,))
    assert get_csr(admin, name)["spec"]["username"] == f"system:node:{node_identity.name}"
    args = {"kubeconfig": str(cluster.admin_kubeconfig), "name": name}
    first, second = run_modules(tmp_path, Step("csr_approve", args), Step("csr_approve", args))

    assert task_ok(first)["changed"] is True
    assert first["approved"] == [name]
    assert first["already_approved"] == []
    conditions = get_csr(admin, name)["status"]["conditions"]
    assert [(c["type"], c["reason"]) for c in conditions] == [("Approved", "WasmletValidated")]
    assert node_identity.name in conditions[0]["message"]
    cert = wait_for(f"CSR {name} to be signed", lambda: issued_certificate(admin, name))
    cert.verify_directly_issued_by(pki.load_cert(cluster.pki / "ca.crt"))

    assert task_ok(second)["changed"] is False
    assert second["approved"] == []
    assert second["already_approved"] == [name]

    # By node, too: its one serving CSR is already approved.
    (by_node,) = run_modules(
        tmp_path,
        Step("csr_approve", {"kubeconfig": str(cluster.admin_kubeconfig), "node": node_identity.name}),
    )
    assert task_ok(by_node)["changed"] is False
    assert by_node["already_approved"] == [name]


def test_csr_approve_check_mode_approves_nothing(
    cluster: Cluster, admin: Client, tmp_path: Path, node_identity: NodeIdentity, serving_csrs: list[str]
) -> None:
    name = _post_serving(node_identity, serving_csrs, "check", (NODE_IP,))
    # Not named <node>-tls: the module must be told whose CSR it is.
    args = {"kubeconfig": str(cluster.admin_kubeconfig), "name": name, "node": node_identity.name}
    (checked,) = run_modules(tmp_path, Step("csr_approve", args, check_mode=True))
    assert task_ok(checked)["changed"] is True
    assert checked["approved"] == [name]
    csr = get_csr(admin, name)
    assert not (csr.get("status") or {}).get("conditions")
    assert "certificate" not in (csr.get("status") or {})


def test_csr_approve_refuses_an_ip_san_the_node_does_not_have(
    cluster: Cluster, admin: Client, tmp_path: Path, node_identity: NodeIdentity, serving_csrs: list[str]
) -> None:
    name = _post_serving(node_identity, serving_csrs, "bad", (NODE_IP, "10.1.2.3"))
    args = {"kubeconfig": str(cluster.admin_kubeconfig), "name": name, "node": node_identity.name}
    refused, refused_in_check_mode = run_modules(
        tmp_path, Step("csr_approve", args), Step("csr_approve", args, check_mode=True)
    )
    for result in (refused, refused_in_check_mode):
        assert result.get("failed") is True
        assert name in result["msg"]
        assert "IP SANs" in result["msg"]
        assert "10.1.2.3" in result["msg"]
        assert result["approved"] == []
    assert _conditions(admin, name) == []

    (denied,) = run_modules(tmp_path, Step("csr_approve", {**args, "deny_invalid": True}))
    assert denied.get("failed") is True
    assert name in denied["msg"]
    conditions = get_csr(admin, name)["status"]["conditions"]
    assert [(c["type"], c["reason"]) for c in conditions] == [("Denied", "WasmletInvalid")]
    assert "IP SANs" in conditions[0]["message"]
    assert "certificate" not in get_csr(admin, name)["status"]


def test_csr_approve_without_a_matching_csr(cluster: Cluster, tmp_path: Path) -> None:
    args = {"kubeconfig": str(cluster.admin_kubeconfig), "name": unique("no-such-csr")}
    missing, missing_ok = run_modules(
        tmp_path, Step("csr_approve", args), Step("csr_approve", {**args, "missing_ok": True})
    )
    assert missing.get("failed") is True
    assert args["name"] in missing["msg"]
    assert task_ok(missing_ok)["changed"] is False


# --- oci_push --------------------------------------------------------------------------------------


def _registry_client(registry: Registry) -> RegistryClient:
    options = RegistryOptions(insecure_registries=frozenset({registry.host}))
    return RegistryClient.for_registry(registry.host, None, options)


def _manifest_digest(registry: Registry, repository: str, tag: str) -> str | None:
    response = requests.get(
        f"http://{registry.host}/v2/{repository}/manifests/{tag}",
        headers={"Accept": OCI_MANIFEST},
        timeout=10,
    )
    if response.status_code == 404:
        return None
    response.raise_for_status()
    return str(response.headers["Docker-Content-Digest"])


def _has_blob(registry: Registry, repository: str, digest: str) -> bool:
    response = requests.head(f"http://{registry.host}/v2/{repository}/blobs/{digest}", timeout=10)
    return response.status_code == 200


def test_oci_push_pushes_once_and_check_mode_uploads_nothing(registry: Registry, tmp_path: Path) -> None:
    repository = unique("wasmlet-it/oci-push")
    reference = f"{registry.host}/{repository}:v1"
    wasm = tmp_path / "module.wasm"
    wasm.write_bytes(wasmtime.wat2wasm('(module (func (export "_start")))'))
    args = {"path": str(wasm), "reference": reference, "insecure": True}

    fresh_check, first, second = run_modules(
        tmp_path,
        Step("oci_push", args, check_mode=True),
        Step("oci_push", args),
        Step("oci_push", args),
    )
    expected = digest_of(build_module_manifest(wasm.read_bytes())[3])
    assert task_ok(fresh_check)["changed"] is True
    assert fresh_check["digest"] == expected

    assert task_ok(first)["changed"] is True
    assert first["digest"] == expected
    assert _manifest_digest(registry, repository, "v1") == expected
    with _registry_client(registry) as client:
        assert client.resolve(parse_reference(reference)) == expected
        module = client.resolve_module(parse_reference(reference))
    assert module.layer.digest == digest_of(wasm.read_bytes())
    assert module.config_media_type == WASM_TO_OCI_CONFIG

    assert task_ok(second)["changed"] is False
    assert second["digest"] == expected

    wasm.write_bytes(wasmtime.wat2wasm('(module (func (export "_start")) (func (export "other")))'))
    new_layer = digest_of(wasm.read_bytes())
    (changed_check,) = run_modules(tmp_path, Step("oci_push", args, check_mode=True))
    assert task_ok(changed_check)["changed"] is True
    assert changed_check["digest"] != expected
    assert changed_check["digest"] == digest_of(build_module_manifest(wasm.read_bytes())[3])
    assert _manifest_digest(registry, repository, "v1") == expected
    assert not _has_blob(registry, repository, new_layer)


def test_oci_push_cncf_flavour_and_a_bad_file(registry: Registry, tmp_path: Path) -> None:
    repository = unique("wasmlet-it/oci-push-cncf")
    reference = f"{registry.host}/{repository}:v1"
    wasm = tmp_path / "module.wasm"
    wasm.write_bytes(wasmtime.wat2wasm('(module (func (export "_start")))'))
    not_wasm = tmp_path / "module.txt"
    not_wasm.write_text("not wasm")
    pushed, bad = run_modules(
        tmp_path,
        Step("oci_push", {"path": str(wasm), "reference": reference, "insecure": True, "media_type": "cncf"}),
        Step("oci_push", {"path": str(not_wasm), "reference": f"{reference}-bad", "insecure": True}),
    )
    assert task_ok(pushed)["changed"] is True
    assert _manifest_digest(registry, repository, "v1") == pushed["digest"]
    with _registry_client(registry) as client:
        assert client.resolve_module(parse_reference(reference)).config_media_type == CNCF_WASM_CONFIG
    assert bad.get("failed") is True
    assert "wasm" in bad["msg"]
    assert _manifest_digest(registry, repository, "v1-bad") is None
