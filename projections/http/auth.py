"""Bearer-token authentication of the API, and the check of the ``Host`` header.

Tokens (``Tokens``): the single ``--token`` / ``$TRADESTATE_API_TOKEN`` (its operator is ``api``),
and named ones, ``$TRADESTATE_API_TOKENS="alice:tok1,bob:tok2"`` or a file of ``name:token`` lines
(``$TRADESTATE_API_TOKENS_FILE``): an operator action taken with a token is recorded under its name.

With a token configured, every path but the probes (``PUBLIC_PATHS``) needs
``Authorization: Bearer <token>`` (the OpenAPI documents and unknown paths too) unless reads were
left open (loopback only); anything else is a 401 with ``WWW-Authenticate: Bearer``. The operator
controls (``/control/...``) always need a token, whatever the reads need and wherever the server
listens: without any token configured they answer 403. Tokens are compared in constant time.

``HostCheck`` answers 421 to a request whose ``Host`` is not one the server was configured for,
before anything else runs: a web page the operator opens cannot reach the API by pointing a name
of its own at 127.0.0.1 (DNS rebinding).
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from fastapi import Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.datastructures import Headers

from ...domain.errors import InvalidInput
from .schemas import error_response

# Reachable without the token: /health then leaves out the per-account details.
PUBLIC_PATHS = frozenset({"/health", "/livez", "/readyz"})
CONTROL_PREFIX = "/control"
# The operator console authenticates its own requests (a bearer header, or a session cookie opened
# with a token; console.py): a browser cannot send a bearer header.
CONSOLE_PREFIX = "/console"
# The operator of the single unnamed token.
SINGLE_TOKEN_OPERATOR = "api"


@dataclass(frozen=True)
class Tokens:
    """The API's bearer tokens: (operator name, token) pairs."""

    pairs: tuple[tuple[str, str], ...] = field(default=(), repr=False)  # never printed

    @property
    def operators(self) -> list[str]:
        """The operators' names (what may be shown of the tokens)."""
        return list(dict.fromkeys(name for name, _ in self.pairs))

    def __bool__(self) -> bool:
        return bool(self.pairs)

    def operator(self, headers: Headers) -> str | None:
        """The operator whose token the request carries, or None. Every token is compared (in
        constant time), so the time taken does not tell which one came close."""
        scheme, _, value = headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer":
            return None
        given = value.strip().encode()
        found = None
        for name, token in self.pairs:
            if hmac.compare_digest(given, token.encode()) and found is None:
                found = name
        return found


def parse_tokens(spec: str, *, where: str = "TRADESTATE_API_TOKENS") -> list[tuple[str, str]]:
    """``name:token`` pairs separated by commas or new lines (blank lines and ``#`` comments are
    skipped). A pair without a name or a token is ``InvalidInput`` naming ``where`` (never the
    token)."""
    pairs = []
    for number, item in enumerate((p.strip() for p in spec.replace(",", "\n").splitlines()), 1):
        if not item or item.startswith("#"):
            continue
        name, sep, token = item.partition(":")
        if not sep or not name.strip() or not token.strip():
            raise InvalidInput(f"{where}: entry {number} is not name:token")
        pairs.append((name.strip(), token.strip()))
    return pairs


def load_tokens(token: str | None = None, named: str | None = None, file: str | None = None) -> Tokens:
    """Every token the API accepts: ``token`` (operator ``api``), the ``named`` pairs and those of
    ``file``. The same token twice (under two names) is ``InvalidInput``: it could not say who."""
    pairs: list[tuple[str, str]] = []
    if token:
        pairs.append((SINGLE_TOKEN_OPERATOR, token))
    if named:
        pairs.extend(parse_tokens(named))
    if file:
        try:
            text = Path(file).read_text()
        except OSError as e:
            raise InvalidInput(f"cannot read the API tokens file {file!r}: {e.strerror}") from None
        pairs.extend(parse_tokens(text, where=f"tokens file {file!r}"))
    seen: dict[str, str] = {}
    for name, secret in pairs:
        if secret in seen and seen[secret] != name:
            raise InvalidInput(f"the same API token is given to {seen[secret]!r} and {name!r}")
        seen.setdefault(secret, name)
    return Tokens(tuple(dict.fromkeys(pairs)))


def authorized(headers: Headers, token: Tokens | str | None) -> bool:
    """Whether the request carries a token (always true when none is required)."""
    if not token:
        return True
    if isinstance(token, str):
        token = Tokens(((SINGLE_TOKEN_OPERATOR, token),))
    return token.operator(headers) is not None


def _unauthorized(detail: str) -> Any:
    response = error_response(401, detail)
    response.headers["WWW-Authenticate"] = "Bearer"
    return response


