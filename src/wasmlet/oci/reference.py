"""Image references: parsing and normalising them as Docker and Kubernetes do, and pull policies.

``parse_reference("app")`` is ``docker.io/library/app:latest``; every component is checked
against the grammar of distribution/reference before it names anything (docs/oci.md).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Literal

from wasmlet.oci.errors import InvalidReferenceError

DOCKER_HUB: Final = "docker.io"
DOCKER_HUB_API: Final = "index.docker.io"
_DOCKER_HUB_ALIASES: Final = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})

PullPolicy = Literal["Always", "IfNotPresent", "Never"]
PULL_POLICIES: Final = ("Always", "IfNotPresent", "Never")

# The grammar of distribution/reference (regexp.go), ASCII only.
_ALNUM = r"[a-z0-9]+"
_SEPARATOR = r"(?:[._]|__|[-]+)"
_COMPONENT = rf"{_ALNUM}(?:{_SEPARATOR}{_ALNUM})*"
_REPOSITORY_RE = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN_RE = re.compile(rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[a-fA-F0-9:]+\])(?::[0-9]+)?")
_TAG_RE = re.compile(r"\w[\w.-]{0,127}", re.ASCII)
_DIGEST_RE = re.compile(r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}")
_DIGEST_HEX_LENGTH: Final = {"sha256": 64, "sha512": 128}
_NAME_MAX: Final = 255


@dataclass(frozen=True)
class Reference:
    """A normalised image reference: ``registry/repository[:tag][@digest]``.

    ``registry`` is the name as users write it (``docker.io``, ``127.0.0.1:5000``); ``api_host``
    is where the registry API answers. A digest, when present, is what gets pulled.
    """

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @classmethod
    def parse(cls, text: str) -> Reference:
        return parse_reference(text)

    @property
    def api_host(self) -> str:
        return DOCKER_HUB_API if self.registry == DOCKER_HUB else self.registry

    @property
    def target(self) -> str:
        """What to ask the registry for: the digest if pinned, else the tag."""
        return self.digest or self.tag or "latest"

    def __str__(self) -> str:
        text = f"{self.registry}/{self.repository}"
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text


def parse_reference(text: str) -> Reference:
    """Parse an image reference the way Docker and Kubernetes do.

    ``repo`` -> ``docker.io/library/repo:latest``; the first path component is a registry when it
    contains ``.`` or ``:``, is ``localhost``, or has upper-case letters. Raises
    :class:`InvalidReferenceError` (a ``ValueError``) naming the reference.
    """

    def invalid(why: str) -> InvalidReferenceError:
        return InvalidReferenceError(f"invalid image reference {text!r}: {why}", reference=text, cause=why)

    if not text or text != text.strip():
        raise invalid("empty, or surrounded by whitespace")
    name, _sep, digest = text.partition("@")
    if digest or "@" in text:
        _check_digest(digest, invalid)
    tag = None
    if name.rfind(":") > name.rfind("/"):
        name, _sep, tag = name.rpartition(":")
        if not _TAG_RE.fullmatch(tag):
            raise invalid(f"tag {tag!r} is not [A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}}")
    first, slash, rest = name.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost" or first != first.lower()):
        if not _DOMAIN_RE.fullmatch(first):
            raise invalid(f"registry {first!r} is not host[:port]")
        registry, repository = first.lower(), rest
    else:
        registry, repository = DOCKER_HUB, name
    if registry in _DOCKER_HUB_ALIASES - {"registry-1.docker.io"}:
        registry = DOCKER_HUB
    if registry == DOCKER_HUB and "/" not in repository:
        repository = f"library/{repository}"
    if not _REPOSITORY_RE.fullmatch(repository):
        why = "must be lower-case" if repository != repository.lower() else "is not a valid path"
        raise invalid(f"repository {repository!r} {why} (components of [a-z0-9] joined by . _ __ -)")
    if len(registry) + 1 + len(repository) > _NAME_MAX:
        raise invalid(f"name longer than {_NAME_MAX} characters")
    if tag is None and not digest:
        tag = "latest"
    return Reference(registry=registry, repository=repository, tag=tag, digest=digest or None)


def _check_digest(digest: str, invalid: Callable[[str], InvalidReferenceError]) -> None:
    if not _DIGEST_RE.fullmatch(digest):
        raise invalid(f"digest {digest!r} is not <algorithm>:<hex>")
    algorithm, _sep, hex_part = digest.partition(":")
    if _DIGEST_HEX_LENGTH.get(algorithm) != len(hex_part) or hex_part != hex_part.lower():
        raise invalid(f"digest {digest!r}: only sha256 (64) and sha512 (128 lower-case hex digits)")


def default_pull_policy(ref: Reference) -> PullPolicy:
    """Kubernetes' default: ``Always`` for ``:latest`` (or no tag), else ``IfNotPresent``."""
    return "Always" if ref.digest is None and ref.tag == "latest" else "IfNotPresent"


def normalise_host(host: str) -> str:
    host = host.lower()
    return DOCKER_HUB if host in _DOCKER_HUB_ALIASES else host


def loopback_registry(registry: str) -> bool:
    """Whether ``registry`` (``host[:port]``) is this machine: ``localhost``, or a literal loopback
    address (127.0.0.0/8, ``::1``, ``[::1]:5000``, IPv4-mapped ``::ffff:127.x.y.z``). A loopback
    registry gets plain HTTP without being listed as insecure (docs/oci.md, "Plain HTTP").

    containerd's rule (``docker.IsLocalhost``, ``MatchLocalhost``): names are never resolved, so a
    name that resolves to 127.0.0.1 (``/etc/hosts``, ``*.localhost``) is not loopback, nor is an
    address in a form other than dotted decimal or IPv6 text (``127.1``, ``0x7f000001``).
    """
    host = registry.strip().lower()
    if host.startswith("["):
        host = host[1:].partition("]")[0]
    elif host.count(":") == 1:
        host = host.partition(":")[0]
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def valid_digest(digest: str) -> bool:
    algorithm, _sep, hex_part = digest.partition(":")
    return bool(_DIGEST_RE.fullmatch(digest)) and _DIGEST_HEX_LENGTH.get(algorithm) == len(hex_part)


def as_reference(reference: str | Reference) -> Reference:
    return reference if isinstance(reference, Reference) else parse_reference(reference)
