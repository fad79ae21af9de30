"""``tradestate bench``: speed against baselines measured in the same run."""

from __future__ import annotations

import os
from typing import Annotated, Optional

import typer

from ..domain.errors import TradestateError
from .common import ConfigOption, command, exit_codes, fail, settings


def register(app: typer.Typer) -> None:
    """Add ``bench`` to the ``tradestate`` command."""

    @app.command(epilog=exit_codes("the benchmark failed"))
    @command
    def bench(
        db: Annotated[Optional[str], typer.Option("--db", help="Where to measure: a postgresql:// URL (the server to use) or sqlite:///dir/any.db (the directory for the SQLite files; default: $TRADESTATE_DB or the config file's db, if set).")] = None,
        quick: Annotated[bool, typer.Option("--quick", help="CI-sized runs (seconds, not minutes).")] = False,
        json: Annotated[bool, typer.Option("--json", help="Print {results: [...]} as JSON.")] = False,
        pg: Annotated[Optional[str], typer.Option("--pg", help="PostgreSQL URL (default: $TRADESTATE_TEST_PG or the local cluster).")] = None,
        sqlite_dir: Annotated[Optional[str], typer.Option("--sqlite-dir", help="Directory for the SQLite files (default: a temporary one).")] = None,
        only: Annotated[Optional[str], typer.Option(help="Comma-separated metric groups: append, batch, replay, projection, recovery, reconcile, postmortem, replication (default: all).")] = None,
        config: ConfigOption = None,
    ) -> None:
        """Measure appends, replay, projection catch-up, recovery, reconciliation, post-mortem queries and
        appends with a synchronous standby against raw baselines measured in the same run, and say which targets are met."""
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
        raise typer.Exit(run_bench(quick=quick, as_json=json, pg_url=pg, sqlite_dir=sqlite_dir, only=only))
