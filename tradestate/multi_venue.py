"""One account at several venues: reconcile each, then compare the sums across venues.

Seed 002's recovery script asks each exchange (Binance, Coinbase, Kraken) for its positions, sums
them per asset and compares the sum with the internal position. ``reconcile_venues`` does that on
top of the per-venue reconciliation (``tradestate.reconcile.reconcile``, which already compares
and corrects each venue's positions, orders and fills on their own: a finer check than the sum):

* every venue is reconciled in turn, from one snapshot each (taken once, also used for the sums);
* **positions summed per asset** across the venues (``BTC`` of ``BTC/USDT`` at Binance and of
  ``BTC/USD`` at Kraken), ours (the log, after this run's corrections) against the venues', with
  the per-venue breakdown; an asset whose positions one venue could not report is "unknown";
* **cash per venue**: each venue's balances, reported per venue and never netted across venues;
  the log keeps each venue's cash apart (``AccountState.cash_at``), so one venue's USDT balance
  never "corrects" another's (``record_cash=False``: balances reported, not recorded).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

from .adapters.brokers.base import BrokerAdapter, Unknown, VenueSnapshot
from .client import TradestateClient
from .domain.errors import InvalidInput
from .reconcile import ReconciliationResult, _writer, reconcile
from .writer import Writer

ZERO = Decimal(0)


def _s(amount: Decimal) -> str:
    """An amount as plain text, trailing zeros dropped (2.60000000 and 2.6 read the same)."""
    return format(amount.normalize(), "f") if amount else "0"


def asset_of(symbol: str) -> str:
    """The asset a position is in: the base of a pair (``BTC/USDT`` -> ``BTC``), else the symbol."""
    return symbol.split("/", 1)[0] if "/" in symbol else symbol


@dataclass
class MultiVenueResult:
    """The runs (one per venue), the positions summed per asset and the cash per venue."""

    account: str
    results: list[ReconciliationResult] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)  # "broker venue" -> why its run failed
    positions: list[dict[str, Any]] = field(default_factory=list)  # per asset: ours, venues, by venue
    cash: dict[str, dict[str, Any]] = field(default_factory=dict)  # venue -> currency -> {venue, log}
    cash_recorded: bool = False  # the log's cash was compared and corrected per venue

    @property
    def mismatched(self) -> list[dict[str, Any]]:
        """The assets whose summed position the log did not hold (mismatch, corrected) or is unknown."""
        return [p for p in self.positions if p["status"] != "ok"]

    def as_dict(self) -> dict[str, Any]:
        return {"account": self.account, "results": [r.as_dict() for r in self.results], "errors": self.errors,
                "positions": self.positions, "cash": self.cash, "cash_recorded": self.cash_recorded}


def reconcile_venues(
    client: TradestateClient | Writer,
    adapters: list[BrokerAdapter],
    *,
    strict: bool = False,
    since: datetime | None = None,
    now: datetime | None = None,
    dry_run: bool = False,
    tolerance: Decimal = ZERO,
    record_cash: bool = True,
) -> MultiVenueResult:
    """Reconcile one account at each adapter's venue, then sum positions per asset across venues
    and report cash per venue (see the module docstring). ``tolerance``: a summed difference up to
    this is "ok" (the seed's script used 0.0001; exact by default). ``record_cash``: compare and
    correct the log's cash per venue (default: when the domain keeps cash per venue).
    ``InvalidInput`` for no adapters, adapters of different accounts, two adapters for one venue, or
    a naive time; a venue whose run fails is in ``errors`` (its sums are unknown)."""
    if not adapters:
        raise InvalidInput("reconcile_venues: give at least one adapter")
    accounts = {a.account for a in adapters}
    if len(accounts) != 1:
        raise InvalidInput(f"reconcile_venues: one account at several venues, not {sorted(accounts)}")
    venues = [a.venue for a in adapters]
    if len(set(venues)) != len(venues):
        raise InvalidInput(f"reconcile_venues: each venue once, not {venues}")
    if tolerance < 0:
        raise InvalidInput("reconcile_venues: tolerance must be >= 0")
    writer = _writer(client)
    now = now or writer.now()
    if now.tzinfo is None or (since is not None and since.tzinfo is None):
        raise InvalidInput("reconcile_venues: now and since must be timezone-aware")
    now = now.astimezone(timezone.utc)
    account = accounts.pop()
    out = MultiVenueResult(account, cash_recorded=record_cash)
    snapshots: dict[str, VenueSnapshot | None] = {}
    writer.catch_up()
    before = log_positions(writer.state, account, set(venues))
    for adapter in adapters:
        try:
            snapshot = adapter.snapshot(since, now=now)
            snapshots[adapter.venue] = snapshot
            out.results.append(reconcile(client, adapter, strict=strict, since=since, dry_run=dry_run,
                                         cash=record_cash, snapshot=snapshot))
        except InvalidInput:
            raise
        except Exception as e:  # noqa: BLE001 - one venue away must not hide the others
            snapshots[adapter.venue] = None
            out.errors[f"{adapter.broker} {adapter.venue}"] = f"{type(e).__name__}: {e}"[:1000]
    writer.catch_up()
    out.positions = summed_positions(before, log_positions(writer.state, account, set(venues)), snapshots, tolerance)
    out.cash = cash_per_venue(writer.state, account, snapshots)
    return out


def log_positions(state: Any, account: str, venues: Any) -> dict[str, dict[str, Decimal]]:
    """asset -> venue -> the log's position of ``account`` at each of ``venues``."""
    out: dict[str, dict[str, Decimal]] = {}
    for (acct, venue, symbol), held in state.positions.items():
        if acct == account and venue in venues and held.qty:
            by = out.setdefault(asset_of(symbol), {})
            by[venue] = by.get(venue, ZERO) + held.qty
    return out


def summed_positions(before: dict[str, dict[str, Decimal]], after: dict[str, dict[str, Decimal]],
                     snapshots: dict[str, VenueSnapshot | None], tolerance: Decimal = ZERO) -> list[dict[str, Any]]:
    """Per asset, as the seed's script compares: the log's position summed over the venues before
    this run (``ours``) against the venues' sum (``venues``), and after this run's corrections
    (``ours_after``). Status: ``ok`` (they agreed), ``corrected`` (they disagreed, the runs
    corrected it), ``mismatch`` (they still disagree: a dry run, or a correction that could not be
    made) or ``unknown`` (a venue could not report its positions). ``by_venue`` has each venue's
    pair: the per-venue runs correct at that level, so a venue-level difference the sums hide
    (+1 here, -1 there) is corrected all the same."""
    theirs: dict[str, dict[str, Decimal]] = {}
    unknown: dict[str, str] = {}  # venue -> why its positions are unknown
    for venue, snap in snapshots.items():
        if snap is None:
            unknown[venue] = "the venue's run failed"
            continue
        if isinstance(snap.positions, Unknown):
            unknown[venue] = snap.positions.reason
            continue
        for p in snap.positions:
            by = theirs.setdefault(asset_of(p.symbol), {})
            by[venue] = by.get(venue, ZERO) + p.qty
    rows = []
    for asset in sorted(set(before) | set(after) | set(theirs)):
        mine, now_mine, venue_side = before.get(asset, {}), after.get(asset, {}), theirs.get(asset, {})
        total_ours, total_after = sum(mine.values(), ZERO), sum(now_mine.values(), ZERO)
        total_venues = sum(venue_side.values(), ZERO)
        if unknown:
            status = "unknown"
        elif abs(total_venues - total_ours) <= tolerance:
            status = "ok"
        elif abs(total_venues - total_after) <= tolerance:
            status = "corrected"
        else:
            status = "mismatch"
        rows.append({
            "asset": asset, "ours": _s(total_ours), "venues": _s(total_venues),
            "difference": _s(total_venues - total_ours), "ours_after": _s(total_after), "status": status,
            "by_venue": {v: {"ours": _s(mine.get(v, ZERO)), "ours_after": _s(now_mine.get(v, ZERO)),
                             "venue": ("unknown" if v in unknown else _s(venue_side.get(v, ZERO)))}
                         for v in sorted(snapshots)},
            **({"unknown": unknown} if unknown else {}),
        })
    return rows


def cash_per_venue(state: Any, account: str, snapshots: dict[str, VenueSnapshot | None]) -> dict[str, dict[str, Any]]:
    """venue -> currency -> {"venue": its balance, "log": the log's cash at that venue (None: no
    balance in that currency on record there)}; a venue whose balances are unknown says so."""
    acct = state.accounts.get(account)
    out: dict[str, dict[str, Any]] = {}
    for venue, snap in sorted(snapshots.items()):
        if snap is None or isinstance(snap.balances, Unknown):
            why = "the venue's run failed" if snap is None else snap.balances.reason  # type: ignore[union-attr]
            out[venue] = {"unknown": why}
            continue
        logged = acct.cash_at(venue) if acct is not None else {}
        out[venue] = {b.currency: {"venue": _s(b.cash),
                                   "log": _s(logged[b.currency]) if b.currency in logged else None}
                      for b in sorted(snap.balances, key=lambda b: b.currency)}
    return out


__all__ = ["MultiVenueResult", "asset_of", "cash_per_venue", "log_positions",
           "reconcile_venues", "summed_positions"]
