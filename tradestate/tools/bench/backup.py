"""``tradestate bench`` group ``backup``: an incremental backup after 10,000 new events.

On a private copy of the shared log of N generated trading events (1M full, 100k quick; sealed
first, as a live log is), SQLite and PostgreSQL:

``backup_full``         ``backup()`` of the whole log (reference: what an increment saves).
``backup_incremental``  10,000 events appended (and sealed) after the full backup, then
                        ``backup(previous=full)``: the continuity check against the live log, the
                        new rows, chain ranges and checkpoints, the manifest, fsync and rename.
                        Best of ``repeats``. Baseline: the full backup.
``backup_incremental_encrypted``  the same increment encrypted (AES-256-GCM). Baseline: plain.
``backup_incremental_raw``  the same new rows copied to a file and fsynced, nothing else (SQLite:
                        one ``CREATE TABLE AS SELECT`` into a new database file; PostgreSQL: one
                        binary ``COPY ... TO STDOUT``): the floor an increment of them stands on.
                        Best of ``repeats``, interleaved with the increments (a burst of load on the
                        box slows both alike).

Target: the increment of 10,000 events under 1 s at any log length (issue 17); the line also
states it over the same run's raw copy of its rows (the ratio the JSON's target carries), which
the machine's load moves much less than the seconds. The timings cover
the ``backup`` call (the store is already open); each increment is checked afterwards (``verify_chain``).
"""

from __future__ import annotations

import os
import time

from .common import BenchContext, Result, log, result

NEW_EVENTS = 10_000
TARGET_INCREMENT_S = 1.0
KEY = bytes(range(32))  # a bench key: the figures, not the secrecy, are measured


def _append(url: str, backend: str, head: int, n: int, suffix: str) -> None:
    """``n`` more events after ``head``: copies of the first ``n`` with new positions and streams."""
    from ...adapters.store import open_store
    from ...adapters.store.sql import write_cursor

    cols = "position, stream_id, stream_version, type, data, recorded_at"
    with open_store(url, create=False) as store, write_cursor(store) as cur:
        table = store.dialect.name("ts_events")
        p = store.dialect.param
        cur.execute(f"INSERT INTO {table} ({cols}) SELECT position + {p}, stream_id || {p}, stream_version, type,"
                    f" data, recorded_at FROM {table} WHERE position <= {p} ORDER BY position", (head, suffix, n))
        if backend == "postgresql":
            cur.execute("SELECT setval(%s, %s)", (f'{store.dialect.name("ts_events_position_seq")}', head + n))


def _timed_backup(url: str, path: str, **kwargs: object) -> tuple[float, object]:
    from ...adapters.store import backup as bk
    from ...adapters.store import open_store

    with open_store(url, create=False) as store:
        started = time.perf_counter()
        manifest = bk.backup(store, path, **kwargs)  # type: ignore[arg-type]
        return time.perf_counter() - started, manifest


