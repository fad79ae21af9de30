"""``tradestate replay ...``: post-mortems from the log (read only).

Every command takes ``--db``, ``--config`` and ``--json``; output is deterministic (no timings,
sorted keys); bad input (a time outside the log, an unknown order, a malformed window) prints
``error: ...`` on stderr (a JSON object under ``--json``) and exits 2, an unreachable database
exits 3; long work shows a progress bar on a terminal (stderr).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, Any, Optional

import typer

replay_app = typer.Typer(no_args_is_help=True, add_completion=False,
                         help="Post-mortems: state at an instant, diffs, timelines, order traces, market-data and "
                              "order replay, export, HTML report.")

from .common import ConfigOption, DbOption, JsonOption, choice, classify, command, exit_codes, fail, settings

AxisOption = Annotated[str, typer.Option("--time-axis", help="recorded (the store's commit clock, taken as never "
                                         "running backwards along the log: the latest stamp so far) or occurred "
                                         "(the venue's/engine's clock).", **choice("recorded", "occurred",
                                                                                    what="time axis"))]
OccurredAxisOption = Annotated[str, typer.Option("--time-axis", help="occurred (market time: bars at their close) "
                                                 "or recorded (the store's commit clock).",
                                                 **choice("occurred", "recorded", what="time axis"))]
EPILOG = exit_codes() + " Exit 1 also for a file that cannot be read or written."


@contextmanager
def _guard() -> Iterator[None]:
    """Turn every error into one line on stderr and a non-zero exit (never a traceback)."""
    try:
        yield
    except typer.Exit:
        raise
    except Exception as e:  # noqa: BLE001 - a post-mortem tool reports, it does not crash
        known = classify(e)
        if known is not None:
            fail(known[1], known[0])
        if isinstance(e, (OSError, ValueError, KeyError)):
            fail(f"{type(e).__name__}: {e}", 1)
        fail(f"unexpected {type(e).__name__}: {e}", 1)


@contextmanager
def _store(db: str | None, config: str | None = None) -> Iterator[Any]:
    """The existing log named by ``--db``, else the settings (TRADESTATE_DB, the config file)."""
    from ..adapters.store import open_store

    store = open_store(settings(config, db=db).db, create=False)
    try:
        yield store
    finally:
        store.close()


@contextmanager
def _progress(description: str, enabled: bool = True) -> Iterator[Callable[[int, int], None] | None]:
    """A rich progress bar on a terminal (stderr); None elsewhere."""
    if not enabled or not sys.stderr.isatty():
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(description, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update


def _out(payload: Any) -> None:
    from ..render import to_json

    sys.stdout.write(to_json(payload) + "\n")


def _print(renderable: Any) -> None:
    from ..render import console

    console.print(renderable)


# -------------------------------------------------------------------------------- commands


@replay_app.command("state", epilog=EPILOG)
@command
def state_cmd(
    db: DbOption = None,
    at: Annotated[Optional[str], typer.Option("--at", help="Instant (ISO-8601 with zone, e.g. 2026-11-20T14:31:05Z). "
                                              "Events stamped at or before it after the store's clock stepped "
                                              "back past it are left out and listed (stepped_back).")] = None,
    position: Annotated[Optional[int], typer.Option("--position", help="Log position instead of an instant.")] = None,
    axis: AxisOption = "recorded",
    json: JsonOption = False,
    config: ConfigOption = None,
) -> None:
    """Positions, open orders, risk state, breaker and kill switch as they were."""
    from ..replay import render_state, state_at_position, state_at_time

    with _guard():
        if (at is None) == (position is None):
            fail("give exactly one of --at TIME or --position N")
        with _store(db, config) as store, _progress("folding", axis == "occurred") as progress:
            st = (state_at_position(store, position) if position is not None
                  else state_at_time(store, at, axis=axis, progress=progress))  # type: ignore[arg-type]
            view = st.view()
        _out(view) if json else _print(render_state(view))


@replay_app.command("diff", epilog=EPILOG)
@command
def diff_cmd(
    db: DbOption = None,
    from_: Annotated[Optional[str], typer.Option("--from", help="Start instant.")] = None,
    to: Annotated[Optional[str], typer.Option("--to", help="End instant.")] = None,
    from_position: Annotated[Optional[int], typer.Option("--from-position", help="Start log position.")] = None,
    to_position: Annotated[Optional[int], typer.Option("--to-position", help="End log position.")] = None,
    axis: AxisOption = "recorded",
    json: JsonOption = False,
    config: ConfigOption = None,
) -> None:
    """What changed between two instants (positions, orders, risk) and which events changed it."""
    from ..replay import diff, diff_positions, render_diff

    with _guard():
        with _store(db, config) as store:
            if from_position is not None or to_position is not None:
                if from_position is None or to_position is None:
                    fail("give both --from-position and --to-position")
                d = diff_positions(store, from_position, to_position)  # type: ignore[arg-type]
            else:
                if from_ is None or to is None:
                    fail("give --from TIME and --to TIME (or --from-position and --to-position)")
                d = diff(store, from_, to, axis=axis)  # type: ignore[arg-type]
        _out(d) if json else _print(render_diff(d))


@replay_app.command("timeline", epilog=EPILOG)
@command
def timeline_cmd(
    db: DbOption = None,
    around: Annotated[str, typer.Option("--around", help="The instant to look around.")] = ...,  # type: ignore[assignment]
    window: Annotated[str, typer.Option("--window", help="How far before and after (e.g. 60s, 5m, 1h).")] = "60s",
    market: Annotated[bool, typer.Option("--market", help="Interleave market bars by time.")] = False,
    account: Annotated[Optional[str], typer.Option("--account", help="Only this account's events (default: all).")] = None,
    symbol: Annotated[Optional[str], typer.Option("--symbol", help="One symbol or a comma-separated list.")] = None,
    strategy: Annotated[Optional[str], typer.Option("--strategy", help="Only this strategy's orders (default: all).")] = None,
    type_: Annotated[Optional[str], typer.Option("--type", help="Event type(s), comma-separated.")] = None,
    limit: Annotated[int, typer.Option("--limit", help="Rows shown in the table (JSON has all).")] = 500,
    axis: AxisOption = "recorded",
    json: JsonOption = False,
    config: ConfigOption = None,
) -> None:
    """Every event of every stream in the window, in log order (bars interleaved with --market)."""
    from ..replay import timeline, timeline_table

    with _guard():
        with _store(db, config) as store, _progress("reading") as progress:
            tl = timeline(store, around, window, axis=axis, market=market, account=account, symbol=symbol,
                          strategy=strategy, types=type_, progress=progress)  # type: ignore[arg-type]
        _out(tl.to_json()) if json else _print(timeline_table(tl, limit=limit))


@replay_app.command("trace", epilog=EPILOG)
@command
def trace_cmd(
    client_order_id: Annotated[str, typer.Argument(help="The client order id.")],
    db: DbOption = None,
    account: Annotated[Optional[str], typer.Option("--account", help="Needed when several accounts use the id.")] = None,
    json: JsonOption = False,
    config: ConfigOption = None,
) -> None:
    """An order's whole life with the state after each step and the causation chain."""
    from ..replay import trace

    with _guard():
        with _store(db, config) as store:
            t = trace(store, account, client_order_id)
        _out(t.to_json()) if json else _print(t)


