"""Bearer-token authentication of the API.

With a token configured, every path but the probes (``PUBLIC_PATHS``) needs
``Authorization: Bearer <token>`` (the OpenAPI documents and unknown paths too): anything else is
a 401 with ``WWW-Authenticate: Bearer``. The token is compared in constant time.
"""

from __future__ import annotations

import hmac
from typing import Annotated, Any

from fastapi import Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.datastructures import Headers

from .schemas import error_response

# Reachable without the token: /health then leaves out the per-account details.
PUBLIC_PATHS = frozenset({"/health", "/livez", "/readyz"})


def authorized(headers: Headers, token: str | None) -> bool:
    """Whether the request carries the token (always true when none is configured)."""
    if token is None:
        return True
    scheme, _, value = headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(), token.encode())


class BearerAuth:
    """ASGI middleware: a request to a non-public path without the token is answered 401."""

    def __init__(self, app: Any, token: str):
        self.app = app
        self.token = token

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope.get("path") not in PUBLIC_PATHS:
            if not authorized(Headers(scope=scope), self.token):
                response = error_response(401, "missing or wrong bearer token (Authorization: Bearer <token>)")
                response.headers["WWW-Authenticate"] = "Bearer"
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


_bearer = HTTPBearer(auto_error=False, description="The token given to `tradestate serve --token`")


def bearer_documented(_: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)]) -> None:
    """A no-op dependency that puts the bearer scheme in the OpenAPI document (``BearerAuth``
    enforces it)."""
    return None
