"""The broker registry: which adapters exist, and building one from plain options.

``make_adapter(broker, options)`` takes the options ``Settings.broker_options`` returns (or a
plain dict of the same names). Every option a broker names in ``OPTIONS`` reaches its adapter's
constructor when given (None = not given: the adapter's default); an option the broker does not
name is refused, so a setting can never be dropped on the way.
"""

from __future__ import annotations

import importlib
import inspect
import os
from typing import Any

from ...domain.errors import InvalidInput
from .base import BrokerAdapter

BROKERS = ("sim", "alpaca", "ib")  # and ccxt:<exchange id>, one per crypto venue

# The options each broker takes (``Settings.broker_options`` returns exactly these names).
OPTIONS: dict[str, tuple[str, ...]] = {
    "sim": ("account", "sim_state", "venue", "seed"),
    "alpaca": ("account", "base_url", "stream_url", "paper", "api_key", "secret_key", "venue", "timeout"),
    "ib": ("account", "host", "port", "client_id", "master_client_id", "timeout", "ib_account", "venue", "fa_group"),
    # ``ccxt:<exchange id>`` (ccxt:binance, ccxt:coinbase, ccxt:kraken...): one crypto spot venue
    "ccxt": ("account", "symbols", "api_key", "secret", "password", "venue", "base_url", "timeout"),
}


def make_adapter(broker: str, options: dict[str, Any]) -> BrokerAdapter:
    """Build the adapter for ``broker`` from plain options (``OPTIONS[broker]``; None = not given).

    sim: ``account``, ``sim_state`` (the SimulatedBroker state file), ``venue``, ``seed``.
    alpaca: ``account``, ``base_url``, ``stream_url``, ``paper``, ``api_key``/``secret_key``
    (default ``$APCA_API_KEY_ID``/``$APCA_API_SECRET_KEY``), ``venue``, ``timeout``.
    ib: ``account``, ``host``, ``port``, ``client_id``, ``master_client_id`` (TWS's Master API
    client ID), ``timeout``, ``ib_account`` (the IB account code, when it differs from ours), ``venue``,
    ``fa_group`` (a financial advisor's allocation group the orders go to).

    ccxt:<exchange>: ``account``, ``symbols`` (the unified symbols traded there, ``BTC/USDT,ETH/USDT``),
    ``api_key``/``secret``/``password`` (default ``$TRADESTATE_CCXT_<EXCHANGE>_API_KEY``/``_SECRET``/
    ``_PASSWORD``), ``venue`` (default the exchange id in capitals), ``base_url`` (Binance only:
    another REST root, e.g. a test server), ``timeout``.

    Raises ``InvalidInput`` for an unknown broker, a missing account, an option the broker does not
    take, or options the adapter refuses; the adapter's own errors (e.g. ``VenueError`` when IB
    cannot be reached) pass through."""
    exchange = broker.split(":", 1)[1] if broker.startswith("ccxt:") else None
    kind = "ccxt" if exchange is not None else broker
    if kind not in OPTIONS:
        raise InvalidInput(f"unknown broker {broker!r}; use one of {', '.join(BROKERS)}, ccxt:<exchange>")
    unknown = sorted(set(options) - set(OPTIONS[kind]))
    if unknown:
        raise InvalidInput(f"the {broker} adapter takes no option(s) {', '.join(unknown)}; "
                           f"it takes {', '.join(OPTIONS[kind])}")
    account = options.get("account")
    if not account:
        raise InvalidInput("give the account to reconcile (--account)")
    if broker == "sim":
        from .sim import SimulatedBroker

        path = options.get("sim_state")
        if not path:
            raise InvalidInput("--broker sim needs --sim-state PATH (the simulated broker's state file)")
        if not os.path.exists(path):
            raise InvalidInput(f"no simulated broker state at {path!r}")
        return SimulatedBroker(account=account, venue=options.get("venue") or "SIM",
                               seed=int(options.get("seed") or 0), state_path=path)
    if exchange is not None:
        return _ccxt_adapter(exchange, account, options)
    if broker == "alpaca":
        cls = _load("tradestate.adapters.brokers.alpaca", "AlpacaAdapter", "alpaca")
        values = {
            "account": account,
            "base_url": options.get("base_url"),
            "stream_url": options.get("stream_url"),
            "paper": _flag(options.get("paper"), "paper"),
            "api_key": options.get("api_key") or os.environ.get("APCA_API_KEY_ID"),
            "secret_key": options.get("secret_key") or os.environ.get("APCA_API_SECRET_KEY"),
            "venue": options.get("venue"),
            "timeout": _seconds(options.get("timeout")),
        }
        if not values["api_key"] or not values["secret_key"]:
            raise InvalidInput("Alpaca needs API keys: set APCA_API_KEY_ID and APCA_API_SECRET_KEY")
        return _construct(cls, values)
    cls = _load("tradestate.adapters.brokers.ib", "IBAdapter", "ib")
    values = {
        "account": account,
        "host": options.get("host") or "127.0.0.1",
        "port": _integer(options.get("port"), "port"),
        "client_id": _integer(options.get("client_id"), "client_id"),
        "master_client_id": _integer(options.get("master_client_id"), "master_client_id"),
        "timeout": _seconds(options.get("timeout")),
        "ib_account": options.get("ib_account"),
        "venue": options.get("venue"),
        "fa_group": options.get("fa_group"),
    }
    return _construct(cls, values)


