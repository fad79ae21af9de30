"""Export the log (or a window of it) for notebooks: Parquet or JSON lines, one column per envelope
field plus the payload as JSON text.

Columns: position, stream_id, version, type, recorded_at, event_id, occurred_at, correlation_id,
causation_id, payload. Times are UTC (timestamp[us, UTC] in Parquet, ISO-8601 ``Z`` strings in
JSON lines); the payload is the stored JSON, keys sorted. ``$void`` positions are left out.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

import orjson

from ..adapters.store import Store
from .log import (
    Axis,
    LoggedEvent,
    ReplayError,
    bounds,
    check_axis,
    first_position_from,
    iso,
    iter_events,
    parse_time,
    position_at,
)

COLUMNS = ("position", "stream_id", "version", "type", "recorded_at", "event_id", "occurred_at", "correlation_id",
           "causation_id", "payload")
FORMATS = ("parquet", "jsonl")


def _selected(store: Store, start: datetime | str | None, end: datetime | str | None, axis: Axis, log: str,
              progress: Callable[[int, int], None] | None) -> Iterator[LoggedEvent]:
    check_axis(axis)
    lo = parse_time(start, "--start") if start is not None else None
    hi = parse_time(end, "--end") if end is not None else None
    if lo is not None and hi is not None and hi < lo:
        raise ReplayError(f"--end {iso(hi)} is before --start {iso(lo)}")
    event_log = getattr(store, log)
    head = event_log.head()
    if head == 0:
        return
    after, stop = 0, head
    if axis == "recorded" and (lo or hi):
        b = bounds(store, log)
        if lo is not None:
            after = first_position_from(store, lo, log=log, b=b) - 1
        if hi is not None:
            stop = min(head, position_at(store, hi, log=log, b=b, check=False) + 256)
    total = max(stop - after, 1)
    for e in iter_events(store, after, stop, log=log,
                         progress=(lambda p: progress(p - after, total)) if progress else None):
        if lo is not None or hi is not None:
            t = e.time(axis)
            if (lo is not None and t < lo) or (hi is not None and t > hi):
                continue
        yield e


def _record(e: LoggedEvent) -> dict[str, Any]:
    occurred = e.payload.get("occurred_at")
    return {
        "position": e.position,
        "stream_id": e.stream_id,
        "version": e.version,
        "type": e.type,
        "recorded_at": e.recorded_at,
        "event_id": e.event_id,
        "occurred_at": parse_time(occurred) if occurred else None,
        "correlation_id": e.correlation_id,
        "causation_id": e.causation_id,
        "payload": orjson.dumps(e.payload, option=orjson.OPT_SORT_KEYS).decode(),
    }


def export(store: Store, path: str, *, fmt: str | None = None, start: datetime | str | None = None,
           end: datetime | str | None = None, axis: Axis = "recorded", log: str = "trading",
           progress: Callable[[int, int], None] | None = None, batch: int = 50_000) -> int:
    """Write the selected events to ``path``; returns the number of rows written."""
    fmt = fmt or ("parquet" if path.endswith(".parquet") else "jsonl" if path.endswith((".jsonl", ".ndjson")) else None)
    if fmt not in FORMATS:
        raise ReplayError(f"export format {fmt!r} is not one of: parquet, jsonl (or name the file .parquet / .jsonl)")
    if log not in ("trading", "market"):
        raise ReplayError(f"log {log!r} is not one of: trading, market")
    events = _selected(store, start, end, axis, log, progress)
    count = 0
    if fmt == "jsonl":
        with open(path, "wb") as f:
            for e in events:
                r = _record(e)
                r["recorded_at"] = iso(r["recorded_at"])
                r["occurred_at"] = iso(r["occurred_at"])
                f.write(orjson.dumps(r) + b"\n")
                count += 1
        return count
    import pyarrow as pa
    import pyarrow.parquet as pq

    ts = pa.timestamp("us", tz="UTC")
    schema = pa.schema([("position", pa.int64()), ("stream_id", pa.string()), ("version", pa.int64()),
                        ("type", pa.string()), ("recorded_at", ts), ("event_id", pa.string()),
                        ("occurred_at", ts), ("correlation_id", pa.string()), ("causation_id", pa.string()),
                        ("payload", pa.string())])
    with pq.ParquetWriter(path, schema) as writer:
        chunk: list[dict[str, Any]] = []
        for e in events:
            chunk.append(_record(e))
            if len(chunk) >= batch:
                writer.write_table(pa.Table.from_pylist(chunk, schema=schema))
                count += len(chunk)
                chunk = []
        if chunk or count == 0:
            writer.write_table(pa.Table.from_pylist(chunk, schema=schema))
            count += len(chunk)
    return count
