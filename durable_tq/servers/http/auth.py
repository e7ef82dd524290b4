"""Bearer tokens: the broker's ``auth_tokens`` with their roles, checked in constant time.

The role a token has (``core.broker.token_role``: the same lookup as TCP's hello and gRPC's
metadata) is compared with the role the op table asks for (``wire.ops.Op.role``); too little
is ``forbidden`` (403), a missing or wrong token ``unauthorized`` (401).
"""

from __future__ import annotations

from durable_tq import errors
from durable_tq.config import Settings
from durable_tq.core.broker import token_role
from durable_tq.wire.ops import Role

#: Kept for importers of the first HTTP release; the error lives in errors.py now.
Forbidden = errors.Forbidden

__all__ = ["Forbidden", "check", "token_role"]


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
        raise errors.Forbidden(
            f"this token's role ({role.name.lower()}) may not do this: it needs "
            f"{needed.name.lower()}"
        )
