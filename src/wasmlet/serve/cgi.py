"""WAGI's CGI over WASI preview 1, as deislabs' wagi and Krustlet's wagi provider define it: a
request becomes environment variables plus the body on stdin; the module answers on stdout with
CGI headers (``Content-Type``, ``Location``, ``Status``), a blank line and the body.

Routes are WAGI's: ``/hello`` matches that path only, ``/hello/...`` that path and everything
under it. Which containers of a pod are handlers, on which routes: the pod annotation
``wasmlet.dev/wagi`` or Krustlet's ``alpha.wagi.krustlet.dev/modules`` (the same JSON:
``{"container": {"route": "/hello/..."}}``).
"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from wasmlet.serve.listeners import Request, Response

ANNOTATIONS = ("wasmlet.dev/wagi", "alpha.wagi.krustlet.dev/modules")
KRUSTLET_DEFAULT_HOST = "alpha.wagi.krustlet.dev/default-host"  # host:port; wasmlet uses the port
WILDCARD = "/..."
SERVER_SOFTWARE = "WAGI/1 (wasmlet)"
# CGI (RFC 3875 4.1.18) passes no credentials to scripts, and hop-by-hop headers are the server's.
# A client's "Proxy" header would become HTTP_PROXY, which HTTP libraries take as their proxy
# (httpoxy, CVE-2016-5385): dropped, as CGI servers have done since.
_NOT_PASSED = {
    "authorization",
    "proxy-authorization",
    "connection",
    "content-length",
    "content-type",
    "proxy",
}


class WagiError(Exception):
    """The pod's WAGI annotation cannot be used; the message names the annotation and the cause."""


@dataclass(frozen=True)
class Route:
    pattern: str  # "/hello" or "/hello/..."

    @property
    def base(self) -> str:
        return self.pattern[: -len(WILDCARD)] if self.pattern.endswith(WILDCARD) else self.pattern

    def matches(self, path: str) -> bool:
        if not self.pattern.endswith(WILDCARD):
            return path == self.pattern
        base = self.base
        return path == base or path.startswith(base + "/") or base == ""


def handler_routes(pod: Mapping[str, Any]) -> dict[str, Route]:
    """The pod's WAGI handlers: container name -> route (WagiError on a malformed annotation)."""
    annotations = (pod.get("metadata") or {}).get("annotations") or {}
    found = [key for key in ANNOTATIONS if key in annotations]
    if not found:
        return {}
    key = found[0]
    try:
        declared = json.loads(annotations[key])
    except ValueError as exc:
        raise WagiError(f"annotation {key}: not JSON: {exc}") from None
    if not isinstance(declared, dict):
        raise WagiError(f'annotation {key}: must map container names to {{"route": "/path"}}')
    containers = {c.get("name") for c in (pod.get("spec") or {}).get("containers") or []}
    routes = {}
    for name, entry in declared.items():
        if name not in containers:
            raise WagiError(f"annotation {key}: {name!r} is not a container of the pod")
        route = entry.get("route", "/...") if isinstance(entry, dict) else None
        if not isinstance(route, str) or not route.startswith("/"):
            raise WagiError(f'annotation {key}: container {name}: "route" must be a path starting with /')
        routes[name] = Route(route)
    return routes


def environment(request: Request, route: Route, base_env: Mapping[str, str]) -> dict[str, str]:
    """The CGI variables of ``request`` over the container's own environment."""
    raw_path, _mark, query = request.target.partition("?")
    raw_info = raw_path[len(route.base) :] if route.pattern.endswith(WILDCARD) else ""
    info = urllib.parse.unquote(raw_info)
    headers: dict[str, str] = {}
    for name, value in request.headers:
        if name not in _NOT_PASSED:
            variable = "HTTP_" + name.upper().replace("-", "_")
            headers[variable] = f"{headers[variable]}, {value}" if variable in headers else value
    host = next(
        (value for name, value in request.headers if name == "host"),
        f"{request.server[0]}:{request.server[1]}",
    )
    return {
        **base_env,
        **headers,
        "AUTH_TYPE": "",
        "CONTENT_LENGTH": str(len(request.body)),
        "CONTENT_TYPE": next((value for name, value in request.headers if name == "content-type"), ""),
        "GATEWAY_INTERFACE": "CGI/1.1",
        "PATH_INFO": info,
        "PATH_TRANSLATED": info,
        "QUERY_STRING": query,
        "REMOTE_ADDR": request.client[0],
        "REMOTE_HOST": request.client[0],
        "REMOTE_USER": "",
        "REQUEST_METHOD": request.method,
        "SCRIPT_NAME": route.base,
        "SERVER_NAME": request.server[0],
        "SERVER_PORT": str(request.server[1]),
        "SERVER_PROTOCOL": "HTTP/1.1",
        "SERVER_SOFTWARE": SERVER_SOFTWARE,
        "X_FULL_URL": f"http://{host}{request.target}",
        "X_MATCHED_ROUTE": route.pattern,
        "X_RAW_PATH_INFO": raw_info,
    }


def response(stdout: bytes) -> Response:
    """The HTTP response a module wrote: CGI headers, a blank line, the body. A module that
    names neither a Content-Type nor a Location gets a 500, as in wagi."""
    head, body = _split(stdout)
    headers: list[tuple[str, str]] = []
    status = 0
    for line in head.splitlines():
        name, sep, value = line.partition(":")
        if not sep or not name.strip():
            return _broken(f"header line {line[:80]!r} is not name: value")
        name, value = name.strip(), value.strip()
        if name.lower() == "status":
            code = value.split(" ", 1)[0]
            if not (code.isascii() and code.isdigit()) or not 100 <= int(code) <= 599:
                return _broken(f"Status {value[:40]!r} is not an HTTP status")
            status = int(code)
        else:
            headers.append((name, value))
    names = {name.lower() for name, _value in headers}
    if not names & {"content-type", "location"}:
        return _broken("it wrote neither a Content-Type nor a Location header")
    if not status:
        status = 302 if "location" in names and "content-type" not in names else 200
    return Response(status, headers, body)


def _split(stdout: bytes) -> tuple[str, bytes]:
    """Head and body at the first blank line, CRLF or LF (a body may hold the other kind)."""
    found = [(at, len(sep)) for sep in (b"\r\n\r\n", b"\n\n") if (at := stdout.find(sep)) >= 0]
    if not found:
        return stdout.decode("latin-1"), b""
    at, size = min(found)
    return stdout[:at].decode("latin-1"), stdout[at + size :]


def _broken(why: str) -> Response:
    return Response(
        500, [("content-type", "text/plain")], f"the WAGI handler's response is not CGI: {why}\n".encode()
    )
