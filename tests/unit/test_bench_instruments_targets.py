"""The instruments bench group: its generated registry and its targets (rates within 10 % of the
same run without instruments). The measurement itself is ``tradestate bench --only instruments``."""

from __future__ import annotations

from collections import Counter

from tradestate.domain.events import decode
from tradestate.tools.bench.common import Result
from tradestate.tools.bench.instruments import MINIMUM, N, _definitions, _rows, targets


def test_the_registry_is_ten_thousand_valid_instruments_of_every_class():
    definitions = _definitions()
    classes = Counter(payload["asset_class"] for _s, t, payload in definitions if t == "InstrumentDefined")
    assert sum(classes.values()) == N == 10_000
    assert set(classes) == {"equity", "etf", "future", "option", "fx", "crypto"}
    for stream, type_name, payload in definitions[:12] + definitions[-1:]:
        decode(type_name, payload)  # each is a valid stored event
    rows = _rows(definitions[:2])
    assert rows[0][4].endswith(b'"_v":1}') and [r[0] for r in rows] == [1, 2]


def test_each_rate_is_judged_within_ten_percent():
    assert MINIMUM == 0.9
    fold = Result("instruments_fold", "memory", 91.0, "events/s", "fold_without_instruments", 100.0, 0.91)
    plan = Result("instruments_plan", "memory", 8.0, "plans/s", "plan_without_instruments", 10.0, 0.8)
    (fold_met, fold_line), (plan_met, plan_line) = targets([fold, plan])
    assert fold_met and fold_line.startswith("instruments_fold (memory): 0.91x") and "target >= 0.9x" in fold_line
    assert not plan_met and plan_line.startswith("instruments_plan (memory): 0.80x")
