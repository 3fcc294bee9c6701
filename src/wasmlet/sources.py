"""ConfigMaps and Secrets a pod refers to, read from the apiserver with the node's identity.

The Node authorizer lets a node read only the ConfigMaps and Secrets of pods bound to it, so
every read is one GET; a missing object is ``None`` (the caller decides whether that is an
error), any other failure is an :class:`~wasmlet.podspec.EnvError` worded like kubelet's.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping

import httpx

from wasmlet.kubeapi import ApiError, Client
from wasmlet.podspec import EnvError


class ApiSources:
    """:class:`wasmlet.podspec.Sources` backed by the apiserver."""

    def __init__(self, client: Client) -> None:
        self.client = client

    def _get(self, kind: str, namespace: str, name: str) -> Mapping[str, object] | None:
        try:
            obj = self.client.get(f"/api/v1/namespaces/{namespace}/{kind}s/{name}")
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise EnvError(f"failed to get {kind} {namespace}/{name}: {exc}") from exc
        except (OSError, httpx.HTTPError) as exc:
            raise EnvError(f"failed to get {kind} {namespace}/{name}: {exc}") from exc
        data = obj.get("data") if isinstance(obj, dict) else None
        return data if isinstance(data, dict) else {}

    def configmap(self, namespace: str, name: str) -> Mapping[str, str] | None:
        data = self._get("configmap", namespace, name)
        return None if data is None else {str(k): str(v) for k, v in data.items()}

    def secret(self, namespace: str, name: str) -> Mapping[str, bytes] | None:
        data = self._get("secret", namespace, name)
        if data is None:
            return None
        try:
            return {str(k): base64.b64decode(str(v), validate=True) for k, v in data.items()}
        except (binascii.Error, ValueError) as exc:
            raise EnvError(f"secret {namespace}/{name}: data is not base64: {exc}") from exc
