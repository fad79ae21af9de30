"""Restore drills: prove the newest backup chain restores, matches the live log, and folds to a
ready state, and put the figures on record (``DrillCompleted``).

A drill (``drill(live_url, sources)``):

1. ``find``: the newest complete backup chain among ``sources`` (files or directories;
   ``bk.find_chain``); a chain with a later link beyond a missing or unreadable one fails.
2. ``restore``: the chain into a scratch place (a temporary SQLite file for a SQLite backup, a
   throwaway schema on the live PostgreSQL server for a PostgreSQL one, or ``scratch``), through
   ``bk.restore``, which verifies every link and the whole digest chain before anything is in
   place. The scratch place is always removed afterwards.
3. ``fold``: the restored log folded to a ready state with the code recovery uses
   (``loading.load_state``: the newest valid checkpoint and the tail, or the cold fold).
   The drill's RTO is the time from the drill's start to here.
4. ``compare``: per log, the backup's head is at or below the live head, the digest the backup's
   chain ends with equals the live chain's digest at the same position, and the tail the backup
   held unsealed is the same rows as the live log's (hashed on both sides). A backup that
   diverges from the live log fails the drill, named.
5. ``rpo``: the age of the newest backed-up trading event, and how many events the live trading
   log holds beyond it.

The outcome is recorded as ``DrillCompleted`` on the live log's ``drill`` stream through the
client's write path (the same as ``RecoveryCompleted``), a failed drill too; ``record=False`` or
a read-only live database records nothing (``DrillReport.record_note`` says why).

Failures of the backup (damaged, missing link, wrong key, diverging) are a failed drill
(``DrillReport.passed`` False); bad input (no backup found, a scratch place that is not free, a
live URL without a log) raises ``InvalidInput`` before anything is created.
"""

from __future__ import annotations

import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

from .adapters.store import MARKET_TABLE, TRADING_TABLE, Store, open_store, redact, resolve_url, sqlite_path
from .adapters.store import backup as bk
from .adapters.store import digest as digest_mod
from .adapters.store.sql import POSTGRESQL, SQLITE, PgUrl, quote, read_cursor, url_kind
from .domain import events as ev
from .domain.errors import InvalidInput, ReadOnlyStore
from .writer import utc_now

LOGS = (TRADING_TABLE, MARKET_TABLE)
COMPARE_PAGE = 10_000  # rows per read when the unsealed tail is compared
MAX_REASON = 900  # DrillCompleted.reason is bounded text


@dataclass
class DrillStep:
    """One step of a drill: ``status`` ok, failed or skipped, how long it took, what it found."""

    name: str
    status: str
    seconds: float
    detail: str
    figures: dict[str, Any] = field(default_factory=dict)


@dataclass
class DrillReport:
    """What a drill found. ``outcome`` passed or failed (``reason`` names the first problem);
    ``rto_seconds`` from the start to a ready state (None: not reached), ``rpo_seconds`` the age
    of the newest backed-up trading event at ``finished_at``, ``events_behind`` the live trading
    events beyond the backup. ``recorded_position``: where ``DrillCompleted`` landed (None: not
    recorded, ``record_note`` says why)."""

    outcome: str = "failed"
    reason: str = ""
    chain_id: str = ""
    links: list[str] = field(default_factory=list)
    source_kind: str | None = None
    scratch: str = ""
    heads: dict[str, int] = field(default_factory=dict)
    live_heads: dict[str, int] = field(default_factory=dict)
    last_digest: str = ""
    verify: dict[str, Any] = field(default_factory=dict)
    restore_seconds: float | None = None
    fold_seconds: float | None = None
    rto_seconds: float | None = None
    rpo_seconds: float | None = None
    events_behind: int | None = None
    newest_backed_up_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    steps: list[DrillStep] = field(default_factory=list)
    recorded_position: int | None = None
    record_note: str = ""

    @property
    def passed(self) -> bool:
        """Whether the drill passed."""
        return self.outcome == "passed"

    def as_dict(self) -> dict[str, Any]:
        """Every field as JSON-ready values (times ISO UTC)."""
        out = asdict(self)
        for k in ("newest_backed_up_at", "started_at", "finished_at"):
            out[k] = out[k].isoformat() if out[k] is not None else None
        out["passed"] = self.passed
        return out


