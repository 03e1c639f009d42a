"""HTTP hardening around both Gradio apps (one ASGI middleware, outermost).

- **Cross-origin writes refused.** A state-changing request (anything but GET/HEAD, and a
  CORS preflight) whose `Origin` — or, without one, `Referer` — is not this server (scheme,
  host and port of the request itself, or of the configured base URL) gets 403 before
  Gradio sees it. The scheme counts: `http://host` is another origin than `https://host`
  (a page served over plain HTTP, e.g. by an on-path attacker, must not write to the HTTPS
  studio). This is
  what stops a page on a sibling subdomain (same *site*, so SameSite cookies are sent)
  from driving a logged-in admin. Requests with neither header (curl, scripts) pass: they
  carry no browser's cookies unless their author has them anyway.
- **No CORS.** Every `Access-Control-*` response header is dropped: Gradio echoes any
  `Origin` with `allow-credentials` when the Host is not localhost.
- **Cookies** Gradio sets (its login cookies are `SameSite=None`) are rewritten to
  `SameSite=Lax`, and get `Secure` when served over HTTPS (request scheme or an https
  base URL behind a TLS proxy).
- **Headers on every response**: `CSP_POLICY` (frame-ancestors 'none', images only from
  self/data/blob, nothing loaded from elsewhere — Gradio's pages need inline scripts and
  styles), `X-Content-Type-Options: nosniff`, `Referrer-Policy: no-referrer`,
  `X-Frame-Options: DENY`.
- **No API descriptions**: Gradio's `openapi.json` and `info` routes answer 404 on both
  apps (the outer FastAPI has its docs off).
- **Bad `fn_index`** in an event post → 422 in words, not a 500 from a KeyError.
- The client address of each request is put in `CLIENT_ADDRESS` (a contextvar) so the
  admin login's lockout (`studio.web.auth.AdminAuth`, called by Gradio with only user and
  password) can count failures per address and user name.
"""
from __future__ import annotations

import json
import re
import urllib.parse
from collections.abc import Callable

from studio.web.auth import CLIENT_ADDRESS

# Gradio's pages need inline scripts and styles, and 'unsafe-eval' for the `js=` snippets
# of events (compiled with `new Function` in the browser; without it the pages do not load).
# What matters here is where things may come from: only this server.
CSP_POLICY = ("default-src 'self'; script-src 'self' 'unsafe-inline' 'unsafe-eval'; "
              "style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; "
              "font-src 'self' data:; media-src 'self' data: blob:; connect-src 'self'; "
              "worker-src 'self' blob:; object-src 'none'; base-uri 'self'; "
              "form-action 'self'; frame-ancestors 'none'")
