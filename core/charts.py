"""A small PNG bar chart of daily spend, for /usage (sent with sendPhoto).

matplotlib is an optional extra (`charts`): it is imported only when a chart is drawn, and
without it `spend_chart_png` returns None so the caller sends the text table alone. The figure
is drawn on an Agg canvas directly (no pyplot), so no global figure state or GUI backend is
involved and concurrent turns cannot interfere.
"""

from __future__ import annotations

import io

from core.usage import DayTotals

WIDTH_IN, HEIGHT_IN, DPI = 6.4, 3.2, 100  # 640 x 320 px: readable on a phone, tens of KB
KNOWN_COLOR, PARTLY_UNKNOWN_COLOR = "#4C72B0", "#DD8452"


def spend_chart_png(days: list[DayTotals], *, title: str) -> bytes | None:
    """Bars of known USD spend per day (oldest first); days that also had attempts with an
    unknown price are drawn in another colour. None when matplotlib is not installed."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.patches import Patch
    except ImportError:
        return None

    figure = Figure(figsize=(WIDTH_IN, HEIGHT_IN), dpi=DPI)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    positions = list(range(len(days)))
    spend_usd = [d.totals.cost_usd for d in days]
    colors = [PARTLY_UNKNOWN_COLOR if d.totals.unknown_cost_attempts else KNOWN_COLOR for d in days]
    axes.bar(positions, spend_usd, color=colors, width=0.8)
    step = max(len(days) // 6, 1)  # about six date labels, whatever the span
    axes.set_xticks(positions[::step], [d.day[5:] for d in days[::step]], fontsize=8)
    axes.set_xlim(-0.6, max(len(days), 1) - 0.4)
    axes.set_ylim(bottom=0)
    if not any(spend_usd):
        axes.set_ylim(0, 1)
    peak_usd = max(spend_usd, default=0.0)
    decimals = 4 if 0 < peak_usd < 0.1 else 2  # fractions of a cent only when spend is that small
    axes.yaxis.set_major_formatter(lambda value, _pos: f"${value:.{decimals}f}" if value else "$0")
    axes.tick_params(axis="y", labelsize=8)
    axes.set_title(title, fontsize=10)
    axes.spines[["top", "right"]].set_visible(False)
    if any(d.totals.unknown_cost_attempts for d in days):
        axes.legend(handles=[Patch(color=PARTLY_UNKNOWN_COLOR, label="+ attempts of unknown price")],
                    fontsize=7, frameon=False, loc="lower right", bbox_to_anchor=(1.0, 1.0))
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()
