"""Post-mortems from the log: time travel, diffs, timelines, order traces, market-data and order
replay, export for notebooks and an HTML report. Everything here only reads the log.

    from tradestate.adapters.store import open_store
    from tradestate import replay
    store = open_store("sqlite:///trading.db", create=False)
    replay.state_at_time(store, "2026-11-20T14:31:05Z").view()
    replay.trace(store, "acct-1", "ord-42")            # rich renderable, .to_json()
    replay.write_report(store, "2026-11-20T14:31:05Z", "30m", "postmortem.html")
    replay.fills("sqlite:///trading.db", start="2026-11-20T14:00:00Z").to_pandas()   # typed Arrow tables
"""

from .log import LoggedEvent, ReplayError, describe, parse_duration, parse_speed, parse_time, position_at
from .market import Bar, MarketItem, MarketReplay, recorded_bars, replay_market
from .orders import OrderReplay, replay_orders
from .report import write_report
from .state import StateAt, diff, diff_positions, render_diff, render_state, state_at_position, state_at_time, state_view
from .timeline import Timeline, timeline, timeline_table
from .trace import Trace, render_trace, trace

# After the submodules: ``orders`` names the export function, not the ``replay.orders`` module.
from .export import bars, export, fills, frame, orders, risk_events  # noqa: E402

__all__ = [
    "Bar", "LoggedEvent", "OrderReplay", "replay_orders", "MarketItem", "MarketReplay", "ReplayError", "StateAt", "Timeline", "Trace",
    "bars", "describe", "diff", "diff_positions", "export", "fills", "frame", "orders", "parse_duration", "parse_speed", "parse_time", "position_at",
    "recorded_bars", "render_diff", "risk_events", "render_state", "render_trace", "replay_market", "state_at_position",
    "state_at_time", "state_view", "timeline", "timeline_table", "trace", "write_report",
]
