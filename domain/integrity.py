"""The log's meaning, checked: what the digest chain cannot say about a row that was written whole.

A digest proves that the log is the one that was sealed; it says nothing about a row inserted
around the writer (with raw SQL, by someone who can bypass the append-only triggers) before
sealing. ``MeaningCheck`` reads the trading log in position order and names the first row that
breaks one of its rules:

- ``version_gap``: a stream's versions are 1, 2, 3... in position order;
- ``orphan``: an order stream starts with ``OrderIntentRecorded`` or ``OrderImported`` (so every
  later fill, ack or cancel on it has its intent earlier in the log);
- ``dangling_reference``: an order event names (account, client order id) the order whose stream
  it is on (``order_stream_id``);
- ``unreadable``: a payload that is not a JSON object.

``CorruptStream`` is what a decision on a stream or account the fold quarantined raises
(``TradingState.quarantined_streams`` / ``quarantined_accounts``: the fold refuses such rows
instead of crashing, and the rest of the log stays readable).

Pure: rows in, findings out.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

import orjson

from .errors import TradestateError
from .events import VOID_TYPE
from .fold import ORDER_TYPES
from .ids import order_stream_id
from .state import TradingState

CREATE_TYPES = frozenset({"OrderIntentRecorded", "OrderImported"})


class CorruptStream(TradestateError):
    """The log holds a row on this stream (or account) that the fold could not apply: no decision
    is taken on it until the log is repaired. The message names the position and why."""

    def __init__(self, kind: str, name: str, position: int, reason: str):
        super().__init__(f"{kind} {name} is quarantined: the row at position {position} cannot be folded "
                         f"({reason}); no decision is taken on it until the log is repaired")
        self.kind = kind
        self.name = name
        self.position = position
        self.reason = reason


def refuse_quarantined(state: TradingState, streams: Iterable[str] = (), accounts: Iterable[str] = ()) -> None:
    """Raise ``CorruptStream`` if any of ``streams`` or ``accounts`` is quarantined in ``state``."""
    if not state.quarantined_streams and not state.quarantined_accounts:
        return
    for sid in streams:
        hit = state.quarantined_streams.get(sid)
        if hit is not None:
            raise CorruptStream("stream", sid, *hit)
    for account in accounts:
        hit = state.quarantined_accounts.get(account)
        if hit is not None:
            raise CorruptStream("account", account, *hit)


# events that only restrict trading stay possible on a quarantined account (an operator must still
# be able to stop it); anything else on it is refused
RESTRICTING = frozenset({"KillSwitchEngaged", "CircuitBreakerTripped", "TradingBlocked"})


def refuse_decided(state: TradingState, events: Iterable[tuple[str, Any]]) -> None:
    """Raise ``CorruptStream`` if decided ``events`` ((stream, event) pairs) touch a quarantined
    stream, or a quarantined account with anything but a restricting event."""
    if not state.quarantined_streams and not state.quarantined_accounts:
        return
    for stream, event in events:
        refuse_quarantined(state, (stream,))
        account = getattr(event, "account", None)
        if isinstance(account, str) and event.type_name() not in RESTRICTING:
            refuse_quarantined(state, (), (account,))


RISK_TYPES = ("RiskLimitChanged", "CircuitBreakerTripped", "CircuitBreakerReset", "KillSwitchEngaged",
              "KillSwitchReleased", "TradingResumed", "TradingBlocked", "DiscrepancyAcknowledged", "RampStepped")


def fold_risk(rows: Iterable[tuple[Any, ...]], exchange_tz: str = "America/New_York") -> TradingState:
    """The accounts' risk state (limits, breaker, kill switch, ramp, block) folded from ``rows``:
    the log's account-stream events of ``RISK_TYPES``, in position order, payloads as bytes."""
    state = TradingState(exchange_tz)
    for position, stream, version, type_name, data, at in rows:
        state.apply(position, stream, version, type_name, orjson.loads(data), at)
    return state


