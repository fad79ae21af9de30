"""One typed settings object for every ``tradestate`` command.

Where a value comes from, highest first:

1. a command-line flag (``--db``, ``--broker``, ``--port``...);
2. an environment variable ``TRADESTATE_<FIELD>`` (``TRADESTATE_DB``, ``TRADESTATE_IB_PORT``,
   ``TRADESTATE_API_TOKEN``...; the Alpaca keys also from Alpaca's own ``APCA_API_KEY_ID`` /
   ``APCA_API_SECRET_KEY``);
3. a TOML file: ``--config PATH``, else ``$TRADESTATE_CONFIG``;
4. the defaults below.

The TOML file takes the fields by name at the top level (``db = "..."``) or in tables:
``[api]``, ``[projector]``, ``[alert]``, ``[alpaca]``, ``[ib]``, ``[sim]`` and ``[gate]`` take their fields without the
prefix (``[ib] port = 4002`` is ``ib_port``); ``[reconcile]``, ``[recover]`` and ``[tradestate]``
take unprefixed fields. Dashes and underscores are the same (``sim-state``). An unknown key or
table is refused, naming it.

Secrets (the API token, the Alpaca keys) are ``SecretStr``: read from the environment or the
file, never from a flag, and never printed (``repr`` shows ``**********``).
"""

from __future__ import annotations

import os
import tomllib
from contextvars import ContextVar
from decimal import Decimal
from typing import Annotated, Any

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict

from .domain.errors import InvalidInput

BROKER_NAMES = ("sim", "alpaca", "ib")
_PREFIXED_TABLES = ("api", "projector", "alpaca", "ib", "sim", "gate", "alert", "ccxt")
_PLAIN_TABLES = ("reconcile", "recover", "tradestate")
# Unprefixed broker keys, taken at the top level or in any table as the prefixed field they name
# (``port`` is ``ib_port``), so that a reconcile config written without tables loads as it is.
_LEGACY_KEYS = {"host": "ib_host", "port": "ib_port", "client_id": "ib_client_id", "base_url": "alpaca_base_url",
                "stream_url": "alpaca_stream_url"}

_file_values: ContextVar[dict[str, Any]] = ContextVar("tradestate_settings_file", default={})


