"""ConfigMaps, Secrets and service account tokens a pod refers to, from the apiserver.

Everything is read with the node's identity. The Node authorizer lets a node read only the
ConfigMaps and Secrets of pods bound to it, and request tokens only for the service accounts of
those pods, bound to the pod. A missing object is ``None`` (the caller decides whether that is
an error), any other failure is an :class:`~wasmlet.pod.env_error.EnvError` worded like kubelet's.

The authorizer learns that a pod is bound to this node from its own watch, which may lag the
node's: for a moment after binding, a read is refused with "no relationship found between node".
The kubelet reports that as a failed mount and tries again later; we wait for the graph for up to
:data:`GRAPH_LAG_SECONDS` first, so the first event a user sees names the real cause.

Reads are cached for :data:`CACHE_TTL` seconds, as kubelet's TTL-based ConfigMap and Secret
managers do: every pod mounts ``kube-root-ca.crt`` through its service account volume, and a
thousand pods refreshing their volumes each minute then cost one GET, not a thousand.
"""

from __future__ import annotations

import base64
import binascii
import threading
import time
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from wasmlet.kube.client import ApiError, Client
from wasmlet.pod.env_error import EnvError
from wasmlet.pod.go_strings import utf8

CACHE_TTL = 10.0
GRAPH_LAG_SECONDS = 3.0
_GRAPH_LAG = "no relationship found between node"


def _graph_lags(exc: ApiError) -> bool:
    """The Node authorizer refused because its graph has not seen the pod's binding yet."""
    return exc.status == 403 and _GRAPH_LAG in str(exc)


class ApiSources:
    """:class:`wasmlet.pod.env.Sources` and :class:`wasmlet.pod.volumes.content.VolumeSources`
    from the apiserver."""

    def __init__(
        self,
        client: Client,
        *,
        ttl: float = CACHE_TTL,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        graph_lag: float = GRAPH_LAG_SECONDS,
    ) -> None:
        self.client = client
        self.ttl = ttl
        self.clock = clock
        self.sleep = sleep
        self.graph_lag = graph_lag
        self._cache: dict[tuple[str, str, str], tuple[float, Mapping[str, Any] | None]] = {}
        self._lock = threading.Lock()

    def _get(self, kind: str, namespace: str, name: str) -> Mapping[str, Any] | None:
        key = (kind, namespace, name)
        now = self.clock()
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None and now - cached[0] < self.ttl:
                return cached[1]
            # Drop what expired, so objects no pod asks for any more do not stay.
            self._cache = {k: v for k, v in self._cache.items() if now - v[0] < self.ttl}
        obj = self._fetch(kind, namespace, name)
        with self._lock:
            self._cache[key] = (now, obj)
        return obj

    def _patiently(self, call: Callable[[], Any]) -> Any:
        """``call()``, tried again while the Node authorizer's graph lags (see the module doc)."""
        waited, pause = 0.0, 0.1
        while True:
            try:
                return call()
            except ApiError as exc:
                if not _graph_lags(exc) or waited >= self.graph_lag:
                    raise
            self.sleep(pause)
            waited += pause
            pause = min(pause * 2, 1.0)

    def _fetch(self, kind: str, namespace: str, name: str) -> Mapping[str, Any] | None:
        path = f"/api/v1/namespaces/{namespace}/{kind}s/{name}"
        try:
            obj = self._patiently(lambda: self.client.get(path))
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise EnvError(f"failed to get {kind} {namespace}/{name}: {exc}") from exc
        except OSError as exc:  # TransportError too
            raise EnvError(f"failed to get {kind} {namespace}/{name}: {exc}") from exc
        return obj if isinstance(obj, dict) else {}

    @staticmethod
    def _map(obj: Mapping[str, Any], field: str) -> dict[str, Any]:
        data = obj.get(field)
        return data if isinstance(data, dict) else {}

    @staticmethod
    def _decoded(data: Mapping[str, Any], what: str) -> dict[str, bytes]:
        try:
            return {str(k): base64.b64decode(str(v), validate=True) for k, v in data.items()}
        except (binascii.Error, ValueError) as exc:
            raise EnvError(f"{what} is not base64: {exc}") from exc

    def configmap(self, namespace: str, name: str) -> Mapping[str, str] | None:
        obj = self._get("configmap", namespace, name)
        return None if obj is None else {str(k): str(v) for k, v in self._map(obj, "data").items()}

    def configmap_files(self, namespace: str, name: str) -> Mapping[str, bytes] | None:
        """The ConfigMap as a volume shows it: ``data`` (UTF-8) and ``binaryData`` (decoded)."""
        obj = self._get("configmap", namespace, name)
        if obj is None:
            return None
        files = {str(k): utf8(str(v)) for k, v in self._map(obj, "data").items()}
        binary = self._decoded(self._map(obj, "binaryData"), f"configmap {namespace}/{name}: binaryData")
        return {**files, **binary}

    def secret(self, namespace: str, name: str) -> Mapping[str, bytes] | None:
        obj = self._get("secret", namespace, name)
        if obj is None:
            return None
        return self._decoded(self._map(obj, "data"), f"secret {namespace}/{name}: data")

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
        """A token for ``service_account`` bound to the pod (TokenRequest), and when it expires.

        ``audience`` "" asks for the apiserver's own audiences. Raises :class:`EnvError`
        (``failed to fetch token: ...``, kubelet's words) without the token in it.
        """
        spec: dict[str, Any] = {
            "expirationSeconds": expiration_seconds,
            "boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": pod_name, "uid": pod_uid},
        }
        if audience:
            spec["audiences"] = [audience]
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec}
        path = f"/api/v1/namespaces/{namespace}/serviceaccounts/{service_account}/token"
        try:
            answer = self._patiently(lambda: self.client.post(path, body))
        except ApiError as exc:
            message = exc.body.get("message") if isinstance(exc.body, dict) else None
            raise EnvError(f"failed to fetch token: {message or exc}") from exc
        except OSError as exc:  # TransportError too
            raise EnvError(f"failed to fetch token: {exc}") from exc
        status = answer.get("status") if isinstance(answer, dict) else None
        token = status.get("token") if isinstance(status, dict) else None
        expires = status.get("expirationTimestamp") if isinstance(status, dict) else None
        if not isinstance(token, str) or not token or not isinstance(expires, str):
            raise EnvError("failed to fetch token: the TokenRequest answer has no status.token")
        try:
            expires_at = datetime.fromisoformat(expires)
        except ValueError as exc:
            raise EnvError(f"failed to fetch token: bad expirationTimestamp {expires!r}") from exc
        return token, expires_at