@replay_app.command("index", epilog=EPILOG)
@command
def index_cmd(
    db: DbOption = None,
    json: JsonOption = False,
    config: ConfigOption = None,
) -> None:
    """Build or catch up the order-reference index that lets `trace` find an order's account
    events without reading its account's stream (derived data beside the log, like checkpoints;
    the log is not touched), and the partial index of risk events that checking a checkpoint at
    any position reads (`state --at` on a long log). The first run on a long existing log
    indexes all of it (about 90 s and 40 s at ten million events on SQLite); afterwards a trace
    catches its index up itself when it is close to the head."""
    from ..adapters.store import checkpoints, order_refs

    with _guard():
        with _store(db, config) as store, _progress("indexing") as progress:
            checkpoints.create_risk_index(store)
            done = order_refs.catch_up(store, progress=progress)
        report = {"indexed_from": done.before, "indexed_upto": done.upto, "account_events": done.events,
                  "refs": done.refs}
        if done.upgraded:  # an index built before fees' exec ids: those were added
            report["format_upgraded"] = True
        if json:
            _out(report)
        else:
            if done.upgraded:
                _print("order index: upgraded to index fees by execution id")
            _print(f"order index: positions {done.before + 1:,}..{done.upto:,} indexed ({done.events:,} account "
                   f"events, {done.refs:,} references)" if done.upto > done.before else
                   f"order index: up to date at position {done.upto:,}")