class Settings(BaseSettings):
    """Every option of every command, typed, with its source order documented in the module."""

    model_config = SettingsConfigDict(env_prefix="TRADESTATE_", extra="forbid", case_sensitive=False,
                                      validate_default=True)

    db: str | None = Field(None, description="Database URL: sqlite:///path.db or postgresql://...")
    # reconciliation and recovery
    broker: Annotated[list[str], NoDecode] = Field(default_factory=list,
                                                   description="Brokers to reconcile with (sim, alpaca, ib).")
    account: str | None = Field(None, description="Our account id (the one on our events).")
    venue: str | None = Field(None, description="The venue our orders carry (overrides the broker's own).")
    strict: bool = Field(False, description="Any discrepancy blocks trading until `reconcile --ack`.")
    since: str | None = Field(None, description="Reconcile only orders and fills since this ISO-8601 time.")
    engine_id: str | None = Field(None, description="The engine whose stop recovery checks (default: every "
                                  "engine in the log).")
    ramp: int | None = Field(None, description="Resume at 50, 75 or 100 % of the limits.")
    # the safety gates before trading resumes after a recovery, and the ramp after it
    gate_max_crashes: int = Field(3, ge=0, description="More crashes than this within the window disable "
                                  "automatic resumption (an operator must approve).")
    gate_crash_window: float = Field(300.0, gt=0, allow_inf_nan=False, description="The repeated-crash window, "
                                     "in seconds.")
    gate_max_gross_exposure: Decimal | None = Field(None, ge=0, description="Gross exposure (sum of |qty| x "
                                                    "price) above which resuming needs approval (unset: off).")
    gate_max_move: Decimal | None = Field(Decimal("0.05"), ge=0, description="A held or ordered symbol whose "
                                          "recorded bars moved more than this fraction needs approval (unset: off).")
    gate_volatility_window: float = Field(900.0, gt=0, allow_inf_nan=False, description="How far back the "
                                          "volatility gate reads bars, in seconds.")
    gate_bar_timeframe: str = Field("1m", description="The bar timeframe the volatility gate reads.")
    gate_calendars: Annotated[dict[str, str], NoDecode] = Field(
        default_factory=dict, description="Trading calendar per venue (exchange_calendars names): "
        "'sim=XNYS,alpaca=XNYS'. A closed market starts in monitoring mode; a venue without one is not judged.")
    ramp_step_seconds: float = Field(300.0, gt=0, allow_inf_nan=False, description="Healthy seconds at each "
                                     "ramp level before the next (50 -> 75 -> 100 %).")
    ramp_poll_seconds: float = Field(1.0, gt=0, allow_inf_nan=False, description="How often `ramp --follow` "
                                     "checks.")
    # the HTTP API
    api_host: str = Field("127.0.0.1", description="Address `serve` binds.")
    api_port: int = Field(8321, ge=0, le=65535, description="Port `serve` listens on.")
    api_token: SecretStr | None = Field(None, description="Bearer token `serve` requires on every request.")
    api_tokens: SecretStr | None = Field(None, description="Named bearer tokens, `alice:tok1,bob:tok2`: an operator "
                                         "action taken over HTTP is recorded under the token's name.")
    api_tokens_file: str | None = Field(None, description="A file of `name:token` lines (named bearer tokens).")
    api_allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Host header values `serve` answers besides loopback and its own address "
                                          "(`name` or `name:port`; comma-separated in the environment).")
    api_open_reads: bool = Field(False, description="Reads need no token even when tokens are configured "
                                                    "(loopback only; the controls always need one).")
    # the projector
    checkpoint_every: int = Field(10_000, ge=0, description="Checkpoint every N events (0: never).")
    checkpoint_seconds: float = Field(60.0, gt=0, allow_inf_nan=False,
                                      description="...or every T seconds when the log moved less.")
    # alerts (webhooks; see tradestate.alerts)
    alert_url: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Webhook URLs alerts are POSTed to (several: comma or space separated).")
    alert_secret: SecretStr | None = Field(None, description="Shared secret of the alerts' HMAC-SHA256 signature.")
    alert_stall_seconds: float = Field(60.0, gt=0, allow_inf_nan=False,
                                       description="Alert when the read models lag the log by more than this.")
    # Alpaca
    alpaca_base_url: str | None = Field(None, description="REST root (default: Alpaca's paper or live endpoint).")
    alpaca_stream_url: str | None = Field(None, description="Trade-updates websocket URL.")
    alpaca_paper: bool = Field(True, description="Paper trading endpoints when no URL is given.")
    alpaca_api_key: SecretStr | None = Field(
        None, validation_alias=AliasChoices("alpaca_api_key", "TRADESTATE_ALPACA_API_KEY", "APCA_API_KEY_ID"))
    alpaca_secret_key: SecretStr | None = Field(
        None, validation_alias=AliasChoices("alpaca_secret_key", "TRADESTATE_ALPACA_SECRET_KEY",
                                            "APCA_API_SECRET_KEY"))
    alpaca_venue: str | None = None
    # Interactive Brokers
    ib_host: str = Field("127.0.0.1", description="TWS / IB Gateway host.")
    ib_port: int | None = Field(None, ge=1, le=65535, description="TWS / IB Gateway port.")
    ib_client_id: int | None = Field(None, description="IB API client id.")
    ib_master_client_id: int | None = Field(None, description="TWS's Master API client ID (only it receives the "
                                            "commission reports of other clients' orders).")
    ib_timeout: float = Field(10.0, gt=0, allow_inf_nan=False, description="Seconds for each IB step.")
    ib_account: str | None = Field(None, description="The IB account code, when it differs from --account.")
    ib_fa_group: str | None = Field(None, description="A financial advisor's allocation group: orders go to it "
                                    "(ib_account: the advisor's account; positions and cash: the group's).")
    ib_venue: str | None = None
    # the simulated broker
    sim_state: str | None = Field(None, description="The simulated broker's state file.")
    sim_seed: int = 0
    sim_venue: str | None = None
    # crypto venues on ccxt (``--broker ccxt:<exchange>``; keys: $TRADESTATE_CCXT_<EXCHANGE>_API_KEY/_SECRET)
    ccxt_symbols: str | None = Field(None, description="The unified symbols traded at each ccxt venue: "
                                     "'BTC/USDT,ETH/USDT' for every one, or per exchange "
                                     "'binance=BTC/USDT ETH/USDT;kraken=BTC/USD'.")
    ccxt_base_url: str | None = Field(None, description="Another REST root for a Binance-API venue or Kraken "
                                      "(a test server): 'http://...' or per exchange 'binance=http://...;kraken=...'.")
    ccxt_timeout: float = Field(10.0, gt=0, allow_inf_nan=False, description="Seconds for each ccxt request.")

    @field_validator("broker", mode="before")
    @classmethod
    def _brokers(cls, value: Any) -> Any:
        if value is None:
            return []
        if isinstance(value, str):
            value = [part for part in (p.strip() for p in value.split(",")) if part]
        if isinstance(value, (list, tuple)):
            for name in value:
                if name not in BROKER_NAMES and not (name.startswith("ccxt:") and len(name) > 5):
                    raise ValueError(f"{name!r} is not a broker; use {', '.join(BROKER_NAMES)}")
            return list(dict.fromkeys(value))
        return value

    @field_validator("api_allowed_hosts", mode="before")
    @classmethod
    def _hosts(cls, value: Any) -> Any:
        if value is None:
            return []
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("gate_calendars", mode="before")
    @classmethod
    def _calendars(cls, value: Any) -> Any:
        if isinstance(value, str):
            pairs = [p.strip() for p in value.split(",") if p.strip()]
            if any("=" not in p for p in pairs):
                raise ValueError("give venue=CALENDAR pairs separated by commas, e.g. sim=XNYS")
            return {k.strip(): v.strip() for k, v in (p.split("=", 1) for p in pairs)}
        return value

    @field_validator("alert_url", mode="before")
    @classmethod
    def _alert_urls(cls, value: Any) -> Any:
        if value is None:
            return []
        if isinstance(value, str):
            value = value.replace(",", " ").split()
        if isinstance(value, (list, tuple)):
            for url in value:
                if not str(url).startswith(("http://", "https://")):
                    raise ValueError("an alert URL starts with http:// or https://")
            return list(dict.fromkeys(str(u) for u in value))
        return value

    @field_validator("ramp")
    @classmethod
    def _ramp(cls, value: int | None) -> int | None:
        if value is not None and value not in (50, 75, 100):
            raise ValueError("must be 50, 75 or 100")
        return value

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
                                   env_settings: PydanticBaseSettingsSource, dotenv_settings: PydanticBaseSettingsSource,
                                   file_secret_settings: PydanticBaseSettingsSource
                                   ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Flags (init arguments) over TRADESTATE_* variables over the TOML file; no .env files."""
        return init_settings, env_settings, _TomlSource(settings_cls)

    # ------------------------------------------------------------------------------ reading

    @classmethod
    def load(cls, config: str | None = None, **flags: Any) -> Settings:
        """The settings for one command: ``flags`` (None = not given) over the environment over the
        TOML file ``config`` (else ``$TRADESTATE_CONFIG``). Raises ``InvalidInput`` naming the
        file, key or variable at fault."""
        path = config or os.environ.get("TRADESTATE_CONFIG") or None
        token = _file_values.set(read_config(path) if path else {})
        try:
            return cls(**{k: v for k, v in flags.items() if v is not None})
        except ValidationError as e:
            problems = "; ".join(f"{'.'.join(str(p) for p in err['loc']) or 'settings'}: {err['msg']}"
                                 for err in e.errors())
            where = f" (config file {path!r}, TRADESTATE_* variables or flags)" if path else ""
            raise InvalidInput(f"invalid settings{where}: {problems}") from None
        finally:
            _file_values.reset(token)

    # ------------------------------------------------------------------------------ brokers

    def broker_options(self, broker: str) -> dict[str, Any]:
        """The plain options ``tradestate.adapters.brokers.registry.make_adapter`` takes for
        ``broker`` (every broker setting, by its option name), secrets revealed only into this dict
        (handed to the adapter, never printed)."""
        options: dict[str, Any] = {"account": self.account}
        if broker == "sim":
            options.update(sim_state=self.sim_state, seed=self.sim_seed, venue=self.venue or self.sim_venue)
        elif broker == "alpaca":
            from alpaca.common.enums import BaseURL

            paper = self.alpaca_paper
            options.update(
                base_url=self.alpaca_base_url or (BaseURL.TRADING_PAPER if paper else BaseURL.TRADING_LIVE).value,
                stream_url=self.alpaca_stream_url or (BaseURL.TRADING_STREAM_PAPER if paper
                                                      else BaseURL.TRADING_STREAM_LIVE).value,
                paper=paper,
                api_key=self.alpaca_api_key.get_secret_value() if self.alpaca_api_key else None,
                secret_key=self.alpaca_secret_key.get_secret_value() if self.alpaca_secret_key else None,
                venue=self.venue or self.alpaca_venue)
        elif broker.startswith("ccxt:"):
            options.update(symbols=ccxt_symbols_of(self.ccxt_symbols, broker[5:]),
                           base_url=ccxt_symbols_of(self.ccxt_base_url, broker[5:]),
                           timeout=self.ccxt_timeout, venue=self.venue)
        elif broker == "ib":
            options.update(host=self.ib_host, port=self.ib_port, client_id=self.ib_client_id,
                           master_client_id=self.ib_master_client_id, timeout=self.ib_timeout, ib_account=self.ib_account, venue=self.venue or self.ib_venue,
                           fa_group=self.ib_fa_group)
        return options


def ccxt_symbols_of(spec: str | None, exchange: str) -> str | None:
    """The value a per-exchange ccxt setting (``ccxt_symbols``, ``ccxt_base_url``) gives ``exchange``:
    its ``exchange=...`` entry, else the entries without an exchange (``BTC/USDT,ETH/USDT``); None
    when there are none."""
    if not spec:
        return None
    shared: list[str] = []
    for part in (p.strip() for p in spec.split(";")):
        name, sep, symbols = part.partition("=")
        if not sep:
            shared.append(part)
        elif name.strip() == exchange:
            return symbols.strip() or None
    return ",".join(s for s in shared if s) or None


class _TomlSource(PydanticBaseSettingsSource):
    """The values of the TOML file of the current ``Settings.load`` (lowest precedence)."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        """Unused: ``__call__`` returns the file's values at once."""
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(_file_values.get())


