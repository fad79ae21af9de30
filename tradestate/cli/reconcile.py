"""``tradestate reconcile``: compare the log with a broker and append corrective events.

Options come from the command line, else from a TOML file (``--config``): top-level keys or a
``[reconcile]`` table, plus ``[sim]``, ``[alpaca]``, ``[ib]`` tables for the broker's own options,
with the flags' names (``base_url`` or ``base-url``). Flags win over the file.

Exit status: 0 clean or corrected (also discrepancies when not strict), 1 discrepancies in strict
mode or anything unknown (a query failed, the venue was unreachable), 2 bad input.
"""

from __future__ import annotations

import tomllib
from datetime import datetime
from typing import Annotated, Any, Optional

import typer

OPTION_KEYS = ("db", "broker", "account", "strict", "since", "base_url", "stream_url", "host", "port", "client_id",
               "ib_account", "sim_state", "venue")


def load_config(path: str | None, broker: str | None) -> dict[str, Any]:
    """The options a TOML file gives (keys normalised to underscores)."""
    if path is None:
        return {}
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ValueError(f"config file {path!r} does not exist") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"config file {path!r} is not valid TOML: {e}") from None

    def flat(table: Any) -> dict[str, Any]:
        if not isinstance(table, dict):
            return {}
        return {k.replace("-", "_"): v for k, v in table.items() if not isinstance(v, dict)}

    options = {**flat(data), **flat(data.get("reconcile"))}
    chosen = broker or options.get("broker")
    if chosen:
        options.update(flat(data.get(chosen)))
    unknown = sorted(set(options) - set(OPTION_KEYS))
    if unknown:
        raise ValueError(f"config file {path!r}: unknown option(s) {', '.join(unknown)}; known: {', '.join(OPTION_KEYS)}")
    return options


