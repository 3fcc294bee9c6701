"""WAGI's CGI translation (wasmlet.serve.cgi, pure): routes, annotations, variables, responses."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from wasmlet.serve.cgi import (
    ANNOTATIONS,
    SERVER_SOFTWARE,
    Route,
    WagiError,
    environment,
    handler_routes,
    response,
)
from wasmlet.serve.listeners import Request, Response

CLIENT = ("10.244.0.9", 51234)
SERVER = ("10.244.3.2", 3000)


def request(
    target: str = "/",
    headers: list[tuple[str, str]] | None = None,
    body: bytes = b"",
    method: str = "GET",
) -> Request:
    return Request(method, target, headers if headers is not None else [], body, CLIENT, SERVER)


def pod(annotations: dict[str, str] | None, *containers: str) -> dict[str, Any]:
    return {
        "metadata": {"name": "p", "namespace": "default", "annotations": annotations},
        "spec": {"containers": [{"name": name, "image": "x"} for name in containers]},
    }


# Route.matches


@pytest.mark.parametrize(
    ("pattern", "path", "matched"),
    [
        ("/hello", "/hello", True),
        ("/hello", "/hello/", False),
        ("/hello", "/hello/world", False),
        ("/hello", "/hell", False),
        ("/hello", "/", False),
        ("/", "/", True),
        ("/", "/x", False),
        ("/hello/...", "/hello", True),
        ("/hello/...", "/hello/", True),
        ("/hello/...", "/hello/world", True),
        ("/hello/...", "/hello/a/b/c", True),
        ("/hello/...", "/helloworld", False),
        ("/hello/...", "/hell", False),
        ("/hello/...", "/", False),
        ("/hello/...", "/other/hello", False),
        ("/a/b/...", "/a/b/c", True),
        ("/a/b/...", "/a/bc", False),
        ("/a/b/...", "/a", False),
        ("/...", "/", True),
        ("/...", "/anything/at/all", True),
        ("/...", "", True),
    ],
)
def test_route_matches_exact_paths_or_everything_under_a_wildcard(
    pattern: str, path: str, matched: bool
) -> None:
    assert Route(pattern).matches(path) is matched


def test_route_base_drops_the_wildcard() -> None:
    assert Route("/hello/...").base == "/hello"
    assert Route("/hello").base == "/hello"
    assert Route("/...").base == ""


# handler_routes


@pytest.mark.parametrize("key", ANNOTATIONS)
def test_either_annotation_declares_the_handlers(key: str) -> None:
    declared = {"api": {"route": "/api/..."}, "home": {"route": "/"}}
    routes = handler_routes(pod({key: json.dumps(declared)}, "api", "home", "sidecar"))
    assert routes == {"api": Route("/api/..."), "home": Route("/")}


def test_both_annotation_names_are_known() -> None:
    assert ANNOTATIONS == ("wasmlet.dev/wagi", "alpha.wagi.krustlet.dev/modules")


def test_wasmlets_annotation_wins_over_krustlets() -> None:
    annotations = {
        "alpha.wagi.krustlet.dev/modules": json.dumps({"b": {"route": "/b"}}),
        "wasmlet.dev/wagi": json.dumps({"a": {"route": "/a"}}),
    }
    assert handler_routes(pod(annotations, "a", "b")) == {"a": Route("/a")}


def test_a_handler_with_no_route_serves_everything() -> None:
    assert handler_routes(pod({"wasmlet.dev/wagi": '{"main": {}}'}, "main")) == {"main": Route("/...")}


@pytest.mark.parametrize(
    "p",
    [
        pod(None, "main"),
        pod({}, "main"),
        pod({"other": "{}"}, "main"),
        {"metadata": {}},
        {},
    ],
)
def test_a_pod_without_the_annotation_has_no_handlers(p: dict[str, Any]) -> None:
    assert handler_routes(p) == {}


def test_an_empty_object_declares_no_handlers() -> None:
    assert handler_routes(pod({"wasmlet.dev/wagi": "{}"}, "main")) == {}


@pytest.mark.parametrize("key", ANNOTATIONS)
@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("{not json", "{key}: not JSON: "),
        ("", "{key}: not JSON: "),
        ('["main"]', '{key}: must map container names to {{"route": "/path"}}'),
        ('"main"', '{key}: must map container names to {{"route": "/path"}}'),
        ("null", '{key}: must map container names to {{"route": "/path"}}'),
        ('{"ghost": {"route": "/"}}', "{key}: 'ghost' is not a container of the pod"),
        ('{"main": {"route": "hello"}}', '{key}: container main: "route" must be a path starting with /'),
        ('{"main": {"route": ""}}', '{key}: container main: "route" must be a path starting with /'),
        ('{"main": {"route": 7}}', '{key}: container main: "route" must be a path starting with /'),
        ('{"main": {"route": null}}', '{key}: container main: "route" must be a path starting with /'),
        ('{"main": "/hello"}', '{key}: container main: "route" must be a path starting with /'),
    ],
)
def test_a_malformed_annotation_is_an_error_naming_it(key: str, value: str, message: str) -> None:
    with pytest.raises(WagiError, match="^" + re.escape("annotation " + message.format(key=key))):
        handler_routes(pod({key: value}, "main"))


# environment


def test_the_cgi_variables_of_a_request_on_a_wildcard_route() -> None:
    req = request(
        "/hello/w%20orld/x?a=1&b=%20",
        [
            ("host", "example.com:8080"),
            ("user-agent", "curl/8"),
            ("content-type", "text/plain"),
            ("content-length", "5"),
            ("x-custom-thing", "yes"),
        ],
        b"12345",
        "POST",
    )
    assert environment(req, Route("/hello/..."), {}) == {
        "HTTP_HOST": "example.com:8080",
        "HTTP_USER_AGENT": "curl/8",
        "HTTP_X_CUSTOM_THING": "yes",
        "AUTH_TYPE": "",
        "CONTENT_LENGTH": "5",
        "CONTENT_TYPE": "text/plain",
        "GATEWAY_INTERFACE": "CGI/1.1",
        "PATH_INFO": "/w orld/x",
        "PATH_TRANSLATED": "/w orld/x",
        "QUERY_STRING": "a=1&b=%20",
        "REMOTE_ADDR": "10.244.0.9",
        "REMOTE_HOST": "10.244.0.9",
        "REMOTE_USER": "",
        "REQUEST_METHOD": "POST",
        "SCRIPT_NAME": "/hello",
        "SERVER_NAME": "10.244.3.2",
        "SERVER_PORT": "3000",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "SERVER_SOFTWARE": SERVER_SOFTWARE,
        "X_FULL_URL": "http://example.com:8080/hello/w%20orld/x?a=1&b=%20",
        "X_MATCHED_ROUTE": "/hello/...",
        "X_RAW_PATH_INFO": "/w%20orld/x",
    }


@pytest.mark.parametrize(
    ("pattern", "target", "script", "info", "raw"),
    [
        ("/hello/...", "/hello", "/hello", "", ""),
        ("/hello/...", "/hello/", "/hello", "/", "/"),
        ("/hello/...", "/hello/a%2Fb%C3%A9", "/hello", "/a/bé", "/a%2Fb%C3%A9"),
        ("/...", "/x/y?q", "", "/x/y", "/x/y"),
        ("/...", "/", "", "/", "/"),
        ("/hello", "/hello?x=1", "/hello", "", ""),
        ("/", "/", "/", "", ""),
    ],
)
def test_script_name_and_path_info_split_the_path_at_the_route(
    pattern: str, target: str, script: str, info: str, raw: str
) -> None:
    env = environment(request(target), Route(pattern), {})
    assert (env["SCRIPT_NAME"], env["PATH_INFO"], env["X_RAW_PATH_INFO"]) == (script, info, raw)
    assert env["PATH_TRANSLATED"] == info
    assert env["X_MATCHED_ROUTE"] == pattern


@pytest.mark.parametrize(
    ("target", "query"),
    [("/", ""), ("/?", ""), ("/?a=b", "a=b"), ("/?a=b?c=%3F", "a=b?c=%3F"), ("/p?x", "x")],
)
def test_the_query_string_is_passed_as_sent(target: str, query: str) -> None:
    assert environment(request(target), Route("/..."), {})["QUERY_STRING"] == query


def test_repeated_headers_are_joined_in_order() -> None:
    env = environment(
        request("/", [("accept", "text/html"), ("x-a", "1"), ("accept", "*/*"), ("accept", "a/b")]),
        Route("/..."),
        {},
    )
    assert env["HTTP_ACCEPT"] == "text/html, */*, a/b"
    assert env["HTTP_X_A"] == "1"


@pytest.mark.parametrize(
    "header",
    ["authorization", "proxy-authorization", "connection", "content-length", "content-type", "proxy"],
)
def test_credentials_and_the_servers_own_headers_are_not_passed(header: str) -> None:
    env = environment(request("/", [(header, "secret")], b"abc"), Route("/..."), {})
    variable = "HTTP_" + header.upper().replace("-", "_")
    assert variable not in env
    assert "secret" not in {value for key, value in env.items() if key != "CONTENT_TYPE"}
    assert env["CONTENT_LENGTH"] == "3"  # the body's length, never the header's


def test_without_a_host_header_the_full_url_names_the_listener() -> None:
    env = environment(request("/a?b"), Route("/..."), {})
    assert "HTTP_HOST" not in env
    assert env["X_FULL_URL"] == "http://10.244.3.2:3000/a?b"
    assert (env["CONTENT_TYPE"], env["CONTENT_LENGTH"]) == ("", "0")


def test_the_containers_environment_is_kept_under_the_cgi_variables() -> None:
    base = {
        "GREETING": "hi",
        "PATH_INFO": "/from-the-pod",
        "REQUEST_METHOD": "NONE",
        "SERVER_PORT": "1",
        "HTTP_X_TOKEN": "from-the-pod",
    }
    env = environment(request("/hello/x", [("x-token", "from-the-client")]), Route("/hello/..."), base)
    assert env["GREETING"] == "hi"
    assert env["PATH_INFO"] == "/x"
    assert env["REQUEST_METHOD"] == "GET"
    assert env["SERVER_PORT"] == "3000"
    assert env["HTTP_X_TOKEN"] == "from-the-client"
    assert base["PATH_INFO"] == "/from-the-pod"  # the container's mapping is not changed


# response


def test_content_type_only_is_200_with_the_body() -> None:
    assert response(b"Content-Type: text/plain\n\nhello\n") == Response(
        200, [("Content-Type", "text/plain")], b"hello\n"
    )


def test_location_only_is_a_302_redirect() -> None:
    assert response(b"Location: /elsewhere\r\n\r\n") == Response(302, [("Location", "/elsewhere")], b"")


def test_location_with_a_content_type_is_200() -> None:
    assert response(b"Location: /x\nContent-Type: text/html\n\n<a>").status == 200


def test_a_status_header_sets_the_status_and_is_not_sent() -> None:
    got = response(b"Status: 404 Not Found\r\nContent-Type: text/plain\r\nX-Extra:  spaced  \r\n\r\nnope")
    assert got == Response(404, [("Content-Type", "text/plain"), ("X-Extra", "spaced")], b"nope")
    assert response(b"status: 201\nlocation: /new\n\n").status == 201
    assert response(b"Location: /new\nStatus: 301 Moved\n\n").status == 301


def test_crlf_and_lf_separators_give_the_same_response() -> None:
    crlf = response(b"Content-Type: text/plain\r\nX-A: 1\r\n\r\nline one\r\nline two\r\n")
    lf = response(b"Content-Type: text/plain\nX-A: 1\n\nline one\r\nline two\r\n")
    assert (
        crlf
        == lf
        == Response(200, [("Content-Type", "text/plain"), ("X-A", "1")], b"line one\r\nline two\r\n")
    )


def test_the_body_is_everything_after_the_first_blank_line_bytes_and_all() -> None:
    body = b"\x00\xff\n\nnot a header: no\r\n\r\nmore"
    assert response(b"Content-Type: application/octet-stream\n\n" + body).body == body
    assert response(b"Content-Type: application/octet-stream\r\n\r\n" + body).body == body


def test_headers_with_no_blank_line_are_a_response_with_no_body() -> None:
    assert response(b"Content-Type: text/plain\n") == Response(200, [("Content-Type", "text/plain")], b"")


def test_header_values_are_latin_1() -> None:
    assert response(b"Content-Type: text/plain\nX-Name: caf\xe9\n\n").headers[1] == ("X-Name", "café")


def broken(got: Response, why: str) -> None:
    assert got.status == 500
    assert got.headers == [("content-type", "text/plain")]
    assert got.body == f"the WAGI handler's response is not CGI: {why}\n".encode()


@pytest.mark.parametrize(
    "stdout",
    [
        b"",
        b"\n\nhello",
        b"X-Thing: 1\n\nhello",
        b"Status: 200\n\nhello",
        b"hello world",  # no header at all, a body with no head
    ],
)
def test_neither_content_type_nor_location_is_500(stdout: bytes) -> None:
    if stdout == b"hello world":
        broken(response(stdout), "header line 'hello world' is not name: value")
    else:
        broken(response(stdout), "it wrote neither a Content-Type nor a Location header")


@pytest.mark.parametrize(
    ("stdout", "line"),
    [
        (b"Content-Type: text/plain\nno colon here\n\nbody", "no colon here"),
        (b"Content-Type: text/plain\n: no name\n\nbody", ": no name"),
        (b"Content-Type: text/plain\n   : blank name\n\nbody", "   : blank name"),
    ],
)
def test_a_malformed_header_line_is_500(stdout: bytes, line: str) -> None:
    broken(response(stdout), f"header line {line!r} is not name: value")


def test_a_long_malformed_header_line_is_cut_in_the_message() -> None:
    line = "x" * 200
    broken(
        response(f"Content-Type: text/plain\n{line}\n\n".encode()),
        f"header line {line[:80]!r} is not name: value",
    )


@pytest.mark.parametrize(
    ("status", "shown"),
    [
        ("OK", "OK"),
        ("", ""),
        ("99", "99"),
        ("600 Too Far", "600 Too Far"),
        ("-1", "-1"),
        ("2OO", "2OO"),
        ("\xb2\xb3\xb9", "\xb2\xb3\xb9"),  # digits to str.isdigit, not to int()
    ],
)
def test_a_bad_status_is_500(status: str, shown: str) -> None:
    got = response(f"Status: {status}\nContent-Type: text/plain\n\nbody".encode("latin-1"))
    broken(got, f"Status {shown!r} is not an HTTP status")


@pytest.mark.parametrize("code", [100, 200, 418, 599])
def test_every_http_status_code_is_taken(code: int) -> None:
    assert response(f"Status: {code}\nContent-Type: text/plain\n\n".encode()).status == code
