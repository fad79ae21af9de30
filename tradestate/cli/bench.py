"""``tradestate bench``: speed against baselines measured in the same run."""

from __future__ import annotations

import os
from typing import Annotated, Any, Optional

import typer
from typer.core import TyperCommand

from ..domain.errors import TradestateError
from .common import ConfigOption, command, exit_codes, fail, settings


DEFAULT_SCALING = "100k,1M,10M"


class _BenchCommand(TyperCommand):
    """``bench``, whose ``--scaling`` takes its sizes optionally: alone (at the end, or before
    another option) it means ``DEFAULT_SCALING``."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        args = list(args)
        for i, arg in enumerate(args):
            if arg == "--":
                break
            if arg == "--scaling" and (i + 1 == len(args) or args[i + 1].startswith("-")):
                args.insert(i + 1, DEFAULT_SCALING)
                break
        return super().parse_args(ctx, args)


def register(app: typer.Typer) -> None:
    """Add ``bench`` to the ``tradestate`` command."""

    @app.command(cls=_BenchCommand, epilog=exit_codes("the benchmark failed"))
    @command
    def bench(
        db: Annotated[Optional[str], typer.Option("--db", help="Where to measure: a postgresql:// URL (the server to use) or sqlite:///dir/any.db (the directory for the SQLite files; default: $TRADESTATE_DB or the config file's db, if set).")] = None,
        quick: Annotated[bool, typer.Option("--quick", help="CI-sized runs (seconds, not minutes).")] = False,
        json: Annotated[bool, typer.Option("--json", help="Print one JSON document: results, runs (rows per log size), targets (met, line, ratio), sizes, scaling, loads, machine.")] = False,
        events: Annotated[Optional[str], typer.Option("--events", help="Trading-log size of the log-size-dependent groups (replay, projection, recovery, postmortem, memory): e.g. 250000, 100k, 10M; at least 1,000 (default 1M; --quick 100k).")] = None,
        scaling: Annotated[Optional[str], typer.Option("--scaling", help="Run only the log-size-dependent groups at 100k, 1M and 10M events (or the sizes given: --scaling 100k,1M) and show how each figure grows per 10x.")] = None,
        pg: Annotated[Optional[str], typer.Option("--pg", help="PostgreSQL URL (default: $TRADESTATE_TEST_PG or the local cluster).")] = None,
        sqlite_dir: Annotated[Optional[str], typer.Option("--sqlite-dir", help="Directory for the SQLite files (default: a temporary one).")] = None,
        only: Annotated[Optional[str], typer.Option(help="Comma-separated metric groups: append, batch, replay, projection, recovery, reconcile, postmortem, memory, takeover, replication, failover, backup, migrate, drill, partitions, instruments (default: all).")] = None,
        config: ConfigOption = None,
    ) -> None:
        """Measure appends, replay, projection catch-up, recovery, reconciliation, post-mortem queries, memory and
        appends with a synchronous standby against raw baselines measured in the same run, and say which targets are met
        (MET / MISSED with the ratio). --scaling shows how the log-size-dependent figures grow with the log."""
        from ..adapters.store import sqlite_path
        from ..tools.bench.run import run_bench

        db = settings(config, db=db).db
        if db and db.startswith(("postgresql://", "postgres://")):
            pg = pg or db
        elif db:
            try:
                sqlite_dir = sqlite_dir or os.path.dirname(os.path.abspath(sqlite_path(db)))
            except TradestateError as e:
                fail(str(e))
        raise typer.Exit(run_bench(quick=quick, as_json=json, pg_url=pg, sqlite_dir=sqlite_dir, only=only,
                                   events=events, scaling=scaling))