def register(app: typer.Typer) -> None:
    """Add this module's commands to the ``tradestate`` command."""

    @app.command()
    def reconcile(
        db: Annotated[Optional[str], typer.Option("--db", help="Database URL (default: $TRADESTATE_DB, then sqlite:///tradestate.db).")] = None,
        broker: Annotated[Optional[str], typer.Option("--broker", help="sim, alpaca or ib.")] = None,
        account: Annotated[Optional[str], typer.Option("--account", help="Our account id (the one on our events).")] = None,
        strict: Annotated[Optional[bool], typer.Option("--strict/--no-strict", help="Block trading on any discrepancy until --ack.")] = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON for scripts.")] = False,
        config: Annotated[Optional[str], typer.Option("--config", help="TOML file with these options.")] = None,
        since: Annotated[Optional[str], typer.Option("--since", help="Only orders and fills since this ISO-8601 time.")] = None,
        base_url: Annotated[Optional[str], typer.Option("--base-url", help="Alpaca: REST base URL.")] = None,
        stream_url: Annotated[Optional[str], typer.Option("--stream-url", help="Alpaca: trade-updates stream URL.")] = None,
        host: Annotated[Optional[str], typer.Option("--host", help="IB: TWS / gateway host.")] = None,
        port: Annotated[Optional[int], typer.Option("--port", help="IB: TWS / gateway port.")] = None,
        client_id: Annotated[Optional[int], typer.Option("--client-id", help="IB: API client id.")] = None,
        ib_account: Annotated[Optional[str], typer.Option("--ib-account", help="IB: the account code, when it differs from --account.")] = None,
        sim_state: Annotated[Optional[str], typer.Option("--sim-state", help="sim: the simulated broker's state file.")] = None,
        ack: Annotated[bool, typer.Option("--ack", help="Record an operator's decision on the discrepancies (unblocks trading).")] = False,
        by: Annotated[Optional[str], typer.Option("--by", help="--ack: who decided.")] = None,
        decision: Annotated[Optional[str], typer.Option("--decision", help="--ack: what was decided.")] = None,
    ) -> None:
        """Compare the log with a broker account; append corrective events (re-running adds nothing)."""
        from .common import fail as _fail
        from ..render import console, to_json

        flags = {"db": db, "broker": broker, "account": account, "strict": strict, "since": since,
                 "base_url": base_url, "stream_url": stream_url, "host": host, "port": port,
                 "client_id": client_id, "ib_account": ib_account, "sim_state": sim_state}
        try:
            options = load_config(config, broker)
        except ValueError as e:
            _fail(str(e))
        options.update({k: v for k, v in flags.items() if v is not None})

        from ..adapters.brokers.base import VenueError
        from ..adapters.store import open_store
        from ..client import TradestateClient
        from ..domain.errors import TradestateError
        from ..reconcile import BROKERS, acknowledge, make_adapter
        from ..reconcile import reconcile as run_reconcile

        if ack:
            if not options.get("account") or not by or not decision:
                _fail("--ack needs --account, --by NAME and --decision TEXT")
            try:
                with TradestateClient(open_store(options.get("db"), create=False)) as client:
                    recorded = acknowledge(client, options["account"], by=by, decision=decision)
            except TradestateError as e:
                _fail(str(e))
            if as_json:
                print(to_json({"acknowledged": True, "account": options["account"], "position": recorded.position}))
            else:
                console.print(f"recorded the decision of {by} for {options['account']} at position "
                              f"{recorded.position}: trading is no longer blocked")
            raise typer.Exit(0)

        chosen = options.get("broker")
        if chosen not in BROKERS:
            _fail(f"--broker must be one of {', '.join(BROKERS)}" + (f", not {chosen!r}" if chosen else ""))
        since_at = None
        if options.get("since"):
            try:
                since_at = datetime.fromisoformat(str(options["since"]).replace("Z", "+00:00"))
            except ValueError:
                _fail(f"--since is not an ISO-8601 time: {options['since']!r}")
            if since_at.tzinfo is None:
                _fail("--since needs a time zone (e.g. 2026-11-20T14:31:05Z)")
        try:
            client = TradestateClient(open_store(options.get("db"), create=False))
        except TradestateError as e:
            _fail(str(e))
        try:
            try:
                adapter = make_adapter(chosen, options)
            except TradestateError as e:
                _fail(str(e))
            except VenueError as e:
                _fail(f"could not reach {chosen}: {e}", code=1)
            try:
                result = run_reconcile(client, adapter, strict=bool(options.get("strict")), since=since_at)
            except TradestateError as e:
                _fail(str(e))
            finally:
                adapter.close()
        finally:
            client.close()

        if as_json:
            print(to_json(result.as_dict()))
        else:
            print_result(console, result)
        failed = result.status == "unknown" or (bool(options.get("strict")) and result.status == "discrepancies")
        raise typer.Exit(1 if failed else 0)


def print_result(console: Any, result: Any) -> None:
    from rich.table import Table

    colour = {"clean": "green", "corrected": "yellow", "discrepancies": "red", "unknown": "red"}[result.status]
    table = Table(title=f"Reconciliation {result.reconciliation_id[:8]} · {result.broker} {result.venue} · "
                        f"{result.account}", title_justify="left")
    for column in ("kind", "order", "symbol", "ours", "venue", "resolution", "detail"):
        table.add_column(column, overflow="fold")
    for d in result.discrepancies:
        table.add_row(d["kind"], d.get("client_order_id", ""), d.get("symbol", ""), d.get("ours", ""),
                      d.get("theirs", ""), d["resolution"], d["detail"])
    if result.discrepancies:
        console.print(table)
    counts = ", ".join(f"{k} {v}" for k, v in sorted(result.counts.items()))
    console.print(f"status [bold {colour}]{result.status}[/]: {len(result.corrective_event_ids)} corrective "
                  f"events, {len(result.discrepancies)} discrepancies in {result.duration_s * 1000:.0f} ms ({counts})",
                  highlight=False)
    for error in result.errors:
        console.print(f"[red]unknown:[/] {error}", highlight=False)
    if result.blocked:
        console.print("[bold red]trading is blocked[/] until `tradestate reconcile --ack --account "
                      f"{result.account} --by NAME --decision TEXT`", highlight=False)