class _Failed(Exception):
    """The drill failed at a step (the reason is the message)."""


# ------------------------------------------------------------------------------ chain and scratch


def find_chain(sources: Sequence[str | Path], *, key: bytes | None = None) -> tuple[list[Path], list[str]]:
    """The newest complete backup chain among ``sources`` (files and directories), full backup first
    (``bk.find_chain``), and warnings: files there that are not readable backups (damaged, or under
    another key). ``InvalidInput`` when ``sources`` hold no file at all; ``BackupDamaged`` when none
    of the files makes a chain, or when a later link of the chosen chain exists beyond a missing or
    unreadable one (the chain is broken: restoring its start would hide it)."""
    paths = [Path(s).expanduser() for s in sources]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise InvalidInput(f"no such backup file or directory: {', '.join(missing)}")
    files: list[Path] = []
    for p in paths:
        files += sorted(f for f in p.iterdir() if f.is_file() and not f.name.startswith(".")) if p.is_dir() else [p]
    if not files:
        raise InvalidInput(f"no backup files in {', '.join(map(str, paths))}")
    manifests: dict[Path, bk.Manifest] = {}
    unreadable: list[str] = []
    for f in files:
        try:
            manifests[f] = bk.read_manifest(f, key=key)
        except (bk.BackupError, InvalidInput) as e:
            unreadable.append(str(e))
    try:
        chain = list(bk.find_chain(files, key=key))
    except bk.BackupError as e:
        raise bk.BackupDamaged(f"{e}" + (f"; unreadable: {unreadable[0]}" if unreadable else "")) from e
    last = manifests[chain[-1]]
    later = sorted(m.sequence for m in manifests.values()
                   if last.chain_id and m.chain_id == last.chain_id and m.sequence > last.sequence + 1)
    if later:
        raise bk.BackupDamaged(
            f"chain {last.chain_id}: link {last.sequence + 1} is missing or unreadable but link {later[0]} is there "
            f"(the chain breaks after {chain[-1]})" + (f"; unreadable: {unreadable[0]}" if unreadable else ""))
    return chain, unreadable


class _Scratch:
    """The place a drill restores into: created by the drill (it must not exist yet), removed after."""

    def __init__(self, live_url: str, source_kind: str, scratch: str | None):
        self.dir: Path | None = None
        self.schema: str | None = None
        if scratch is None:
            if source_kind == SQLITE:
                self.dir = Path(tempfile.mkdtemp(prefix="tradestate-drill-"))
                self.url = f"sqlite:///{self.dir / 'scratch.db'}"
            elif url_kind(live_url) == POSTGRESQL:
                self.schema = f"ts_drill_{uuid.uuid4().hex[:12]}"
                self.url = PgUrl.parse(live_url).with_schema(self.schema)
            else:
                raise InvalidInput("the backup is of a PostgreSQL log and the live log is SQLite: give --scratch "
                                   "postgresql://.../db?options=-csearch_path%3Dsome_new_schema to restore it into")
            return
        self.url = resolve_url(scratch)
        kind = url_kind(self.url)
        if kind != source_kind:
            raise InvalidInput(f"the backup is of a {source_kind} log: --scratch must be a {source_kind} URL")
        if _same_place(self.url, live_url):
            raise InvalidInput("--scratch names the live database: give a place of its own")
        if kind == SQLITE:
            path = Path(sqlite_path(self.url)).expanduser().absolute()
            if path.exists():
                raise InvalidInput(f"--scratch {path} exists: the drill restores into a new file and removes it "
                                   "afterwards")
            if not path.parent.is_dir():
                raise InvalidInput(f"directory {path.parent} does not exist")
            self.path = path
        else:
            self.schema = PgUrl.parse(self.url).schema
            if _pg_schema_exists(self.url, self.schema):
                raise InvalidInput(f"--scratch schema {self.schema!r} exists: the drill restores into a new schema "
                                   "and drops it afterwards")

    def remove(self) -> None:
        """Remove the scratch database (a file and its side files, or the schema)."""
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
        elif self.schema is not None:
            import psycopg

            target = PgUrl.parse(self.url)
            with suppress(psycopg.Error), psycopg.connect(**target.kwargs(application_name="tradestate-drill"),
                                                          autocommit=True) as conn:
                conn.execute(f"DROP SCHEMA IF EXISTS {quote(self.schema)} CASCADE")
        else:
            for suffix in ("", "-wal", "-shm", "-journal"):
                with suppress(OSError):
                    Path(str(self.path) + suffix).unlink()


