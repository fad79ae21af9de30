"""``tradestate verify``, ``backup`` and ``restore``: the digest chain and backups of the log."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Annotated, Any, Iterator

import typer

from .common import ConfigOption, DbOption, ExitCode, JsonOption, command, exit_codes, fail, open_log, settings


@contextmanager
def _progress(label: str, enabled: bool) -> Iterator[Any]:
    """A progress callback (done, total): a bar on a terminal, nothing otherwise."""
    from ..render import err_console as console

    if not enabled or not console.is_terminal:
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=console, transient=True) as bar:
        task = bar.add_task(label, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total or None)

        yield update


def register(app: typer.Typer) -> None:
    """Add this module's commands to the ``tradestate`` command."""

    @app.command(epilog=exit_codes("the log was altered (the first bad position is named)"))
    @command
    def verify(
        db: DbOption = None,
        json: JsonOption = False,
        seal: Annotated[bool, typer.Option("--seal", help="Seal the unsealed tail first (writes to the chain).")] = False,
        config: ConfigOption = None,
    ) -> None:
        """Walk the log's digest chain; exit 0 if intact, 1 if altered (naming the first bad position)."""
        from ..adapters.store import digest
        from ..render import console, to_json

        store = open_log(settings(config, db=db).db)
        try:
            sealed = digest.seal(store) if seal else None
            with _progress("verifying", not json) as progress:
                result = digest.verify(store, progress=progress)
        finally:
            store.close()
        if json:
            payload = result.to_dict() | {"exit_code": 0 if result.ok else 1}
            if sealed is not None:
                payload["sealed"] = sealed.to_dict()
            print(to_json(payload))
        else:
            from rich.table import Table

            if sealed is not None:
                console.print(f"sealed {sealed.events} events in {sealed.ranges} ranges ({sealed.seconds:.2f} s)")
            table = Table(title="digest chain")
            for column in ("log", "sealed up to", "head", "checked", "unsealed", "last digest"):
                table.add_column(column, justify="left" if column in ("log", "last digest") else "right")
            for log, info in result.logs.items():
                table.add_row(log, str(info["sealed_upto"]), str(info["head"]), str(info["checked_events"]),
                              str(info["unsealed_events"]), info["last_digest"][:16])
            console.print(table)
            rate = result.checked_events / result.seconds if result.seconds else 0
            if result.ok:
                console.print(f"[bold green]ok[/]: {result.detail} ({result.checked_events} events in "
                              f"{result.seconds:.2f} s, {rate:,.0f}/s)", highlight=False)
            else:
                console.print(f"[bold red]ALTERED[/]: {result.log} first bad position "
                              f"[bold]{result.first_bad_position}[/] ({result.problem}): {result.detail}",
                              highlight=False)
        raise typer.Exit(ExitCode.OK if result.ok else ExitCode.PROBLEM)

    @app.command(epilog=exit_codes())
    @command
    def backup(
        to: Annotated[str, typer.Option("--to", help="The backup file to write (replaced atomically).")],
        db: DbOption = None,
        json: JsonOption = False,
        no_seal: Annotated[bool, typer.Option("--no-seal", help="Do not seal the chain's tail first.")] = False,
        config: ConfigOption = None,
    ) -> None:
        """Write a compressed backup of the log (with a manifest: heads, last digest, checksums)."""
        from ..adapters.store import backup as bk
        from ..render import console, to_json

        store = open_log(settings(config, db=db).db)
        try:
            manifest = bk.backup(store, to, seal=not no_seal)
        except OSError as e:
            fail(str(e))
        finally:
            store.close()
        if json:
            print(to_json({"ok": True, "manifest": manifest.to_dict()}))
            return
        trading = manifest.logs["ts_events"]
        chain = manifest.chain["ts_events"]
        console.print(f"[bold green]backup written[/]: {manifest.path} ({manifest.size:,} bytes)", highlight=False)
        console.print(f"  trading log head {trading['head']} ({trading['rows']} rows), market log head "
                      f"{manifest.logs['ts_market_events']['head']}; sealed up to {chain['sealed_upto']}, "
                      f"last digest {chain['last_digest'] or '-'}", highlight=False)

    @app.command(epilog=exit_codes("the backup file is damaged (nothing restored)"))
    @command
    def restore(
        from_: Annotated[str, typer.Option("--from", help="The backup file to restore.")],
        db: DbOption = None,
        force: Annotated[bool, typer.Option("--force", help="Replace a log that is already there (kept aside).")] = False,
        json: JsonOption = False,
        config: ConfigOption = None,
    ) -> None:
        """Verify a backup in a staging place, then swap it in; exit 1 if the file is damaged, 2 if refused."""
        from ..adapters.store import backup as bk
        from ..projections.tables import drop_read_models
        from ..render import console, to_json

        url = settings(config, db=db).db
        try:
            with _progress("verifying the backup", not json) as progress:
                result = bk.restore(url, from_, force=force, progress=progress, extra_drop=drop_read_models)
        except bk.BackupDamaged as e:
            fail(str(e), ExitCode.PROBLEM)
        except OSError as e:
            fail(str(e))
        if json:
            print(to_json({"ok": True} | result.to_dict()))
            return
        trading = result.logs["ts_events"]
        console.print(f"[bold green]restored[/] {result.target}: trading log head {trading['head']}, market log head "
                      f"{result.logs['ts_market_events']['head']}; digest chain verified "
                      f"({result.verify['checked_events']} events), last digest {result.last_digest or '-'}",
                      highlight=False)
        if result.previous_saved_to:
            console.print(f"  the replaced content is kept in {result.previous_saved_to}", highlight=False)
        console.print("  read models dropped: run `tradestate project` to rebuild them", highlight=False)
