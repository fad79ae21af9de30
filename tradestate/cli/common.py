"""What every ``tradestate`` command shares: exit codes, the one error path, common options and settings.

Errors go to stderr, never stdout: one line ``error: ...`` (no traceback), or under ``--json`` one
JSON object ``{"ok": false, "error": "...", "exit_code": N}``.
"""

from __future__ import annotations

import functools
import re
import sys
from contextvars import ContextVar
from enum import IntEnum
from typing import Annotated, Any, Callable, NoReturn, Optional, TypeVar

import typer


class ExitCode(IntEnum):
    """The exit status of every command (stated in each command's help)."""

    OK = 0
    PROBLEM = 1
    """The command ran and its check found a problem (verify: log altered; recover: not ready;
    reconcile: discrepancies in strict mode or a venue not queried; chaos: a check failed)."""
    BAD_INPUT = 2
    """Bad input or usage: a malformed option, a missing file, no log at the URL; nothing was written."""
    UNREACHABLE = 3
    """The database cannot be reached (server down, unknown role or database, bad credentials,
    a read-only server where a write is needed) or could not make a write durable
    (``AppendFailed``, ``CommitOutcomeUnknown``: retrying the same command is safe)."""


def exit_codes(problem: str | None = None, *, extra: str | None = None) -> str:
    """The epilog listing a command's exit codes; ``problem`` says what exit 1 means for it."""
    lines = ["Exit codes: 0 ok"]
    if problem:
        lines.append(f"1 {problem}")
    lines.append("2 bad input or usage (nothing written)")
    lines.append("3 " + (extra or "the database cannot be reached or did not confirm a write durable (retrying is safe)"))
    return "; ".join(lines) + "."