SECURITY_HEADERS = [
    (b"content-security-policy", CSP_POLICY.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
]
SAFE_METHODS = {"GET", "HEAD"}
# Gradio's self-descriptions: not needed by the pages, useful to an attacker.
API_INFO_ROUTE = re.compile(r"^(?:/admin)?(?:/gradio_api)?/+(?:openapi\.json|info|docs|redoc)/?$")
# Event posts that name a function by index.
EVENT_ROUTE = re.compile(r"/(?:queue/join|run/predict|api/predict)/?$")
MAX_EVENT_BODY = 1024 * 1024


def _origin(url: str) -> tuple[str, str] | None:
    """(scheme, host[:port] without the scheme's default port) of an http(s) URL, else None."""
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.netloc:
        return None
    host = (parts.hostname or "").lower()
    if ":" in host:
        host = f"[{host}]"  # IPv6, as a Host header writes it
    default = {"http": 80, "https": 443}[scheme]
    return scheme, host if port in (None, default) else f"{host}:{port}"


def _host_origin(host: str, scheme: str) -> tuple[str, str]:
    """The origin a request with this Host header and scheme was sent to."""
    host = host.strip().lower()
    default = {"http": ":80", "https": ":443"}.get(scheme, "")
    if default and host.endswith(default):
        host = host[: -len(default)]
    return scheme, host


class WebSecurity:
    """The ASGI middleware described in the module docstring."""

    def __init__(self, app, *, base_url: str | None = None,
                 fn_ids: Callable[[bool], set[int]] | None = None):
        self.app = app
        self.base_origin = _origin(base_url) if base_url else None
        self.base_https = bool(base_url and base_url.lower().startswith("https:"))
        self.fn_ids = fn_ids

    def _same_origin(self, headers: dict, scheme: str) -> bool:
        source = headers.get("origin") or headers.get("referer")
        if source is None:
            return True  # not a browser's cross-origin request
        origin = _origin(source)  # "null" (sandboxed frame, file://) has none: refused
        if origin is None:
            return False
        allowed = {_host_origin(headers.get("host", ""), scheme)}
        if self.base_origin:
            allowed.add(self.base_origin)
        return origin in allowed

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope.get("headers", [])}
        method, path = scope["method"], scope["path"]
        https = scope.get("scheme") == "https" or self.base_https

        async def send_secured(message):
            if message["type"] == "http.response.start":
                kept = []
                for k, v in message.get("headers", []):
                    lk = k.lower()
                    if lk.startswith(b"access-control-") or lk in dict(SECURITY_HEADERS):
                        continue
                    if lk == b"set-cookie":
                        v = _harden_cookie(v, https)
                    kept.append((k, v))
                message = {**message, "headers": kept + SECURITY_HEADERS}
            await send(message)

        if method not in SAFE_METHODS and not self._same_origin(headers, scope.get("scheme", "http")):
            return await _plain(403, "Cross-origin request refused.", send_secured)
        if API_INFO_ROUTE.match(re.sub(r"/{2,}", "/", path)):
            return await _plain(404, "Not found", send_secured)
        if method == "POST" and self.fn_ids is not None and EVENT_ROUTE.search(path):
            body = await _read_body(receive)
            if body is None:
                return await _plain(413, "Request too large.", send_secured)
            problem = self._bad_fn_index(body, path == "/admin" or path.startswith("/admin/"))
            if problem:
                return await _plain(422, problem, send_secured)
            receive = _replay(body, receive)
        client = scope.get("client")
        token = CLIENT_ADDRESS.set(client[0] if client else None)
        try:
            await self.app(scope, receive, send_secured)
        finally:
            CLIENT_ADDRESS.reset(token)

    def _bad_fn_index(self, body: bytes, admin: bool) -> str | None:
        try:
            data = json.loads(body or b"{}")
        except ValueError:
            return "The request body is not JSON."
        if not isinstance(data, dict) or data.get("fn_index") is None:
            return None  # Gradio answers these itself (by api_name, or an error in words)
        fn = data["fn_index"]
        if isinstance(fn, bool) or not isinstance(fn, int) or fn not in self.fn_ids(admin):
            return "Unknown fn_index."
        return None


def _harden_cookie(value: bytes, https: bool) -> bytes:
    text = value.decode("latin-1")
    parts = [p.strip() for p in text.split(";")]
    parts = [p for p in parts if p.lower() not in ("samesite=none", "samesite=lax",
                                                   "samesite=strict")]
    parts.append("SameSite=Lax")
    if https and not any(p.lower() == "secure" for p in parts):
        parts.append("Secure")
    return "; ".join(parts).encode("latin-1")


async def _read_body(receive) -> bytes | None:
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return b"".join(chunks)
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_EVENT_BODY:
            return None
        chunks.append(chunk)
        if not message.get("more_body"):
            return b"".join(chunks)


def _replay(body: bytes, receive_more):
    """A `receive` that hands the already-read body over once, then waits on the real one
    (which reports the client's disconnect when it comes)."""
    sent = False

    async def receive():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive_more()
    return receive


async def _plain(status: int, text: str, send) -> None:
    body = text.encode("utf-8")
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
