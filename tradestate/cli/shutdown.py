"""``tradestate shutdown``: stop an engine gracefully from the command line (``tradestate.shutdown``)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from .common import (AccountOption, BaseUrlOption, BrokerOption, ClientIdOption, ConfigOption, DbOption, ExitCode,
                     HostOption, IbAccountOption, JsonOption, PortOption, SimStateOption, StreamUrlOption,
                     VenueOption, broker_flags, command, exit_codes, fail, make_adapters, open_log, settings)


def register(app: typer.Typer) -> None:
    """Add ``shutdown`` to the ``tradestate`` command."""

    @app.command(epilog=exit_codes("the engine's last run crashed (recover first), or a step of the shutdown "
                                   "failed (the stop is still recorded)"))
    @command
    def shutdown(
        db: DbOption = None,
        engine_id: Annotated[str, typer.Option("--engine-id", help="The engine to stop (it takes its lease).")] = "engine",
        policy: Annotated[str, typer.Option(metavar="[leave|cancel|flatten]", help="Open orders: leave them working, "
                                            "cancel them (cancel requests recorded), or cancel and flatten every "
                                            "position (intents through the pre-trade check).")] = "leave",
        kind: Annotated[str, typer.Option(metavar="[planned|emergency]", help="emergency: skips the slow steps "
                                          "and cancels at least; needs --reason.")] = "planned",
        reason: Annotated[str, typer.Option("--reason", help="Why, recorded with the stop.")] = "",
        broker: BrokerOption = None,
        account: AccountOption = None,
        venue: VenueOption = None,
        config: ConfigOption = None,
        base_url: BaseUrlOption = None,
        stream_url: StreamUrlOption = None,
        host: HostOption = None,
        port: PortOption = None,
        client_id: ClientIdOption = None,
        ib_account: IbAccountOption = None,
        sim_state: SimStateOption = None,
        json: JsonOption = False,
    ) -> None:
        """Stop ENGINE gracefully: pre-shutdown checks, the open-order policy, a final checkpoint, and the
        stop recorded with its summary (ShutdownCompleted, EngineStopped) and the lease handed back. With
        --broker, cancels and flattening orders go to the venue and a planned stop reconciles before it
        is recorded. Refused while the engine's lease is held by its running process, and after a crash
        (run `tradestate recover`)."""
        import tradestate

        from ..adapters.store.lease import Leases
        from ..recovery import detect
        from ..render import console, to_json
        from ..shutdown import check_options
        from ..shutdown import shutdown as run_shutdown

        check_options(policy, kind, reason)  # before the lease is taken: bad input appends nothing

        s = settings(config, db=db, **broker_flags(broker=broker, account=account, venue=venue, strict=None,
                                                   base_url=base_url, stream_url=stream_url, host=host, port=port,
                                                   client_id=client_id, ib_account=ib_account, sim_state=sim_state))
        store = open_log(s.db)
        try:
            lease = Leases.of(store).get(engine_id)
            if lease is not None and lease.live:
                fail(f"engine {engine_id!r} is running (lease held by {lease.holder}, epoch {lease.epoch}): shut it "
                     "down from its own process (client.shutdown), or stop it and run this again")
            crashed, why = detect(store, engine_id)
        finally:
            store.close()
        if crashed:
            fail(f"{why}. If it still runs, shut it down from its process (client.shutdown); if it crashed, run "
                 "`tradestate recover` first. Nothing was recorded.", ExitCode.PROBLEM)
        client = tradestate.connect(s.db, engine_id=engine_id)
        try:
            adapters = make_adapters(s) if s.broker else []
            try:
                report = run_shutdown(client, engine_id, policy=policy, kind=kind, reason=reason, adapters=adapters)
            finally:
                for adapter in adapters:
                    adapter.close()
        finally:
            client.close()
        failed = any(c.status == "failed" for c in report.checks)
        if json:
            print(to_json(report.as_dict()))
        else:
            for c in report.checks:
                colour = {"ok": "green", "warn": "yellow", "failed": "red", "skipped": "dim"}[c.status]
                console.print(f"[{colour}]{c.status:>7}[/] {c.name}: {c.detail}", highlight=False)
            console.print(f"{report.kind} shutdown of {engine_id} recorded at position {report.stopped_position} "
                          f"(policy {report.policy}: {len(report.cancel_requested)} cancel requests, "
                          f"{len(report.flatten_intents)} flattening intents; {report.open_orders_left} open orders "
                          f"and {report.positions_left} positions left)", highlight=False)
            for error in report.venue_errors:
                console.print(f"[red]venue:[/] {error}", highlight=False)
        raise typer.Exit(ExitCode.PROBLEM if failed else ExitCode.OK)