def _raw_increment(url: str, backend: str, after: int, path: str) -> float:
    """Seconds to copy the trading log's rows after position ``after`` to a new file at ``path``,
    fsynced: an increment's data movement without its snapshot checks, chain, checkpoints,
    manifest or compression."""
    import sqlite3

    from ...adapters.store import open_store
    from ...adapters.store.sql import read_cursor, sqlite_path

    cols = "position, stream_id, stream_version, type, data, recorded_at"
    if backend == "sqlite":
        source = os.path.abspath(os.path.expanduser(sqlite_path(url)))
        started = time.perf_counter()
        conn = sqlite3.connect(path, isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode=DELETE")
            conn.execute("ATTACH DATABASE ? AS src", (f"file:{source}?mode=ro",))
            conn.execute(f"CREATE TABLE rows AS SELECT {cols} FROM src.ts_events WHERE position > ? ORDER BY position",
                         (after,))  # autocommit: a synced commit, as the increment's own file
        finally:
            conn.close()
        seconds = time.perf_counter() - started
    else:
        with open_store(url, create=False) as store:
            table = store.dialect.name("ts_events")
            started = time.perf_counter()
            with read_cursor(store) as cur, open(path, "wb") as f:
                with cur.copy(f"COPY (SELECT {cols} FROM {table} WHERE position > {int(after)} ORDER BY position)"
                              " TO STDOUT (FORMAT binary)") as copy:
                    for data in copy:
                        f.write(data)
                f.flush()
                os.fsync(f.fileno())
            seconds = time.perf_counter() - started
    os.remove(path)
    return seconds


def _measure(url: str, backend: str, n: int, repeats: int, workdir: str) -> list[Result]:
    from ...adapters.store import backup as bk
    from ...adapters.store import digest, open_store

    with open_store(url, create=False) as store:
        sealed = digest.seal(store)
        head = store.trading.head()
    log(f"  {backend}: log sealed ({sealed.events:,} events in {sealed.seconds:.1f} s)")
    full = os.path.join(workdir, f"backup_full_{backend}.tsb")
    full_s, manifest = _timed_backup(url, full)
    log(f"  {backend}: full backup {full_s:.2f} s ({os.path.getsize(full) / 1e6:,.1f} MB, {head:,} events)")
    new = min(NEW_EVENTS, head)
    _append(url, backend, head, new, "~b")
    with open_store(url, create=False) as store:
        digest.seal(store)
    plain, encrypted, raw = [], [], []
    files = []
    for i in range(repeats):
        raw.append(_raw_increment(url, backend, head, os.path.join(workdir, f"backup_raw_{backend}_{i}")))
        path = os.path.join(workdir, f"backup_inc_{backend}_{i}.tsb")
        seconds, manifest = _timed_backup(url, path, previous=full)
        plain.append(seconds)
        files.append(path)
        rows = manifest.logs["ts_events"]["rows"]  # type: ignore[attr-defined]
        if rows != new:
            raise RuntimeError(f"{backend}: the increment holds {rows} events, not {new}")
    full_enc = os.path.join(workdir, f"backup_full_enc_{backend}.tsb")
    with open_store(url, create=False) as store:  # an encrypted chain: its full taken now, then an increment
        bk.backup(store, full_enc, key=KEY)
    _append(url, backend, head + new, new, "~c")
    for i in range(repeats):
        path = os.path.join(workdir, f"backup_inc_enc_{backend}_{i}.tsb")
        seconds, _ = _timed_backup(url, path, previous=full_enc, key=KEY)
        encrypted.append(seconds)
        files.append(path)
    bk.verify_chain([full, files[0]])
    bk.verify_chain([full_enc, files[-1]], key=KEY)
    inc, enc, floor = min(plain), min(encrypted), min(raw)
    log(f"  {backend}: incremental backup of {new:,} events {inc:.3f} s ({os.path.getsize(files[0]) / 1e6:,.2f} MB; "
        f"all {', '.join(f'{s:.3f}' for s in plain)}); encrypted {enc:.3f} s; raw copy of the rows {floor:.3f} s")
    for path in (full, full_enc, *files):
        os.remove(path)
    return [
        result("backup_full", backend, full_s, "s", f"{head:,} events", full_s),
        result("backup_incremental", backend, inc, "s", "backup_full", full_s),
        result("backup_incremental_encrypted", backend, enc, "s", "backup_incremental", inc),
        result("backup_incremental_raw", backend, floor, "s", f"{new:,} new rows copied to a file", floor),
    ]


def run(ctx: BenchContext) -> list[Result]:
    """Measure on each backend asked for; return the rows."""
    n = ctx.sizes.replay_events
    results: list[Result] = []
    if "sqlite" in ctx.backends:
        log(f"sqlite backup: {n:,} events + {NEW_EVENTS:,}")
        path = ctx.logs.sqlite_copy(n, "backup")
        results += _measure(f"sqlite:///{path}", "sqlite", n, ctx.sizes.repeats, ctx.workdir)
        ctx.logs.discard(n, "sqlite", path)
    if ctx.pg is not None:
        log(f"postgresql backup: {n:,} events + {NEW_EVENTS:,}")
        schema = ctx.logs.pg_copy(n, "backup")
        results += _measure(ctx.pg.url_for(schema), "postgresql", n, ctx.sizes.repeats, ctx.workdir)
        ctx.logs.discard(n, "postgresql", schema)
    return results


def targets(results: list[Result]) -> list[tuple[bool, str]]:
    """(met, line) for each target of this group found in results."""
    checks = []
    raw = {r.backend: r.value for r in results if r.metric == "backup_incremental_raw"}
    for r in results:
        if r.metric == "backup_incremental":
            # the ratio to the same run's raw copy comes last: the one the JSON's target carries
            against_raw = (f"; {r.value / raw[r.backend]:.2f}x the raw copy of the same rows, {raw[r.backend]:.3f} s"
                           if r.backend in raw else "")
            checks.append((r.value < TARGET_INCREMENT_S,
                           f"backup_incremental ({r.backend}): {r.value:.3f} s for {NEW_EVENTS:,} new events "
                           f"(target < {TARGET_INCREMENT_S:g} s; full backup {r.baseline_value:.2f} s, "
                           f"{r.ratio:.3f}x{against_raw})"))
    return checks