def _ccxt_adapter(exchange: str, account: str, options: dict[str, Any]) -> BrokerAdapter:
    if not exchange:
        raise InvalidInput("name the exchange: --broker ccxt:binance (any ccxt exchange id)")
    cls = _load("tradestate.adapters.brokers.ccxt_venue", "CcxtAdapter", "ccxt")
    env = f"TRADESTATE_CCXT_{exchange.upper()}_"
    values = {
        "account": account,
        "exchange": exchange,
        "symbols": options.get("symbols"),
        "api_key": options.get("api_key") or os.environ.get(env + "API_KEY"),
        "secret": options.get("secret") or os.environ.get(env + "SECRET"),
        "password": options.get("password") or os.environ.get(env + "PASSWORD"),
        "venue": options.get("venue"),
        "base_url": options.get("base_url"),
        "timeout": _seconds(options.get("timeout")),
    }
    if not values["symbols"]:
        raise InvalidInput(f"ccxt:{exchange} needs the symbols traded there (symbols: BTC/USDT,ETH/USDT)")
    if not values["api_key"] or not values["secret"]:
        raise InvalidInput(f"ccxt:{exchange} needs API keys: set {env}API_KEY and {env}SECRET")
    return _construct(cls, values)


def _integer(value: Any, name: str) -> int | None:
    if value is None or value == "":
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        raise InvalidInput(f"{name} must be an integer, not {value!r}") from None


def _seconds(value: Any) -> float | None:
    if value is None or value == "":
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise InvalidInput(f"timeout must be a number of seconds, not {value!r}") from None


def _flag(value: Any, name: str) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise InvalidInput(f"{name} must be true or false, not {value!r}")


def _load(module: str, name: str, broker: str) -> Any:
    try:
        return getattr(importlib.import_module(module), name)
    except ModuleNotFoundError as e:
        if e.name and (e.name == module or module.startswith(e.name + ".")):
            raise InvalidInput(f"the {broker} adapter ({module}) is not installed in this build") from None
        raise InvalidInput(f"the {broker} adapter needs {e.name!r}: pip install {e.name}") from None
    except AttributeError:
        raise InvalidInput(f"{module} has no {name}") from None


def _construct(cls: Any, values: dict[str, Any]) -> BrokerAdapter:
    """``cls(**values)`` without the options not given (None); an option its constructor does not
    take is ``InvalidInput`` (never dropped), and so is an option it refuses."""
    given = {k: v for k, v in values.items() if v is not None}
    parameters = inspect.signature(cls).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        refused = sorted(set(given) - set(parameters))
        if refused:
            raise InvalidInput(f"{cls.__name__} takes no option(s) {', '.join(refused)}")
    try:
        return cls(**given)
    except (ValueError, TypeError) as e:  # the adapter refused its options: bad input
        raise InvalidInput(f"{cls.__name__}: {e}") from None


__all__ = ["BROKERS", "OPTIONS", "make_adapter"]