def _same_place(a: str, b: str) -> bool:
    if url_kind(a) != url_kind(b):
        return False
    if url_kind(a) == SQLITE:
        return Path(sqlite_path(a)).expanduser().resolve() == Path(sqlite_path(b)).expanduser().resolve()
    pa, pb = PgUrl.parse(a), PgUrl.parse(b)
    return pa.where == pb.where and pa.schema == pb.schema


def _pg_schema_exists(url: str, schema: str) -> bool:
    import psycopg

    with psycopg.connect(**PgUrl.parse(url).kwargs(application_name="tradestate-drill"), autocommit=True) as conn:
        return conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,)).fetchone() is not None


# ------------------------------------------------------------------------------ comparing with the live log


def _live_digest_at(store: Store, log: str, position: int) -> tuple[bytes | None, int]:
    """The live chain's digest of the range ending at ``position`` (None: no range ends there) and
    the live chain's last sealed position."""
    db = digest_mod._Backend(store)  # noqa: SLF001 - the digest module's own SQL seam
    if not db.table_exists(digest_mod.CHAIN_TABLE):
        return None, 0
    with db.read() as cur:
        cur.execute(f"SELECT digest FROM {db.name(digest_mod.CHAIN_TABLE)} WHERE log = {db.p} AND range_end = {db.p}",
                    (log, position))
        row = cur.fetchone()
        tail, _ = digest_mod._tail(db, cur, log)  # noqa: SLF001
    return (bytes(row[0]) if row else None), tail


def _rows_digest(store: Store, log: str, first: int, last: int, previous: bytes) -> str:
    """A digest of the rows ``first``..``last`` of ``log`` in the chain's canonical encoding (page
    by page, each page chained on the last): equal on two databases exactly when the rows are."""
    db = digest_mod._Backend(store)  # noqa: SLF001
    digest = previous
    for lo in range(first, last + 1, COMPARE_PAGE):
        rows = digest_mod._read_span(db, log, lo, min(lo + COMPARE_PAGE - 1, last))  # noqa: SLF001
        digest, _ = digest_mod._hash_rows(rows, digest)  # noqa: SLF001
    return digest.hex()


