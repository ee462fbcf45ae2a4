"""One pure ASGI middleware in front of the Gradio app (`Guard`): it refuses requests a page of another site sends
(403), requests to a loopback-only server under another host's name (DNS rebinding, 403), and request bodies over
a size limit before they are read into memory; makes a client address that keeps failing logins wait (429); and
gives every browser an anonymous id cookie (`BROWSER_COOKIE`) so that, without --auth, each browser can be told
apart."""
from __future__ import annotations

import ipaddress
import math
import re
import secrets
import time
from collections.abc import Callable
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.requests import cookie_parser
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.auth import CLIENT_ADDRESS, Throttle

BROWSER_COOKIE = "adasam-browser"
BROWSER_COOKIE_MAX_AGE = 400 * 24 * 3600  # browsers cap a cookie's life at 400 days anyway
MAX_BODY_BYTES = 16 * 1024 * 1024  # default of `adasam serve --max-request-mb`
ADDRESS_FAILURES = 20  # failed logins from one client address within ADDRESS_WINDOW_S before it must wait
ADDRESS_WINDOW_S = 15 * 60.0
ADDRESS_COOLDOWN_S = 60.0  # the first wait; it doubles with each further failure ...
ADDRESS_MAX_COOLDOWN_S = 300.0  # ... up to this


def address_throttle(clock: Callable[[], float] = time.monotonic) -> Throttle:
    return Throttle(ADDRESS_FAILURES, ADDRESS_WINDOW_S, ADDRESS_COOLDOWN_S, ADDRESS_MAX_COOLDOWN_S, clock)


class _TooLarge(Exception):
    """Raised into the app from `receive` once the body passed the limit; the 413 has been sent by then."""


def cross_site(headers: Headers, allowed: frozenset[str] = frozenset()) -> str | None:
    """Why a browser's request comes from a page of another site, or None: its Origin names neither the host the
    request is for (Host, or a proxy's X-Forwarded-Host: a page cannot set either across sites without a preflight,
    and preflights are refused too) nor an `allowed` origin (`adasam serve --allowed-origin`, for a proxy that
    rewrites both). Gradio's CORS answers any origin with credentials once the server is reached by a name other
    than localhost, so a hostile page an annotator visited could read images and save or undo masks as them.
    Requests without an Origin (scripts, the Python client, page loads) pass."""
    origin = headers.get("origin")
    if origin is None:
        return None
    parts = urlsplit(origin.strip().lower())
    if f"{parts.scheme}://{parts.netloc}" in allowed:
        return None
    for name in ("host", "x-forwarded-host"):
        host = (headers.get(name) or "").split(",")[0].strip().lower()
        if host and (parts.netloc == host or (":" not in host and parts.hostname == host)):  # a header without a
            return None  # port (X-Forwarded-Host $host) names the host whatever port the page used
    return f"its Origin {origin} is not this server's address ({headers.get('host')})"  # "null" (sandboxed) too


def rebound(headers: Headers, allowed: frozenset[str] = frozenset()) -> str | None:
    """Why a request to a server that listens on loopback only is for another host's name, or None. Any site can
    point its own name at 127.0.0.1 (DNS rebinding): a browser then takes the server for that site and sends its
    page's requests with Origin and Host both that name, which `cross_site` passes, and lets the page read the
    answers: images, and masks saved as a new browser without --auth, the loopback default. Honest requests name
    localhost or a loopback address (or a name an `allowed` origin has: a proxy on this machine keeping its Host)."""
    host = (headers.get("host") or "").strip().lower()
    if not host:
        return None  # HTTP/1.0 without a Host: no browser sends that
    try:
        name = (urlsplit(f"//{host}").hostname or "").rstrip(".")  # "localhost." is localhost, fully qualified
    except ValueError:  # e.g. an unclosed IPv6 bracket
        name = ""
    if name == "localhost" or name.endswith(".localhost"):
        return None
    try:
        address = ipaddress.ip_address(name)
        if (getattr(address, "ipv4_mapped", None) or address).is_loopback:  # ::ffff:127.0.0.1 too
            return None
    except ValueError:
        pass
    if any((urlsplit(origin).hostname or "").rstrip(".") == name for origin in allowed):
        return None
    return f"its Host {host} is not a loopback name, and this server listens on loopback only"


