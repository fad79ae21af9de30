"""The post-mortem report: it renders in a real browser (headless Chromium, Debian's ``chromium``,
takes a screenshot that is not blank); it summarises a staged incident (crash, recovery,
reconciliation) whatever the time axis, marks the fill reconciliation recorded, draws the prices
with the fills and intents on them, and reads as words where it used to show Python values."""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest
from tests.support.replay_session import A, build_session

import tradestate
from tradestate import replay
from tradestate.adapters.store import open_store
from tradestate.domain.ids import order_stream_id
from tradestate.replay.log import bounds, iter_events
from tradestate.replay.report import filters_text, incident, price_chart, price_points

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if shutil.os.path.exists("/usr/bin/chromium") else None)


def _pixel_stats(path) -> tuple[float, int]:
    from PIL import Image, ImageStat

    image = Image.open(path).convert("L")
    stat = ImageStat.Stat(image)
    return stat.var[0], sum(1 for count in image.histogram() if count)


def test_report_is_self_contained_and_renders_in_headless_chromium(sqlite_url, tmp_path):
    if CHROMIUM is None:
        pytest.fail("chromium is not installed: apt-get install -y chromium")
    session = build_session(sqlite_url)
    with open_store(sqlite_url, create=False) as store:
        path = replay.write_report(store, session.mid, "30m", str(tmp_path / "postmortem.html"), account=A)
    html = open(path, encoding="utf-8").read()
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    assert len(images) == 4 and all(base64.b64decode(i).startswith(b"\x89PNG") for i in images)
    assert "http://" not in html and "https://" not in html  # nothing fetched from elsewhere
    assert "kill switch engaged" in html and "OrderFilled" in html
    shot = tmp_path / "shot.png"
    proc = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         f"--screenshot={shot}", "--window-size=1200,1600", f"file://{path}"],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert shot.exists(), proc.stderr[-2000:]
    variance, colours = _pixel_stats(shot)
    assert variance > 100 and colours > 20, (variance, colours)  # a blank page is one colour


def test_a_blank_page_fails_the_check(tmp_path):
    """The check above can fail: a white screenshot has no variance."""
    from PIL import Image

    Image.new("RGB", (200, 100), "white").save(tmp_path / "blank.png")
    variance, colours = _pixel_stats(tmp_path / "blank.png")
    assert variance == 0 and colours == 1


# ------------------------------------------------------------------ the incident in the report

ENGINE, ACCOUNT, VENUE = "eng-x", "acct-x", "sim"
T0 = datetime(2026, 11, 20, 15, 5, tzinfo=timezone.utc)


def _send(client, broker, coid, symbol, side, qty, **price):
    from tradestate.adapters.brokers.base import OrderRequest

    order_type = "limit" if "limit_price" in price else "market"
    client.record_intent(ACCOUNT, coid, symbol, side, qty, order_type=order_type, venue=VENUE, **price)
    client.record_submitted(ACCOUNT, coid)
    limit = price.get("limit_price")
    broker.submit(OrderRequest(coid, symbol, side, order_type, Decimal(qty),
                               limit_price=Decimal(limit) if limit else None))


def _record(client, updates):
    for u in updates:
        if u.kind == "ack":
            client.record_ack(ACCOUNT, u.client_order_id, u.venue_order_id, occurred_at=u.occurred_at)
        elif u.kind == "fill":
            f = u.fill
            client.record_fill(ACCOUNT, u.client_order_id, f.exec_id, f.qty, f.price, fee=f.fee,
                               occurred_at=f.occurred_at)


def staged_incident(url: str, tmp_path) -> str:
    """The demo's incident in one process: an engine trades through the simulated venue, a fill's
    notification is lost, the engine dies without a clean stop, and ``recover`` (with the venue)
    finds the fill. Recovery runs two hours later on its clock, outside a window on the session.
    Returns the exec id of the fill that only reconciliation recorded."""
    from tradestate.adapters.brokers.sim import SimulatedBroker
    from tradestate.recovery import recover

    ticks = iter(range(1, 10_000))
    clock = lambda: T0 + timedelta(seconds=5 * next(ticks))  # noqa: E731
    sim_state = str(tmp_path / "sim.json")
    broker = SimulatedBroker(account=ACCOUNT, venue=VENUE, seed=7, state_path=sim_state, clock=clock)
    with tradestate.connect(url, clock=clock) as client:
        client.engine_started(ENGINE)
        for minute, (o, h, lo, c) in enumerate([("187.50", "187.70", "187.40", "187.60"),
                                                ("187.60", "187.65", "186.80", "186.90")]):
            client.record_bar(VENUE, "AAPL", "1m", T0 + timedelta(minutes=minute), o, h, lo, c, 100)
        broker.stage_cash(Decimal("100000"))
        broker.set_price("AAPL", "187.60")
        _send(client, broker, "o-1", "AAPL", "buy", 50, reference_price="187.60")
        _send(client, broker, "o-2", "AAPL", "buy", 40, limit_price="187.00")
        _record(client, broker.updates())
        broker.update_faults(lose_next_fills=1)
        broker.set_price("AAPL", "186.90")  # o-2 fills at the venue; the notification is lost
        _record(client, broker.updates())
        client.trip_breaker(ACCOUNT, "venue feed lagging")
        client.record_intent(ACCOUNT, "o-3", "AAPL", "buy", 10, venue=VENUE, reference_price="186.90")
        # no engine_stopped: the process died
    venue = SimulatedBroker(account=ACCOUNT, venue=VENUE, seed=7, state_path=sim_state)
    with open_store(url) as store:
        report, client = recover(store, engine_id=ENGINE, adapters=[venue],
                                 clock=lambda: T0 + timedelta(hours=2))
        assert report.ready and report.crashed
        order = client.state.orders[order_stream_id(ACCOUNT, "o-2")]
        assert order.status == "filled"
        fills = [e for e in iter_events(store) if e.type == "OrderFilled" and e.payload["client_order_id"] == "o-2"]
    (fill,) = fills
    return fill.payload["exec_id"]


