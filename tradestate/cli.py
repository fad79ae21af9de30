"""The ``tradestate`` command."""

from __future__ import annotations

import os
import sys
import time
from datetime import datetime, timezone
from typing import Annotated, Optional

import typer

from .domain.errors import TradestateError
from .views import console, limits_table, orders_table, positions_table, risk_table, state_json, to_json

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Event-sourced trading state: a durable log of every intent, fill and risk action.",
)

from .cli_common import DbOption
from .cli_common import fail as _fail


@app.command()
def demo(
    db: DbOption = None,
    reset: Annotated[bool, typer.Option(help="Drop the tradestate tables in --db first.")] = False,
) -> None:
    """Record a simulated trading session, then read the same state back in a new process."""
    from .demo import main as run_demo

    try:
        code = run_demo(db, reset=reset, console=console)
    except TradestateError as e:
        _fail(str(e))
    raise typer.Exit(code)


@app.command()
def state(
    db: DbOption = None,
    json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
    at: Annotated[Optional[str], typer.Option(help="Clock for time-dependent views (ISO-8601, default now).")] = None,
) -> None:
    """Open the log, fold it, and print positions, orders and risk state."""
    from .adapters.store import open_store
    from .client import TradestateClient

    try:
        now = datetime.fromisoformat(at) if at else datetime.now(timezone.utc)
    except ValueError:
        _fail(f"--at is not an ISO-8601 time: {at!r}")
    if now.tzinfo is None:
        _fail("--at needs a time zone (e.g. 2026-11-20T14:31:05Z)")
    started = time.perf_counter()
    try:
        client = TradestateClient(open_store(db, create=False), clock=lambda: now)
    except TradestateError as e:
        _fail(str(e))
    open_ms = (time.perf_counter() - started) * 1000
    if json:
        payload = state_json(client.state, now)
        payload.update(open_ms=open_ms, pid=os.getpid())
        print(to_json(payload))
    else:
        console.print(positions_table(client.state))
        console.print(orders_table(client.state))
        console.print(risk_table(client.state, now))
        console.print(limits_table(client.state, now))
        console.print(f"{client.position} events folded in {open_ms:.1f} ms")
    client.close()


@app.command()
def project(
    db: DbOption = None,
    rebuild: Annotated[bool, typer.Option("--rebuild", help="Empty the read-model tables and fold the whole log again.")] = False,
    once: Annotated[bool, typer.Option("--once", help="Catch up and exit instead of following the log.")] = False,
    checkpoint_every: Annotated[int, typer.Option("--checkpoint-every", help="Write a recovery checkpoint every N "
                                                  "events (0: never).")] = 10_000,
    checkpoint_seconds: Annotated[float, typer.Option("--checkpoint-seconds", help="...or every T seconds when "
                                                      "the log moved less (a quiet log is checkpointed too).")] = 60.0,
) -> None:
    """Keep the SQL read models (positions, orders, risk...) up to date with the log, and write
    recovery checkpoints as it goes."""
    from .projections.follow import run_project

    if checkpoint_every < 0:
        _fail("--checkpoint-every must be >= 0")
    if not checkpoint_seconds > 0:
        _fail("--checkpoint-seconds must be > 0")
    try:
        raise typer.Exit(run_project(db, rebuild=rebuild, once=once, console=console,
                                     checkpoint_every=checkpoint_every or None,
                                     checkpoint_seconds=checkpoint_seconds))
    except TradestateError as e:
        _fail(str(e))


@app.command()
def serve(
    db: DbOption = None,
    host: Annotated[str, typer.Option(help="Address to bind (other than loopback needs --token).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8321,
    token: Annotated[Optional[str], typer.Option(help="Bearer token required on every request (default: $TRADESTATE_API_TOKEN).")] = None,
) -> None:
    """Serve the read models to risk tools over HTTP (OpenAPI at /docs), with /health and /metrics."""
    from .projections.http.server import run_server

    try:
        raise typer.Exit(run_server(db, host=host, port=port, token=token or os.environ.get("TRADESTATE_API_TOKEN")))
    except TradestateError as e:
        _fail(str(e))


@app.command()
def bench(
    db: Annotated[Optional[str], typer.Option("--db", help="Where to measure: a postgresql:// URL (the server to use) or sqlite:///dir/any.db (the directory for the SQLite files).")] = None,
    quick: Annotated[bool, typer.Option("--quick", help="CI-sized runs (seconds, not minutes).")] = False,
    json: Annotated[bool, typer.Option("--json", help="Print {results: [...]} as JSON.")] = False,
    pg: Annotated[Optional[str], typer.Option("--pg", help="PostgreSQL URL (default: $TRADESTATE_TEST_PG or the local cluster).")] = None,
    sqlite_dir: Annotated[Optional[str], typer.Option("--sqlite-dir", help="Directory for the SQLite files (default: a temporary one).")] = None,
    only: Annotated[Optional[str], typer.Option(help="Comma-separated metric groups: append, batch, replay, projection, recovery, reconcile, postmortem (default: all).")] = None,
) -> None:
    """Measure appends, replay, projection catch-up, recovery, reconciliation and post-mortem queries
    against raw baselines measured in the same run, and say which targets are met."""
    from .adapters.store import sqlite_path
    from .bench import run_bench

    if db and db.startswith(("postgresql://", "postgres://")):
        pg = pg or db
    elif db:
        try:
            sqlite_dir = sqlite_dir or os.path.dirname(os.path.abspath(sqlite_path(db)))
        except TradestateError as e:
            _fail(str(e))
    raise typer.Exit(run_bench(quick=quick, as_json=json, pg_url=pg, sqlite_dir=sqlite_dir, only=only))


# Commands that grow with their issues live in their own modules; each adds itself to ``app``.
from . import cli_chaos, cli_integrity, cli_reconcile, cli_recovery, cli_replay  # noqa: E402

for _module in (cli_recovery, cli_integrity, cli_reconcile, cli_chaos, cli_replay):
    _module.register(app)


def main() -> None:
    try:
        app()
    except TradestateError as e:
        console.print(f"[bold red]error:[/] {e}", highlight=False)
        sys.exit(2)


if __name__ == "__main__":
    main()
