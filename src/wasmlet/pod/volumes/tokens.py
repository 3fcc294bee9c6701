"""``serviceAccountToken`` projections: the pod's tokens, cached and refreshed as kubelet's token manager.

A new pod's first TokenRequest can race the apiserver's view of its binding: NodeRestriction
(plugin/pkg/admission/noderestriction) checks the pod in the apiserver's informer cache, which
may not have seen ``spec.nodeName`` yet, and refuses with 403 "node requested token bound to a
pod scheduled on a different node". kubelet records that as a ``FailedMount`` of a healthy pod.
wasmlet tries again quietly for :data:`BINDING_RACE_SECONDS` first: :class:`TokenNotYetBound`
(not a failure) tells the volume manager to try the pod again in :data:`BINDING_RETRY_SECONDS`
without an event, and only a refusal that outlasts the window is the usual ``FailedMount``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from wasmlet.kube.client import ApiError
from wasmlet.kube.shapes import kind as _kind
from wasmlet.pod.env_error import EnvError
from wasmlet.pod.go_strings import utf8
from wasmlet.pod.volumes.atomic_writer import Payload, clean_path
from wasmlet.pod.volumes.spec import SHAPES, VolumeError, namespace_of

log = logging.getLogger(__name__)

TOKEN_MAX_AGE_SECONDS = 24 * 3600.0
TOKEN_REFRESH_FRACTION = 0.8
DEFAULT_TOKEN_EXPIRATION = 3600
MIN_TOKEN_EXPIRATION = 600
MAX_TOKEN_EXPIRATION = 1 << 32
TOKEN_MODE = 0o600
BINDING_RACE_SECONDS = 5.0  # how long the refusal below is taken for the binding race
BINDING_RETRY_SECONDS = 0.25  # how soon the pod is tried again meanwhile
# NodeRestriction's refusal while its cache has the pod unbound (or bound elsewhere).
_ELSEWHERE = "node requested token bound to a pod scheduled on a different node"


class TokenNotYetBound(Exception):
    """The apiserver does not see the pod bound to this node yet; try again in ``retry_after`` seconds.

    Deliberately not an :class:`EnvError` or :class:`VolumeError`: it passes the volume code's
    per-volume error collection and reaches the volume manager, which records no event for it.
    """

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def bound_elsewhere(exc: BaseException) -> bool:
    """``exc`` (the ``EnvError`` of a TokenRequest) is NodeRestriction's "different node" 403."""
    cause = exc.__cause__
    return isinstance(cause, ApiError) and cause.status == 403 and _ELSEWHERE in str(cause)


class TokenSource(Protocol):
    """Where tokens come from; :class:`~wasmlet.pod.volumes.content.VolumeSources` is one."""

    def token(
        self,
        namespace: str,
        service_account: str,
        *,
        pod_name: str,
        pod_uid: str,
        audience: str,
        expiration_seconds: int,
    ) -> tuple[str, datetime]:
        """A TokenRequest's token bound to the pod, and its expiration time."""


@dataclass(frozen=True)
class _Token:
    token: str
    refresh_at: float  # epoch seconds
    expires_at: float


class Tokens:
    """One pod's tokens by (audience, lifetime). ``clock`` gives epoch seconds.

    A sync calls :meth:`start`, then :meth:`payload` for each projection, then :meth:`keep_used`
    when every volume was set up (a failing volume may not have asked for its token).
    """

    def __init__(self, sources: TokenSource, clock: Callable[[], float]) -> None:
        self.sources = sources
        self.clock = clock
        self._tokens: dict[tuple[str, int], _Token] = {}
        self._used: set[tuple[str, int]] = set()
        self._refused_since: dict[tuple[str, int], float] = {}  # the binding race's first refusal

    def start(self) -> None:
        """A sync begins: no token is used yet."""
        self._used = set()

    def keep_used(self) -> None:
        """Forget the tokens the sync did not ask for."""
        self._tokens = {k: v for k, v in self._tokens.items() if k in self._used}

    def clear(self) -> None:
        self._tokens.clear()
        self._refused_since.clear()

    def refresh_times(self) -> list[float]:
        """When each token is due for a refresh (epoch seconds)."""
        return [token.refresh_at for token in self._tokens.values()]

    def payload(self, pod: Mapping[str, Any], source: Mapping[str, Any], where: str) -> Payload:
        """The file of a ``serviceAccountToken`` projection (``source``), mode 0600."""
        audience = SHAPES.string(source, "audience", where)
        path = clean_path(SHAPES.string(source, "path", where), where)
        expiration = source.get("expirationSeconds")
        if expiration is None:
            expiration = DEFAULT_TOKEN_EXPIRATION
        if isinstance(expiration, bool) or not isinstance(expiration, int):
            raise VolumeError(f"{where}.expirationSeconds: expected an integer, not {_kind(expiration)}")
        if not MIN_TOKEN_EXPIRATION <= expiration <= MAX_TOKEN_EXPIRATION:
            raise VolumeError(
                f"{where}.expirationSeconds: must be between {MIN_TOKEN_EXPIRATION} and "
                f"{MAX_TOKEN_EXPIRATION} seconds"
            )
        return {path: (utf8(self.token(pod, audience, expiration)), TOKEN_MODE)}

    def token(self, pod: Mapping[str, Any], audience: str, expiration: int) -> str:
        """The pod's token for this audience and lifetime: cached until due, as kubelet's token manager."""
        key = (audience, expiration)
        self._used.add(key)
        cached = self._tokens.get(key)
        now = self.clock()
        if cached is not None and now < cached.refresh_at:
            return cached.token
        spec = pod.get("spec")
        account = ""
        if isinstance(spec, Mapping):
            account = spec.get("serviceAccountName") or spec.get("serviceAccount") or ""
        try:
            token, expires = self.sources.token(
                namespace_of(pod),
                account if isinstance(account, str) and account else "default",
                pod_name=_metadata(pod, "name"),
                pod_uid=_metadata(pod, "uid"),
                audience=audience,
                expiration_seconds=expiration,
            )
        except EnvError as exc:
            if cached is not None and now < cached.expires_at:
                log.warning(
                    "pod %s: %s; the current token is kept until it expires", _metadata(pod, "name"), exc
                )
                return cached.token
            if bound_elsewhere(exc):
                if key not in self._refused_since:
                    log.info("pod %s: %s; trying again quietly for a while", _metadata(pod, "name"), exc)
                since = self._refused_since.setdefault(key, now)
                if now - since < BINDING_RACE_SECONDS:
                    raise TokenNotYetBound(str(exc), BINDING_RETRY_SECONDS) from exc
            raise
        self._refused_since.pop(key, None)
        expires_at = (expires if expires.tzinfo else expires.replace(tzinfo=UTC)).timestamp()
        lifetime = max(0.0, expires_at - now)
        refresh_at = now + min(TOKEN_REFRESH_FRACTION * lifetime, TOKEN_MAX_AGE_SECONDS)
        self._tokens[key] = _Token(token, refresh_at, expires_at)
        return token


def _metadata(pod: object, key: str) -> str:
    metadata = pod.get("metadata") if isinstance(pod, Mapping) else None
    value = metadata.get(key) if isinstance(metadata, Mapping) else None
    return value if isinstance(value, str) else ""
