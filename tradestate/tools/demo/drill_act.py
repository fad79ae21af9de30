"""The demo's last act: a backup chain (a full backup, more activity, an increment) and a restore
drill of it, with its RTO and RPO, and the ``DrillCompleted`` it put on record."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from datetime import datetime, timezone

from rich.console import Console

from ...adapters.store import open_store, sqlite_path
from ...adapters.store import backup as bk
from ...client import TradestateClient


def _folder(url: str) -> tuple[str, bool]:
    """Where the backups go: ``backups/`` beside a SQLite demo database (emptied of the demo's own
    files first), else a temporary directory (removed afterwards: the second value)."""
    if url.startswith("sqlite:///"):
        folder = os.path.join(os.path.dirname(os.path.abspath(sqlite_path(url))), "backups")
        os.makedirs(folder, exist_ok=True)
        for name in ("full.tsb", "inc1.tsb"):
            if os.path.exists(os.path.join(folder, name)):
                os.remove(os.path.join(folder, name))
        return folder, False
    return tempfile.mkdtemp(prefix="tradestate-demo-backups-"), True


def show_backup_and_drill(url: str, console: Console) -> bool:
    """Back the log up (full, then an increment after more activity), drill the chain, and show
    the drill's figures and its record. True when the drill passed and is on record."""
    from ...drill import drill, last_drill

    console.print("\n[bold]Backups and a restore drill[/] (the seed's monthly drill: RTO 4 h, RPO 15 min):")
    folder, temporary = _folder(url)
    try:
        full, inc = os.path.join(folder, "full.tsb"), os.path.join(folder, "inc1.tsb")
        with open_store(url, create=False) as store:
            t0 = time.perf_counter()
            m = bk.backup(store, full, seal=True)
        console.print(f"  tradestate backup --to {full}: full backup of {m.heads.get('ts_events', 0)} events "
                      f"({m.size:,} bytes, {(time.perf_counter() - t0) * 1000:.0f} ms)", highlight=False)
        with TradestateClient(open_store(url), venue="sim",
                              clock=lambda: datetime(2026, 11, 20, 16, 0, tzinfo=timezone.utc)) as client:
            for i, signal in enumerate(("flat", "long", "long")):
                client.record_signal("demo-sma", "AAPL", signal, value=f"{i}.5")
        with open_store(url, create=False) as store:
            t0 = time.perf_counter()
            m = bk.backup(store, inc, previous=full)
        console.print(f"  three signals later, tradestate backup --to {inc} --previous {full}: an increment of "
                      f"{m.logs['ts_events']['rows']} events ({m.size:,} bytes, "
                      f"{(time.perf_counter() - t0) * 1000:.0f} ms)", highlight=False)
        report = drill(url, [folder])
        for step in report.steps:
            colour = "green" if step.status == "ok" else "red"
            console.print(f"  drill [{colour}]{step.status:6}[/] {step.name:8} {step.detail}", highlight=False)
        if not report.passed:
            console.print(f"  [bold red]drill failed:[/] {report.reason}")
            return False
        console.print(f"  [bold green]drill passed[/]: RTO {report.rto_seconds:.2f} s to a ready state (target "
                      f"4 h), RPO {report.rpo_seconds:.1f} s ({report.events_behind} live events beyond the "
                      "backup; target 15 min)", highlight=False)
        with open_store(url, create=False) as store:
            on_record = last_drill(store)
        ok = on_record is not None and on_record["position"] == report.recorded_position
        if ok:
            console.print(f"  DrillCompleted is on record at position {on_record['position']} (outcome "  # type: ignore[index]
                          f"{on_record['outcome']}); /health and /metrics show it "  # type: ignore[index]
                          "(tradestate_drill_rto_seconds, tradestate_drill_rpo_seconds ...)", highlight=False)
        return ok
    finally:
        if temporary:
            shutil.rmtree(folder, ignore_errors=True)
