"""``tradestate drill``: a restore drill of the newest backup chain, measured and put on record."""

from __future__ import annotations

from typing import Annotated, Any, Optional

import typer

from .common import ConfigOption, DbOption, ExitCode, JsonOption, command, exit_codes, fail, settings


def _key(key_file: str | None, key_env: str | None) -> bytes | None:
    """The backup key from a file or an environment variable (None: unencrypted backups)."""
    if key_file is None and key_env is None:
        return None
    if key_file is not None and key_env is not None:
        fail("give --key-file or --key-env, not both")
    from ..adapters.store import backup as bk

    try:
        return bk.load_key(key_file=key_file, key_env=key_env)
    except bk.BackupError as e:
        fail(str(e))


def render_drill(report: Any, console: Any) -> None:
    """The drill's steps as a table, then its figures and verdict."""
    from rich.table import Table

    table = Table(title=f"restore drill of {report.chain_id or 'the newest backup'}", title_justify="left")
    for column in ("step", "status", "seconds", "detail"):
        table.add_column(column, justify="right" if column == "seconds" else "left", overflow="fold")
    colour = {"ok": "green", "failed": "red", "skipped": "yellow", "warn": "yellow"}
    for s in report.steps:
        table.add_row(s.name, f"[{colour.get(s.status, 'white')}]{s.status}[/]", f"{s.seconds:.2f}", s.detail)
    console.print(table)

    def secs(x: float | None) -> str:
        return "-" if x is None else f"{x:,.2f} s"

    figures = Table(show_header=False, box=None)
    figures.add_column(style="bold")
    figures.add_column()
    figures.add_row("links", "\n".join(report.links) or "-")
    figures.add_row("scratch", report.scratch or "-")
    figures.add_row("heads (backup / live)", ", ".join(
        f"{log} {report.heads.get(log, 0):,} / " + (f"{report.live_heads[log]:,}" if log in report.live_heads else "-")
        for log in sorted(report.heads)) or "-")
    figures.add_row("RTO (start to ready state)", secs(report.rto_seconds) + "  (restore " + secs(report.restore_seconds)
                    + ", fold " + secs(report.fold_seconds) + ")")
    figures.add_row("RPO (newest backed-up event)", secs(report.rpo_seconds) + (
        f"  ({report.events_behind:,} live events beyond the backup)" if report.events_behind is not None else ""))
    figures.add_row("record", report.record_note)
    console.print(figures)
    if report.passed:
        console.print("[bold green]drill passed[/]")
    else:
        console.print(f"[bold red]drill failed:[/] {report.reason}", highlight=False)


def register(app: typer.Typer) -> None:
    """Add ``drill`` to the ``tradestate`` command."""

    @app.command(epilog=exit_codes("the drill failed (a damaged or missing link, a wrong key, a backup that "
                                   "diverges from the live log, a restored log that does not fold); it is "
                                   "recorded as failed"))
    @command
    def drill(
        db: DbOption = None,
        sources: Annotated[Optional[list[str]], typer.Option(
            "--from", help="A directory of backups, or backup files (repeat): the newest complete chain among "
                           "them is drilled.")] = None,
        key_file: Annotated[Optional[str], typer.Option("--key-file", help="File holding the backups' key.")] = None,
        key_env: Annotated[Optional[str], typer.Option("--key-env", metavar="VAR",
                                                       help="Environment variable holding the backups' key.")] = None,
        scratch: Annotated[Optional[str], typer.Option(
            "--scratch", metavar="URL", help="Where to restore (must not exist; removed afterwards). Default: a "
                                             "temporary SQLite file for a SQLite backup, a throwaway schema on the "
                                             "live PostgreSQL server for a PostgreSQL one.")] = None,
        no_record: Annotated[bool, typer.Option("--no-record", help="Do not record DrillCompleted in the live "
                                                                    "log.")] = False,
        json: JsonOption = False,
        config: ConfigOption = None,
    ) -> None:
        """Restore drill: restore the newest backup chain into a scratch database, verify it, compare its
        heads and digests with the live log, fold it to a ready state, measure the RTO and RPO, and record
        DrillCompleted in the live log. Exit 0 = passed."""
        from ..drill import drill as run_drill
        from ..render import console, err_console, to_json

        if not sources:
            fail("give the backups to drill: --from DIR or --from FILE")
        key = _key(key_file, key_env)
        url = settings(config, db=db).db
        if not json and err_console.is_terminal:
            from .integrity import _progress

            with _progress("verifying the restored chain", True) as progress:
                report = run_drill(url, sources, key=key, scratch=scratch, record=not no_record, progress=progress)
        else:
            report = run_drill(url, sources, key=key, scratch=scratch, record=not no_record)
        if json:
            print(to_json(report.as_dict()))
        else:
            render_drill(report, console)
        raise typer.Exit(ExitCode.OK if report.passed else ExitCode.PROBLEM)
