"""Usage accounting: UTC periods, the ledger, the once-per-period warning log, prompt sizes.

Periods are UTC days ("YYYY-MM-DD") and months ("YYYY-MM"), stored on every usage row so that
each query is an index lookup on (user_id, day) or (month), whatever the length of the history.
The ledger and the warning log are the narrow storage interfaces a PostgreSQL version would
replace. Prices and the cost of an attempt are in core/usage_prices.py, the spend caps in
core/usage_caps.py; what users read (refusals, warnings, /budget and /usage) is worded in
core/usage_text.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import sqlite_utils

from core.contracts import UsageRecord
from core.store import transaction

if TYPE_CHECKING:
    from core.contracts import ContextPlan
    from core.store import Chats


# Periods (UTC) ------------------------------------------------------------------------
def _utc(at: datetime) -> datetime:
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError(f"naive datetime {at!r}: budgets need a timezone-aware time")
    return at.astimezone(UTC)


def utc_day(at: datetime) -> str:
    return _utc(at).date().isoformat()


def utc_month(at: datetime) -> str:
    at = _utc(at)
    return f"{at.year:04d}-{at.month:02d}"


def next_day_start(at: datetime) -> datetime:
    at = _utc(at)
    return datetime(at.year, at.month, at.day, tzinfo=UTC) + timedelta(days=1)


def next_month_start(at: datetime) -> datetime:
    at = _utc(at)
    return datetime(at.year + (at.month == 12), at.month % 12 + 1, 1, tzinfo=UTC)


def days_back(at: datetime, n: int) -> list[str]:
    """The last `n` UTC days, oldest first, ending with today."""
    today = _utc(at).date()
    return [(today - timedelta(days=back)).isoformat() for back in range(n - 1, -1, -1)]


# Ledger -------------------------------------------------------------------------------
@dataclass(frozen=True)
class PeriodTotals:
    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0
    cost_usd: float = 0.0  # known costs only
    unknown_cost_attempts: int = 0  # rows whose cost is NULL (model price unknown)
    attempts: int = 0
    estimated_attempts: int = 0  # rows whose tokens were estimated, not reported


@dataclass(frozen=True)
class DayTotals:
    day: str
    totals: PeriodTotals


@dataclass(frozen=True)
class ModelTotals:
    model: str
    totals: PeriodTotals


@dataclass(frozen=True)
class UserTotals:
    user_id: int
    totals: PeriodTotals


_TOTALS_SQL = ("COALESCE(SUM(input_tokens), 0), COALESCE(SUM(output_tokens), 0), COALESCE(SUM(total_tokens), 0),"
               " TOTAL(cost_usd), COALESCE(SUM(cost_usd IS NULL), 0), COUNT(*), COALESCE(SUM(estimated), 0)")


class UsageLedger:
    """The `usage` table: one row per LLM attempt, successful or wasted. Every query filters on
    (user_id, day) or (month) so it is served by an index; none scans a user's whole history.
    Wasted attempts count everywhere (their tokens were paid for), and are also reported apart."""

    def __init__(self, db: sqlite_utils.Database) -> None:
        self.db = db

    def record(self, rec: UsageRecord) -> None:
        with transaction(self.db):  # the row and its running totals: one commit
            self._record(rec)

    def _record(self, rec: UsageRecord) -> None:
        at = _utc(rec.at)
        self.db.execute(
            "INSERT INTO usage(at, day, month, trace_id, chat_id, user_id, model, input_tokens, output_tokens,"
            " total_tokens, estimated, cost_usd, wasted) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [at.isoformat(timespec="milliseconds"), utc_day(at), utc_month(at), rec.trace_id, rec.chat_id,
             rec.user_id, rec.model, rec.usage.input_tokens, rec.usage.output_tokens, rec.usage.total_tokens,
             int(rec.usage.estimated), rec.cost_usd, int(rec.wasted)])
        for scope, period in ((f"user:{rec.user_id}", utc_day(at)), ("all", utc_month(at))):
            self.db.execute(
                "INSERT INTO usage_totals(scope, period, total_tokens, cost_usd, attempts) VALUES (?, ?, ?, ?, 1)"
                " ON CONFLICT(scope, period) DO UPDATE SET total_tokens = total_tokens + excluded.total_tokens,"
                " cost_usd = cost_usd + excluded.cost_usd, attempts = attempts + 1",
                [scope, period, rec.usage.total_tokens, rec.cost_usd or 0.0])

    def _totals(self, where: str, params: Sequence[object]) -> PeriodTotals:
        row = self.db.execute(f"SELECT {_TOTALS_SQL} FROM usage WHERE {where}", list(params)).fetchone()
        return PeriodTotals(*row)

    def mark_wasted(self, trace_id: str) -> int:
        """Every attempt of a failed turn was wasted spend; returns the tokens the turn used."""
        self.db.execute("UPDATE usage SET wasted = 1 WHERE trace_id = ?", [trace_id])
        row = self.db.execute("SELECT COALESCE(SUM(total_tokens), 0) FROM usage WHERE trace_id = ?",
                              [trace_id]).fetchone()
        return int(row[0])

    def user_day_tokens(self, user_id: int, day: str) -> int:
        """From the running totals: one row read, however busy the day (checked every turn)."""
        row = self.db.execute("SELECT total_tokens FROM usage_totals WHERE scope = ? AND period = ?",
                              [f"user:{user_id}", day]).fetchone()
        return int(row[0]) if row else 0

    def month_cost_usd(self, month: str) -> float:
        """The bot's known spend this month, from the running totals (checked every turn)."""
        row = self.db.execute("SELECT cost_usd FROM usage_totals WHERE scope = 'all' AND period = ?",
                              [month]).fetchone()
        return float(row[0]) if row else 0.0

    def user_day(self, user_id: int, day: str) -> PeriodTotals:
        return self._totals("user_id = ? AND day = ?", [user_id, day])

    def user_month(self, user_id: int, month: str) -> PeriodTotals:
        # A range on `day` keeps this on the (user_id, day) index.
        return self._totals("user_id = ? AND day >= ? AND day <= ?", [user_id, f"{month}-01", f"{month}-31"])

    def month_totals(self, month: str) -> PeriodTotals:
        return self._totals("month = ?", [month])

    def day_totals(self, day: str) -> PeriodTotals:
        return self._totals("month = ? AND day = ?", [day[:7], day])

    def wasted(self, month: str) -> PeriodTotals:
        return self._totals("month = ? AND wasted = 1", [month])

    def top_users(self, month: str, n: int = 5) -> list[UserTotals]:
        rows = self.db.execute(
            f"SELECT user_id, {_TOTALS_SQL} FROM usage WHERE month = ? GROUP BY user_id"
            " ORDER BY TOTAL(cost_usd) DESC, SUM(total_tokens) DESC, user_id LIMIT ?", [month, n]).fetchall()
        return [UserTotals(row[0], PeriodTotals(*row[1:])) for row in rows]

    def unknown_models(self, month: str) -> list[str]:
        """Models used this month whose price is unknown (to name in the operator's report)."""
        rows = self.db.execute("SELECT DISTINCT model FROM usage WHERE month = ? AND cost_usd IS NULL ORDER BY model",
                               [month]).fetchall()
        return [row[0] for row in rows]

    def by_model(self, *, month: str | None = None, days: Sequence[str] = (),
                 user_id: int | None = None) -> list[ModelTotals]:
        """Totals per model for a month or for some days (the model that really answered or
        failed: fallbacks appear under their own name), the costliest first."""
        if month is not None:
            where, params = "month = ?", [month]
        else:
            where, params = f"day IN ({','.join('?' * len(days)) or 'NULL'})", list(days)
        if user_id is not None:
            where, params = f"user_id = ? AND {where}", [user_id, *params]
        rows = self.db.execute(f"SELECT model, {_TOTALS_SQL} FROM usage WHERE {where} GROUP BY model"
                               " ORDER BY TOTAL(cost_usd) DESC, SUM(total_tokens) DESC, model", params).fetchall()
        return [ModelTotals(row[0], PeriodTotals(*row[1:])) for row in rows]

    def _per_day(self, where: str, params: Sequence[object], days: list[str]) -> list[DayTotals]:
        if not days:
            return []
        marks = ",".join("?" * len(days))
        rows = self.db.execute(f"SELECT day, {_TOTALS_SQL} FROM usage WHERE {where} AND day IN ({marks})"
                               " GROUP BY day", [*params, *days]).fetchall()
        found = {row[0]: PeriodTotals(*row[1:]) for row in rows}
        return [DayTotals(day, found.get(day, PeriodTotals())) for day in days]

    def user_days(self, user_id: int, days: list[str]) -> list[DayTotals]:
        """One entry per requested day, in the order given; zeros where there was no usage."""
        return self._per_day("user_id = ?", [user_id], days)

    def daily_spend(self, days: list[str]) -> list[DayTotals]:
        """The whole bot's totals per requested day (zeros where there was no usage)."""
        months = sorted({day[:7] for day in days})
        return self._per_day(f"month IN ({','.join('?' * len(months))})", months, days)


