"""Kubeconfig files: write them (admin, components, bootstrap) and read them back.

Credentials are always embedded (``*-data``), so a kubeconfig is one self-contained
file, written mode 0600 because it holds a private key or a token.
"""

from __future__ import annotations

import base64
import binascii
import os
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from wasmlet.fsutil import SECRET_MODE, write_atomic


class KubeconfigError(Exception):
    """A kubeconfig is missing, unreadable or lacks what is needed."""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def render(
    *,
    server: str,
    ca_pem: bytes,
    user: str,
    cluster: str = "wasmlet",
    client_cert_pem: bytes | None = None,
    client_key_pem: bytes | None = None,
    token: str | None = None,
) -> bytes:
    """A kubeconfig with one cluster, one user and one current context."""
    creds: dict[str, str] = {}
    if client_cert_pem is not None and client_key_pem is not None:
        creds = {"client-certificate-data": _b64(client_cert_pem), "client-key-data": _b64(client_key_pem)}
    if token is not None:
        creds["token"] = token
    context = f"{user}@{cluster}"
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": cluster, "cluster": {"server": server, "certificate-authority-data": _b64(ca_pem)}}
        ],
        "users": [{"name": user, "user": creds}],
        "contexts": [{"name": context, "context": {"cluster": cluster, "user": user}}],
        "current-context": context,
        "preferences": {},
    }
    return yaml.safe_dump(doc, sort_keys=False).encode()


def write(path: Path, content: bytes) -> bool:
    return write_atomic(path, content, SECRET_MODE)


@dataclass(frozen=True)
class Credentials:
    """What a client needs from a kubeconfig's current context."""

    server: str
    ca_pem: bytes | None
    client_cert_pem: bytes | None
    client_key_pem: bytes | None
    token: str | None
    insecure: bool = False

    def ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context()
        if self.insecure:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        elif self.ca_pem is not None:
            ctx = ssl.create_default_context(cadata=self.ca_pem.decode())
        if self.client_cert_pem is not None and self.client_key_pem is not None:
            load_client_cert(ctx, self.client_cert_pem, self.client_key_pem)
        return ctx


def load_client_cert(ctx: ssl.SSLContext, cert_pem: bytes, key_pem: bytes) -> None:
    """``ssl`` loads chains only from files: use a private temporary file, then remove it."""
    fd, name = tempfile.mkstemp(prefix="wasmlet-client-", suffix=".pem")
    try:
        os.fchmod(fd, SECRET_MODE)
        with os.fdopen(fd, "wb") as handle:
            handle.write(cert_pem + b"\n" + key_pem)
        ctx.load_cert_chain(name)
    finally:
        os.unlink(name)


def _data(entry: dict[str, Any], key: str, base: Path) -> bytes | None:
    if f"{key}-data" in entry:
        return base64.b64decode(entry[f"{key}-data"])
    if key in entry:
        p = Path(entry[key])
        return (p if p.is_absolute() else base / p).read_bytes()
    return None


def load(path: Path) -> Credentials:
    """Read the current context of the kubeconfig at ``path``."""
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise KubeconfigError(f"cannot read kubeconfig {path}: {exc}") from exc
    try:
        ctx_name = doc["current-context"]
        ctx = next(c["context"] for c in doc["contexts"] if c["name"] == ctx_name)
        cluster = next(c["cluster"] for c in doc["clusters"] if c["name"] == ctx["cluster"])
        users: list[dict[str, Any]] = doc.get("users") or []
        user: dict[str, Any] = next((u["user"] or {} for u in users if u["name"] == ctx.get("user")), {})
        base = path.parent
        return Credentials(
            server=cluster["server"],
            ca_pem=_data(cluster, "certificate-authority", base),
            client_cert_pem=_data(user, "client-certificate", base),
            client_key_pem=_data(user, "client-key", base),
            token=user.get("token"),
            insecure=bool(cluster.get("insecure-skip-tls-verify", False)),
        )
    except (KeyError, StopIteration, TypeError, OSError, binascii.Error) as exc:
        raise KubeconfigError(f"kubeconfig {path} has no usable current context: {exc!r}") from exc
