"""Who may do what over HTTP: bearer tokens, the dashboard's token cookie, cross-site requests.

A request carries its token in ``Authorization: Bearer TOKEN`` or, from the dashboard, in the
``durable_tq_token`` cookie that its login sets (HttpOnly, SameSite=Strict). The token's role
(``core.broker.token_role``: the same lookup as TCP's hello and gRPC's metadata) is compared
with the role the op table asks for (``wire.ops.Op.role``); too little is ``forbidden`` (403),
a missing or wrong token ``unauthorized`` (401).

Requests that change something (POST, PUT, PATCH, DELETE) are refused with ``forbidden`` when
a browser says they come from another site: an ``Origin`` header that is not this listener's
own origin, or ``Sec-Fetch-Site`` other than ``same-origin``/``none``. Clients that are not
browsers send neither. When the token came from the cookie, such a request must also carry the
header ``X-Durable-TQ-CSRF: 1``, which a page of another origin cannot add without a CORS
preflight that this API never grants (for browsers too old to send ``Origin``).
"""

from __future__ import annotations

import base64
import binascii

from starlette.requests import Request

from durable_tq import errors
from durable_tq.config import Settings
from durable_tq.core.broker import token_role
from durable_tq.wire.ops import Role

#: Kept for importers of the first HTTP release; the error lives in errors.py now.
Forbidden = errors.Forbidden

__all__ = [
    "COOKIE",
    "CSRF_HEADER",
    "Forbidden",
    "check",
    "check_request",
    "cookie_token",
    "cookie_value",
    "refuse_cross_site",
    "request_role",
    "token_role",
]

#: The dashboard's cookie: the token, base64url (any token fits a cookie value that way).
COOKIE = "durable_tq_token"
#: The header a cookie-authenticated change must carry.
CSRF_HEADER = "x-durable-tq-csrf"
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_SAME_SITE_FETCHES = frozenset({"same-origin", "none"})


def check(settings: Settings, authorization: str | None, needed: Role) -> None:
    """Raise Unauthorized (401) or Forbidden (403) unless the header carries a good token."""
    if not settings.auth_tokens:
        return
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise errors.Unauthorized(
            "missing token: send Authorization: Bearer TOKEN (or log in to the dashboard)"
        )
    _check_token(settings, token.strip(), needed)


def _check_token(settings: Settings, token: str, needed: Role) -> Role:
    role = token_role(settings, token)
    if role is None:
        raise errors.Unauthorized("wrong token")
    if role < needed:
        raise errors.Forbidden(
            f"this token's role ({role.name.lower()}) may not do this: it needs "
            f"{needed.name.lower()}"
        )
    return role


def cookie_value(token: str) -> str:
    return base64.urlsafe_b64encode(token.encode("utf-8", "surrogatepass")).decode("ascii")


def cookie_token(request: Request) -> str | None:
    """The token in the dashboard's cookie, or None (no cookie, or not one we wrote)."""
    value = request.cookies.get(COOKIE)
    if not value:
        return None
    try:
        return base64.urlsafe_b64decode(value.encode("ascii")).decode("utf-8", "surrogatepass")
    except (binascii.Error, UnicodeError, ValueError):
        return None


def own_origin(request: Request) -> str:
    """This listener's origin as the browser names it: scheme and the Host it asked for."""
    return f"{request.url.scheme}://{request.headers.get('host', '')}"


def refuse_cross_site(request: Request) -> None:
    """Forbidden for a change that a browser says another site asked for."""
    if request.method not in UNSAFE_METHODS:
        return
    fetch_site = request.headers.get("sec-fetch-site")
    if fetch_site is not None and fetch_site not in _SAME_SITE_FETCHES:
        raise errors.Forbidden(f"cross-site request refused (Sec-Fetch-Site: {fetch_site})")
    origin = request.headers.get("origin")
    if origin is not None and origin != own_origin(request):
        raise errors.Forbidden(f"cross-origin request refused (Origin: {origin})")


def check_request(settings: Settings, request: Request, needed: Role) -> None:
    """Raise unless the request may run an op that needs ``needed``: not cross-site, and
    (with tokens configured) a good token in the Authorization header or the cookie."""
    refuse_cross_site(request)
    header = request.headers.get("authorization")
    if not settings.auth_tokens or header is not None:
        check(settings, header, needed)
        return
    token = cookie_token(request)
    if token is None:
        check(settings, None, needed)  # raises: no token at all
        return
    _check_token(settings, token, needed)
    if request.method in UNSAFE_METHODS and request.headers.get(CSRF_HEADER) != "1":
        raise errors.Forbidden(
            "a change authenticated by the dashboard's cookie needs the header X-Durable-TQ-CSRF: 1"
        )


def request_role(settings: Settings, request: Request) -> Role | None:
    """The role of the request's token (header or cookie); ADMIN without tokens configured;
    None when it has no good token."""
    if not settings.auth_tokens:
        return Role.ADMIN
    header = request.headers.get("authorization")
    if header is not None:
        scheme, _, token = header.partition(" ")
        return token_role(settings, token.strip()) if scheme.lower() == "bearer" else None
    from_cookie = cookie_token(request)
    return None if from_cookie is None else token_role(settings, from_cookie)
