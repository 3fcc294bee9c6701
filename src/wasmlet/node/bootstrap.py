"""TLS bootstrap, as a kubelet does it.

1. Client identity: from the bootstrap kubeconfig (a bootstrap token), post a
   ``kubernetes.io/kube-apiserver-client-kubelet`` CSR for ``system:node:<node>`` /
   ``system:nodes``; the controller manager auto-approves it; write the signed
   certificate and its key into the node's kubeconfig.
2. Serving identity: post ``<node>-tls`` (``kubernetes.io/kubelet-serving``, SANs: node name,
   hostname, node IP) as the node, print how to approve it, wait for the certificate.

Both are reused on restart while valid and renewed before they expire (Krustlet never
renewed): see :func:`needs_renewal`.
"""

from __future__ import annotations

import base64
import datetime as dt
import logging
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography import x509

from wasmlet import pki
from wasmlet.fsutil import PUBLIC_MODE, SECRET_MODE, write_atomic
from wasmlet.kube import kubeconfig
from wasmlet.kube.client import ApiError, Client

if TYPE_CHECKING:  # the settings' type only: config sits above every stage
    from wasmlet.config import NodeConfig

log = logging.getLogger(__name__)

CSRS = "/apis/certificates.k8s.io/v1/certificatesigningrequests"
CLIENT_SIGNER = "kubernetes.io/kube-apiserver-client-kubelet"
SERVING_SIGNER = "kubernetes.io/kubelet-serving"
# ECDSA keys: key encipherment is not a usage of theirs (ValidateKubeletClientCSR).
CLIENT_USAGES = ["digital signature", "client auth"]
SERVING_USAGES = ["digital signature", "server auth"]
# Renew when less than this fraction of the lifetime is left (kubelet: 70-90 % jittered).
RENEW_FRACTION = 0.2


class BootstrapError(Exception):
    """TLS bootstrap cannot proceed; the message says what to fix."""


@dataclass(frozen=True)
class Identity:
    """What the node authenticates with (kubeconfig) and serves with (cert and key files)."""

    kubeconfig: Path
    serving_cert: Path
    serving_key: Path


def needs_renewal(cert: x509.Certificate, now: dt.datetime | None = None) -> bool:
    """True once less than :data:`RENEW_FRACTION` of the certificate's lifetime is left."""
    now = now or dt.datetime.now(dt.UTC)
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    return cert.not_valid_after_utc - now < lifetime * RENEW_FRACTION


def _csr_body(
    name: str, request_pem: bytes, signer: str, usages: list[str], generate: bool
) -> dict[str, Any]:
    meta = {"generateName": f"{name}-"} if generate else {"name": name}
    return {
        "apiVersion": "certificates.k8s.io/v1",
        "kind": "CertificateSigningRequest",
        "metadata": meta,
        "spec": {
            "request": base64.b64encode(request_pem).decode(),
            "signerName": signer,
            "usages": usages,
        },
    }


def _issued(csr: dict[str, Any]) -> bytes | None:
    status = csr.get("status") or {}
    for cond in status.get("conditions") or []:
        if cond.get("type") in {"Denied", "Failed"} and cond.get("status", "True") == "True":
            raise BootstrapError(
                f"CSR {csr['metadata']['name']} was {cond['type'].lower()}: "
                f"{cond.get('reason', '')} {cond.get('message', '')}".rstrip()
            )
    cert = status.get("certificate")
    return base64.b64decode(cert) if cert else None


def _wait_issued(client: Client, name: str, stop: threading.Event, timeout: float | None) -> bytes:
    deadline = None if timeout is None else time.monotonic() + timeout
    delay = 0.2
    while not stop.is_set():
        cert = _issued(client.get(f"{CSRS}/{name}"))
        if cert:
            return cert
        if deadline is not None and time.monotonic() > deadline:
            raise BootstrapError(f"CSR {name} was not signed within {timeout:.0f}s")
        stop.wait(delay)
        delay = min(delay * 1.5, 2.0)
    raise BootstrapError(f"stopped while waiting for CSR {name}")


def _request_matches(csr: dict[str, Any], request_pem: bytes) -> bool:
    return bool(csr["spec"]["request"] == base64.b64encode(request_pem).decode())


def _post_csr(client: Client, name: str, request_pem: bytes, signer: str, usages: list[str]) -> str:
    """Post the CSR named ``name``; if one by that name holds another request, post a new name."""
    try:
        created = client.post(CSRS, _csr_body(name, request_pem, signer, usages, generate=False))
        return str(created["metadata"]["name"])
    except ApiError as exc:
        if exc.status != 409:
            raise
    existing = client.get(f"{CSRS}/{name}")
    if _request_matches(existing, request_pem):
        return name
    created = client.post(CSRS, _csr_body(name, request_pem, signer, usages, generate=True))
    return str(created["metadata"]["name"])


def _valid_cert(cert_pem: bytes, key: pki.PrivateKey) -> x509.Certificate | None:
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError:
        return None
    if cert.public_key() != key.public_key() or needs_renewal(cert):
        return None
    return cert


def _announce(message: str) -> None:
    print(message, flush=True)