DbOption = Annotated[
    Optional[str],
    typer.Option("--db", help="Database URL: sqlite:///path.db or postgresql://... (default: $TRADESTATE_DB, "
                              "the config file, then sqlite:///tradestate.db). Prefer $PGPASSWORD or ~/.pgpass "
                              "to a password in the URL."),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON for scripts (errors too, on stderr).")]
ConfigOption = Annotated[
    Optional[str],
    typer.Option("--config", help="TOML settings file (default: $TRADESTATE_CONFIG). Flags override "
                                  "TRADESTATE_* variables, which override the file.", show_default=False),
]

def choice(*values: str, what: str, message: str = "{what} {value!r} is not one of: {values}",
           prefixes: tuple[str, ...] = ()) -> dict[str, Any]:
    """``typer.Option`` keyword arguments for an option with a fixed set of values: the values in
    the metavar (and so in ``--help``), and a usage error (exit 2) naming them for any other.
    ``prefixes``: a value starting with one of these is taken too (``ccxt:binance``)."""

    def check(value: Any) -> Any:
        items = value if isinstance(value, (list, tuple)) else [value]
        for item in items:
            if item is not None and item not in values and not (prefixes and str(item).startswith(prefixes)):
                raise typer.BadParameter(message.format(what=what, value=item, values=", ".join(values)))
        return value

    return {"metavar": "[" + "|".join(values) + "]", "callback": check}


BROKER_CHOICES = ("sim", "alpaca", "ib", "ccxt:<exchange>")
BrokerOption = Annotated[
    Optional[list[str]],
    typer.Option("--broker", help="Reconcile with this broker: sim, alpaca, ib or ccxt:<exchange> (ccxt:binance, "
                                  "ccxt:kraken...); repeat for several (default: "
                                  "$TRADESTATE_BROKER or the config file).", **choice(*BROKER_CHOICES, what="--broker",
                                                  message="{what} must be one of {values}, not {value!r}",
                                                  prefixes=("ccxt:",))),
]
StrictOption = Annotated[
    Optional[bool],
    typer.Option("--strict/--no-strict", help="Any discrepancy blocks trading on the account until `tradestate "
                                              "reconcile --ack` and exits 1 if it stays unresolved (default: "
                                              "$TRADESTATE_STRICT or the config file, else off).",
                  show_default=False),
]
AccountOption = Annotated[Optional[str], typer.Option("--account", help="Our account id (the one on our events).")]
VenueOption = Annotated[Optional[str], typer.Option("--venue", help="The venue name our orders carry for this "
                                                                   "broker (as in the intents: e.g. SIM, ALPACA, IB).")]
BaseUrlOption = Annotated[Optional[str], typer.Option("--base-url", help="Alpaca: REST base URL "
                                                      "($TRADESTATE_ALPACA_BASE_URL; default: paper or live "
                                                      "endpoint after alpaca_paper). Keys: $APCA_API_KEY_ID and "
                                                      "$APCA_API_SECRET_KEY or the config file, never a flag.")]
StreamUrlOption = Annotated[Optional[str], typer.Option("--stream-url", help="Alpaca: trade-updates stream URL.")]
HostOption = Annotated[Optional[str], typer.Option("--host", help="IB: TWS / gateway host (default 127.0.0.1).")]
PortOption = Annotated[Optional[int], typer.Option("--port", help="IB: TWS / gateway port.")]
ClientIdOption = Annotated[Optional[int], typer.Option("--client-id", help="IB: API client id.")]
IbAccountOption = Annotated[Optional[str], typer.Option("--ib-account", help="IB: the account code, when it "
                                                                            "differs from --account.")]
SimStateOption = Annotated[Optional[str], typer.Option("--sim-state", help="sim: the simulated broker's state file.")]


def broker_flags(*, broker: list[str] | None, account: str | None, venue: str | None, strict: bool | None,
                 base_url: str | None, stream_url: str | None, host: str | None, port: int | None,
                 client_id: int | None, ib_account: str | None, sim_state: str | None) -> dict[str, Any]:
    """The broker flags shared by ``recover`` and ``reconcile`` as ``Settings`` field names."""
    return {"broker": broker or None, "account": account, "venue": venue, "strict": strict,
            "alpaca_base_url": base_url, "alpaca_stream_url": stream_url, "ib_host": host, "ib_port": port,
            "ib_client_id": client_id, "ib_account": ib_account, "sim_state": sim_state}


def make_adapters(s: Any) -> list[Any]:
    """One broker adapter for each of the settings' brokers, built by
    ``adapters.brokers.registry.make_adapter`` from the same settings; a venue that cannot be reached
    ends the command with exit 1, bad options with exit 2."""
    from ..adapters.brokers.base import VenueError
    from ..adapters.brokers.registry import make_adapter

    adapters: list[Any] = []
    try:
        for name in s.broker:
            try:
                adapters.append(make_adapter(name, s.broker_options(name)))
            except VenueError as e:
                fail(f"could not reach {name}: {e}", ExitCode.PROBLEM)
    except BaseException:
        for adapter in adapters:
            adapter.close()
        raise
    return adapters


_as_json: ContextVar[bool] = ContextVar("tradestate_cli_json", default=False)
_PASSWORD_IN_URL = re.compile(r"(://[^:/@\s]*:)[^@\s]+@")
_PASSWORD_KV = re.compile(r"(password\s*=\s*)('[^']*'|\S+)", re.IGNORECASE)


def redact(text: str) -> str:
    """``text`` with passwords in URLs (``user:***@``) and conninfo (``password=***``) masked."""
    return _PASSWORD_KV.sub(r"\1***", _PASSWORD_IN_URL.sub(r"\1***@", text))


def emit_error(message: str, code: int, as_json: bool) -> None:
    """Print one error on stderr: a line, or a JSON object when ``as_json``."""
    from ..render import err_console, to_json

    message = redact(message)
    if as_json:
        sys.stderr.write(to_json({"ok": False, "error": message, "exit_code": int(code)}) + "\n")
        sys.stderr.flush()
    else:
        err_console.print(f"[bold red]error:[/] {message}", highlight=False, markup=True, soft_wrap=True)


def fail(message: str, code: int = ExitCode.BAD_INPUT) -> NoReturn:
    """Report an error on stderr (as JSON when the running command has ``--json``) and exit ``code``."""
    emit_error(message, code, _as_json.get())
    raise typer.Exit(int(code))


def classify(error: BaseException) -> tuple[ExitCode, str] | None:
    """The exit code and one-line message for an error the CLI reports without a traceback, or
    None for an unexpected one (a bug: let it show)."""
    from ..domain.errors import AppendFailed, TradestateError

    if isinstance(error, AppendFailed):  # StoreUnreachable, ReadOnlyStore, CommitOutcomeUnknown too
        return ExitCode.UNREACHABLE, str(error)
    try:
        import psycopg
        import psycopg_pool
    except ImportError:  # pragma: no cover - psycopg is a dependency
        psycopg = psycopg_pool = None  # type: ignore[assignment]
    if psycopg_pool is not None and isinstance(error, psycopg_pool.PoolTimeout):
        return ExitCode.UNREACHABLE, f"cannot reach the database: {error}"
    if psycopg is not None and isinstance(error, psycopg.OperationalError):
        reason = " ".join(str(error).split())
        return ExitCode.UNREACHABLE, f"cannot reach the database: {reason}"
    if isinstance(error, TradestateError):
        return ExitCode.BAD_INPUT, str(error)
    return None


F = TypeVar("F", bound=Callable[..., Any])


def command(func: F) -> F:
    """Decorate a command: its ``json``/``as_json`` argument selects the error format, and a
    ``TradestateError`` or an unreachable database ends it with one line on stderr and its exit
    code (``ExitCode``) instead of a traceback."""

    @functools.wraps(func)
    def run(*args: Any, **kwargs: Any) -> Any:
        token = _as_json.set(bool(kwargs.get("json") or kwargs.get("as_json")))
        try:
            return func(*args, **kwargs)
        except (typer.Exit, typer.Abort, KeyboardInterrupt):
            raise
        except Exception as e:
            known = classify(e)
            if known is None:
                raise
            fail(known[1], known[0])
        finally:
            _as_json.reset(token)

    return run  # type: ignore[return-value]


def settings(config: str | None = None, **flags: Any) -> Any:
    """The command's ``tradestate.settings.Settings`` (flags > TRADESTATE_* > config file); bad
    settings end the command with exit 2."""
    from ..domain.errors import TradestateError
    from ..settings import Settings

    try:
        return Settings.load(config, **flags)
    except TradestateError as e:
        fail(str(e))


def open_log(url: str | None) -> Any:
    """``open_store(url, create=False)``: the existing log at ``url``."""
    from ..adapters.store import open_store

    return open_store(url, create=False)