@replay_app.command("market", epilog=EPILOG)
@command
def market_cmd(
    db: DbOption = None,
    start: Annotated[Optional[str], typer.Option("--start", help="Window start (default: the first bar).")] = None,
    end: Annotated[Optional[str], typer.Option("--end", help="Window end (default: the last bar).")] = None,
    around: Annotated[Optional[str], typer.Option("--around", help="Or: an instant ...")] = None,
    window: Annotated[Optional[str], typer.Option("--window", help="... and how far before and after it.")] = None,
    speed: Annotated[str, typer.Option("--speed", help="10x, 0.5x, or max (as fast as possible).")] = "max",
    symbol: Annotated[Optional[str], typer.Option("--symbol", help="Symbol(s), comma-separated.")] = None,
    trading: Annotated[bool, typer.Option("--trading/--no-trading", help="Interleave the trading events of the window.")] = True,
    axis: OccurredAxisOption = "occurred",
    json: Annotated[bool, typer.Option("--json", help="One JSON object per line, as replayed.")] = False,
    config: ConfigOption = None,
) -> None:
    """Replay recorded bars in time order at a chosen speed, with the trading events of the window."""
    from ..replay import describe, parse_speed, replay_market
    from ..replay.log import iso
    from ..replay.market import window_of
    from ..render import console, to_json

    with _guard():
        parse_speed(speed)
        symbols = [s.strip() for s in symbol.split(",") if s.strip()] if symbol else None
        with _store(db, config) as store:
            lo, hi = window_of(around, window, start, end, store)

            def show(item: Any) -> None:
                if json:
                    sys.stdout.write(to_json(item.to_json()) + "\n")
                    sys.stdout.flush()
                elif item.kind == "bar":
                    b = item.bar
                    console.print(f"{iso(item.time)}  bar   {b.symbol:<6} {b.timeframe:>3}  O {b.open} H {b.high} "
                                  f"L {b.low} C {b.close} V {b.volume}", highlight=False, markup=False)
                else:
                    e = item.event
                    console.print(f"{iso(item.time)}  event #{e.position:<6} {e.type:<22} {describe(e)}",
                                  highlight=False, markup=False)

            stats = replay_market(store, lo, hi, speed, show, symbols=symbols, trading=trading, axis=axis).run()  # type: ignore[arg-type]
        if not json:
            console.print(f"{stats.bars} bars and {stats.events} trading events replayed", highlight=False)


@replay_app.command("orders", epilog=EPILOG)
@command
def orders_cmd(
    db: DbOption = None,
    start: Annotated[Optional[str], typer.Option("--start", help="Window start, ISO-8601 (default: the first bar).")] = None,
    end: Annotated[Optional[str], typer.Option("--end", help="Window end, ISO-8601 (default: the last bar).")] = None,
    around: Annotated[Optional[str], typer.Option("--around", help="Or: an instant (ISO-8601) ...")] = None,
    window: Annotated[Optional[str], typer.Option("--window", help="... and how far before and after it (e.g. 30m).")] = None,
    account: Annotated[Optional[str], typer.Option("--account", help="Only this account's intents (default: all).")] = None,
    seed: Annotated[int, typer.Option("--seed", help="The simulated broker's seed.")] = 0,
    axis: OccurredAxisOption = "occurred",
    json: JsonOption = False,
    config: ConfigOption = None,
) -> None:
    """Replay the window's recorded intents through the simulated broker against the recorded bars,
    and compare simulated with recorded outcomes."""
    from ..replay import replay_orders
    from ..replay.market import window_of

    with _guard():
        with _store(db, config) as store:
            lo, hi = window_of(around, window, start, end, store)
            r = replay_orders(store, lo, hi, axis=axis, account=account, seed=seed)  # type: ignore[arg-type]
        _out(r.to_json()) if json else _print(r)


