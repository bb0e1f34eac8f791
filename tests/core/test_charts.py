"""The daily spend chart: a small PNG, or None without matplotlib."""

from __future__ import annotations

import sys
from datetime import UTC, datetime

import pytest

from core.charts import spend_chart_png
from core.usage import DayTotals, PeriodTotals, days_back

DAYS = days_back(datetime(2028, 3, 1, tzinfo=UTC), 30)


def test_thirty_days_make_a_small_png() -> None:
    pytest.importorskip("matplotlib")
    days = [DayTotals(day, PeriodTotals(total_tokens=1000 * i, cost_usd=0.01 * i, attempts=i,
                                        unknown_cost_attempts=int(i % 7 == 0 and i > 0)))
            for i, day in enumerate(DAYS)]
    png = spend_chart_png(days, title="Spend, last 30 days")
    assert png is not None and png.startswith(b"\x89PNG") and len(png) < 100_000


@pytest.mark.parametrize("days", [[DayTotals(day, PeriodTotals()) for day in DAYS], []])
def test_no_spend_still_draws(days: list[DayTotals]) -> None:
    pytest.importorskip("matplotlib")
    png = spend_chart_png(days, title="nothing yet")
    assert png is not None and png.startswith(b"\x89PNG")


def test_without_matplotlib_there_is_no_chart(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in sys.modules if n == "matplotlib" or n.startswith("matplotlib.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert spend_chart_png([DayTotals(DAYS[0], PeriodTotals())], title="x") is None
