"""Deterministic stream ids: the same business key always names the same stream, in any process."""

from __future__ import annotations

from uuid import UUID, uuid5

# Fixed forever: changing it would rename every order stream.
TRADESTATE_NAMESPACE = UUID("6f1c3d0e-5b7a-4c3e-9f21-7a4d2e8b9c10")


def order_stream_id(account: str, client_order_id: str) -> str:
    """The stream of one order: a uuid5 of the account and the client order id."""
    # A separator that cannot appear in validated identifiers keeps ("a", "bc") apart from ("ab", "c").
    return "order-" + str(uuid5(TRADESTATE_NAMESPACE, account + "\x1f" + client_order_id))


def derived_id(parent: UUID, kind: str) -> UUID:
    """Id of an event the domain derives from another (a refusal from its intent, a breach from
    its fill): deterministic, so deciding twice on the same input yields the same events."""
    return uuid5(parent, kind)


def account_stream_id(account: str) -> str:
    """The stream of an account's limits, breaker, kill switch, cash and risk facts."""
    return f"account-{account}"


def strategy_stream_id(strategy_id: str) -> str:
    """The stream of a strategy's signals."""
    return f"strategy-{strategy_id}"


def engine_stream_id(engine_id: str) -> str:
    """The stream of an engine's starts, stops and recoveries."""
    return f"engine-{engine_id}"


def gate_stream_id(gate_id: str) -> str:
    """The stream of one safety gate's decisions and approvals."""
    return f"gate-{gate_id}"


def instrument_stream_id(symbol: str) -> str:
    """The stream of one instrument's definitions (``InstrumentDefined``)."""
    return f"instrument-{symbol}"


def fx_stream_id(base: str, quote: str) -> str:
    """The stream of one currency pair's recorded rates (``FxRateRecorded``)."""
    return f"fx-{base}-{quote}"


def corporate_action_stream_id(symbol: str) -> str:
    """The stream of one symbol's corporate actions (``CorporateActionRecorded``)."""
    return f"corporate-{symbol}"


def bar_stream_id(venue: str, symbol: str, timeframe: str) -> str:
    """The market-log stream of one instrument's bars of one timeframe."""
    return "bar-" + str(uuid5(TRADESTATE_NAMESPACE, "\x1f".join(("bar", venue, symbol, timeframe))))
