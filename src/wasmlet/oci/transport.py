"""The registry transport: HTTP without retries, with deadlines and Basic or Docker token auth.

The only module that imports oras-py: :class:`RegistryTransport` is all of wasmlet's use of it,
through :class:`_OrasRegistry`, whose one network entry point is replaced by :class:`_Transport`
(why: docs/oci.md, "oras-py, and its pitfalls"). One file (about 410 lines), so that the seam
into oras-py and the HTTP behaviour replacing it (auth, deadlines, the loopback fallback) stay
together and nothing else imports oras.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

from wasmlet.oci import limits
from wasmlet.oci.credentials import NoNetrcAuth, RegistryAuth
from wasmlet.oci.errors import Failure, connection_cause, http_error_cause, not_tls, tls_cause
from wasmlet.oci.manifest import Descriptor

try:
    import oras.container
    import oras.provider
    import requests
except ImportError as _missing:  # pragma: no cover - the Ansible modules report it with missing_required_lib
    ORAS_IMPORT_ERROR: ImportError | None = _missing
else:
    ORAS_IMPORT_ERROR = None

log = logging.getLogger(__name__)

_SCOPE_RE = re.compile(r"^/v2/(?P<name>.+?)/(?:manifests|blobs|tags)/")
_CHALLENGE_PARAM_RE = re.compile(r'(\w+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]*))')
_READ_ACTIONS: Final = {"GET": "pull", "HEAD": "pull"}


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """``Bearer realm="https://auth",service="reg",scope="repository:a:pull"`` -> scheme, params."""
    scheme, _sep, rest = header.strip().partition(" ")
    params = {
        key.lower(): quoted.replace('\\"', '"') if quoted or not bare else bare
        for key, quoted, bare in _CHALLENGE_PARAM_RE.findall(rest)
    }
    return scheme.lower(), params


def request_scope(url: str, method: str) -> str:
    """The token scope a request needs: ``repository:<name>:pull`` or ``...:pull,push``."""
    match = _SCOPE_RE.match(urlsplit(url).path)
    if not match:
        return ""
    return f"repository:{match['name']}:{_READ_ACTIONS.get(method.upper(), 'pull,push')}"


class _Transport:
    """Requests to one registry: timeouts, no retries, Basic and Docker token authentication.

    oras-py's auth backends are not used (docs/oci.md, pitfalls 2 and 3): this answers a
    ``Basic`` challenge with the caller's credentials (or fails at once without any), and a
    ``Bearer`` challenge by fetching a token from the realm, cached per scope. A refused answer
    fails the request with ``unauthorized`` -- one round trip, never a retry loop.

    ``plain_http_fallback`` (a loopback registry not listed as insecure): a request to the
    registry's host whose TLS handshake is answered in something other than TLS (or, without a
    port, whose port 443 refuses the connection) is sent again over plain HTTP, and so is every
    later one (``plain_http``): docs/oci.md, "Plain HTTP".
    """

    def __init__(
        self,
        session: requests.Session,
        *,
        registry: str,
        host: str,
        verify: bool | str,
        auth: RegistryAuth,
        timeout: float,
        plain_http_fallback: bool = False,
    ) -> None:
        self.session = session
        self.registry = registry
        self.host = host
        self.verify = verify
        self.auth = auth
        self.timeout = timeout
        self.plain_http_fallback = plain_http_fallback
        self.plain_http = False  # the registry answered plain HTTP: every request goes so now
        self.scheme: str | None = None  # "basic" or "bearer", learned from the first challenge
        self.tokens: dict[str, str] = {}

    def send(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        data: Any = None,
        json_body: Any = None,
        params: Any = None,
        stream: bool = False,
    ) -> requests.Response:
        """One HTTP exchange; transport failures become :class:`Failure` with a clear cause.

        Within a pull's deadline (:func:`limits.current`), the timeout is what is left of it,
        and a connection shut down at the deadline fails with the deadline as its cause.
        """
        deadline = limits.current()
        if deadline is not None:
            deadline.check()
        kwargs: dict[str, Any] = {
            "headers": dict(headers or {}),
            "data": data,
            "json": json_body,
            "params": params,
            "stream": stream,
            "verify": self.verify,
        }
        if self.plain_http:
            url = self._over_plain_http(url)
        try:
            try:
                response = self._request(method, url, deadline, **kwargs)
            except Failure as failure:
                if not (self.plain_http_fallback and self._plain_http_may_answer(url, failure)):
                    raise
                # HTTPS failed before anything of the request was sent: it can go again as is.
                self.plain_http = True
                log.info(
                    "registry %s is on loopback, HTTPS failed (%s): plain HTTP", self.host, failure.cause
                )
                url = self._over_plain_http(url)
                try:
                    response = self._request(method, url, deadline, **kwargs)
                except Failure as again:
                    cause = f"{again.cause} (over plain HTTP, after HTTPS: {failure.cause})"
                    raise Failure(cause) from again
        except Failure:
            if deadline is not None:
                deadline.check()  # a connection shut down at the deadline: say so
            raise
        if deadline is not None and deadline.expired:  # headers cut short by the shutdown
            response.close()
            deadline.check()
        log.debug("%s %s -> %s", method, url, response.status_code)
        return response

    def _plain_http_may_answer(self, url: str, failure: Failure) -> bool:
        """The registry answered HTTPS in plain HTTP; or, named without a port, refused HTTPS on
        443 (plain HTTP is on another port, 80, then), as containerd's fallback."""
        return failure.plain_http or (failure.refused and urlsplit(url).port is None)

    def _over_plain_http(self, url: str) -> str:
        """``url`` with ``http://`` when it is an ``https://`` URL of the registry's own host."""
        parts = urlsplit(url)
        if parts.scheme != "https" or parts.netloc.lower() != self.host:
            return url
        return urlunsplit(parts._replace(scheme="http"))

    def _request(
        self, method: str, url: str, deadline: limits.PullDeadline | None, **kwargs: Any
    ) -> requests.Response:
        netloc = urlsplit(url).netloc
        kwargs["timeout"] = self.timeout if deadline is None else deadline.timeout(self.timeout)
        try:
            return self.session.request(method, url, **kwargs)
        except requests.exceptions.SSLError as exc:
            # Only the registry's own answer counts: a token service elsewhere is not the registry.
            plain_http = netloc.lower() == self.host and not_tls(exc)
            raise Failure(tls_cause(exc, netloc), plain_http=plain_http) from exc
        except requests.exceptions.Timeout as exc:
            raise Failure(f"timeout after {kwargs['timeout']:g}s talking to {netloc}") from exc
        except requests.exceptions.ConnectionError as exc:
            cause = connection_cause(exc, netloc)
            refused = netloc.lower() == self.host and cause.endswith("connection refused")
            raise Failure(cause, refused=refused) from exc
        except requests.exceptions.RequestException as exc:
            raise Failure(f"request to {netloc} failed: {exc}") from exc
        except OSError as exc:  # requests: "Could not find a suitable TLS CA certificate bundle"
            raise Failure(f"tls: cannot use the CA file {self.verify!r} for {netloc}: {exc}") from exc

    def request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        data: Any = None,
        json_body: Any = None,
        stream: bool = False,
    ) -> requests.Response:
        """A registry API request, authenticated on demand. Only a refused 401 raises."""
        scope = request_scope(url, method)
        sent_headers = dict(headers or {})
        authorization = self._cached_authorization(scope)
        if authorization:
            sent_headers["Authorization"] = authorization
        response = self.send(method, url, headers=sent_headers, data=data, json_body=json_body, stream=stream)
        if response.status_code != 401:
            return response
        challenge = response.headers.get("WWW-Authenticate", "")
        refused = http_error_cause(401, limits.read_prefix(response))
        response.close()
        if not challenge:
            raise Failure(f"{refused}; the registry sent no WWW-Authenticate challenge")
        sent_headers["Authorization"] = self._answer(challenge, scope, authorization)
        response = self.send(method, url, headers=sent_headers, data=data, json_body=json_body, stream=stream)
        if response.status_code == 401:
            refused = http_error_cause(401, limits.read_prefix(response))
            response.close()
            raise Failure(f"{refused}; the registry refused {self._who()}")
        return response

    def _who(self) -> str:
        if self.auth.username:
            return f"the credentials of user {self.auth.username!r}"
        if self.auth.token or self.auth.identity_token:
            return "the configured registry token"
        return "anonymous access (no credentials were given: add an imagePullSecret for this registry)"

    def _cached_authorization(self, scope: str) -> str | None:
        if self.auth.token:
            return f"Bearer {self.auth.token}"
        if self.scheme == "basic":
            return self.auth.basic_header()
        if self.scheme == "bearer":
            token = self.tokens.get(scope)
            if token is None and scope.endswith(":pull"):
                token = self.tokens.get(f"{scope},push")
            return f"Bearer {token}" if token else None
        return None

    def _answer(self, challenge: str, scope: str, sent: str | None) -> str:
        scheme, params = parse_challenge(challenge)
        if scheme == "basic":
            basic = self.auth.basic_header()
            if basic is None:
                raise Failure(
                    "unauthorized: authentication required (the registry asks for basic auth and no "
                    f"credentials were given: add an imagePullSecret for {self.registry})"
                )
            if sent == basic:
                raise Failure(f"unauthorized: the registry refused {self._who()}")
            self.scheme = "basic"
            return basic
        if scheme == "bearer":
            if self.auth.token:
                raise Failure(f"unauthorized: the registry refused {self._who()}")
            self.tokens.pop(scope, None)  # a refused (expired) token is never sent again
            token = self._fetch_token(params, scope)
            self.scheme = "bearer"
            self.tokens[scope] = token
            return f"Bearer {token}"
        raise Failure(f"unauthorized: unsupported authentication scheme {scheme or challenge!r}")

    def _fetch_token(self, challenge: Mapping[str, str], scope: str) -> str:
        """Docker token authentication (distribution docs/spec/auth/token.md, oauth.md)."""
        realm = challenge.get("realm", "")
        parts = urlsplit(realm)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise Failure(
                f"unauthorized: the registry's Bearer challenge has no usable realm URL ({realm!r})"
            )
        scopes = (challenge.get("scope") or scope).split()
        service = challenge.get("service")
        headers = {"Accept": "application/json", "User-Agent": "wasmlet"}
        # Credentials go to the token service over HTTPS, or to the registry's own host.
        trusted = parts.scheme == "https" or parts.netloc == self.host
        if self.auth.identity_token and trusted:
            form = {"grant_type": "refresh_token", "refresh_token": self.auth.identity_token}
            form |= {"client_id": "wasmlet", "scope": " ".join(scopes)}
            if service:
                form["service"] = service
            response = self.send("POST", realm, headers=headers, data=form, stream=True)
        else:
            basic = self.auth.basic_header() if trusted else None
            if basic:
                headers["Authorization"] = basic
            query = [("service", service)] if service else []
            query += [("scope", item) for item in scopes]
            response = self.send("GET", realm, headers=headers, params=query, stream=True)
        with response:
            if response.status_code in (401, 403):
                raise Failure(
                    f"unauthorized: token service {parts.netloc} refused {self._who()} "
                    f"(HTTP {response.status_code})"
                )
            if response.status_code != 200:
                raise Failure(f"token service {realm} answered HTTP {response.status_code}")
            try:
                body = json.loads(
                    b"".join(
                        limits.read_bounded(
                            response, limits.MAX_MANIFEST_BYTES, "the token service's answer", "the limit"
                        )
                    )
                )
            except limits.TRANSPORT_ERRORS as exc:
                raise Failure(f"token service {realm}: reading the answer failed: {exc}") from exc
            except ValueError as exc:
                raise Failure(f"token service {realm} answered with invalid JSON") from exc
        token = (body.get("token") or body.get("access_token")) if isinstance(body, dict) else None
        if not isinstance(token, str) or not token:
            raise Failure(f"token service {realm} answered without a token")
        return token