def compare_with_live(scratch: Store, live: Store, manifest: dict[str, Any]) -> tuple[dict[str, int], list[str],
                                                                                           dict[str, Any]]:
    """Per log: the backup's head against the live head, the backup's last sealed digest against the
    live chain's at the same position, and the backup's unsealed tail against the live rows.
    (rows compared where the live chain does not reach the backup's last sealed position).
    Returns (live heads, problems (empty: the backup is a prefix of the live log), figures)."""
    live_heads: dict[str, int] = {}
    problems: list[str] = []
    figures: dict[str, Any] = {}
    for log in LOGS:
        head = int(manifest.get("logs", {}).get(log, {}).get("head", 0))
        chain = manifest.get("chain", {}).get(log, {})
        sealed, last = int(chain.get("sealed_upto", 0)), chain.get("last_digest", "")
        live_head = (live.trading if log == TRADING_TABLE else live.market).head()
        live_heads[log] = live_head
        figures[log] = {"backup_head": head, "live_head": live_head, "sealed_upto": sealed}
        if head > live_head:
            problems.append(f"{log}: the backup holds {head:,} events, the live log only {live_head:,} (a backup "
                            "of another log, or the live log was rolled back)")
            continue
        start, previous = 0, digest_mod.GENESIS  # rows after ``start`` are compared one by one
        if sealed:
            live_digest, live_tail = _live_digest_at(live, log, sealed)
            if live_digest is not None and live_digest.hex() != last:
                problems.append(f"{log}: at position {sealed:,} the backup's digest is {last[:16]}…, the live "
                                f"chain's {live_digest.hex()[:16]}…: the backup diverges from the live log")
                continue
            if live_digest is None and live_tail >= sealed:
                problems.append(f"{log}: the backup's digest chain has a range ending at position {sealed:,}, the "
                                "live chain has none (its ranges differ): the backup diverges from the live log")
                continue
            if live_digest is not None:
                figures[log]["digest"] = last
                start, previous = sealed, bytes.fromhex(last)
            else:  # the live chain is sealed less far than the backup's: compare the rows themselves
                figures[log]["live_sealed_upto"] = live_tail
        if head > start:
            ours = _rows_digest(scratch, log, start + 1, head, previous)
            theirs = _rows_digest(live, log, start + 1, head, previous)
            figures[log]["tail_compared"] = head - start
            if ours != theirs:
                problems.append(f"{log}: positions {start + 1:,}-{head:,} differ from the live log's: the backup "
                                "diverges from the live log")
    return live_heads, problems, figures


def _newest_event_at(store: Store, head: int) -> datetime | None:
    if head <= 0:
        return None
    with read_cursor(store) as cur:
        cur.execute(f"SELECT recorded_at FROM {store.dialect.name(TRADING_TABLE)} WHERE position = "
                    f"{store.dialect.param}", (head,))
        row = cur.fetchone()
    if row is None:
        return None
    at = row[0] if isinstance(row[0], datetime) else datetime.fromisoformat(str(row[0]))
    return at if at.tzinfo else at.replace(tzinfo=timezone.utc)


# ------------------------------------------------------------------------------ the drill