def read_config(path: str) -> dict[str, Any]:
    """The TOML file at ``path`` as flat ``Settings`` field names; ``InvalidInput`` if it is
    missing, not TOML, or has a key no setting has."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise InvalidInput(f"config file {path!r} does not exist") from None
    except IsADirectoryError:
        raise InvalidInput(f"config file {path!r} is a directory") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise InvalidInput(f"config file {path!r} is not valid TOML: {e}") from None
    fields = set(Settings.model_fields)
    values: dict[str, Any] = {}
    unknown: list[str] = []

    def put(name: str, value: Any, shown: str) -> None:
        if name in fields:
            values[name] = value
        else:
            unknown.append(shown)

    for key, value in data.items():
        key_ = key.replace("-", "_")
        if isinstance(value, dict):
            if key_ not in _PREFIXED_TABLES + _PLAIN_TABLES:
                unknown.append(f"[{key}]")
                continue
            for sub, sub_value in value.items():
                sub_ = sub.replace("-", "_")
                if key_ in _PREFIXED_TABLES and f"{key_}_{sub_}" in fields:
                    put(f"{key_}_{sub_}", sub_value, f"{key}.{sub}")
                else:
                    put(_LEGACY_KEYS.get(sub_, sub_), sub_value, f"{key}.{sub}")
        else:
            put(_LEGACY_KEYS.get(key_, key_), value, key)
    if unknown:
        raise InvalidInput(f"config file {path!r}: unknown setting(s) {', '.join(unknown)}; known: "
                           f"{', '.join(sorted(fields))}")
    return values


__all__ = ["BROKER_NAMES", "Settings", "read_config"]
