"""``tradestate alerts``: deliver the log's alerts to webhooks (see ``tradestate.alerts``)."""

from __future__ import annotations

import threading
import time
from typing import Annotated, Any, Optional

import typer

from .common import ConfigOption, DbOption, ExitCode, command, exit_codes, fail, open_log, settings


def register(app: typer.Typer) -> None:
    """Add ``alerts`` to the ``tradestate`` command."""

    @app.command(epilog=exit_codes("an alert was dropped after its retries (--once)"))
    @command
    def alerts(
        db: DbOption = None,
        url: Annotated[Optional[list[str]], typer.Option("--url", help="Webhook URL (repeatable; default: "
                                                         "$TRADESTATE_ALERT_URL or the config file's alert.url). "
                                                         "The secret comes from $TRADESTATE_ALERT_SECRET or the config file's alert."
                                                         "secret, never a flag.")] = None,
        follow: Annotated[bool, typer.Option("--follow", help="Keep delivering as the log grows, until "
                                                              "SIGTERM/SIGINT.")] = False,
        once: Annotated[bool, typer.Option("--once", help="Deliver what the log holds now, then exit.")] = False,
        from_start: Annotated[bool, typer.Option("--from-start", help="A webhook never delivered to starts at "
                                                                      "the log's beginning (default: its head).")] = False,
        stall_seconds: Annotated[Optional[float], typer.Option("--stall-seconds", help="Alert when the read models "
                                                               "lag by more than this (default 60).")] = None,
        timeout: Annotated[float, typer.Option("--timeout", help="--once: seconds to wait for delivery.")] = 60.0,
        as_json: Annotated[bool, typer.Option("--json", help="At the end, the delivery counters as JSON.")] = False,
        config: ConfigOption = None,
    ) -> None:
        """Send alerts (crash, recovery, gate waiting, discrepancy, breaker, kill switch, daily limit,
        projector stalled) as signed JSON POSTs, retried with backoff; delivery resumes where it got to."""
        from ..alerts import AlertService, service_options
        from ..render import console, to_json
        from .project import _stop_on_signals

        if follow == once:
            fail("say --follow (keep delivering) or --once (deliver what is there and exit)")
        s = settings(config, db=db, alert_url=url or None, alert_stall_seconds=stall_seconds)
        options = service_options(s)
        if not options["urls"]:
            fail("no webhook: --url, $TRADESTATE_ALERT_URL or url in the config file's alert table")
        store = open_log(s.db)
        service = AlertService(store, options["urls"], options["secret"], stall_seconds=options["stall_seconds"],
                               start="beginning" if from_start else "head")
        stop = threading.Event()
        dropped = 0
        try:
            service.start()
            if once:
                deadline = time.monotonic() + timeout
                for a in service.alerters:
                    a.drain(max(0.0, deadline - time.monotonic()))
            else:
                console.print(f"delivering alerts of {store.display_url} to {len(service.alerters)} webhook(s)",
                              highlight=False)
                with _stop_on_signals(stop):
                    while not stop.wait(0.25):
                        pass
        finally:
            service.stop()
            store.close()
        status: list[dict[str, Any]] = service.status()
        dropped = sum(int(x["dropped"]) for x in status)
        if as_json:
            print(to_json({"webhooks": status}))
        else:
            for x in status:
                console.print(f"{x['url']}: {x['delivered']} delivered, {x['dropped']} dropped, "
                              f"{x['failures']} failed attempts; log read to {x['read_position']}", highlight=False)
        raise typer.Exit(ExitCode.PROBLEM if dropped else ExitCode.OK)
