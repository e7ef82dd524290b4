"""Bearer tokens: the broker's ``auth_tokens``, checked in constant time, with the op's role.

Every token is an admin token for now; when settings gain roles, ``check`` compares the role
a token has with the role the op table asks for (``wire.ops.Op.role``) and refuses with
``forbidden`` (403).
"""

from __future__ import annotations

import hmac

from durable_tq import errors
from durable_tq.config import Settings
from durable_tq.wire.ops import Role


class Forbidden(errors.DurableTQError):
    """The token is valid but its role may not run this op (HTTP 403)."""

    code = "forbidden"


def token_role(settings: Settings, token: str) -> Role | None:
    """The role of ``token``, or None when it is not one of the broker's tokens."""
    given = token.encode("utf-8", "surrogatepass")
    # Compare against every token, always, so timing says nothing about which matched.
    matches = [hmac.compare_digest(given, known.encode()) for known in settings.auth_tokens]
    return Role.ADMIN if any(matches) else None


def check(settings: Settings, authorization: str | None, needed: Role) -> None:
    """Raise Unauthorized (401) or Forbidden (403) unless the header carries a good token."""
    if not settings.auth_tokens:
        return
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise errors.Unauthorized("missing token: send Authorization: Bearer TOKEN")
    role = token_role(settings, token.strip())
    if role is None:
        raise errors.Unauthorized("wrong token")
    if role < needed:
        raise Forbidden(f"this token's role ({role.name.lower()}) may not do this")