class BearerAuth:
    """ASGI middleware: a request to a non-public path without a token is answered 401 (reads only
    when ``open_reads`` is off); one to the controls always needs a token (403 when the server has
    none). The operator's name goes on ``request.state.operator``. The console's paths
    (``CONSOLE_PREFIX``) pass through: the console checks the token or its session itself."""

    def __init__(self, app: Any, tokens: Tokens, open_reads: bool = False):
        self.app = app
        self.tokens = tokens
        self.open_reads = open_reads

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        path = scope.get("path", "")
        own_auth = path == CONSOLE_PREFIX or path.startswith(CONSOLE_PREFIX + "/")
        if scope["type"] == "http" and path not in PUBLIC_PATHS and not own_auth:
            control = path == CONTROL_PREFIX or path.startswith(CONTROL_PREFIX + "/")
            if control or (self.tokens and not self.open_reads):
                operator = self.tokens.operator(Headers(scope=scope))
                if operator is None:
                    if control and not self.tokens:
                        response = error_response(403, "operator controls need a bearer token and this server has "
                                                       "none: serve with $TRADESTATE_API_TOKEN or "
                                                       "$TRADESTATE_API_TOKENS")
                    else:
                        response = _unauthorized("missing or wrong bearer token (Authorization: Bearer <token>)")
                    await response(scope, receive, send)
                    return
                scope.setdefault("state", {})["operator"] = operator
        await self.app(scope, receive, send)


_bearer = HTTPBearer(auto_error=False, description="A token given to `tradestate serve` ($TRADESTATE_API_TOKEN, or "
                                                   "a named one of $TRADESTATE_API_TOKENS)")


def bearer_documented(_: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)]) -> None:
    """A no-op dependency that puts the bearer scheme in the OpenAPI document (``BearerAuth``
    enforces it)."""
    return None


# ------------------------------------------------------------------------------ Host header
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "[::1]"})


def split_host(value: str) -> tuple[str, int | None] | None:
    """(lower-case name, port or None) of a ``Host`` value (``[v6]`` keeps its brackets), or None
    when it is malformed."""
    value = value.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return None
        name, rest = value[:end + 1], value[end + 1:]
        if rest and not rest.startswith(":"):
            return None
        port_text = rest[1:] if rest else None
    else:
        name, sep, port_text = value.partition(":")
        if not sep:
            port_text = None
        if ":" in (port_text or ""):
            return None
    name = name.removesuffix(".")  # "localhost." is localhost
    if not name:
        return None
    if port_text is None:
        return name, None
    if not port_text.isdigit() or not 0 < int(port_text) <= 65535:
        return None
    return name, int(port_text)


def _as_host_name(address: str) -> str:
    return f"[{address.lower()}]" if ":" in address else address.lower()


@dataclass(frozen=True)
class HostPolicy:
    """Which ``Host`` values the server answers: the loopback names and the address the connection
    arrived on; and the ``allowed`` extra ones (``name`` for any port, ``name:port`` for that port).

    What defeats DNS rebinding is the name: the browser sends the name of the page's site, which
    an attacker controls, never one of these. The port in ``Host`` is the one the client dialled,
    which is not the server's behind a port mapping (``docker run -p 8080:8321``), so it is not
    required to match."""

    allowed: tuple[str, ...] = ()
    _names: frozenset[str] = field(default=frozenset(), repr=False)
    _exact: frozenset[tuple[str, int]] = field(default=frozenset(), repr=False)

    @classmethod
    def of(cls, allowed: Iterable[str] = ()) -> HostPolicy:
        """The policy with ``allowed`` extra hosts; a malformed one is ``InvalidInput``."""
        allowed = tuple(a for a in (x.strip() for x in allowed) if a)
        names, exact = set(), set()
        for entry in allowed:
            parsed = split_host(entry)
            if parsed is None:
                raise InvalidInput(f"--allowed-host {entry!r} is not a host name or host:port")
            name, port = parsed
            (names.add(name) if port is None else exact.add((name, port)))
        return cls(allowed, frozenset(names), frozenset(exact))

    def accepts(self, host: str | None, server: tuple[str, int] | None) -> bool:
        """Whether a request with ``Host: host`` that arrived at ``server`` (the local address and
        port of its connection) is answered."""
        parsed = split_host(host) if host else None
        if parsed is None:
            return False
        name, port = parsed
        if name in self._names or (port is not None and (name, port) in self._exact):
            return True
        if name in LOOPBACK_NAMES:
            return True
        return server is not None and name == _as_host_name(str(server[0]))


class HostCheck:
    """ASGI middleware: a request whose ``Host`` the ``HostPolicy`` refuses is answered 421
    before any handler, authentication included, runs."""

    def __init__(self, app: Any, policy: HostPolicy):
        self.app = app
        self.policy = policy

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] in ("http", "websocket"):
            host = Headers(scope=scope).get("host")
            server = scope.get("server")
            if not self.policy.accepts(host, tuple(server) if server else None):
                if scope["type"] == "websocket":
                    await send({"type": "websocket.close", "code": 1008})
                    return
                shown = (host or "")[:100]
                response = error_response(421, f"this server does not answer for Host {shown!r} (a guard against "
                                               "DNS rebinding); serve with --allowed-host to add a name")
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
