"""A small Kubernetes REST client over httpx (TLS, client certificates, bearer tokens)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from wasmlet.kubeconfig import Credentials, load


class ApiError(Exception):
    """The apiserver answered with an error status."""

    def __init__(self, method: str, path: str, status: int, body: Any) -> None:
        message = body.get("message") if isinstance(body, dict) else str(body)
        super().__init__(f"{method} {path}: {status} {message}")
        self.status = status
        self.body = body
        self.reason = body.get("reason") if isinstance(body, dict) else None


class Client:
    def __init__(self, creds: Credentials, timeout: float = 30.0, source: Path | None = None) -> None:
        self.timeout = timeout
        self.source = source
        self._http = self._connect(creds)

    def _connect(self, creds: Credentials) -> httpx.Client:
        headers = {"Accept": "application/json"}
        if creds.token:
            headers["Authorization"] = f"Bearer {creds.token}"
        self.creds = creds
        return httpx.Client(
            base_url=creds.server, verify=creds.ssl_context(), headers=headers, timeout=self.timeout
        )

    def reload(self) -> None:
        """Use the credentials now in the kubeconfig it was made from (after a renewal).

        Requests and watches already running finish on the old connection."""
        if self.source is not None:
            self._http = self._connect(load(self.source))

    @classmethod
    def from_kubeconfig(cls, path: Path, timeout: float = 30.0) -> Client:
        return cls(load(path), timeout, source=path)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        params: dict[str, str] | None = None,
        content_type: str = "application/json",
    ) -> Any:
        headers = {"Content-Type": content_type} if body is not None else {}
        resp = self._http.request(method, path, json=body, params=params, headers=headers)
        try:
            data = resp.json() if resp.content else None
        except ValueError:
            data = resp.text
        if resp.status_code >= 400:
            raise ApiError(method, path, resp.status_code, data)
        return data

    def get(self, path: str, params: dict[str, str] | None = None) -> Any:
        return self.request("GET", path, params=params)

    def post(self, path: str, body: Any) -> Any:
        return self.request("POST", path, body)

    def put(self, path: str, body: Any) -> Any:
        return self.request("PUT", path, body)

    def patch(self, path: str, body: Any, patch_type: str = "merge") -> Any:
        return self.request("PATCH", path, body, content_type=f"application/{patch_type}-patch+json")

    def delete(self, path: str) -> Any:
        return self.request("DELETE", path)

    def watch(
        self, path: str, params: dict[str, str], resource_version: str, timeout_seconds: int = 300
    ) -> Iterator[dict[str, Any]]:
        """Stream watch events (``{"type": ..., "object": ...}``) from ``resource_version``.

        Ends when the server closes the watch (after ``timeout_seconds``); raises
        :class:`ApiError` with status 410 when the version is too old (relist, then resume).
        """
        query = {
            **params,
            "watch": "true",
            "resourceVersion": resource_version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(timeout_seconds),
        }
        timeout = httpx.Timeout(10.0, read=timeout_seconds + 30.0)
        with self._http.stream("GET", path, params=query, timeout=timeout) as resp:
            if resp.status_code >= 400:
                resp.read()
                raise ApiError("WATCH", path, resp.status_code, resp.json() if resp.content else None)
            for line in resp.iter_lines():
                if not line:
                    continue
                event: dict[str, Any] = json.loads(line)
                if event.get("type") == "ERROR":
                    status = event.get("object") or {}
                    raise ApiError("WATCH", path, int(status.get("code", 500)), status)
                yield event
