"""``tradestate reconcile``: compare the log with a broker and append corrective events.

Options come from the flags, else ``TRADESTATE_*`` variables, else the TOML settings file
(``--config`` or ``$TRADESTATE_CONFIG``; see ``tradestate.settings``): top-level keys or a
``[reconcile]`` table, plus ``[sim]``, ``[alpaca]``, ``[ib]`` tables for the broker's own options
(``base_url`` or ``base-url``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Optional

import typer

from .common import (AccountOption, BaseUrlOption, BrokerOption, ClientIdOption, ConfigOption, DbOption, ExitCode,
                     HostOption, IbAccountOption, PortOption, SimStateOption, StreamUrlOption, StrictOption,
                     VenueOption, broker_flags, command, exit_codes, fail, make_adapters, open_log, settings)


def register(app: typer.Typer) -> None:
    """Add ``reconcile`` to the ``tradestate`` command."""

    @app.command(epilog=exit_codes("discrepancies left in strict mode, or a venue not queried (unknown)"))
    @command
    def reconcile(
        db: DbOption = None,
        broker: BrokerOption = None,
        account: AccountOption = None,
        strict: StrictOption = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON (errors too, on stderr).")] = False,
        config: ConfigOption = None,
        since: Annotated[Optional[str], typer.Option("--since", help="Only orders and fills since this ISO-8601 time.")] = None,
        venue: VenueOption = None,
        base_url: BaseUrlOption = None,
        stream_url: StreamUrlOption = None,
        host: HostOption = None,
        port: PortOption = None,
        client_id: ClientIdOption = None,
        ib_account: IbAccountOption = None,
        sim_state: SimStateOption = None,
        dry_run: Annotated[bool, typer.Option("--dry-run", help="Append nothing: say what a run would find and "
                                                                "append (no block, no corrective events).")] = False,
        ack: Annotated[bool, typer.Option("--ack", help="Record an operator's decision on the discrepancies (unblocks trading).")] = False,
        by: Annotated[Optional[str], typer.Option("--by", help="--ack: who decided.")] = None,
        decision: Annotated[Optional[str], typer.Option("--decision", help="--ack: what was decided.")] = None,
        bootstrap: Annotated[bool, typer.Option("--bootstrap", help="Start from the venue: on a log that holds "
                                                "nothing of the account (an empty or new database), import its "
                                                "positions, orders and cash as opening events, with the venue "
                                                "report. All or nothing.")] = False,
        follow: Annotated[bool, typer.Option("--follow", help="Keep reconciling every --every while trading, "
                                                              "until SIGTERM/SIGINT: a partial or failed venue "
                                                              "answer corrects nothing; stuck orders are flagged.")] = False,
        every: Annotated[str, typer.Option("--every", help="--follow: time between rounds (30s, 2m, 500ms).")] = "30s",
        rounds: Annotated[Optional[int], typer.Option("--rounds", help="--follow: stop after N rounds.")] = None,
        stuck_submitted: Annotated[str, typer.Option("--stuck-submitted", help="--follow: flag an order submitted "
                                                     "and not acknowledged for longer than this (off: never).")] = "60s",
        missing_at_venue: Annotated[str, typer.Option("--missing-at-venue", help="--follow: flag an order still "
                                                      "open this long after the venue said it does not know it "
                                                      "(off: never).")] = "5m",
        drop_copy: Annotated[Optional[str], typer.Option("--drop-copy", help="Also read a FIX 4.4 drop copy "
                             "(fix://HOST:PORT?sender=OURS&target=THEIRS&store=DIR) and compare three views: "
                             "the log, the broker API, the drop copy. When the API or the drop copy is the odd one "
                             "out, nothing is corrected (a dry run) and the exit code is 1.")] = None,
    ) -> None:
        """Compare the log with each broker account; append corrective events (re-running adds nothing).
        With several --broker, each is reconciled in turn (JSON: {"results": [...]}). With --follow, a
        round every --every (JSON: one object per round and line)."""
        from ..client import TradestateClient
        from ..reconcile import acknowledge
        from ..reconcile import reconcile as run_reconcile
        from ..render import console, to_json

        s = settings(config, db=db, since=since,
                     **broker_flags(broker=broker, account=account, venue=venue, strict=strict, base_url=base_url,
                                    stream_url=stream_url, host=host, port=port, client_id=client_id,
                                    ib_account=ib_account, sim_state=sim_state))
        if drop_copy and (ack or bootstrap):
            fail("--drop-copy compares reconciliations; it does not go with --ack or --bootstrap")
        if ack:
            if not s.account or not by or not decision:
                fail("--ack needs --account, --by NAME and --decision TEXT")
            with TradestateClient(open_log(s.db)) as client:
                recorded = acknowledge(client, s.account, by=by, decision=decision)
            if as_json:
                print(to_json({"acknowledged": True, "account": s.account, "position": recorded.position}))
            else:
                console.print(f"recorded the decision of {by} for {s.account} at position "
                              f"{recorded.position}: trading is no longer blocked")
            raise typer.Exit(ExitCode.OK)

        if not s.broker:
            fail("--broker must be one of sim, alpaca, ib, ccxt:<exchange> (or set it in the config file)")
        if bootstrap:
            if dry_run:
                fail("--bootstrap appends its opening events at once; --dry-run is for a reconciliation")
            run_bootstrap(s, as_json)
        since_at = None
        if s.since:
            try:
                since_at = datetime.fromisoformat(str(s.since).replace("Z", "+00:00"))
            except ValueError:
                fail(f"--since is not an ISO-8601 time: {s.since!r}")
            if since_at.tzinfo is None:
                fail("--since needs a time zone (e.g. 2026-11-20T14:31:05Z)")
        if drop_copy and len(s.broker) != 1:
            fail("--drop-copy needs exactly one --broker (the drop copy is of that account)")
        if drop_copy and not follow:
            raise typer.Exit(_three_way(s, drop_copy, since_at, dry_run, as_json))
        if follow:
            from ..reconcile import StuckThresholds

            thresholds = StuckThresholds(submitted=_seconds(stuck_submitted, "--stuck-submitted", allow_off=True),
                                         missing_at_venue=_seconds(missing_at_venue, "--missing-at-venue",
                                                                   allow_off=True))
            interval = _seconds(every, "--every")
            if not interval:
                fail("--every must be more than 0 s")
            if rounds is not None and rounds < 1:
                fail("--rounds must be at least 1")
            raise typer.Exit(_follow(s, since_at, interval, rounds, thresholds, dry_run, as_json, drop_copy))
        client = TradestateClient(_existing_log(s.db))
        multi = None
        try:
            adapters = make_adapters(s)
            try:
                if len(adapters) > 1 and all(a.broker.startswith("ccxt:") for a in adapters):
                    # one account at several crypto venues: positions summed, cash kept per venue
                    from ..multi_venue import reconcile_venues

                    multi = reconcile_venues(client, adapters, strict=s.strict, since=since_at, dry_run=dry_run)
                    results = multi.results
                else:
                    results = [run_reconcile(client, a, strict=s.strict, since=since_at, dry_run=dry_run)
                               for a in adapters]
            finally:
                for adapter in adapters:
                    adapter.close()
        finally:
            client.close()

        failed = any(r.status == "unknown" or (s.strict and r.status == "discrepancies") for r in results)
        failed = failed or bool(multi and multi.errors)
        if as_json:
            dicts = [r.as_dict() for r in results]
            if multi is not None:
                print(to_json(multi.as_dict()))
            else:
                print(to_json(dicts[0] if len(dicts) == 1 else {"results": dicts}))
        else:
            for result in results:
                print_plan(console, result) if dry_run else print_result(console, result)
            if multi is not None:
                print_venues(console, multi)
        raise typer.Exit(ExitCode.PROBLEM if failed else ExitCode.OK)


def print_venues(console: Any, multi: Any) -> None:
    """The sums across venues (as seed 002's script compares them) and each venue's cash."""
    from rich.table import Table

    table = Table(title=f"{multi.account}: positions summed across venues")
    for name in ("asset", "log", "venues", "difference", "log after", "status"):
        table.add_column(name)
    for p in multi.positions:
        table.add_row(p["asset"], p["ours"], p["venues"], p["difference"], p["ours_after"], p["status"])
    console.print(table)
    for venue, cash in multi.cash.items():
        parts = [f"{c} {v['venue']}" for c, v in cash.items() if isinstance(v, dict)] or [str(cash.get("unknown"))]
        console.print(f"cash at {venue}: {', '.join(parts)}"
                      + ("" if multi.cash_recorded else " (reported, not recorded)"))
    for where, error in multi.errors.items():
        console.print(f"[red]{where}: {error}[/red]")


def _existing_log(url: str | None) -> Any:
    """The log to reconcile; none there: say how to start one from the venue."""
    from ..domain.errors import InvalidInput

    try:
        return open_log(url)
    except InvalidInput as e:
        if "no tradestate log" not in str(e):
            raise
        fail(f"{e}; to start the log from the venue's state, run `tradestate reconcile --bootstrap` "
             "with the same broker options")


def run_bootstrap(s: Any, as_json: bool) -> None:
    """``reconcile --bootstrap``: create the log if need be and import each broker account's opening
    state (``tradestate.bootstrap``); exits."""
    from ..adapters.store import open_store
    from ..bootstrap import bootstrap
    from ..client import TradestateClient
    from ..domain.errors import VenueIncomplete
    from ..render import console, to_json

    results = []
    with TradestateClient(open_store(s.db)) as client:  # creates the log: there may be none yet
        adapters = make_adapters(s)
        try:
            for adapter in adapters:
                try:
                    results.append(bootstrap(client, adapter))
                except VenueIncomplete as e:
                    fail(str(e), ExitCode.PROBLEM)
        finally:
            for adapter in adapters:
                adapter.close()
    if as_json:
        dicts = [r.as_dict() for r in results]
        print(to_json(dicts[0] if len(dicts) == 1 else {"results": dicts}))
    else:
        for r in results:
            counts = r.counts
            console.print(f"bootstrapped {r.account} from {r.broker} at venue {r.venue!r}: {counts['positions']} "
                          f"positions, {counts['orders_imported']} orders imported ({counts['open_orders']} open, "
                          f"{counts['fills']} fills), {counts['balances']} cash balances; venue report "
                          f"{r.venue_report_sha256[:12]} stored with reconciliation {r.reconciliation_id[:8]} "
                          f"(marker at position {r.position})", highlight=False)
    raise typer.Exit(ExitCode.OK)
def _three_way(s: Any, url: str, since_at: Any, dry_run: bool, as_json: bool) -> int:
    """``reconcile --drop-copy URL``: one broker account, its drop copy and the log
    (``tradestate.three_way``); prints the rows that disagree, then the reconciliation."""
    from ..client import TradestateClient
    from ..render import console, to_json
    from ..three_way import reconcile_three_way

    client = TradestateClient(_existing_log(s.db))
    try:
        (adapter,) = make_adapters(s)
        try:
            drop = _drop_copy_of(url, adapter)
            try:
                outcome = reconcile_three_way(client, adapter, drop, strict=s.strict, since=since_at,
                                              dry_run=dry_run)
            finally:
                drop.close()
        finally:
            adapter.close()
    finally:
        client.close()
    result, report = outcome.result, outcome.report
    if as_json:
        print(to_json(outcome.as_dict()))
    else:
        from rich.table import Table

        table = Table(title=f"Three views of {report.account} at {report.venue}", title_justify="left")
        for column in ("kind", "key", "log", "api", "drop copy", "verdict", "action"):
            table.add_column(column, overflow="fold")
        for r in report.rows:
            if r.verdict != "agree":
                table.add_row(r.kind, r.key, *(r.values[v] or "unknown" for v in ("log", "api", "drop_copy")),
                              r.verdict, r.action)
        console.print(table if report.disagreements or any(r.verdict == "unknown" for r in report.rows) else
                      f"three views agree on {len(report.rows)} orders and positions", highlight=False)
        if outcome.withheld:
            console.print(f"[bold red]{len(report.alerts)} alert(s)[/]: the API and the drop copy disagree, so "
                          "nothing was corrected; what a run would append:", highlight=False)
        print_plan(console, result) if result.dry_run else print_result(console, result)
    failed = outcome.withheld or result.status == "unknown" or (s.strict and result.status == "discrepancies")
    return int(ExitCode.PROBLEM if failed else ExitCode.OK)


def _drop_copy_of(url: str, adapter: Any) -> Any:
    """The drop-copy adapter of ``url`` for ``adapter``'s account and venue (a bad URL: exit 2)."""
    from ..adapters.brokers.fix_dropcopy import drop_copy_adapter

    try:
        return drop_copy_adapter(url, account=adapter.account, venue=adapter.venue)
    except ValueError as e:
        fail(f"--drop-copy: {e}")


def three_way_lines(where: str, report: dict[str, Any]) -> list[str]:
    """A three-way comparison (``ThreeWayResult.as_dict()["three_way"]``) in a few plain lines:
    what happened to the corrections, then one line per row that does not agree."""
    lines = [f"  three views of {where}: {len(report['rows'])} not agreeing, {report['alerts']} alert(s)"
             + (": nothing was corrected (the API and the drop copy disagree)" if report["withheld"] else "")]
    for r in report["rows"]:
        lines.append(f"    {r['kind']} {r['key']}: log {r['log'] or 'unknown'}, api {r['api'] or 'unknown'}, "
                     f"drop copy {r['drop_copy'] or 'unknown'}: {r['verdict']} ({r['action']})")
    return lines


_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def _seconds(text: str, flag: str, *, allow_off: bool = False) -> float | None:
    """A duration flag: ``30s``, ``2m``, ``500ms``, ``1h`` or plain seconds; ``off`` (when allowed)
    is None. Anything else ends the command with exit 2."""
    value = text.strip().lower()
    if allow_off and value in ("off", "none", "never"):
        return None
    unit = next((u for u in ("ms", "s", "m", "h") if value.endswith(u)), "")
    try:
        number = float(value[: len(value) - len(unit)] if unit else value)
    except ValueError:
        number = -1.0
    if not number >= 0 or number == float("inf"):
        fail(f"{flag} is not a duration (e.g. 30s, 2m, 500ms{', off' if allow_off else ''}): {text!r}")
    return number * _UNITS.get(unit, 1.0)


def _follow(s: Any, since_at: Any, every: float, rounds: int | None, stuck: Any, dry_run: bool,
            as_json: bool, drop_url: str | None = None) -> int:
    """``reconcile --follow``: rounds until SIGTERM/SIGINT (or ``rounds``); exit 1 when the last
    round left something to look at (a venue not read in full, a failed run, a stuck order, the
    API and the drop copy in disagreement). ``drop_url``: the one broker account's drop copy,
    compared three ways on every round."""
    import threading

    from ..client import TradestateClient
    from ..reconcile import reconcile_follow
    from ..render import console, to_json
    from .project import _stop_on_signals

    stop = threading.Event()
    client = TradestateClient(open_log(s.db))
    try:
        adapters = make_adapters(s)
        drops = [_drop_copy_of(drop_url, adapters[0])] if drop_url else []
        try:
            def report(r: Any) -> None:
                if as_json:
                    print(to_json(r.as_dict()), flush=True)
                    return
                parts = [f"{x.broker} {x.venue} {x.account}: {x.status}"
                         + (f", {len(x.corrective_event_ids)} corrective" if x.corrective_event_ids else "")
                         + (" (dry run: not appended)" if x.dry_run and x.corrective_event_ids else "")
                         + (f", {x.withheld} withheld (partial answer)" if x.withheld else "")
                         for x in r.results]
                parts += [f"{where}: failed ({error})" for where, error in r.errors.items()]
                console.print(f"round {r.number} ({r.seconds * 1000:.0f} ms): " + "; ".join(parts), highlight=False,
                              markup=False)
                for flag in r.stuck:
                    console.print(f"  {flag['kind']} {flag['client_order_id']} {flag['symbol']}: {flag['detail']}",
                                  highlight=False, markup=False)
                for where, three in r.three_way.items():
                    for line in three_way_lines(where, three):
                        console.print(line, highlight=False, markup=False, soft_wrap=True)

            with _stop_on_signals(stop):
                done = reconcile_follow(client, adapters, every=every, rounds=rounds, stop=stop, strict=s.strict,
                                        since=since_at, dry_run=dry_run, stuck=stuck, on_round=report,
                                        drop_copies=drops)
        finally:
            for adapter in [*adapters, *drops]:
                adapter.close()
    finally:
        client.close()
    last = done[-1] if done else None
    troubled = last is not None and (last.errors or last.stuck or last.withheld_by_alerts
                                     or any(r.status == "unknown" for r in last.results))
    return int(ExitCode.PROBLEM if troubled else ExitCode.OK)


def print_plan(console: Any, planned: Any) -> None:
    """Print a dry run's result: its status, what a real run would append, and each discrepancy."""
    console.print(f"dry run: {planned.broker} {planned.venue} {planned.account}: status "
                  f"[bold]{planned.status}[/], a run would append {len(planned.corrective_event_ids)} events; "
                  f"{len(planned.discrepancies)} discrepancies"
                  + (" and block trading" if planned.blocked else ""), highlight=False)
    for d in planned.discrepancies:
        console.print(f"  {d.get('kind') or ''} {d.get('client_order_id') or ''} {d.get('symbol') or ''}: "
                      f"{d.get('detail') or ''}", highlight=False, markup=False)
    for error in planned.errors:
        console.print(f"[red]unknown:[/] {error}", highlight=False)


def print_result(console: Any, result: Any) -> None:
    """Print a reconciliation result: discrepancies, status, errors, and whether trading is blocked."""
    from rich.table import Table

    colour = {"clean": "green", "corrected": "yellow", "discrepancies": "red", "unknown": "red"}[result.status]
    table = Table(title=f"Reconciliation {result.reconciliation_id[:8]} · {result.broker} {result.venue} · "
                        f"{result.account}", title_justify="left")
    for column in ("kind", "order", "symbol", "ours", "venue", "resolution", "detail"):
        table.add_column(column, overflow="fold")
    for d in result.discrepancies:
        table.add_row(d["kind"], d.get("client_order_id", ""), d.get("symbol", ""), d.get("ours", ""),
                      d.get("theirs", ""), d["resolution"], d["detail"])
    if result.discrepancies:
        console.print(table)
    counts = ", ".join(f"{k} {v}" for k, v in sorted(result.counts.items()))
    console.print(f"status [bold {colour}]{result.status}[/]: {len(result.corrective_event_ids)} corrective "
                  f"events, {len(result.discrepancies)} discrepancies in {result.duration_s * 1000:.0f} ms ({counts})",
                  highlight=False)
    for error in result.errors:
        console.print(f"[red]unknown:[/] {error}", highlight=False)
    if result.blocked:
        console.print("[bold red]trading is blocked[/] until `tradestate reconcile --ack --account "
                      f"{result.account} --by NAME --decision TEXT`", highlight=False)
