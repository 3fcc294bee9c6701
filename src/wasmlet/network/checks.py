"""The network checks of probes, with the kubelet's outcomes and words (pkg/probe/http, tcp): an
HTTP GET succeeds on a status from 200 to 399 (redirects to another host are not followed), a TCP
probe when the connection opens. HTTPS probes do not verify the certificate, as kubelet's."""

from __future__ import annotations

import http.client
import socket
import ssl
from collections.abc import Sequence

USER_AGENT = "kube-probe/1.36"
BODY_LIMIT = 10 * 1024  # kubelet reads at most 10 KiB of a probe's response


def _dial_error(host: str, port: int, exc: OSError) -> str:
    """Go's net.Dial words for the usual failures."""
    if isinstance(exc, TimeoutError):
        return f"dial tcp {host}:{port}: i/o timeout"
    if isinstance(exc, ConnectionRefusedError):
        return f"dial tcp {host}:{port}: connect: connection refused"
    reason = (exc.strerror or str(exc)).lower()
    return f"dial tcp {host}:{port}: connect: {reason}"


def tcp_check(host: str, port: int, timeout: float) -> tuple[bool, str]:
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as exc:
        return False, _dial_error(host, port, exc)
    return True, ""


def http_check(
    scheme: str, host: str, port: int, path: str, *, headers: Sequence[tuple[str, str]], timeout: float
) -> tuple[bool, str]:
    url = f"{scheme.lower()}://{host}:{port}{path}"
    if scheme == "HTTPS":
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(
            host, port, timeout=timeout, context=context
        )
    else:
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
    sent = {"User-Agent": USER_AGENT, "Accept": "*/*", **dict(headers)}
    try:
        try:
            conn.connect()
        except OSError as exc:
            return False, f'Get "{url}": {_dial_error(host, port, exc)}'
        conn.request("GET", path, headers=sent)
        response = conn.getresponse()
        body = response.read(BODY_LIMIT)
    except TimeoutError:
        return (
            False,
            f'Get "{url}": context deadline exceeded (Client.Timeout exceeded while awaiting headers)',
        )
    except (OSError, http.client.HTTPException) as exc:
        return False, f'Get "{url}": {exc}'
    finally:
        conn.close()
    if 200 <= response.status < 400:
        return True, body.decode(errors="replace")
    return False, f"HTTP probe failed with statuscode: {response.status}"