_EXPORT_HELP = (
    "Export the log (or a window) as Parquet or JSON lines.\n\n"
    "--kind events (the default): one row per event, its envelope fields plus the payload (JSON text in "
    "Parquet, a JSON object in JSON lines). --kind fills, orders, bars or risk: typed tables, money and "
    "quantities as decimal128(28, 12), times as UTC timestamps in microseconds (strings in JSON lines).\n\n"
    "Parquet files carry the kind, window, time axis, log head and schema version as key-value metadata.\n\n"
    "The file is written beside --out and renamed into place: an existing file is kept unless --force; a "
    "symbolic link or a missing folder is refused (exit 2)."
)


@replay_app.command("export", help=_EXPORT_HELP, epilog=EPILOG)
@command
def export_cmd(
    out: Annotated[str, typer.Option("--out", help="File to write (.parquet or .jsonl); its folder must exist.")],
    db: DbOption = None,
    fmt: Annotated[Optional[str], typer.Option("--format", help="parquet or jsonl (default: from --out's suffix).",
                                               **choice("parquet", "jsonl", what="format"))] = None,
    kind: Annotated[str, typer.Option("--kind", help="events (the envelope and payload of every event), "
                                                    "fills, orders, bars or risk (typed tables).",
                                      **choice("events", "fills", "orders", "bars", "risk", what="kind"))] = "events",
    start: Annotated[Optional[str], typer.Option("--start", help="Window start, ISO-8601 (default: the log's start).")] = None,
    end: Annotated[Optional[str], typer.Option("--end", help="Window end, ISO-8601 (default: the log's end).")] = None,
    account: Annotated[Optional[str], typer.Option("--account", help="Only this account's rows.")] = None,
    symbol: Annotated[Optional[str], typer.Option("--symbol", help="Only this symbol's bars (--kind bars).")] = None,
    log: Annotated[str, typer.Option("--log", help="trading (orders, fills, risk) or market (bars); --kind events only.",
                                     **choice("trading", "market", what="log"))] = "trading",
    force: Annotated[bool, typer.Option("--force", help="Replace --out if it exists.")] = False,
    axis: AxisOption = "recorded",
    json: JsonOption = False,
    config: ConfigOption = None,
) -> None:
    """Export the log (or a window) as Parquet or JSON lines: the events, or a typed table (--kind)."""
    from ..replay import export

    with _guard():
        with _store(db, config) as store, _progress("exporting") as progress:
            n = export(store, out, fmt=fmt, start=start, end=end, axis=axis, log=log, progress=progress,  # type: ignore[arg-type]
                       kind=kind, account=account, symbol=symbol, overwrite=force)
        if json:
            _out({"path": out, "rows": n, "log": "market" if kind == "bars" else log, "kind": kind})
        else:
            _print(f"{n} {'events' if kind == 'events' else kind + ' rows'} written to {out}")


@replay_app.command("report", epilog=EPILOG)
@command
def report_cmd(
    around: Annotated[str, typer.Option("--around", help="The incident instant.")],
    out: Annotated[str, typer.Option("--out", help="HTML file to write.")] = "postmortem.html",
    db: DbOption = None,
    window: Annotated[str, typer.Option("--window", help="How far before and after (e.g. 30m).")] = "30m",
    account: Annotated[Optional[str], typer.Option("--account", help="Only this account (default: all).")] = None,
    market: Annotated[bool, typer.Option("--market/--no-market", help="Include market bars in the timeline.")] = True,
    axis: AxisOption = "recorded",
    json: JsonOption = False,
    config: ConfigOption = None,
) -> None:
    """Write the post-mortem HTML report (plots and timeline) of the window around an instant."""
    from ..replay import write_report

    with _guard():
        with _store(db, config) as store, _progress("reading") as progress:
            path = write_report(store, around, window, out, axis=axis, account=account, market=market,  # type: ignore[arg-type]
                                progress=progress)
        if json:
            _out({"path": path})
        else:
            _print(f"report written to {path}")


def register(app: typer.Typer) -> None:
    """Add the ``replay`` group's commands to the ``tradestate`` command."""
    app.add_typer(replay_app, name="replay")
