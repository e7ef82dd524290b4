"""Who may call: the token of the ``authorization: Bearer <token>`` metadata, and its role."""

from __future__ import annotations

from typing import Any

import grpc.aio

from durable_tq import errors
from durable_tq.config import Settings
from durable_tq.core.broker import token_role as broker_token_role
from durable_tq.wire.ops import Op, Role

AUTHORIZATION = "authorization"
BEARER = "bearer "


#: Kept for importers of the first gRPC release; the error lives in errors.py now.
Forbidden = errors.Forbidden


def bearer_token(context: grpc.aio.ServicerContext[Any, Any]) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == AUTHORIZATION:
            text = value if isinstance(value, str) else value.decode()
            if text[: len(BEARER)].lower() == BEARER:
                return text[len(BEARER) :].strip()
    return None


def token_role(settings: Settings, token: str | None) -> Role | None:
    """The role of ``token`` (the broker's own lookup); None when it is not accepted. Without
    configured tokens everyone is an admin."""
    if not settings.auth_tokens:
        return Role.ADMIN
    return broker_token_role(settings, token)


def authorize(settings: Settings, token: str | None, op: Op) -> Role:
    """The token's role, when it may run ``op``: else ``unauthorized`` or ``forbidden``."""
    role = token_role(settings, token)
    if role is None:
        raise errors.Unauthorized("missing or wrong token (authorization: Bearer <token>)")
    if role < op.role:
        raise errors.Forbidden(f"{op.name} needs the {op.role.name.lower()} role")
    return role
