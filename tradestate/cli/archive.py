"""``tradestate partitions`` and ``tradestate archive``: monthly partitions of a PostgreSQL log and
Parquet archives of its sealed months (adapters/store/partitions.py, adapters/store/archive.py)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from .common import (ConfigOption, DbOption, ExitCode, JsonOption, choice, command, exit_codes, fail, open_log,
                     settings)

LOGS = {"trading": ("ts_events",), "market": ("ts_market_events",), "both": ("ts_events", "ts_market_events")}
LogOption = Annotated[str, typer.Option("--log", help="Which log (default: both).",
                                        **choice(*LOGS, what="--log"))]
MonthOption = Annotated[Optional[str], typer.Option("--month", metavar="YYYY-MM", help="The month (UTC) of the new open partition (default: this month).")]


def _logs(which: str) -> tuple[str, ...]:
    if which not in LOGS:
        fail(f"--log {which!r} is not one of: {', '.join(LOGS)}")
    return LOGS[which]


def register(app: typer.Typer) -> None:
    """Add ``partitions`` and ``archive`` to the ``tradestate`` command."""
    parts = typer.Typer(no_args_is_help=True, help="Monthly partitions of a PostgreSQL log (opt-in: a new log "
                        "with ?partitions=month in its URL, or `partitions convert`).")
    app.add_typer(parts, name="partitions")

    @parts.command("list", epilog=exit_codes())
    @command
    def list_(db: DbOption = None, log: LogOption = "both", json: JsonOption = False,
              config: ConfigOption = None) -> None:
        """The partitions of each log (positions, month), oldest first."""
        from ..adapters.store import partitions as P
        from ..render import console, to_json

        store = open_log(settings(config, db=db).db)
        try:
            found = {t: P.partitions(store, t) for t in _logs(log)}
        finally:
            store.close()
        if json:
            print(to_json({t: [p.__dict__ for p in ps] for t, ps in found.items()}))
            return
        for t, ps in found.items():
            if not ps:
                console.print(f"{t}: one table (not partitioned)", highlight=False)
            for p in ps:
                span = f"{p.first:,}-" + (f"{p.last:,}" if p.last is not None else "(open)")
                console.print(f"{t}: {p.name}  {p.month}  positions {span}", highlight=False)

    @parts.command(epilog=exit_codes())
    @command
    def convert(db: DbOption = None, log: LogOption = "both", month: MonthOption = None, json: JsonOption = False,
                config: ConfigOption = None) -> None:
        """Partition an existing log in place: its table becomes the first (closed) partition, appends
        go to a new open one for --month (default: this month). Appends wait while it runs."""
        from ..adapters.store import partitions as P
        from ..render import console, to_json

        store = open_log(settings(config, db=db).db)
        try:
            out = {t: P.convert(store, t, month=month) for t in _logs(log)}
        finally:
            store.close()
        if json:
            print(to_json({t: p.__dict__ if p else None for t, p in out.items()}))
            return
        for t, p in out.items():
            console.print(f"{t}: " + (f"partitioned; positions 1-{p.last:,} are {p.name}" if p else
                                      "already partitioned"), highlight=False)

    @parts.command(epilog=exit_codes())
    @command
    def roll(db: DbOption = None, log: LogOption = "both", month: MonthOption = None,
             lock_timeout: Annotated[float, typer.Option("--lock-timeout", help="Seconds to wait for the lock.")] = 5.0,
             json: JsonOption = False, config: ConfigOption = None) -> None:
        """Close the open partition at the head and open --month's (default: this month). Run it
        monthly (cron: `0 0 1 * *`); appends wait for the length of one scan of the month closed."""
        from ..adapters.store import partitions as P
        from ..render import console, to_json

        store = open_log(settings(config, db=db).db)
        try:
            out = {t: P.roll(store, t, month=month, lock_timeout=lock_timeout) for t in _logs(log)}
        finally:
            store.close()
        if json:
            print(to_json({t: p.__dict__ if p else None for t, p in out.items()}))
            return
        for t, p in out.items():
            console.print(f"{t}: " + (f"closed {p.name} at position {p.last:,}" if p else "nothing to roll"),
                          highlight=False)

    arch = typer.Typer(help="Parquet archives of sealed months of a partitioned PostgreSQL log.")
    app.add_typer(arch, name="archive", invoke_without_command=True)

    @arch.callback(invoke_without_command=True, epilog=exit_codes())
    @command
    def archive(
        ctx: typer.Context,
        to: Annotated[Optional[str], typer.Option("--to", metavar="DIR", help="The archive directory.")] = None,
        db: DbOption = None,
        before: Annotated[Optional[str], typer.Option("--before", metavar="YYYY-MM", help="Archive the months "
                                                      "before this one (default: this month).")] = None,
        log: LogOption = "both",
        json: JsonOption = False,
        config: ConfigOption = None,
    ) -> None:
        """Export every sealed, closed month before --before to Parquet (manifests chained, recorded
        in ts_archives), read it back, then detach and drop its partition."""
        if ctx.invoked_subcommand is not None:
            return
        if not to:
            fail("archive needs --to DIR (or a subcommand: list, check, restore)")
        from ..adapters.store import archive as A
        from ..render import console, to_json

        store = open_log(settings(config, db=db).db)
        try:
            done = A.archive(store, to, before=before, logs=_logs(log))
        finally:
            store.close()
        if json:
            print(to_json({"ok": True, "archived": [a.to_json() for a in done]}))
            return
        if not done:
            console.print("nothing to archive (closed, sealed months before the cut-off; `tradestate verify --seal` "
                          "seals)", highlight=False)
        for a in done:
            console.print(f"{a.log} {a.month}: positions {a.first_position:,}-{a.last_position:,} ({a.rows:,} rows) "
                          f"-> {a.path()}", highlight=False)

    @arch.command("list", epilog=exit_codes())
    @command
    def archive_list(db: DbOption = None, json: JsonOption = False, config: ConfigOption = None) -> None:
        """The archives recorded in the database, oldest first (restored ones marked)."""
        from ..adapters.store import archive as A
        from ..render import console, to_json

        store = open_log(settings(config, db=db).db)
        try:
            items = A.archived(store)
        finally:
            store.close()
        if json:
            print(to_json([a.to_json() for a in items]))
            return
        if not items:
            console.print("no archives", highlight=False)
        for a in items:
            state = "restored" if a.attached else "archived"
            console.print(f"{a.log} {a.month}: positions {a.first_position:,}-{a.last_position:,}, {a.rows:,} rows, "
                          f"{a.first_recorded_at[:19]} .. {a.last_recorded_at[:19]}, {state}, {a.path()}",
                          highlight=False)

    @arch.command("check", epilog=exit_codes("an archive file or manifest is missing, changed or unlinked"))
    @command
    def archive_check(db: DbOption = None, dir_: Annotated[Optional[str], typer.Option("--dir", metavar="DIR", help=(
                      "Where the archives are (default: the URL's archive=, $TRADESTATE_ARCHIVE_DIR, or where "
                      "they were written)."))] = None, json: JsonOption = False, config: ConfigOption = None) -> None:
        """Re-verify every archive: file sha256, manifest, and the manifests' chain."""
        from ..adapters.store import archive as A
        from ..render import console, to_json

        store = open_log(settings(config, db=db).db)
        try:
            result = A.check(store, dir_)
        finally:
            store.close()
        if json:
            print(to_json(result.__dict__))
        else:
            console.print(("[bold green]ok[/]: " if result.ok else "[bold red]damaged[/]: ") + result.detail,
                          highlight=False)
        if not result.ok:
            raise typer.Exit(int(ExitCode.PROBLEM))

    @arch.command("restore", epilog=exit_codes())
    @command
    def archive_restore(
        month: Annotated[str, typer.Option("--month", metavar="YYYY-MM", help="The archived month to load back.")],
        db: DbOption = None,
        dir_: Annotated[Optional[str], typer.Option("--dir", metavar="DIR", help="Where the archives are.")] = None,
        log: Annotated[str, typer.Option("--log", help="Which log (default: trading).",
                                         **choice("trading", "market", what="--log"))] = "trading",
        json: JsonOption = False,
        config: ConfigOption = None,
    ) -> None:
        """Load one archived month back as a read-only partition (replay state --at inside it, SQL)."""
        from ..adapters.store import archive as A
        from ..render import console, to_json

        (table,) = _logs(log)
        store = open_log(settings(config, db=db).db)
        try:
            items = A.restore(store, month, directory=dir_, log=table)
        finally:
            store.close()
        if json:
            print(to_json({"ok": True, "restored": [a.to_json() for a in items]}))
            return
        for a in items:
            console.print(f"{a.log} {a.month}: positions {a.first_position:,}-{a.last_position:,} attached again "
                          "(read-only)", highlight=False)