class Bootstrapper:
    def __init__(self, config: NodeConfig, announce: Callable[[str], None] = _announce) -> None:
        self.config = config
        self.announce = announce

    # -- client identity --------------------------------------------------------------
    def client_kubeconfig_valid(self) -> bool:
        try:
            creds = kubeconfig.load(self.config.kubeconfig)
        except kubeconfig.KubeconfigError:
            return False
        if creds.client_cert_pem is None or creds.client_key_pem is None:
            return False
        try:
            key = pki.load_key_pem(creds.client_key_pem)
        except pki.PKIError:
            return False
        return _valid_cert(creds.client_cert_pem, key) is not None

    def _bootstrap_credentials(self) -> kubeconfig.Credentials:
        try:
            return kubeconfig.load(self.config.bootstrap_file)
        except kubeconfig.KubeconfigError as exc:
            raise BootstrapError(
                f"cannot bootstrap node {self.config.node_name}: {exc}. Create it with the bootstrap role "
                "(or Krustlet's bootstrap.sh) or pass --bootstrap-file"
            ) from None

    def ensure_client(self, stop: threading.Event, timeout: float | None = None) -> bool:
        """Make the node's kubeconfig hold a valid client certificate. Returns True if it was (re)issued."""
        if self.client_kubeconfig_valid():
            return False
        current: kubeconfig.Credentials | None = None
        try:
            current = kubeconfig.load(self.config.kubeconfig)
        except kubeconfig.KubeconfigError:
            current = None
        # Renew with the node's own (still valid) identity when there is one, else the bootstrap token.
        creds = current if current is not None and self._still_authenticates(current) else None
        creds = creds or self._bootstrap_credentials()
        node = self.config.node_name
        key = pki.generate_key("ecdsa")
        request = pki.build_csr(key, f"system:node:{node}", ["system:nodes"])
        with Client(creds) as client:
            name = _post_csr(
                client, f"node-csr-{node}-{secrets.token_hex(4)}", request, CLIENT_SIGNER, CLIENT_USAGES
            )
            log.info("posted client CSR %s for node %s; waiting for it to be approved and signed", name, node)
            cert_pem = _wait_issued(client, name, stop, timeout)
        kubeconfig.write(
            self.config.kubeconfig,
            kubeconfig.render(
                server=creds.server,
                ca_pem=creds.ca_pem or b"",
                user=f"system:node:{node}",
                client_cert_pem=cert_pem,
                client_key_pem=pki.key_pem(key),
            ),
        )
        log.info("client certificate for node %s written to %s", node, self.config.kubeconfig)
        return True

    def _still_authenticates(self, creds: kubeconfig.Credentials) -> bool:
        if creds.client_cert_pem is None:
            return False
        try:
            cert = x509.load_pem_x509_certificate(creds.client_cert_pem)
        except ValueError:
            return False
        return cert.not_valid_after_utc > dt.datetime.now(dt.UTC) + dt.timedelta(minutes=1)

    # -- serving identity -------------------------------------------------------------
    def serving_names(self) -> tuple[list[str], list[str]]:
        dns = sorted({self.config.node_name, self.config.hostname.lower()})
        return dns, [self.config.node_ip]

    def serving_cert_valid(self) -> bool:
        try:
            key = pki.load_key(self.config.private_key_file)
            cert = _valid_cert(self.config.cert_file.read_bytes(), key)
        except (pki.PKIError, OSError):
            return False
        if cert is None:
            return False
        spec = pki.describe(cert)
        dns, ips = self.serving_names()
        return sorted(spec.dns_names) == dns and sorted(spec.ip_addresses) == sorted(ips)

    def ensure_serving(self, stop: threading.Event, timeout: float | None = None) -> bool:
        """Make cert_file/private_key_file a valid serving pair. Returns True if it was (re)issued."""
        if self.serving_cert_valid():
            return False
        node = self.config.node_name
        # Keep the pending key across restarts, so a CSR approved while we were down still fits.
        pending_key = self.config.private_key_file.with_suffix(".pending.key")
        key, _created = pki.ensure_key(pending_key, "ecdsa")
        dns, ips = self.serving_names()
        request = pki.build_csr(key, f"system:node:{node}", ["system:nodes"], dns, ips)
        with Client.from_kubeconfig(self.config.kubeconfig) as client:
            name = _post_csr(client, f"{node}-tls", request, SERVING_SIGNER, SERVING_USAGES)
            csr = client.get(f"{CSRS}/{name}")
            if _issued(csr) is None:
                self.announce(
                    "BOOTSTRAP: TLS certificate requires manual approval. "
                    f"Run kubectl certificate approve {name}"
                )
            cert_pem = _wait_issued(client, name, stop, timeout)
        write_atomic(self.config.private_key_file, pki.key_pem(key), SECRET_MODE)
        write_atomic(self.config.cert_file, cert_pem, PUBLIC_MODE)
        pending_key.unlink(missing_ok=True)
        log.info("serving certificate for node %s written to %s", node, self.config.cert_file)
        return True

    def identity(self) -> Identity:
        return Identity(self.config.kubeconfig, self.config.cert_file, self.config.private_key_file)