def _risk_of(account: Any) -> dict[str, Any]:
    return {
        "kill switch": "engaged" if account.kill_switch else "released",
        "circuit breaker": (f"tripped until {account.breaker_until.isoformat()}" if account.breaker_until else "tripped")
        if account.breaker_tripped else "reset",
        "limits": {k: str(v) for k, v in sorted(account.limits.items())},
        "symbol position limits": {k: str(v) for k, v in sorted(account.symbol_position_limits.items())},
        "ramp": f"{account.ramp_pct}%",
        "trading": "blocked" if account.blocked else "allowed",
    }


def risk_disagreements(restored: TradingState, log: TradingState) -> list[str]:
    """Where ``restored`` (a checkpoint's state) disagrees with ``log`` (``fold_risk`` of the same
    log up to the checkpoint's position) on any account's risk state, in words."""
    from .state import AccountState

    problems = []
    for name in sorted(set(restored.accounts) | set(log.accounts)):
        mine = _risk_of(restored.accounts.get(name) or AccountState(name))
        theirs = _risk_of(log.accounts.get(name) or AccountState(name))
        for what, value in mine.items():
            if value != theirs[what]:
                problems.append(f"account {name}: {what} is {value} in the checkpoint but {theirs[what]} in the log")
    return problems


def quarantine_report(state: TradingState) -> list[dict[str, Any]]:
    """The quarantined streams and accounts of ``state``, in position order, as plain dicts."""
    items = [{"kind": "stream", "name": k, "position": p, "reason": r}
             for k, (p, r) in state.quarantined_streams.items()]
    items += [{"kind": "account", "name": k, "position": p, "reason": r}
              for k, (p, r) in state.quarantined_accounts.items()]
    return sorted(items, key=lambda i: (i["position"], i["kind"] != "stream"))


@dataclass(frozen=True)
class Finding:
    """The first row that breaks a rule of the log's meaning."""

    position: int
    stream: str
    problem: str  # version_gap | orphan | dangling_reference | unreadable
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class MeaningCheck:
    """Feed it the trading log's rows in position order (``feed``); ``finding`` is the first
    broken rule (None while the log makes sense). Memory: one version per stream."""

    def __init__(self) -> None:
        self.versions: dict[str, int] = {}
        self._derived: dict[tuple[Any, Any], str] = {}  # (account, client order id) -> its order stream
        self.rows = 0
        self.finding: Finding | None = None

    def feed(self, rows: Iterable[tuple[Any, ...]]) -> Finding | None:
        """Check ``rows`` (position, stream, version, type, payload bytes, ...); stops at the first finding."""
        if self.finding is not None:
            return self.finding
        versions, cache = self.versions, self._derived
        for row in rows:
            position, stream, version, type_name, data = row[0], row[1], row[2], row[3], row[4]
            self.rows += 1
            if type_name == VOID_TYPE:
                continue
            expected = versions.get(stream, 0) + 1
            if version != expected:
                self.finding = Finding(position, stream, "version_gap",
                                       f"{type_name} at version {version} of {stream}, whose next version is "
                                       f"{expected}")
                return self.finding
            versions[stream] = version
            if type_name not in ORDER_TYPES:
                continue
            try:
                d = orjson.loads(data)
                account, coid = d.get("account"), d.get("client_order_id")
            except (orjson.JSONDecodeError, TypeError, AttributeError):
                self.finding = Finding(position, stream, "unreadable", f"{type_name}: the payload is not a JSON object")
                return self.finding
            if version == 1 and type_name not in CREATE_TYPES:
                self.finding = Finding(position, stream, "orphan",
                                       f"{type_name} on {stream}, whose order has no intent or import before it")
                return self.finding
            key = (account, coid)
            derived = cache.get(key)
            if derived is None and isinstance(account, str) and isinstance(coid, str):
                if len(cache) > 100_000:  # an order's events are close together: a bounded cache hits
                    cache.clear()
                derived = cache[key] = order_stream_id(account, coid)
            if derived != stream:
                self.finding = Finding(position, stream, "dangling_reference",
                                       f"{type_name} names order {account}/{coid}, whose stream is not {stream}")
                return self.finding
        return None


__all__ = [
    "CREATE_TYPES",
    "RESTRICTING",
    "RISK_TYPES",
    "CorruptStream",
    "Finding",
    "MeaningCheck",
    "fold_risk",
    "quarantine_report",
    "refuse_decided",
    "refuse_quarantined",
    "risk_disagreements",
]
