"""``tradestate migrate``: move a log to another database (SQLite -> PostgreSQL, and back)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import typer

from .common import ConfigOption, ExitCode, JsonOption, command, exit_codes, fail


@contextmanager
def _progress(enabled: bool) -> Iterator[Callable[[str, int, int], None] | None]:
    """A rich progress bar per stage (copy of each table, verify, rebuild) on a terminal; None elsewhere."""
    from ..render import err_console as console

    if not enabled or not console.is_terminal:
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=console, transient=True) as bar:
        tasks: dict[str, Any] = {}

        def update(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=None)
            bar.update(tasks[stage], completed=done, total=total or None)

        yield update


def _rebuild(store: Any, progress: Callable[[int, int], None] | None) -> int:
    from ..projections.projector import Projector

    return Projector(store).rebuild(progress)


def register(app: typer.Typer) -> None:
    """Add ``migrate`` to the app."""

    @app.command(epilog=exit_codes("the copy does not check out on the target (the source's digest chain fails "
                                   "there): nothing was migrated, the target is as it was"))
    @command
    def migrate(
        from_: Annotated[str, typer.Option("--from", help="The log to copy: sqlite:///a.db or postgresql://... "
                                                          "(read in one snapshot; writers may carry on).")],
        to: Annotated[str, typer.Option("--to", help="Where to: postgresql://...[?schema=x] or sqlite:///b.db.")],
        force: Annotated[bool, typer.Option("--force", help="Replace a log the target already holds (its content "
                                                            "is kept aside).")] = False,
        rebuild: Annotated[bool, typer.Option("--rebuild/--no-rebuild", help="Rebuild the read models on the "
                                              "target (else `tradestate project` does it later).")] = True,
        json: JsonOption = False,
        config: ConfigOption = None,  # noqa: ARG001 - every command takes one; both URLs are given
    ) -> None:
        """Copy the logs, the digest chain, checkpoints, leases and alert cursors to another database,
        verify the whole chain there against the source, swap it in, and rebuild the read models."""
        from ..adapters.store import migrate as mg
        from ..projections.tables import drop_read_models
        from ..render import console, to_json

        try:
            with _progress(not json) as progress:
                result = mg.migrate(from_, to, force=force, progress=progress, extra_drop=drop_read_models,
                                    read_models=_rebuild if rebuild else None)
        except mg.MigrateDamaged as e:
            fail(str(e), ExitCode.PROBLEM)
        except OSError as e:
            fail(str(e))
        if json:
            print(to_json({"ok": True} | result.to_dict()))
            return
        trading, market = result.logs["ts_events"], result.logs["ts_market_events"]
        moved = result.seconds["total"] - result.seconds.get("rebuild", 0.0)  # copied, verified, swapped in
        console.print(f"[bold green]migrated[/] {result.source} -> {result.target}: trading log head {trading['head']:,}, "
                      f"market log head {market['head']:,} ({result.events:,} events in {moved:.1f} s, "
                      f"{result.events / moved:,.0f} events/s)", highlight=False)
        others = ", ".join(f"{t} {n:,}" for t, n in result.tables.items() if t not in result.logs)
        console.print(f"  also copied: {others or 'nothing else'}", highlight=False)
        console.print(f"  digest chain verified on the target ({result.verify.get('checked_events', 0):,} events), "
                      f"last digest {result.last_digest or '-'} as on the source; {result.unsealed_checked:,} unsealed "
                      "events compared by hash", highlight=False)
        if "read_models" in result.rebuilt:
            console.print(f"  read models rebuilt up to {result.rebuilt['read_models']:,} "
                          f"({result.seconds.get('rebuild', 0.0):.1f} s)", highlight=False)
        else:
            console.print("  read models not rebuilt: run `tradestate project`", highlight=False)
        if "order_refs" in result.rebuilt:
            console.print(f"  order-reference index rebuilt up to {result.rebuilt['order_refs']:,}", highlight=False)
        if result.previous_saved_to:
            console.print(f"  the target's previous content is kept in {result.previous_saved_to}", highlight=False)
        for log, n in result.source_moved_on.items():
            console.print(f"[yellow]warning[/]: {n:,} events were appended to the source's {log} after the snapshot "
                          "and are not on the target: stop its writers and migrate again with --force",
                          highlight=False)
