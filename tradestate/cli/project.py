"""``tradestate project``: keep the SQL read models up to date with the log, with checkpoints."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, Any, Optional

import typer

from ..adapters.store import Store, open_store
from ..projections.follow import DEFAULT_POLL, DEFAULT_WATCHDOG, FollowStats, Poll, channel_name, drain, follow
from ..projections.projector import Projector
from ..render import console, err_console, to_json
from .common import ConfigOption, DbOption, command, exit_codes, fail, settings


LEASE_WATCH_SECONDS = 2.0  # how often the follower looks for expired engine leases


class _Interrupted(Exception):
    pass


@contextmanager
def _stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """SIGTERM/SIGINT set ``stop`` (the worker finishes the page in hand); a second one ends the
    process at once (an unfinished page is rolled back by the database, as after a crash)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, _frame: Any) -> None:
        if stop.is_set():
            signal.signal(signum, signal.SIG_DFL)
            signal.raise_signal(signum)
        stop.set()

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _rebuild(projector: Projector, stop: threading.Event, console: Any, *, keep_state: bool = False,
             ) -> tuple[int, float, bool]:
    from rich.progress import BarColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn
    from rich.text import Text

    class Rate(ProgressColumn):
        def render(self, task: Any) -> Text:
            speed = task.finished_speed or task.speed
            return Text(f"{speed:,.0f} events/s" if speed else "- events/s", style="progress.data.speed")

    head = projector.store.trading.head()
    started = time.perf_counter()
    interrupted = False
    with Progress(
        TextColumn("[bold]rebuild[/]"),
        BarColumn(),
        TextColumn("position {task.completed:,.0f} of {task.total:,.0f}"),
        Rate(),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        task = progress.add_task("rebuild", total=max(head, 1), completed=0)

        def on_progress(position: int, log_head: int) -> None:
            progress.update(task, completed=position, total=max(log_head, position, 1))
            if stop.is_set():
                raise _Interrupted  # after the page committed: the tables are consistent

        try:
            projector.rebuild(on_progress, keep_state=keep_state)
        except _Interrupted:
            interrupted = True
        if not interrupted:
            progress.update(task, completed=max(projector.state.position, 1), total=max(projector.state.position, 1))
    return projector.state.position, time.perf_counter() - started, interrupted


def run_project(db: str | None, *, rebuild: bool = False, once: bool = False, console: Any = None,
                poll: Poll = DEFAULT_POLL, watchdog: float = DEFAULT_WATCHDOG,
                checkpoint_every: int | None = None, checkpoint_seconds: float = 60.0,
                summary: dict[str, Any] | None = None, alerts: dict[str, Any] | None = None) -> int:
    """The ``tradestate project`` command: 0 when done or stopped by SIGTERM/SIGINT, 1 when the
    projector failed (a ``TradestateError`` such as a bad URL propagates for the CLI to print).
    ``summary``, when given, receives the position reached, the log head and the events projected.
    ``alerts`` (``tradestate.alerts.service_options``, with URLs): while following, deliver the log's
    alerts to those webhooks from threads of their own (never slowing the projector's pages)."""
    if console is None:
        from rich.console import Console

        console = Console()
    store = open_store(db)
    stop = threading.Event()
    outcome: dict[str, Any] = {}

    def say(message: str) -> None:
        console.print(message, highlight=False, soft_wrap=True)

    def work() -> None:
        try:
            outcome["code"] = _project(store, stop, rebuild=rebuild, once=once, say=say, console=console,
                                       poll=poll, watchdog=watchdog, checkpoint_every=checkpoint_every,
                                       checkpoint_seconds=checkpoint_seconds,
                                       summary=summary if summary is not None else {}, alerts=alerts)
        except BaseException as e:  # noqa: BLE001 - handed to the main thread
            outcome["error"] = e

    try:
        with _stop_on_signals(stop):
            # The work runs in a thread so that a signal handler (always run by the main thread)
            # never interrupts a transaction: it only sets ``stop``, checked between pages.
            worker = threading.Thread(target=work, name="tradestate-projector", daemon=True)
            worker.start()
            while worker.is_alive():
                worker.join(0.25)
    finally:
        store.close()
    error = outcome.get("error")
    if error is not None:
        from ..domain.errors import TradestateError

        if isinstance(error, TradestateError):
            raise error
        say(f"[bold red]error:[/] the projector failed: {type(error).__name__}: {error}")
        return 1
    return int(outcome.get("code", 0))


def _project(store: Store, stop: threading.Event, *, rebuild: bool, once: bool, say: Callable[[str], None],
             console: Any, poll: Poll, watchdog: float, checkpoint_every: int | None = None,
             checkpoint_seconds: float = 60.0, summary: dict[str, Any],
             alerts: dict[str, Any] | None = None) -> int:
    projector = Projector(store)

    def summarise(events: int, interrupted: bool) -> None:
        summary.update(position=projector.state.position, head=store.trading.head(), events=events,
                       interrupted=interrupted, rebuilt=rebuild,
                       checkpoints=len(checkpointer.written) if checkpointer is not None and
                       hasattr(checkpointer, "written") else 0)

    checkpointer = None
    if checkpoint_every:
        from ..adapters.store.checkpoints import Checkpointer

        checkpointer = Checkpointer(store, every_events=checkpoint_every, every_seconds=checkpoint_seconds)

    def checkpoint(_rows: int = 0, _position: int = 0) -> None:
        # The projector holds the whole state already: checkpoints cost the engine nothing. A
        # checkpoint is a cache, so failing to write one is reported and never stops projecting.
        if checkpointer is None:
            return
        try:
            info = checkpointer.maybe(projector.state)
        except Exception as e:  # noqa: BLE001
            say(f"[yellow]checkpoint failed (will retry):[/] {type(e).__name__}: {e}")
            return
        if info is not None and once:
            say(f"checkpoint {info.id} written at position {info.position:,} ({info.size:,} bytes)")

    loaded_at = time.perf_counter()
    position = 0 if rebuild else projector.load()  # a rebuild starts from nothing: no fold to throw away
    load_s = time.perf_counter() - loaded_at
    if rebuild:
        say(f"rebuilding {store.display_url}: the whole log folded into fresh read-model tables, swapped in when done "
            f"(head {store.trading.head():,})")
        # following afterwards: keep the folded state (a follower holds it anyway), not fold twice
        reached, seconds, interrupted = _rebuild(projector, stop, console, keep_state=not once)
        rate = reached / seconds if seconds > 0 else 0.0
        say(f"{'rebuild interrupted' if interrupted else 'rebuilt'}: position {reached:,} of head "
            f"{store.trading.head():,}, {rate:,.0f} events/s, {seconds:.2f} s")
        if once or stop.is_set():
            summarise(reached, interrupted)
            return 0
        position = reached
    if once:
        stats = FollowStats(position=position, start_position=position)
        drain(projector, stop, stats)
        checkpoint()
        say(f"{'interrupted' if stop.is_set() else 'caught up'}: position {projector.state.position:,} of head "
            f"{store.trading.head():,} (+{stats.events:,} events in {stats.pages} pages), "
            f"{stats.rate:,.0f} events/s, {stats.seconds:.2f} s (load {load_s:.2f} s)")
        summarise(stats.events, stop.is_set())
        return 0
    how = "head poll every {:g}-{:g} ms".format(poll[0] * 1000, poll[1] * 1000) if poll else "no head poll"
    if store.dialect.is_postgres:
        how = f"LISTEN {channel_name(store)} + {how}"
    say(f"following {store.display_url} from position {position:,} (head {store.trading.head():,}; "
        f"{how}; watchdog {watchdog:g} s)")
    last_report = [0.0]

    def on_error(e: BaseException) -> None:
        now = time.monotonic()
        if now - last_report[0] >= 5.0:  # one line per 5 s at most while a database is down
            last_report[0] = now
            say(f"[yellow]projector error (retrying):[/] {type(e).__name__}: {e}")

    # The live crash detector: a dead or hung engine's expired lease is recorded (LeaseExpired)
    # within a few seconds even when no standby runs. Throttled; its errors never stop projecting.
    from ..engines import LeaseWatcher, detector_name

    watch_errors = [0.0]

    def watch_failed(e: BaseException) -> None:
        now = time.monotonic()
        if now - watch_errors[0] >= 60.0:
            watch_errors[0] = now
            say(f"[yellow]engine lease watch failed (retrying):[/] {type(e).__name__}: {e}")

    watcher = LeaseWatcher(store, detected_by=detector_name("projector"), every=LEASE_WATCH_SECONDS,
                           on_error=watch_failed, on_recorded=lambda lease: say(
                               f"[bold red]engine {lease.engine_id} is dead:[/] its lease (epoch {lease.epoch}, "
                               f"holder {lease.holder}) expired unrenewed; recorded LeaseExpired"))

    def on_page(rows: int, position: int) -> None:
        checkpoint(rows, position)
        watcher.tick()

    def on_tick() -> None:
        # a quiet log still gets its checkpoint within ``checkpoint_seconds`` of its last event
        checkpoint()
        watcher.tick()

    service = None
    if alerts and alerts.get("urls"):
        from ..alerts import AlertService

        service = AlertService(store, alerts["urls"], alerts.get("secret"),
                               stall_seconds=alerts.get("stall_seconds", 60.0))
        service.start()
        say(f"alerts: delivering to {len(service.alerters)} webhook(s)")
    try:
        stats = follow(store, stop, poll=poll, watchdog=watchdog, projector=projector, on_error=on_error,
                       on_page=on_page, on_tick=on_tick)
    finally:
        if service is not None:
            service.stop()
    say(f"stopped: position {stats.position:,} (+{stats.events:,} events in {stats.pages} pages, "
        f"{stats.conflicts} conflicts, {stats.errors} errors) after {stats.seconds:.1f} s")
    summarise(stats.events, True)
    return 0


def register(app: typer.Typer) -> None:
    """Add ``project`` to the ``tradestate`` command."""

    @app.command(epilog=exit_codes("the projector failed"))
    @command
    def project(
        db: DbOption = None,
        rebuild: Annotated[bool, typer.Option("--rebuild", help="Fold the whole log into fresh read-model tables and swap them in.")] = False,
        once: Annotated[bool, typer.Option("--once", help="Catch up and exit instead of following the log.")] = False,
        checkpoint_every: Annotated[Optional[int], typer.Option("--checkpoint-every", help="Write a recovery checkpoint "
                                                                "every N events (0: never; default: "
                                                                "$TRADESTATE_CHECKPOINT_EVERY, the config file, "
                                                                "else 10000).")] = None,
        checkpoint_seconds: Annotated[Optional[float], typer.Option("--checkpoint-seconds", help="...or every T seconds "
                                                                    "when the log moved less (a quiet log is "
                                                                    "checkpointed too; default 60).")] = None,
        json: Annotated[bool, typer.Option("--json", help="Progress on stderr; at the end one JSON object on stdout "
                                                          "(position, head, events).")] = False,
        alerts: Annotated[bool, typer.Option("--alerts/--no-alerts", help="While following, deliver alerts to the "
                                                                          "webhooks of $TRADESTATE_ALERT_URL / the config "
                                                                          "file's alert.url, when any is set.")] = True,
        config: ConfigOption = None,
    ) -> None:
        """Keep the SQL read models (positions, orders, risk...) up to date with the log, and write
        recovery checkpoints as it goes."""
        if checkpoint_every is not None and checkpoint_every < 0:
            fail("--checkpoint-every must be >= 0")
        if checkpoint_seconds is not None and not checkpoint_seconds > 0:
            fail("--checkpoint-seconds must be > 0")
        s = settings(config, db=db, checkpoint_every=checkpoint_every, checkpoint_seconds=checkpoint_seconds)
        summary: dict[str, Any] = {}
        from ..alerts import service_options

        code = run_project(s.db, rebuild=rebuild, once=once, console=err_console if json else console,
                           checkpoint_every=s.checkpoint_every or None, checkpoint_seconds=s.checkpoint_seconds,
                           summary=summary, alerts=service_options(s) if alerts else None)
        if json:
            print(to_json({"ok": code == 0, "exit_code": code, **summary}))
        raise typer.Exit(code)