def drill(live_url: str, sources: Sequence[str | Path], *, key: bytes | None = None, scratch: str | None = None,
          record: bool = True, clock: Callable[[], datetime] = utc_now,
          progress: digest_mod.Progress | None = None) -> DrillReport:
    """Run one restore drill of the newest backup chain in ``sources`` against the live log at
    ``live_url`` (see the module doc). Returns the report (a failed drill is a report with
    ``passed`` False, recorded like a passed one); raises ``InvalidInput`` for bad input."""
    live_url = resolve_url(live_url)
    if not sources:
        raise InvalidInput("give the backups to drill (--from DIR or FILE)")
    started = time.perf_counter()
    report = DrillReport(started_at=clock())
    with open_store(live_url, create=False):
        pass  # a live log must be there before anything is created (InvalidInput if not)
    place: _Scratch | None = None
    try:
        try:
            # 1. find the chain
            t = time.perf_counter()
            try:
                links, unreadable = find_chain(sources, key=key)
                manifest = bk.read_manifest(links[-1], key=key)
            except bk.BackupError as e:
                report.steps.append(DrillStep("find", "failed", time.perf_counter() - t, str(e)))
                raise _Failed(f"no usable backup chain: {e}") from e
            report.links = [str(p) for p in links]
            report.chain_id = manifest.chain_id or f"sha256:{manifest.manifest_sha256}"
            report.source_kind = manifest.source_kind
            report.steps.append(DrillStep(
                "find", "warn" if unreadable else "ok", time.perf_counter() - t,
                f"chain {report.chain_id[:16]}: {len(links)} link(s) (full + {len(links) - 1} increment(s)), newest "
                f"written {manifest.created_at}" + (f"; {len(unreadable)} unreadable file(s) skipped: {unreadable[0]}"
                                                    if unreadable else ""),
                {"links": len(links), "unreadable": len(unreadable), "encrypted": manifest.encrypted}))
            place = _Scratch(live_url, manifest.source_kind, scratch)
            report.scratch = redact(place.url)

            # 2. restore (verifies every link and the whole digest chain first)
            t = time.perf_counter()
            try:
                result = bk.restore(place.url, links, key=key, progress=progress)
            except bk.RestoreRefused as e:
                raise InvalidInput(str(e)) from e
            except ReadOnlyStore as e:
                raise InvalidInput(f"the scratch place {redact(place.url)} accepts reads only (a hot standby?): give "
                                   f"--scratch URL of a writable database ({e})") from e
            except bk.BackupError as e:
                report.steps.append(DrillStep("restore", "failed", time.perf_counter() - t, str(e)))
                raise _Failed(f"restore refused: {e}") from e
            report.restore_seconds = time.perf_counter() - t
            report.heads = {log: int(v["head"]) for log, v in result.logs.items()}
            report.last_digest = result.last_digest
            report.verify = {k: result.verify.get(k) for k in ("ok", "sealed_upto", "head", "checked_events",
                                                               "unsealed_events", "last_digest")}
            report.verify["sealed_after_restore"] = result.sealed_after_restore
            report.steps.append(DrillStep(
                "restore", "ok", report.restore_seconds,
                f"{report.heads.get(TRADING_TABLE, 0):,} trading events restored; digest chain verified "
                f"({result.verify.get('checked_events', 0):,} events checked, ends {result.last_digest[:16]})",
                {"heads": report.heads}))

            with open_store(place.url, create=False) as restored:
                # 3. fold to a ready state: what recovery does (checkpoint + tail, or the cold fold)
                from .loading import load_state

                t = time.perf_counter()
                loaded = load_state(restored, head=report.heads.get(TRADING_TABLE))
                report.fold_seconds = time.perf_counter() - t
                state = loaded.state
                if state.position != report.heads.get(TRADING_TABLE, 0):
                    report.steps.append(DrillStep("fold", "failed", report.fold_seconds,
                                                  f"folded to {state.position:,}, head {report.heads.get(TRADING_TABLE)}"))
                    raise _Failed(f"the restored log folds to position {state.position:,}, not its head")
                report.rto_seconds = time.perf_counter() - started
                how = (f"checkpoint at {loaded.checkpoint_position:,} + {loaded.replayed:,} events"
                       if loaded.checkpoint_position is not None else f"cold fold of {loaded.replayed:,} events")
                quarantined = len(state.quarantined_streams)
                report.steps.append(DrillStep(
                    "fold", "ok", report.fold_seconds,
                    f"ready at position {state.position:,} ({how}; {len(state.accounts)} accounts, "
                    f"{len(state.positions)} positions" + (f", {quarantined} streams quarantined" if quarantined else "")
                    + f"); RTO {report.rto_seconds:.2f} s",
                    {"position": state.position, "replayed": loaded.replayed, "quarantined": quarantined}))
                del state, loaded

                # 4. compare with the live log
                t = time.perf_counter()
                with open_store(live_url, create=False) as live:
                    report.live_heads, problems, figures = compare_with_live(restored, live, result.manifest)
                if problems:
                    report.steps.append(DrillStep("compare", "failed", time.perf_counter() - t, problems[0], figures))
                    raise _Failed(problems[0])
                report.steps.append(DrillStep("compare", "ok", time.perf_counter() - t,
                                              "the backup is a prefix of the live log (heads, digests and the unsealed "
                                              "tail match)", figures))
                # 5. RPO
                report.newest_backed_up_at = _newest_event_at(restored, report.heads.get(TRADING_TABLE, 0))
            report.events_behind = report.live_heads.get(TRADING_TABLE, 0) - report.heads.get(TRADING_TABLE, 0)
            now = clock()
            if report.newest_backed_up_at is not None:
                report.rpo_seconds = max(0.0, (now - report.newest_backed_up_at).total_seconds())
            report.steps.append(DrillStep(
                "rpo", "ok", 0.0,
                (f"newest backed-up event {report.rpo_seconds:,.0f} s old" if report.rpo_seconds is not None
                 else "the backup holds no trading event") + f"; the live log holds {report.events_behind:,} more",
                {"rpo_seconds": report.rpo_seconds, "events_behind": report.events_behind}))
            report.outcome = "passed"
        except _Failed as e:
            report.outcome, report.reason = "failed", str(e)
    finally:
        if place is not None:
            place.remove()
    report.finished_at = clock()
    if record:
        _record(live_url, report)
    else:
        report.record_note = "not recorded (--no-record)"
    return report


