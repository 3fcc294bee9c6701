"""Registry credentials: an imagePullSecret's ``.dockerconfigjson``, matched per image as the kubelet does.

Credentials come only from the caller (a pod's secrets, a module's parameters), never from the
node user's ``~/.docker/config.json`` or ``~/.netrc`` (docs/oci.md, pitfall 3).
"""

from __future__ import annotations

import base64
import binascii
import fnmatch
import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import requests
import requests.auth

from wasmlet.oci.errors import PushError, RegistryError
from wasmlet.oci.reference import Reference, normalise_host


@dataclass(frozen=True)
class RegistryAuth:
    """Credentials for one registry; all ``None`` is anonymous. Secrets stay out of ``repr``."""

    username: str | None = None
    password: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)  # registrytoken: sent as a bearer token
    identity_token: str | None = field(default=None, repr=False)  # OAuth2 refresh token (ACR, ...)

    @property
    def anonymous(self) -> bool:
        return not (self.username or self.token or self.identity_token)

    def basic_header(self) -> str | None:
        if self.username is None:
            return None
        raw = f"{self.username}:{self.password or ''}".encode()
        return f"Basic {base64.b64encode(raw).decode()}"


def access_identity(auth: RegistryAuth) -> str:
    """What the module store keeps of credentials that pulled a module (``access.json``): their
    SHA-256, or "" for none. Equal credentials, whichever secret holds them, are one identity."""
    if auth.anonymous:
        return ""
    fields = [auth.username, auth.password, auth.token, auth.identity_token]
    return hashlib.sha256(json.dumps(fields).encode()).hexdigest()


def _split_port(host: str) -> tuple[str, str]:
    if host.startswith("["):
        end = host.find("]")
        return host[: end + 1], host[end + 2 :] if end + 1 < len(host) else ""
    name, _sep, port = host.partition(":")
    return name, port


def _config_key_matches(key: str, registry: str, repository: str) -> tuple[bool, int]:
    """Kubernetes' credentialprovider matching: host globs per label, same port, path prefix.

    Returns (matches, specificity) -- an exact host beats a glob, a longer path a shorter one.
    """
    parsed = urlsplit(key if "://" in key else f"https://{key}")
    key_host = normalise_host(parsed.netloc)
    path = parsed.path
    for api_prefix in ("/v1/", "/v2/"):
        if path.startswith(api_prefix) or path == api_prefix.rstrip("/"):
            path = path[len(api_prefix) :]
    path = path.strip("/")
    key_name, key_port = _split_port(key_host)
    name, port = _split_port(normalise_host(registry))
    if key_port != port:
        return False, 0
    key_labels, labels = key_name.split("."), name.split(".")
    if len(key_labels) != len(labels):
        return False, 0
    if not all(
        fnmatch.fnmatchcase(label, pattern) for label, pattern in zip(labels, key_labels, strict=True)
    ):
        return False, 0
    if path and not (repository == path or repository.startswith(f"{path}/")):
        return False, 0
    glob = any(ch in key_name for ch in "*?[")
    return True, (0 if glob else 1000) + len(path)


def _entry_auth(key: str, entry: Mapping[str, Any]) -> RegistryAuth:
    username = entry.get("username")
    password = entry.get("password")
    encoded = entry.get("auth")
    if encoded:
        try:
            decoded = base64.b64decode(str(encoded), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError) as exc:
            raise ValueError(
                f"dockerconfigjson entry {key!r}: 'auth' is not base64 of user:password"
            ) from exc
        if ":" not in decoded:
            raise ValueError(f"dockerconfigjson entry {key!r}: 'auth' does not decode to user:password")
        username, _sep, password = decoded.partition(":")
    return RegistryAuth(
        username=str(username) if username else None,
        password=str(password) if password is not None else None,
        token=str(entry["registrytoken"]) if entry.get("registrytoken") else None,
        identity_token=str(entry["identitytoken"]) if entry.get("identitytoken") else None,
    )


def auth_from_dockerconfigjson(
    config: str | bytes | Mapping[str, Any], registry: str, repository: str = ""
) -> RegistryAuth | None:
    """Credentials for ``registry`` (and ``repository``) from a ``.dockerconfigjson``.

    ``config`` is the content of a ``kubernetes.io/dockerconfigjson`` secret (``{"auths": {...}}``)
    or of a legacy ``.dockercfg`` (the ``auths`` mapping itself). Keys may be ``host[:port]``,
    ``https://host[:port]/v1/``, ``host/path`` prefixes or ``*.domain`` globs, as in Kubernetes;
    Docker Hub is any of docker.io, index.docker.io, registry-1.docker.io. Entries hold ``auth``
    (base64 ``user:password``) or ``username``/``password``, optionally ``registrytoken`` or
    ``identitytoken``. Returns ``None`` when no entry matches, so callers can try the next secret.
    """
    data: Any = json.loads(config) if isinstance(config, str | bytes) else config
    if not isinstance(data, Mapping):
        raise ValueError("dockerconfigjson is not a JSON object")
    auths = data.get("auths", data)
    if not isinstance(auths, Mapping):
        raise ValueError("dockerconfigjson 'auths' is not a JSON object")
    best: tuple[int, str, Mapping[str, Any]] | None = None
    for key, entry in auths.items():
        if not isinstance(entry, Mapping):
            continue
        matches, specificity = _config_key_matches(str(key), registry, repository)
        if matches and (best is None or specificity > best[0]):
            best = (specificity, str(key), entry)
    return None if best is None else _entry_auth(best[1], best[2])


@dataclass(frozen=True)
class Keyring:
    """The credentials of a pod's imagePullSecrets, looked up per image like the kubelet does.

    Holds the ``.dockerconfigjson`` documents of the secrets in order; :meth:`lookup` returns
    the most specific matching entry of the first secret that has one, else anonymous. (The
    kubelet goes on to try further matching secrets when a pull with the first is refused; here
    the first match is used.)
    """

    configs: tuple[Mapping[str, Any], ...] = ()

    @classmethod
    def from_dockerconfigs(cls, configs: Iterable[str | bytes | Mapping[str, Any]]) -> Keyring:
        parsed: list[Mapping[str, Any]] = []
        for config in configs:
            data = json.loads(config) if isinstance(config, str | bytes) else config
            if not isinstance(data, Mapping):
                raise ValueError("dockerconfigjson is not a JSON object")
            parsed.append(data)
        return cls(tuple(parsed))

    def lookup(self, registry: str, repository: str = "") -> RegistryAuth:
        for config in self.configs:
            found = auth_from_dockerconfigjson(config, registry, repository)
            if found is not None:
                return found
        return RegistryAuth()


def credentials_for(
    auth: RegistryAuth | Keyring | None, ref: Reference, error: type[RegistryError]
) -> RegistryAuth | None:
    """``auth`` itself, or a :class:`Keyring`'s entry for ``ref``; a malformed entry is ``error``."""
    if not isinstance(auth, Keyring):
        return auth
    try:
        return auth.lookup(ref.registry, ref.repository)
    except ValueError as exc:  # a malformed entry in an imagePullSecret
        cause = f"invalid imagePullSecret: {exc}"
        verb = "push" if error is PushError else "pull"
        raise error(
            f"failed to {verb} {ref} from registry {ref.registry}: {cause}",
            reference=str(ref),
            registry=ref.registry,
            cause=cause,
        ) from exc


class NoNetrcAuth(requests.auth.AuthBase):
    """A no-op session auth: stops ``requests`` from replacing our Authorization header with
    credentials from the node user's ``~/.netrc`` (it does so when a session has no auth)."""

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        return request