if ORAS_IMPORT_ERROR is None:

    class _OrasRegistry(oras.provider.Registry):  # type: ignore[misc]
        """oras-py's Registry with ``do_request`` -- its one network entry point -- replaced by a
        :class:`_Transport` call: no ``@retry`` (pitfall 1), our auth (pitfalls 2 and 3)."""

        def __init__(self, transport_options: Mapping[str, Any], *, insecure: bool) -> None:
            verify = transport_options["verify"]
            super().__init__(hostname=transport_options["host"], insecure=insecure, tls_verify=verify)
            self.session.auth = NoNetrcAuth()
            limits.watch_connections(self.session)
            self.transport = _Transport(self.session, **transport_options)

        def do_request(  # noqa: PLR0917 - oras' signature, positional callers included
            self,
            url: str,
            method: str = "GET",
            data: Any = None,
            headers: dict[str, str] | None = None,
            json: Any = None,
            stream: bool = False,
        ) -> requests.Response:
            return self.transport.request(
                method, url, headers=headers, data=data, json_body=json, stream=stream
            )


class RegistryTransport:
    """One registry's API through oras-py, for :class:`~wasmlet.oci.client.RegistryClient`.

    oras builds the URLs and runs blob GET, blob existence and monolithic blob upload; every
    request, manifests' included, goes through :class:`_Transport`.
    """

    def __init__(
        self,
        *,
        registry: str,
        host: str,
        verify: bool | str,
        auth: RegistryAuth,
        timeout: float,
        insecure: bool,
        plain_http_fallback: bool = False,
    ) -> None:
        self.host = host
        transport_options: dict[str, Any] = {"registry": registry, "host": host, "verify": verify}
        transport_options |= {"auth": auth, "timeout": timeout, "plain_http_fallback": plain_http_fallback}
        self._oras = _OrasRegistry(transport_options, insecure=insecure)

    @property
    def session(self) -> requests.Session:
        session: requests.Session = self._oras.session
        return session

    def _container(self, repository: str) -> Any:
        # Built field by field: oras' own parser mistakes "localhost/x" or a repository whose
        # first component has a dot for a registry.
        container = oras.container.Container("placeholder", registry=self.host)
        namespace, _sep, name = repository.rpartition("/")
        container.namespace, container.repository = namespace or None, name
        return container

    def _url(self, path: str) -> str:
        return f"{self._oras.prefix}://{path}"

    def manifest_url(self, repository: str, target: str) -> str:
        return self._url(self._container(repository).manifest_url(target))

    def request(
        self,
        url: str,
        method: str,
        *,
        headers: dict[str, str] | None = None,
        data: Any = None,
        stream: bool = False,
    ) -> requests.Response:
        """One request through oras' ``do_request`` (manifests: oras has no raw-bytes API for them)."""
        return self._oras.do_request(url, method, data=data, headers=headers, stream=stream)

    def get_blob(self, repository: str, digest: str) -> requests.Response:
        """The blob ``digest``, streamed (oras ``get_blob``)."""
        response: requests.Response = self._oras.get_blob(self._container(repository), digest, stream=True)
        return response

    def blob_exists(self, repository: str, digest: str) -> bool:
        exists: bool = self._oras.blob_exists({"digest": digest}, self._container(repository))
        return exists

    def put_upload(self, path: Path, repository: str, descriptor: Descriptor) -> requests.Response:
        """Upload the blob in ``path`` in one request (oras ``put_upload``)."""
        try:
            response: requests.Response = self._oras.put_upload(
                str(path), self._container(repository), descriptor.to_json()
            )
        except ValueError as exc:  # oras: "Issue retrieving session url: ..."
            raise Failure(f"blob upload of {descriptor.digest} was refused: {exc}") from exc
        return response
