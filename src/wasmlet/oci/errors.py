"""The errors of image pulls and pushes, and the short causes they carry.

``reason`` is what a pod shows (``ErrImagePull``); ``cause`` the why, worded here from an HTTP
answer, a TLS failure or a refused connection. See docs/oci.md.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping


class RegistryError(Exception):
    """A registry operation failed.

    ``reason`` is the one-word status a pod shows (``ErrImagePull``); ``cause`` is the short
    "why" (``manifest unknown (HTTP 404)``); the message names the reference and the registry.
    """

    reason: str = "RegistryError"

    def __init__(
        self,
        message: str,
        *,
        reference: str = "",
        registry: str = "",
        cause: str = "",
        reason: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reference = reference
        self.registry = registry
        self.cause = cause or message
        if reason is not None:
            self.reason = reason


class PullError(RegistryError):
    """A module could not be pulled; the pod controller reports ``reason`` (ErrImagePull)."""

    reason = "ErrImagePull"


class NotWasmError(PullError):
    """The image exists but holds no wasm module (an ordinary container image, say)."""


class DigestMismatchError(PullError):
    """Content did not hash to the digest that named it: never stored, never run."""


class ImageNeverPullError(PullError):
    """``imagePullPolicy: Never`` and the module is not in the store."""

    reason = "ErrImageNeverPull"


class InvalidReferenceError(PullError, ValueError):
    """The image reference does not parse (a ``ValueError`` too)."""

    reason = "InvalidImageName"


class PushError(RegistryError):
    reason = "ErrImagePush"


class Failure(Exception):
    """Internal to the package: a request failed; ``cause`` becomes the cause of the public error.

    ``plain_http``: the registry itself answered the TLS handshake with something that is not
    TLS, as a plain-HTTP server does; the client adds the hint naming the caller's option.
    ``refused``: the registry's host refused the connection.
    """

    def __init__(self, cause: str, *, plain_http: bool = False, refused: bool = False) -> None:
        super().__init__(cause)
        self.cause = cause
        self.plain_http = plain_http
        self.refused = refused


# --- the causes errors carry ------------------------------------------------------------------


def http_error_cause(status: int, body: bytes, kind: str = "manifest") -> str:
    """The cause text for an HTTP error, from the registry's error JSON when there is one.

    ``{"errors": [{"code": "MANIFEST_UNKNOWN", "message": "manifest unknown"}]}`` ->
    ``manifest unknown (HTTP 404)``; ``UNAUTHORIZED``/``authentication required`` ->
    ``unauthorized: authentication required (HTTP 401)``.
    """
    parts: list[str] = []
    try:
        errors = json.loads(body).get("errors") if body else None
    except (ValueError, AttributeError):
        errors = None
    for error in errors if isinstance(errors, list) else []:
        if not isinstance(error, Mapping):
            continue
        code = str(error.get("code") or "").lower().replace("_", " ")
        message = str(error.get("message") or "")
        if code and message and message.lower() != code:
            parts.append(f"{code}: {message}")
        elif code or message:
            parts.append(code or message)
    if not parts:
        defaults = {
            401: "unauthorized: authentication required",
            403: "denied: requested access to the resource is denied",
            404: f"{kind} unknown",
            429: "toomanyrequests: rate limit exceeded",
        }
        parts.append(defaults.get(status, "registry error"))
    return f"{'; '.join(parts)} (HTTP {status})"


# OpenSSL's words when the answer to a ClientHello is not a TLS record ("HTTP/1.1 400 ..." from a
# plain-HTTP server): WRONG_VERSION_NUMBER (1.1, 3.0), RECORD_LAYER_FAILURE (3.2+), UNKNOWN_PROTOCOL.
_NOT_TLS_RE = re.compile(r"wrong version number|record layer failure|unknown protocol", re.IGNORECASE)


def not_tls(exc: Exception) -> bool:
    """Whether a TLS failure says the server does not speak TLS (a plain-HTTP server, likely).

    Never true for a certificate that fails verification: that is a TLS server.
    """
    text = str(exc)
    return bool(_NOT_TLS_RE.search(text)) and "certificate verify failed" not in text


def plain_http_hint(verb: str, reference: str, registry: str, insecure_hint: str) -> str:
    """``to pull <ref> over plain HTTP, list <registry> in --insecure-registries`` (the node's hint)."""
    return f"to {verb} {reference} over plain HTTP, {insecure_hint.replace('{registry}', registry)}"


def tls_cause(exc: Exception, host: str) -> str:
    text = str(exc)
    match = re.search(r"certificate verify failed: ([^('\"\]]+)", text)
    if match:
        detail = match.group(1).strip().rstrip(" .,")
        if "mismatch" in detail.lower():
            return f"x509: certificate is not valid for {host} ({detail})"
        return (
            f"x509: certificate signed by unknown authority ({detail}); "
            f"give wasmlet the CA that signed {host}'s certificate"
        )
    ssl_reason = re.search(r"\[SSL: [A-Z0-9_]+\] [^('\"]+", text)
    detail = ssl_reason.group(0).strip() if ssl_reason else text
    if not_tls(exc):
        return f"tls: handshake with {host} failed ({detail}): it does not speak TLS (plain HTTP?)"
    return f"tls: handshake with {host} failed ({detail})"


def connection_cause(exc: Exception, host: str) -> str:
    text = str(exc)
    if "refused" in text.lower():
        return f"dial tcp {host}: connect: connection refused"
    if re.search(r"name or service not known|nodename nor servname|name resolution|getaddrinfo", text, re.I):
        return f"dial tcp {host}: lookup: no such host"
    return f"connection to {host} failed: {text}"
