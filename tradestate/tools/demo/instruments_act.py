"""The demo's instruments act (issue 18): a desk account that trades an ES future (multiplier
50), an equity quoted in EUR and BTC/USD in fractions, on the simulated venue, everything through
the public client API. Each step checks the state it claims and the act stops at the first one
that does not hold, naming it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

from rich.console import Console
from rich.table import Table

import tradestate

from ...adapters.brokers.sim import SimulatedBroker
from ...bootstrap import bootstrap
from ...domain.errors import TradestateError

ACCOUNT = "demo-desk"
VENUE = "sim"
ES, SAP, BTC = "ESZ6", "SAP", "BTC/USD"
NOTIONAL_LIMIT = 300_000
# The desk's simulated clock: after the morning session of the other acts, before ES expires.
NOW = datetime(2026, 11, 20, 20, 0, tzinfo=timezone.utc)
SPLIT_AT = datetime(2026, 11, 23, 13, 0, tzinfo=timezone.utc)


class StepFailed(Exception):
    """A step whose state is not what the act says it is (``step``: its name)."""

    def __init__(self, step: str, why: str):
        super().__init__(f"step {step!r} failed: {why}")
        self.step = step
        self.why = why


class _Steps:
    """The act's steps: ``with steps("name"):`` names the one running (a tradestate error inside
    it fails it by name), ``steps.expect(ok, why)`` fails it when the state is not as said."""

    def __init__(self, client: tradestate.TradestateClient, console: Console):
        self.client = client
        self.console = console
        self.current = ""

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        self.current = name
        self.console.print(f"  [bold]{name}[/]")
        try:
            yield
        except TradestateError as e:
            raise StepFailed(name, f"{type(e).__name__}: {e}") from e

    def expect(self, ok: bool, why: str) -> None:
        if not ok:
            raise StepFailed(self.current, why)

    def say(self, text: str) -> None:
        self.console.print(f"  [dim]{self.client.position:>4}[/dim]    {text}", highlight=False)


def _cash(client: tradestate.TradestateClient) -> dict[str, Decimal]:
    """The desk's cash at the venue, per currency, from the client's fold."""
    client.catch_up()
    account = client.state.accounts.get(ACCOUNT)
    return dict(account.cash_at(VENUE)) if account is not None else {}


def _position(client: tradestate.TradestateClient, symbol: str) -> dict[str, Any]:
    return next((p for p in client.positions(ACCOUNT) if p["symbol"] == symbol and p["venue"] == VENUE), {})


def _money(value: Decimal) -> str:
    return f"{value:,.2f}"


def _filled(steps: _Steps, order_id: str, symbol: str, side: str, qty: str, price: str, *, venue_id: str,
            exec_id: str, fee: str = "0", fee_pending: bool = False) -> None:
    """An accepted limit order, sent, acknowledged and filled whole at ``price``."""
    client = steps.client
    r = client.record_intent(ACCOUNT, order_id, symbol, side, qty, order_type="limit", limit_price=price)
    steps.expect(r.accepted, f"intent {order_id} refused: {r.refusal}")
    client.record_submitted(ACCOUNT, order_id)
    client.record_ack(ACCOUNT, order_id, venue_id)
    client.record_fill(ACCOUNT, order_id, exec_id, qty, price, fee=fee, fee_pending=fee_pending)


def _working(steps: _Steps, order_id: str, symbol: str, side: str, qty: str, price: str, venue_id: str) -> None:
    """An accepted limit order, sent and acknowledged: working at the venue."""
    client = steps.client
    r = client.record_intent(ACCOUNT, order_id, symbol, side, qty, order_type="limit", limit_price=price,
                             time_in_force="gtc")
    steps.expect(r.accepted, f"intent {order_id} refused: {r.refusal}")
    client.record_submitted(ACCOUNT, order_id)
    client.record_ack(ACCOUNT, order_id, venue_id)


def _refused(steps: _Steps, order_id: str, symbol: str, qty: str, price: str, reason: str, detail: str) -> None:
    """An intent the pre-trade check must refuse with ``reason``, its detail saying ``detail``."""
    r = steps.client.record_intent(ACCOUNT, order_id, symbol, "buy", qty, order_type="limit", limit_price=price)
    steps.expect(r.refusal is not None and reason in r.refusal.reasons and detail in r.refusal.detail,
                 f"intent {order_id} buy {qty} {symbol} @{price}: expected {reason} ({detail}), got {r.refusal}")
    assert r.refusal is not None
    steps.say(f"intent {order_id} buy {qty} {symbol} @{price} → [bold red]refused[/]: "
              f"{', '.join(r.refusal.reasons)} ({r.refusal.detail})")


def run_act(client: tradestate.TradestateClient, console: Console) -> None:
    """The act's steps on ``client`` (clock ``NOW``); raises ``StepFailed`` at the first step
    whose state is not as said."""
    steps = _Steps(client, console)

    with steps("the desk's account, opened from the venue"):
        venue = SimulatedBroker(account=ACCOUNT, venue=VENUE, clock=lambda: NOW)
        venue.stage_cash(Decimal(1_000_000), "USD")
        venue.stage_cash(Decimal(100_000), "EUR")
        opened = bootstrap(client, venue, now=NOW)
        steps.expect(_cash(client) == {"USD": 1_000_000, "EUR": 100_000}, f"cash at {VENUE}: {_cash(client)}")
        steps.say(f"tradestate bootstrap {ACCOUNT} at {VENUE}: {opened.counts.get('balances', 0)} cash balances "
                  "recorded (USD 1,000,000.00, EUR 100,000.00): cash is kept per account, venue and currency")

    with steps("instruments recorded in the log"):
        client.define_instrument(ES, "future", multiplier=50, tick_size="0.25", underlying="ES",
                                 expiry=datetime(2026, 12, 18, 14, 30, tzinfo=timezone.utc), operator="ops")
        client.define_instrument(SAP, "equity", quote_currency="EUR", tick_size="0.01", operator="ops")
        client.define_instrument(BTC, "crypto", fractional=True, lot_size="0.0001", tick_size="0.01", operator="ops")
        defined = {i["symbol"]: i for i in client.instruments()}
        steps.expect(defined.get(ES, {}).get("multiplier") == 50 and defined.get(SAP, {}).get("quote_currency") == "EUR"
                     and defined.get(BTC, {}).get("fractional") is True, f"the registry holds {sorted(defined)}")
        steps.say(f"{ES}: future, multiplier 50, tick 0.25, whole contracts, expires 2026-12-18")
        steps.say(f"{SAP}: equity quoted and settled in EUR, tick 0.01")
        steps.say(f"{BTC}: crypto, fractional in lots of 0.0001, tick 0.01")

    with steps("intents checked against their instrument, notional with the multiplier"):
        client.set_risk_limit(ACCOUNT, "max_order_notional", NOTIONAL_LIMIT, reason="desk limit, in USD")
        steps.say(f"limit: max order notional {NOTIONAL_LIMIT:,} USD")
        _refused(steps, "d-1", ES, "1", "5000.10", "instrument_off_tick", "tick grid of 0.25")
        _refused(steps, "d-2", BTC, "0.00005", "91250.50", "instrument_lot_size", "lot size 0.0001")
        _refused(steps, "d-3", ES, "2", "5000.00", "max_order_notional", "notional 500000")

    with steps("an ES future bought, settled daily, closed: its P&L counted once"):
        cash0 = _cash(client)["USD"]
        _filled(steps, "d-4", ES, "buy", "1", "5000.00", venue_id="SIM-D4", exec_id="X-ES-1", fee="2.25")
        steps.expect(_cash(client)["USD"] == cash0 - Decimal("2.25"), f"cash after the ES fill: {_cash(client)}")
        steps.say(f"d-4 buy 1 {ES} @5000.00 (notional 1 × 5,000.00 × 50 = 250,000.00 USD) filled, fee 2.25: "
                  "cash moves by the fee only (a future's notional is not paid)")
        client.record_variation_margin(ACCOUNT, VENUE, ES, "2026-11-20", "5012.50", 1, "625.00", venue_ref="VM-1")
        es = _position(client, ES)
        steps.expect(_cash(client)["USD"] == cash0 - Decimal("2.25") + 625 and es.get("avg_cost") == Decimal("5012.50")
                     and es.get("realized_pnl") == 625, f"after the settlement: cash {_cash(client)}, position {es}")
        steps.say("VariationMarginSettled 2026-11-20 at 5012.50: (5012.50 - 5000.00) × 50 = [bold]+625.00 USD[/] "
                  "cash; the position's cost re-based to 5012.50")
        _filled(steps, "d-5", ES, "sell", "1", "5020.00", venue_id="SIM-D5", exec_id="X-ES-2", fee="2.25")
        es = _position(client, ES)
        steps.expect(es.get("qty") == 0 and es.get("realized_pnl") == (Decimal("5020.00") - 5000) * 1 * 50
                     and _cash(client)["USD"] == cash0 + 1000 - Decimal("4.50"),
                     f"after the close: cash {_cash(client)}, position {es}")
        steps.say(f"d-5 sell 1 {ES} @5020.00: +375.00 since the settlement; realised in all "
                  f"{_money(es['realized_pnl'])} = (5020 - 5000) × 1 × 50, cash +1,000.00 less 4.50 of fees")

    with steps("BTC/USD in fractions, its fee pending, then charged"):
        cash0 = _cash(client)["USD"]
        _filled(steps, "d-6", BTC, "buy", "0.25", "91250.50", venue_id="SIM-D6", exec_id="X-BTC-1", fee_pending=True)
        order = client.order(ACCOUNT, "d-6")
        steps.expect(order["fees_pending"] == ["X-BTC-1"] and _cash(client)["USD"] == cash0 - Decimal("22812.625"),
                     f"after the fill: {order['fees_pending']} pending, cash {_cash(client)}")
        steps.say(f"d-6 buy 0.25 {BTC} @91250.50 filled (22,812.625 USD); the venue reports its fee later: "
                  "fee [bold yellow]pending[/] for execution X-BTC-1 (not 0)")
        client.record_fee(ACCOUNT, None, "FEE-X-BTC-1", "11.41", exec_id="X-BTC-1", client_order_id="d-6",
                          reason="commission report")
        order = client.order(ACCOUNT, "d-6")
        steps.expect(order["fees_pending"] == [] and order["fees"] == Decimal("11.41")
                     and _cash(client)["USD"] == cash0 - Decimal("22812.625") - Decimal("11.41"),
                     f"after the fee: {order['fees_pending']} pending, fees {order['fees']}, cash {_cash(client)}")
        steps.say("FeeCharged 11.41 USD for X-BTC-1: nothing pending, the order's fees and the cash follow")

    with steps("an equity in EUR, a 2-for-1 split with an open order"):
        _refused(steps, "d-7", SAP, "100", "180.00", "no_fx_rate", "no EUR/USD rate")
        client.record_fx_rate("EUR", "USD", "1.08", source="ECB")
        steps.say("FxRateRecorded EUR/USD 1.08 (a market fact in the log; never fetched, never 1:1)")
        eur0 = _cash(client)["EUR"]
        _filled(steps, "d-8", SAP, "buy", "100", "180.00", venue_id="SIM-D8", exec_id="X-SAP-1")
        steps.expect(_cash(client)["EUR"] == eur0 - 18_000, f"cash after the SAP fill: {_cash(client)}")
        steps.say(f"d-8 buy 100 {SAP} @180.00 EUR (19,440.00 USD against the limit) filled: EUR cash -18,000.00")
        _working(steps, "d-9", SAP, "sell", "40", "200.00", "SIM-D9")
        steps.say(f"d-9 sell 40 {SAP} @200.00 GTC working at the venue")
        before = _position(client, SAP)
        client.record_corporate_action(SAP, "split", SPLIT_AT, ratio_from=1, ratio_to=2, source="venue",
                                       reason="2-for-1 split")
        after, order = _position(client, SAP), client.order(ACCOUNT, "d-9")
        value = (before.get("qty", 0) * before.get("last_price", 0), after.get("qty", 0) * after.get("last_price", 0))
        steps.expect(after.get("qty") == 200 and after.get("avg_cost") == 90 and value[0] == value[1] == 18_000
                     and order["qty"] == 80 and order["limit_price"] == 100 and "adjusted" in order,
                     f"after the split: position {after}, order d-9 {order['qty']} @{order['limit_price']}")
        steps.say(f"CorporateActionRecorded split 1 → 2: position 100 @180.00 → [bold]200 @90.00[/] (market value "
                  "18,000.00 EUR kept); OrderAdjusted d-9: sell 40 @200.00 → [bold]80 @100.00[/]")
        confirmed = client.record_replaced(ACCOUNT, "d-9", 80, limit_price="100.00", venue_order_id="SIM-D9")
        steps.expect(confirmed.duplicate and client.order(ACCOUNT, "d-9")["qty"] == 80,
                     f"the venue's confirmation of the adjustment: duplicate {confirmed.duplicate}")
        steps.say("the venue's own restatement (80 @100.00) → a duplicate of the adjustment, not a second one")
        eur0 = _cash(client)["EUR"]
        client.record_fill(ACCOUNT, "d-9", "X-SAP-2", "80", "100.00")
        sap = _position(client, SAP)
        steps.expect(sap.get("realized_pnl") == 800 and _cash(client)["EUR"] == eur0 + 8_000,
                     f"after the fill: position {sap}, cash {_cash(client)}")
        steps.say("d-9 filled 80 @100.00: realised (100.00 - 90.00) × 80 = 800.00 EUR")

    with steps("amendments through the risk check"):
        _working(steps, "d-10", ES, "buy", "1", "4990.00", "SIM-D10")
        steps.say(f"d-10 buy 1 {ES} @4990.00 working")
        r = client.request_replace(ACCOUNT, "d-10", qty=2, reason="size up")
        steps.expect(r.refusal is not None and "max_order_notional" in r.refusal.reasons,
                     f"amending d-10 to 2 contracts: {r.refusal}")
        assert r.refusal is not None
        steps.say(f"request_replace d-10 qty 1 → 2 → [bold red]refused[/] before the venue sees it: "
                  f"{', '.join(r.refusal.reasons)} ({r.refusal.detail})")
        r = client.request_replace(ACCOUNT, "d-10", limit_price="4995.00", reason="chase")
        steps.expect(r.accepted and client.order(ACCOUNT, "d-10").get("replace_pending") == r.replace_id,
                     f"amending d-10 to 4995.00: {r.refusal}")
        steps.say("request_replace d-10 @4990.00 → 4995.00 → passed (notional 249,750.00 USD); pending at the venue")
        client.record_replaced(ACCOUNT, "d-10", 1, limit_price="4995.00")
        order = client.order(ACCOUNT, "d-10")
        steps.expect(order["limit_price"] == Decimal("4995.00") and order["replaces"][r.replace_id]["status"] == "replaced",
                     f"after the venue's confirmation: {order['limit_price']}, {order.get('replaces')}")
        steps.say("OrderReplaced: the venue confirmed, d-10 works 1 @4995.00")
        client.request_cancel(ACCOUNT, "d-10", "end of the demo")
        client.record_cancelled(ACCOUNT, "d-10", "cancelled at venue")
        steps.expect(client.open_orders(ACCOUNT) == [], f"open orders left: {client.open_orders(ACCOUNT)}")
        steps.say("d-10 cancelled: the desk ends the act with no open order")

    with steps("P&L in the reporting currency"):
        view = client.reporting_view("USD", account=ACCOUNT)
        console.print(_reporting_table(view))
        sap = next(row for row in view["positions"] if row["symbol"] == SAP)
        expected = Decimal(1000) + Decimal(800) * Decimal("1.08")
        steps.expect(sap["reporting"] is not None and sap["reporting"]["realized_pnl"] == Decimal("864.00")
                     and view["totals"]["realized_pnl"] == expected and not view["missing_rates"],
                     f"the reporting view: {view['totals']}, missing {view['missing_rates']}")
        cash = _cash(client)
        steps.say(f"realised in USD: {_money(expected)} (ES 1,000.00 + SAP 800.00 EUR × 1.08); cash at {VENUE}: "
                  + ", ".join(f"{currency} {_money(amount)}" for currency, amount in sorted(cash.items())))


def _reporting_table(view: dict[str, Any]) -> Table:
    table = Table(title=f"reporting_view('USD', account={ACCOUNT!r})", title_justify="left")
    for column in ("symbol", "qty", "×", "currency", "realised", "unrealised", "rate", "realised USD",
                   "market value USD"):
        table.add_column(column, justify="left" if column in ("symbol", "currency") else "right")
    for row in view["positions"]:
        usd = row["reporting"] or {}
        table.add_row(row["symbol"], f"{row['qty'].normalize():f}", f"{row['multiplier'].normalize():f}",
                      row["currency"], _money(row["realized_pnl"]), _money(row["unrealized_pnl"]),
                      "-" if row["fx_rate"] is None else f"{row['fx_rate'].normalize():f}",
                      _money(usd["realized_pnl"]) if usd else "-", _money(usd["market_value"]) if usd else "-")
    totals = view["totals"]
    table.add_row("total", "", "", "USD", "", "", "", _money(totals["realized_pnl"]), _money(totals["market_value"]))
    return table


def show_instruments(url: str, console: Console) -> bool:
    """The act on the log at ``url``: True when every step held; else the failed step is printed,
    by name, and False."""
    console.print("\n[bold]Instruments and venues[/] (issue 18): a desk account trades an ES future, an equity "
                  "in EUR and BTC/USD at the simulated venue (log position, then what happened):")
    try:
        with tradestate.connect(url, venue=VENUE, clock=lambda: NOW) as client:
            run_act(client, console)
    except StepFailed as e:
        console.print(f"  [bold red]FAILED[/] {e}", highlight=False)
        return False
    console.print("  [bold green]every step of the act held[/]")
    return True