def _is_login(scope: Scope) -> bool:
    return scope["method"] == "POST" and scope["path"].rstrip("/").endswith("/login")


class Guard:
    """Pure ASGI (streams: nothing is buffered). Add it with `Middleware(Guard, max_body_bytes=...)`."""

    def __init__(self, app: ASGIApp, max_body_bytes: int = MAX_BODY_BYTES, logins: Throttle | None = None,
                 uploads: tuple[str, int] | None = None, allowed_origins: tuple[str, ...] = (),
                 loopback: bool = False) -> None:
        """`uploads`: (path pattern, limit) of requests whose bodies may be larger: remote trainers' model uploads,
        whose endpoint checks the token before it reads the body. `allowed_origins`: see `cross_site`. `loopback`:
        the server listens on a loopback address only, so only loopback names are honest Hosts (`rebound`)."""
        self.app = app
        self.loopback = loopback
        self.allowed_origins = frozenset(o.strip().lower().rstrip("/") for o in allowed_origins)
        self.max_body_bytes = max_body_bytes
        self.logins = logins or address_throttle()
        self.uploads = (re.compile(uploads[0]), uploads[1]) if uploads else None

    def limit_for(self, scope: Scope) -> int:
        if self.uploads and scope["method"] == "POST" and self.uploads[0].fullmatch(scope["path"]):
            return self.uploads[1]
        return self.max_body_bytes

    def refused(self, headers: Headers) -> str | None:
        return cross_site(headers, self.allowed_origins) or (rebound(headers, self.allowed_origins)
                                                              if self.loopback else None)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket" and self.refused(Headers(scope=scope)):
            await send({"type": "websocket.close", "code": 1008})
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        why = self.refused(headers)
        if why:
            await JSONResponse({"detail": f"Cross-site request refused: {why}. Open the page as localhost or "
                                          "127.0.0.1; behind a proxy, forward the Host (or X-Forwarded-Host) header, "
                                          "or start the server with --allowed-origin."},
                               status_code=403)(scope, receive, send)
            return
        length = headers.get("content-length")
        limit = self.limit_for(scope)
        if length is not None and (not length.strip().isdigit() or int(length) > limit):
            await self._too_large(scope, receive, send, limit)
            return
        address = scope["client"][0] if scope.get("client") else "unknown"
        CLIENT_ADDRESS.set(address)  # this request's context: the login check (app.auth.checker) reads it
        login = _is_login(scope)
        if login:
            wait = self.logins.wait(address)
            if wait > 0:
                seconds = math.ceil(wait)
                await JSONResponse({"detail": f"Too many failed logins from this address: try again in {seconds} s."},
                                   status_code=429, headers={"Retry-After": str(seconds)})(scope, receive, send)
                return
            self.logins.fail(address)  # counted before the answer, so guesses sent in parallel see each other
        # Set on the answer only, not slipped into this request: a client that drops cookies (an API script) then
        # keeps falling back to its Gradio session instead of looking like a new browser on every request.
        cookie = None if BROWSER_COOKIE in cookie_parser(headers.get("cookie", "")) else secrets.token_urlsafe(12)
        received = 0
        started = refused = False

        async def guarded_receive() -> Message:
            nonlocal received, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    if not started:
                        refused = True
                        await self._too_large(scope, receive, send, limit)
                    raise _TooLarge
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if refused:  # the 413 went out already: whatever the app answers after it is dropped
                return
            if message["type"] == "http.response.start":
                started = True
                if login and message["status"] < 400:
                    self.logins.forgive(address)
                if cookie is not None:
                    value = (f"{BROWSER_COOKIE}={cookie}; Max-Age={BROWSER_COOKIE_MAX_AGE}; Path=/; HttpOnly; "
                             f"SameSite=Lax")
                    message = {**message, "headers": [*message.get("headers", ()), (b"set-cookie", value.encode())]}
            await send(message)

        try:
            await self.app(scope, guarded_receive, guarded_send)
        except Exception:
            if not refused:
                raise

    async def _too_large(self, scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        flag = "--max-model-mb" if limit != self.max_body_bytes else "--max-request-mb"
        await JSONResponse({"detail": f"Request too large: the limit is {limit / 2**20:g} MB (adasam serve {flag})."},
                           status_code=413, headers={"Connection": "close"})(scope, receive, send)
