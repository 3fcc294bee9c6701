"""Bootstrap tokens and bootstrap kubeconfigs, as kubeadm and Krustlet's bootstrap.sh make them.

A token is a ``bootstrap.kubernetes.io/token`` Secret ``bootstrap-token-<id>`` in
kube-system; the bearer token ``<id>.<secret>`` authenticates as ``system:bootstrap:<id>``
in ``system:bootstrappers:kubeadm:default-node-token``, which may create node CSRs.
"""

from __future__ import annotations

import base64
import datetime as dt
import re
import secrets
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wasmlet.kube import kubeconfig
from wasmlet.kube.client import ApiError, Client

ALPHABET = string.ascii_lowercase + string.digits
TOKEN_RE = re.compile(r"^([a-z0-9]{6})\.([a-z0-9]{16})$")
DEFAULT_GROUP = "system:bootstrappers:kubeadm:default-node-token"
SECRETS = "/api/v1/namespaces/kube-system/secrets"


@dataclass(frozen=True)
class BootstrapToken:
    token_id: str
    secret: str
    expiration: dt.datetime

    @property
    def token(self) -> str:
        return f"{self.token_id}.{self.secret}"


def _random(length: int) -> str:
    return "".join(secrets.choice(ALPHABET) for _pos in range(length))


def _decode(secret: dict[str, Any], key: str) -> str:
    value = (secret.get("data") or {}).get(key)
    return base64.b64decode(value).decode() if value else ""


def create(
    client: Client,
    ttl: dt.timedelta = dt.timedelta(hours=1),
    description: str = "wasmlet node bootstrap",
    groups: str = DEFAULT_GROUP,
) -> BootstrapToken:
    """Create a new token Secret valid for ``ttl``."""
    token = BootstrapToken(_random(6), _random(16), dt.datetime.now(dt.UTC).replace(microsecond=0) + ttl)
    client.post(
        SECRETS,
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": f"bootstrap-token-{token.token_id}", "namespace": "kube-system"},
            "type": "bootstrap.kubernetes.io/token",
            "stringData": {
                "token-id": token.token_id,
                "token-secret": token.secret,
                "expiration": token.expiration.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "usage-bootstrap-authentication": "true",
                "usage-bootstrap-signing": "true",
                "auth-extra-groups": groups,
                "description": description,
            },
        },
    )
    return token


def get(client: Client, token_id: str) -> BootstrapToken | None:
    """The token with this id, or None if it does not exist."""
    try:
        secret = client.get(f"{SECRETS}/bootstrap-token-{token_id}")
    except ApiError as exc:
        if exc.status == 404:
            return None
        raise
    expiration = _decode(secret, "expiration")
    return BootstrapToken(
        token_id,
        _decode(secret, "token-secret"),
        (
            dt.datetime.fromisoformat(expiration.replace("Z", "+00:00"))
            if expiration
            else dt.datetime.max.replace(tzinfo=dt.UTC)  # no expiration: valid until deleted
        ),
    )


def delete(client: Client, token_id: str) -> bool:
    try:
        client.delete(f"{SECRETS}/bootstrap-token-{token_id}")
    except ApiError as exc:
        if exc.status == 404:
            return False
        raise
    return True


def render_bootstrap_kubeconfig(admin: kubeconfig.Credentials, token: str, cluster: str = "wasmlet") -> bytes:
    """``bootstrap.conf``: the cluster of ``admin`` with user ``tls-bootstrap-token-user`` (Krustlet's)."""
    if not TOKEN_RE.match(token):
        raise ValueError("a bootstrap token has the form <6 [a-z0-9]>.<16 [a-z0-9]>")
    return kubeconfig.render(
        server=admin.server,
        ca_pem=admin.ca_pem or b"",
        user="tls-bootstrap-token-user",
        cluster=cluster,
        token=token,
    )


def write_bootstrap_kubeconfig(path: Path, admin: kubeconfig.Credentials, token: str) -> bool:
    return kubeconfig.write(path, render_bootstrap_kubeconfig(admin, token))