# Warnings -----------------------------------------------------------------------------
class WarningLog:
    """The `warnings` table: remembers which once-per-period warnings were already given."""

    def __init__(self, db: sqlite_utils.Database) -> None:
        self.db = db

    def once(self, key: str, *, now: str) -> bool:
        """True the first time `key` is seen (the caller should warn), False afterwards."""
        cursor = self.db.execute("INSERT OR IGNORE INTO warnings(key, at) VALUES (?, ?)", [key, now])
        return cursor.rowcount == 1


# Prompt sizes ------------------------------------------------------------------------
def record_prompt_metrics(db: sqlite_utils.Database, chats: Chats, *, trace_id: str, chat_id: int,
                          plan: ContextPlan, now: str) -> None:
    """What a turn's prompt cost (the context plan), for /status and `python -m bot trace`: the
    context stage records it, and the llm stage again when an overflow made the prompt smaller."""
    with transaction(db):
        db.execute(
            "INSERT OR REPLACE INTO prompt_metrics(trace_id, chat_id, at, hot_state_tokens, history_tokens,"
            " history_kept, history_dropped, artifact_count, total_tokens, budget_tokens)"
            " VALUES (?,?,?,?,?,?,?,?,?,?)",
            [trace_id, chat_id, now, plan.hot_state_tokens, plan.history_tokens, plan.history_kept,
             plan.history_dropped, plan.artifact_count, plan.total_tokens, plan.budget_tokens])
        chats.record_prompt(chat_id, tokens=plan.total_tokens, budget=plan.budget_tokens, trace_id=trace_id, now=now)
