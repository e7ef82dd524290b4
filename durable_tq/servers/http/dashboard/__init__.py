"""The web dashboard at ``/``: static pages that read the public /v1 API, and their login.

The pages are plain HTML, CSS and JavaScript in ``static/`` (shipped in the wheel, read once
when the app is built; no build step, nothing fetched from anywhere else). The browser code
reads and changes the broker only through the /v1 routes every HTTP client has
(docs/dashboard.md). The server side here serves those files, fills in the page's footer and
the token's role, and turns a token typed into the login form into the cookie that
:mod:`durable_tq.servers.http.auth` accepts.

Without ``auth_tokens`` the dashboard is served only when the HTTP listener is on a loopback
address; on any other address its pages answer 403 saying why (the /v1 API itself is as open
as it always was there: that is the operator's choice, made in the settings).
"""

from __future__ import annotations

import hashlib
import html
import ipaddress
from dataclasses import dataclass
from importlib import resources
from urllib.parse import parse_qs

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from durable_tq import errors
from durable_tq.config import Settings
from durable_tq.servers.http import auth
from durable_tq.wire.ops import Role

#: Static files by name, with their content types.
STATIC_TYPES = {
    "dashboard.css": "text/css; charset=utf-8",
    "dashboard.js": "text/javascript; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}
#: The login form's body is a token and nothing else.
MAX_LOGIN_BODY = 8192
#: Sent with every page: nothing but our own files, no framing (a framed page could be
#: clicked through by another site), no referrer to other sites (with no referrer at all, a
#: form posts Origin: null).
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
    "img-src 'self'; connect-src 'self'; form-action 'self'; base-uri 'none'; "
    "frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
HTML = "text/html; charset=utf-8"


@dataclass(frozen=True)
class StaticFile:
    body: bytes
    content_type: str
    etag: str


def _read_static() -> tuple[dict[str, StaticFile], str, str]:
    folder = resources.files(__package__) / "static"
    files = {}
    for name, content_type in STATIC_TYPES.items():
        body = (folder / name).read_bytes()
        etag = '"' + hashlib.sha256(body).hexdigest()[:16] + '"'
        files[name] = StaticFile(body, content_type, etag)
    index = (folder / "index.html").read_text("utf-8")
    login = (folder / "login.html").read_text("utf-8")
    return files, index, login


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def listener(request: Request) -> str:
    """The address the request came in on (the bound port, not a configured 0)."""
    server = request.scope.get("server")
    if not server:
        return request.headers.get("host", "?")
    host, port = server[0], server[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class Dashboard:
    """The dashboard's routes for one HTTP face."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.files, self._index, self._login = _read_static()
        host = settings.http_address[0]
        self.open = not settings.auth_tokens
        #: Open (no tokens) on an address other machines can reach: pages refused.
        self.refused = self.open and not is_loopback(host)

    def routes(self) -> list[Route]:
        return [
            Route("/", self.index, methods=["GET"]),
            Route("/login", self.login_form, methods=["GET"]),
            Route("/login", self.login, methods=["POST"]),
            Route("/logout", self.logout, methods=["POST"]),
            Route("/static/{name}", self.static, methods=["GET"]),
        ]

    # --- pages ------------------------------------------------------------------------------

    async def index(self, request: Request) -> Response:
        if self.refused:
            return self._refusal(request)
        role = auth.request_role(self.settings, request)
        if role is None:
            return RedirectResponse("/login", 303, headers={"Cache-Control": "no-store"})
        footer = self._footer(role, listener(request))
        page = self._fill(self._index, role=role.name.lower(), footer=footer)
        return Response(page, 200, PAGE_HEADERS, media_type=HTML)

    def _footer(self, role: Role, address: str) -> str:
        if self.open:
            return (
                "<p><strong>No tokens configured:</strong> anyone who can reach "
                f"<code>{html.escape(address)}</code> on this machine can see and change "
                "everything here. Set <code>auth_tokens</code> to require a login; without "
                "them the dashboard is served on loopback addresses only.</p>"
            )
        return (
            f"<p>Logged in with a{'n' if role is Role.ADMIN else ''} "
            f"<strong>{role.name.lower()}</strong> token"
            + ("" if role is Role.ADMIN else " (read only: changes need an admin token)")
            + '. <form method="post" action="/logout" class="inline">'
            '<button type="submit" class="link">Log out</button></form></p>'
        )

    def _refusal(self, request: Request) -> Response:
        body = (
            "<!doctype html><html lang=en><meta charset=utf-8><title>durable_tq</title>"
            "<h1>Dashboard not served</h1><p>This broker has no <code>auth_tokens</code> and "
            f"its HTTP API listens on <code>{html.escape(listener(request))}</code>, not a "
            "loopback address: the dashboard would let anyone who reaches it change "
            "everything. Configure tokens (docs/configuration.md), or listen on 127.0.0.1.</p>"
        )
        return Response(body, 403, PAGE_HEADERS, media_type=HTML)

    @staticmethod
    def _fill(template: str, **values: str) -> str:
        for name, value in values.items():
            template = template.replace("{{" + name + "}}", value)
        return template

    # --- login --------------------------------------------------------------------------------

    async def login_form(self, request: Request) -> Response:
        if self.open:
            return RedirectResponse("/", 303)
        return self._login_page("", 200)

    def _login_page(self, error: str, status: int) -> Response:
        page = self._fill(self._login, error=html.escape(error))
        return Response(page, status, PAGE_HEADERS, media_type=HTML)

    async def login(self, request: Request) -> Response:
        if self.open:
            return RedirectResponse("/", 303)
        try:
            auth.refuse_cross_site(request)
        except errors.Forbidden as exc:
            return self._login_page(exc.message, 403)
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_LOGIN_BODY:
                return self._login_page("That is too long for a token.", 413)
        fields = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
        token = (fields.get("token") or [""])[0].strip()
        if not token or auth.token_role(self.settings, token) is None:
            return self._login_page("That token is not one of this broker's tokens.", 401)
        response = RedirectResponse("/", 303, headers={"Cache-Control": "no-store"})
        response.set_cookie(
            auth.COOKIE,
            auth.cookie_value(token),
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
            path="/",
        )
        return response

    async def logout(self, request: Request) -> Response:
        try:
            auth.refuse_cross_site(request)
        except errors.Forbidden as exc:
            return Response(exc.message, 403, media_type="text/plain")
        response = RedirectResponse("/login" if not self.open else "/", 303)
        response.delete_cookie(auth.COOKIE, path="/", httponly=True, samesite="strict")
        return response

    # --- static files ----------------------------------------------------------------------------

    async def static(self, request: Request) -> Response:
        found = self.files.get(request.path_params["name"])
        if found is None:
            return Response("not found", 404, media_type="text/plain")
        headers = {
            "ETag": found.etag,
            "Cache-Control": "no-cache",
            "X-Content-Type-Options": "nosniff",
        }
        if request.headers.get("if-none-match") == found.etag:
            return Response(status_code=304, headers=headers)
        return Response(found.body, 200, headers, media_type=found.content_type)
