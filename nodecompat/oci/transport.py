"""HTTP to one registry host: an overall time budget, retries with backoff, and the auth handshake.

Hand-written on `requests` rather than on oras-py because oras-py has no referrers/discovery call,
no overall deadline, re-serializes manifests (wrong subject digests), and cannot set artifactType.
What this module owns:
- Budget: one deadline for a whole operation (the daemon passes the caller's remaining gRPC
  deadline); each request gets min(per-request timeout, remaining); an exhausted budget is
  DEADLINE_EXCEEDED, never a hang. The deadline holds whatever the peer does: every socket the
  operation uses is shut down when it passes (nodecompat/oci/deadline.py), so a registry trickling
  headers or body one byte per second cannot stretch it.
- Retries with exponential backoff on 429/5xx and connection errors while the budget lasts
  (Retry-After honoured when it fits).
- Auth: anonymous first; on a 401 challenge, `Bearer realm=..,service=..,scope=..` fetches a token
  (with basic credentials when we have them, or uses a given token directly, like oras-go's
  AccessToken), `Basic` sends credentials. Tokens are cached per host/scope until they expire.
- Budget, SessionPool and the challenge parser live in nodecompat/oci/sessions.py.
- Policy (nodecompat.oci.policy, docs/security.md): with a RegistryPolicy the host is checked before
  any connection, and so is every redirect target and token realm. Redirects are followed by hand
  (at most MAX_REDIRECTS, GET/HEAD only), only to hosts the policy allows. Credentials (basic,
  bearer, cached tokens) are sent only over HTTPS and only to the registry host they were set up for;
  a redirect to another host (a blob CDN) is followed without them, and a registry reached over
  plain HTTP that asks for authentication is refused instead of answered.
- Errors about an allowed registry say what failed (unreachable, TLS, HTTP status) but not the
  socket-level detail (refused vs reset vs silent), which stays in the daemon's debug log.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import urljoin, urlsplit

import requests
from opentelemetry import trace

from nodecompat.oci.auth import RegistryAuth
from nodecompat.oci.deadline import deadline_scope
from nodecompat.oci.errors import (
    DeadlineExceededError,
    PermissionDeniedError,
    RegistryError,
    UnauthenticatedError,
    UnavailableError,
)
from nodecompat.oci.policy import RegistryPolicy
from nodecompat.oci.sessions import Budget, SessionPool, parse_challenge

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
MAX_ATTEMPTS = 4
BACKOFF_BASE = 0.1
BACKOFF_CAP = 2.0
PER_REQUEST_TIMEOUT = 10.0
MAX_REDIRECTS = 5
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
log = logging.getLogger(__name__)

_tracer = trace.get_tracer("nodecompat.oci")


class Transport:
    """Requests to one registry host within one Budget."""

    def __init__(
        self,
        host: str,
        *,
        plain_http: bool,
        auth: RegistryAuth | None,
        ca_file: str | None,
        budget: Budget,
        pool: SessionPool | None = None,
        per_request_timeout: float = PER_REQUEST_TIMEOUT,
        policy: RegistryPolicy | None = None,
    ) -> None:
        """policy None = any host (the operator's own CLI); else PermissionDeniedError before connecting."""
        self.host = host
        self.scheme = "http" if plain_http else "https"
        self.policy = policy
        if policy is not None:
            policy.check(host, self.scheme)
        self.base = f"{self.scheme}://{host}"
        self.auth = auth or RegistryAuth()
        ca = ca_file or self.auth.ca_file
        self.verify: bool | str = ca if ca else True
        self.budget = budget
        self.pool = pool or SessionPool()
        self.per_request_timeout = per_request_timeout

    def _timeout(self, what: str) -> float:
        return min(self.per_request_timeout, self.budget.check(what))

    def _token_key(self, scope: str) -> tuple[str, ...]:
        return (self.host, self.auth.identity(), scope)

    def request(
        self,
        method: str,
        url: str,
        *,
        scope: str,
        headers: Mapping[str, str] | None = None,
        data: bytes | None = None,
        stream: bool = False,
        what: str = "",
    ) -> requests.Response:
        """Send one request (path or absolute URL), handling auth, retries and the budget.

        Returns the response for any status but 401 and exhausted retryable ones; the caller
        interprets 404 and friends.
        """
        if url.startswith("/"):
            url = self.base + url
        else:
            self._check_target(url, what)
        what = what or f"{method} {urlsplit(url).path}"
        auth_tried = False
        attempt = 0
        redirects = 0
        while True:
            target = urlsplit(url)
            hdrs = dict(headers or {})
            cached = self.pool.get_token(self._token_key(scope))
            if cached and self._may_send_credentials(url):
                hdrs["Authorization"] = cached
            session = self.pool.session(target.netloc.lower())
            timeout = self._timeout(what)
            try:
                with _tracer.start_as_current_span(f"registry {method}", kind=trace.SpanKind.CLIENT) as span:
                    span.set_attribute("http.request.method", method)
                    span.set_attribute("server.address", target.netloc)
                    span.set_attribute("url.path", target.path)
                    span.set_attribute("nodecompat.registry.what", what)
                    with deadline_scope(self.budget.sockets):
                        resp = session.request(method, url, headers=hdrs, data=data, stream=stream,
                                               timeout=timeout, verify=self.verify, allow_redirects=False)
                    span.set_attribute("http.response.status_code", resp.status_code)
            except requests.exceptions.SSLError as exc:
                log.debug("TLS to %s failed: %s", target.netloc, exc)
                raise UnavailableError(
                    f"TLS to {target.netloc} failed (certificate not trusted, or not a TLS port); "
                    f"pass a CA file (--ca-file) or use --plain-http for a plain-HTTP registry"
                ) from exc
            except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as exc:
                log.debug("registry %s: %s", target.netloc, exc)
                if self.budget.remaining() <= 0.001:
                    raise DeadlineExceededError(
                        f"registry {target.netloc} did not answer within the {self.budget.timeout:g}s "
                        f"budget ({what})"
                    ) from exc
                attempt += 1
                if attempt >= MAX_ATTEMPTS:
                    raise UnavailableError(
                        f"registry {target.netloc} is unreachable ({what}): {self._reason(exc, attempt)}"
                    ) from exc
                self._backoff(attempt, None, what)
                continue
            except requests.exceptions.RequestException as exc:  # invalid URL/header from the registry
                log.debug("request to %s failed: %s", target.netloc, exc)
                raise UnavailableError(
                    f"request to {target.netloc} failed ({what}): the registry's answer was not valid HTTP"
                ) from exc
            if resp.status_code in REDIRECT_STATUSES and resp.headers.get("Location"):
                location = resp.headers["Location"]
                resp.close()
                if method not in ("GET", "HEAD") or data is not None:
                    raise UnavailableError(f"registry {self.host} redirected a {method} ({what}); not followed")
                redirects += 1
                if redirects > MAX_REDIRECTS:
                    raise UnavailableError(
                        f"registry {self.host} redirected more than {MAX_REDIRECTS} times ({what})"
                    )
                url = urljoin(url, location)
                self._check_target(url, what, redirect=True)
                continue
            if resp.status_code == 401 and not self._may_send_credentials(url):
                resp.close()
                raise UnauthenticatedError(
                    f"registry {target.netloc} asks for authentication over plain HTTP ({what}); "
                    f"nodecompat never sends credentials or tokens over plain HTTP: serve the registry "
                    f"over HTTPS (--ca-file for a private CA)"
                    if target.scheme == "http" else
                    f"{target.netloc} (redirected to from {self.host}) asks for authentication ({what}); "
                    f"credentials for {self.host} are never sent to another host"
                )
            if resp.status_code == 401:
                challenge = resp.headers.get("WWW-Authenticate", "")
                resp.close()
                if auth_tried:
                    raise UnauthenticatedError(
                        f"registry {self.host} rejected the credentials ({what})"
                        + ("" if self._has_credentials() else
                           ": it needs credentials (--registry-username/--registry-password-stdin, "
                           "--registry-token-stdin or docker config)")
                    )
                auth_tried = True
                self._authenticate(challenge, scope)
                continue
            if (resp.status_code == 400 and self.base.startswith("http:")
                    and "Docker-Distribution-Api-Version" not in resp.headers):
                resp.close()
                raise UnavailableError(
                    f"{self.host} answered plain HTTP with HTTP 400 and no registry headers: it probably "
                    f"speaks HTTPS; drop --plain-http"
                )
            if resp.status_code == 403:
                resp.close()
                raise PermissionDeniedError(
                    f"registry {self.host} denied access ({what}); check the credentials' permissions"
                )
            if resp.status_code in RETRY_STATUSES:
                attempt += 1
                if attempt < MAX_ATTEMPTS:
                    retry_after = resp.headers.get("Retry-After")
                    resp.close()
                    self._backoff(attempt, retry_after, what)
                    continue
                code = resp.status_code
                resp.close()
                raise UnavailableError(
                    f"registry {self.host} kept answering HTTP {code} ({what}) after {attempt} attempts"
                )
            return resp

    def _reason(self, exc: BaseException, attempts: int) -> str:
        """Socket-level detail (`Connection refused`) for the operator's CLI; a server facing callers
        (it has a policy) says only that no HTTP answer came, so its errors are no port scanner."""
        if self.policy is None:
            return _short(exc)
        return f"no usable HTTP answer after {attempts} attempts"

    def _may_send_credentials(self, url: str) -> bool:
        """Credentials and tokens go only to the registry host they are for, and only over HTTPS."""
        target = urlsplit(url)
        return target.scheme == "https" and target.netloc.lower() == self.host.lower()

    def _check_target(self, url: str, what: str, redirect: bool = False) -> None:
        """A URL the registry sent us to (redirect, upload location, next page): http(s) only, and
        allowed by the policy when there is one (PERMISSION_DENIED before connecting)."""
        target = urlsplit(url)
        if target.scheme not in ("http", "https") or not target.netloc or "@" in target.netloc:
            raise UnavailableError(f"registry {self.host} sent a URL that is not http(s)://host/... ({what})")
        if self.policy is not None and (target.netloc.lower() != self.host.lower() or target.scheme != self.scheme):
            kind = "redirect target" if redirect else "URL"
            self.policy.check(target.netloc, target.scheme, f"{kind} of {self.host}:")

    def _has_credentials(self) -> bool:
        return bool(self.auth.token or self.auth.credential_for(self.host))

    def _backoff(self, attempt: int, retry_after: str | None, what: str) -> None:
        delay = min(BACKOFF_CAP, BACKOFF_BASE * (2 ** (attempt - 1)))
        if retry_after and retry_after.strip().isdigit():
            delay = max(delay, float(retry_after.strip()))
        left = self.budget.check(what)
        if delay >= left:
            raise DeadlineExceededError(
                f"registry operation would exceed its {self.budget.timeout:g}s budget while "
                f"retrying ({what})"
            )
        time.sleep(delay)

    def _authenticate(self, challenge: str, scope: str) -> None:
        scheme, params = parse_challenge(challenge)
        cred = self.auth.credential_for(self.host)
        key = self._token_key(scope)
        if scheme == "basic":
            if cred is None:
                raise UnauthenticatedError(
                    f"registry {self.host} needs credentials: pass --registry-username with "
                    f"--registry-password-stdin, or log in via docker config"
                )
            basic = requests.auth._basic_auth_str(cred.username, cred.password)
            self.pool.put_token(key, basic, 3600.0)
            return
        if scheme != "bearer":
            raise UnauthenticatedError(
                f"registry {self.host} asked for unsupported auth scheme {scheme or '(none)'!r}"
            )
        if self.auth.token:
            self.pool.put_token(key, f"Bearer {self.auth.token}", 3600.0)
            return
        realm = params.get("realm")
        if not realm or not realm.startswith(("http://", "https://")):
            raise UnauthenticatedError(f"registry {self.host} sent a Bearer challenge without a realm")
        realm_url = urlsplit(realm)
        if self.policy is not None:  # the realm is a host the registry names: checked like a redirect
            self.policy.check(realm_url.netloc, realm_url.scheme, f"token server of {self.host}:")
        if realm_url.scheme != "https" and cred is not None:
            raise UnauthenticatedError(
                f"registry {self.host} names a plain-HTTP token server ({realm_url.netloc}); "
                f"nodecompat never sends credentials over plain HTTP"
            )
        query: list[tuple[str, str]] = []
        if params.get("service"):
            query.append(("service", params["service"]))
        scopes = [scope]
        if params.get("scope") and params["scope"] != scope:
            scopes.append(params["scope"])
        query.extend(("scope", s) for s in scopes)
        basic_auth = (cred.username, cred.password) if cred else None
        try:
            with deadline_scope(self.budget.sockets):
                resp = self.pool.session(realm_url.netloc.lower()).get(
                    realm, params=query, auth=basic_auth, timeout=self._timeout("fetching a token"),
                    verify=self.verify, allow_redirects=False,
                )
        except requests.exceptions.RequestException as exc:
            log.debug("token server %s: %s", realm, exc)
            if self.budget.remaining() <= 0:
                raise DeadlineExceededError(f"token request to {realm} ran out of time") from exc
            raise UnavailableError(f"token server {realm_url.netloc} unreachable") from exc
        if resp.status_code in (401, 403):
            raise UnauthenticatedError(
                f"token server {realm} refused the credentials for {self.host} (HTTP {resp.status_code})"
            )
        if resp.status_code != 200:
            raise UnavailableError(f"token server {realm} answered HTTP {resp.status_code}")
        try:
            body: Any = resp.json()
        except ValueError as exc:
            raise UnavailableError(f"token server {realm} sent no JSON") from exc
        token = body.get("token") or body.get("access_token") if isinstance(body, dict) else None
        if not isinstance(token, str) or not token:
            raise UnavailableError(f"token server {realm} sent no token")
        ttl = body.get("expires_in", 60)
        self.pool.put_token(key, f"Bearer {token}", float(ttl) if isinstance(ttl, int | float) else 60.0)


_ERRNO_RE = re.compile(r"\[Errno -?\d+\] ([^'\"()\]]+)")


def _short(exc: BaseException) -> str:
    """The reason a person needs (`Connection refused`), without urllib3's wrapping
    (`HTTPConnectionPool(host=..., port=...): Max retries exceeded with url: ... (Caused by ...)`)."""
    text = str(exc)
    if m := _ERRNO_RE.search(text):
        return m.group(1).strip().rstrip(".")
    if "timed out" in text.lower():
        return "timed out"
    return text if len(text) < 300 else text[:300] + "..."


__all__ = ["Budget", "RegistryError", "SessionPool", "Transport", "parse_challenge"]