def drill_event(report: DrillReport, **envelope: Any) -> ev.DrillCompleted:
    """The ``DrillCompleted`` of ``report`` (``envelope``: event_id, occurred_at...)."""

    def dec(x: float | None) -> Decimal | None:
        return None if x is None else Decimal(f"{x:.3f}")

    return ev.DrillCompleted(
        **envelope, outcome=report.outcome, reason=report.reason[:MAX_REASON], chain_id=report.chain_id[:MAX_REASON],
        links=[link[-MAX_REASON:] for link in report.links], source_kind=report.source_kind, heads=report.heads,
        live_heads=report.live_heads, last_digest=report.last_digest, rto_seconds=dec(report.rto_seconds),
        rpo_seconds=dec(report.rpo_seconds), events_behind=report.events_behind,
        newest_backed_up_at=report.newest_backed_up_at, started_at=report.started_at, finished_at=report.finished_at,
        steps=[{"name": s.name, "status": s.status, "seconds": round(s.seconds, 3), "detail": s.detail[:MAX_REASON]}
               for s in report.steps])


def _read_only(error: BaseException) -> bool:
    """A refusal to write: a read-only PostgreSQL server or session, or a SQLite file opened read-only."""
    import sqlite3

    return isinstance(error, ReadOnlyStore) or (isinstance(error, sqlite3.OperationalError)
                                                 and "readonly" in str(error))


def _record(live_url: str, report: DrillReport) -> None:
    """Append ``DrillCompleted`` to the live log through the client (as ``RecoveryCompleted`` is);
    a read-only database is noted, not an error."""
    from .client import TradestateClient

    try:
        store = open_store(live_url)
        try:
            client = TradestateClient(store, clock_guard=False)
        except BaseException:
            store.close()
            raise
        with client:
            event = drill_event(report, **client.writer.envelope(report.finished_at))
            recorded = client.writer.record_event(ev.DRILL_STREAM, event)
    except Exception as e:  # noqa: BLE001 - only a refusal to write is noted; anything else is raised
        cause = e.__cause__ or e
        if not (_read_only(e) or _read_only(cause)):
            raise
        report.record_note = f"not recorded: the live database accepts reads only ({e})"
        return
    report.recorded_position = recorded.position
    report.record_note = f"DrillCompleted recorded at position {recorded.position:,}"


def last_drill(store: Store) -> dict[str, Any] | None:
    """The last ``DrillCompleted`` in the log (its payload, ``position`` and ``recorded_at``), or None."""
    events = store.trading.read_stream(ev.DRILL_STREAM)
    if not events:
        return None
    import orjson

    e = events[-1]
    return orjson.loads(e.state) | {"position": e.position, "recorded_at": e.recorded_at}


__all__ = ["DrillReport", "DrillStep", "compare_with_live", "drill", "drill_event", "find_chain", "last_drill"]
