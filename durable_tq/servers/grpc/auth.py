"""Who may call: the token of the ``authorization: Bearer <token>`` metadata, and its role."""

from __future__ import annotations

import hmac
from typing import Any

import grpc.aio

from durable_tq import errors
from durable_tq.config import Settings
from durable_tq.wire.ops import Op, Role

AUTHORIZATION = "authorization"
BEARER = "bearer "


class Forbidden(errors.DurableTQError):
    """The token is good but its role may not run this op (PERMISSION_DENIED)."""

    code = "forbidden"


def bearer_token(context: grpc.aio.ServicerContext[Any, Any]) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == AUTHORIZATION:
            text = value if isinstance(value, str) else value.decode()
            if text[: len(BEARER)].lower() == BEARER:
                return text[len(BEARER) :].strip()
    return None


def token_role(settings: Settings, token: str | None) -> Role | None:
    """The role of ``token``; None when it is not accepted.

    Tokens carry no role yet: every accepted token is an admin, and without configured
    tokens everyone is. When roles come, they are looked up here and checked below
    against the op table's ``role``.
    """
    if not settings.auth_tokens:
        return Role.ADMIN
    given = (token or "").encode("utf-8", "surrogatepass")
    # Compare against every token, always, so timing says nothing about which matched.
    matches = [hmac.compare_digest(given, t.encode()) for t in settings.auth_tokens]
    return Role.ADMIN if token is not None and any(matches) else None


def authorize(settings: Settings, token: str | None, op: Op) -> None:
    role = token_role(settings, token)
    if role is None:
        raise errors.Unauthorized("missing or wrong token (authorization: Bearer <token>)")
    if role < op.role:
        raise Forbidden(f"{op.name} needs the {op.role.name.lower()} role")
