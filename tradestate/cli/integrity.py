"""``tradestate verify``, ``backup`` and ``restore``: the digest chain and backups of the log."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Annotated, Any, Iterator, Optional

import typer

DbOption = Annotated[
    Optional[str],
    typer.Option("--db", help="Database URL: sqlite:///path.db or postgresql://... (default: $TRADESTATE_DB, then sqlite:///tradestate.db)"),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


def _fail(message: str, code: int, as_json: bool) -> None:
    from ..render import console, to_json

    if as_json:
        print(to_json({"ok": False, "error": message, "exit_code": code}))
    else:
        console.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)


@contextmanager
def _progress(label: str, enabled: bool) -> Iterator[Any]:
    """A progress callback (done, total): a bar on a terminal, nothing otherwise."""
    from ..render import console

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

    @app.command()
    def verify(
        db: DbOption = None,
        json: JsonOption = False,
        seal: Annotated[bool, typer.Option("--seal", help="Seal the unsealed tail first (writes to the chain).")] = False,
    ) -> None:
        """Walk the log's digest chain; exit 0 if intact, 1 if altered (naming the first bad position), 2 on bad input."""
        from ..adapters.store import digest, open_store
        from ..domain.errors import TradestateError
        from ..render import console, to_json

        try:
            store = open_store(db, create=False)
        except TradestateError as e:
            _fail(str(e), 2, json)
        try:
            sealed = digest.seal(store) if seal else None
            with _progress("verifying", not json) as progress:
                result = digest.verify(store, progress=progress)
        except TradestateError as e:
            _fail(str(e), 2, json)
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
        raise typer.Exit(0 if result.ok else 1)

    @app.command()
    def backup(
        to: Annotated[str, typer.Option("--to", help="The backup file to write (replaced atomically).")],
        db: DbOption = None,
        json: JsonOption = False,
        no_seal: Annotated[bool, typer.Option("--no-seal", help="Do not seal the chain's tail first.")] = False,
    ) -> None:
        """Write a compressed backup of the log (with a manifest: heads, last digest, checksums)."""
        from ..adapters.store import backup as bk
        from ..adapters.store import open_store
        from ..domain.errors import TradestateError
        from ..render import console, to_json

        try:
            store = open_store(db, create=False)
        except TradestateError as e:
            _fail(str(e), 2, json)
        try:
            manifest = bk.backup(store, to, seal=not no_seal)
        except (TradestateError, OSError) as e:
            _fail(str(e), 2, json)
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

    @app.command()
    def restore(
        from_: Annotated[str, typer.Option("--from", help="The backup file to restore.")],
        db: DbOption = None,
        force: Annotated[bool, typer.Option("--force", help="Replace a log that is already there (kept aside).")] = False,
        json: JsonOption = False,
    ) -> None:
        """Verify a backup in a staging place, then swap it in; exit 1 if the file is damaged, 2 if refused."""
        from ..adapters.store import backup as bk
        from ..domain.errors import TradestateError
        from ..projections.tables import drop_read_models
        from ..render import console, to_json

        try:
            with _progress("verifying the backup", not json) as progress:
                result = bk.restore(db, from_, force=force, progress=progress, extra_drop=drop_read_models)
        except bk.BackupDamaged as e:
            _fail(str(e), 1, json)
        except (TradestateError, OSError) as e:
            _fail(str(e), 2, json)
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