@pytest.mark.parametrize("axis, around, window", [("occurred", T0 + timedelta(minutes=2), "5m"),
                                                  ("recorded", None, "10m")])
def test_the_report_of_a_staged_crash_summarises_recovery_and_reconciliation(sqlite_url, tmp_path, axis, around,
                                                                             window):
    exec_id = staged_incident(sqlite_url, tmp_path)
    path = str(tmp_path / "postmortem.html")
    with open_store(sqlite_url, create=False) as store:
        around = around or bounds(store).first_at
        if axis == "occurred":  # recovery's events are outside this window: the summary still shows them
            tl = replay.timeline(store, around, window, axis=axis)
            assert not {"RecoveryCompleted", "ReconciliationCompleted"} & {e.type for e in tl.events}
        replay.write_report(store, around, window, path, axis=axis)
    html = open(path, encoding="utf-8").read()
    summary = html[html.index("Incident summary"):html.index("</div>", html.index("Incident summary"))]
    assert "1 crash detected" in summary and f"engine <b>{ENGINE}</b>" in summary
    assert "never recorded a clean stop" in summary
    assert '<span class="ok">ready</span>; after a crash' in summary
    for step in ("detect", "verify", "checkpoint", "replay", "reconcile", "health"):
        assert f"<td>{step}</td>" in summary
    assert "reconciliation corrected" in summary and "missed_fill" in summary
    assert f"fill {exec_id}" in summary  # the events it appended, by what they are
    assert "refused by risk" in summary.lower() and "circuit_breaker" in summary
    # the timeline marks the fill that only reconciliation recorded
    rows = html[html.index("<h2>Timeline"):].split("<tr")
    (row,) = [r for r in rows if f"fill {exec_id}" in r]
    assert row.startswith(' class="recon"') and "reconciled fill" in row
    assert sum("reconciled fill" in r for r in rows) == 1 and sum("OrderFilled" in r for r in rows) == 2
    header = html[:html.index('<div class="cards">')]
    assert "{'" not in header and "Filters: none (market bars shown)." in header
    images = dict(re.findall(r'<img alt="([^"]+)" src="data:image/png;base64,([^"]+)"', html))
    assert base64.b64decode(images["Prices, fills and intents"]).startswith(b"\x89PNG")


def test_the_price_chart_marks_fills_intents_and_the_reconciled_fill(sqlite_url, tmp_path):
    exec_id = staged_incident(sqlite_url, tmp_path)
    with open_store(sqlite_url, create=False) as store:
        tl = replay.timeline(store, T0 + timedelta(minutes=2), "5m", axis="occurred", market=True)
        inc = incident(store, tl)
        points = price_points(store, tl, inc)
        chart = price_chart(store, tl, inc)
    kinds = sorted((p.label.split()[0], p.kind) for p in points)
    assert kinds == [("o-1", "fill"), ("o-1", "intent"), ("o-2", "intent"), ("o-2", "reconciled fill"),
                     ("o-3", "refused intent")]
    (recon,) = [p for p in points if p.kind == "reconciled fill"]
    assert (recon.price, recon.side) == (Decimal("186.90"), "buy") and exec_id
    assert T0 < recon.at < T0 + timedelta(minutes=5)  # the venue's time of the fill, not recovery's
    assert chart is not None and base64.b64decode(chart).startswith(b"\x89PNG")


def test_a_quiet_window_says_none_and_filters_read_as_words(sqlite_url, tmp_path):
    session = build_session(sqlite_url)
    path = str(tmp_path / "quiet.html")
    with open_store(sqlite_url, create=False) as store:
        start = bounds(store).first_at
        replay.write_report(store, start, "1s", path, account=A, market=False)
    html = open(path, encoding="utf-8").read()
    assert "State at the start of the window</h2><p class=\"none\">none" in html
    assert f"Filters: account {A} (no market bars)." in html and "{'" not in html[:html.index("<div")]
    assert filters_text({"account": None, "symbol": ["AAPL", "MSFT"], "strategy": "sma", "types": None,
                         "market": True}) == "symbols AAPL, MSFT; strategy sma (market bars shown)"
    assert session.head > 0


def test_a_session_without_an_incident_says_so(sqlite_url, tmp_path):
    with tradestate.connect(sqlite_url) as c:
        c.engine_started("quiet")
        c.set_risk_limit(A, "max_position_qty", 100)
        c.engine_stopped("quiet")
    path = str(tmp_path / "q.html")
    with open_store(sqlite_url, create=False) as store:
        replay.write_report(store, bounds(store).last_at, "1m", path)
    html = open(path, encoding="utf-8").read()
    assert "No crash, recovery, reconciliation, discrepancy or risk refusal." in html
    assert 'alt="Prices, fills and intents"' not in html  # nothing priced to draw
