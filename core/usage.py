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

from core.contracts import UsageRecord
from core.store import Database

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
               " COALESCE(SUM(cost_usd), 0), COALESCE(SUM(CASE WHEN cost_usd IS NULL THEN 1 ELSE 0 END), 0), COUNT(*),"
               " COALESCE(SUM(estimated), 0)")


def _period_totals(row: Sequence[object] | None) -> PeriodTotals:
    """A `_TOTALS_SQL` row as numbers (PostgreSQL's SUM of a bigint is a Decimal)."""
    if row is None:
        return PeriodTotals()
    values = [int(value or 0) for value in row]  # type: ignore[call-overload]
    values[3] = float(row[3] or 0.0)  # type: ignore[arg-type]
    return PeriodTotals(*values)


class UsageLedger:
    """The `usage` table: one row per LLM attempt, successful or wasted. Every query filters on
    (user_id, day) or (month) so it is served by an index; none scans a user's whole history.
    Wasted attempts count everywhere (their tokens were paid for), and are also reported apart."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def record(self, rec: UsageRecord) -> None:
        async with self.db.transaction():  # the row and its running totals: one commit
            await self._record(rec)

    async def _record(self, rec: UsageRecord) -> None:
        at = _utc(rec.at)
        await self.db.execute(
            "INSERT INTO usage(at, day, month, trace_id, chat_id, user_id, model, input_tokens, output_tokens,"
            " total_tokens, estimated, cost_usd, wasted) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [at.isoformat(timespec="milliseconds"), utc_day(at), utc_month(at), rec.trace_id, rec.chat_id,
             rec.user_id, rec.model, rec.usage.input_tokens, rec.usage.output_tokens, rec.usage.total_tokens,
             int(rec.usage.estimated), rec.cost_usd, int(rec.wasted)])
        for scope, period in ((f"user:{rec.user_id}", utc_day(at)), ("all", utc_month(at))):
            await self.db.execute(
                "INSERT INTO usage_totals(scope, period, total_tokens, cost_usd, attempts) VALUES (?, ?, ?, ?, 1)"
                " ON CONFLICT(scope, period) DO UPDATE SET total_tokens = usage_totals.total_tokens + excluded.total_tokens,"
                " cost_usd = usage_totals.cost_usd + excluded.cost_usd, attempts = usage_totals.attempts + 1",
                [scope, period, rec.usage.total_tokens, rec.cost_usd or 0.0])

    async def _totals(self, where: str, params: Sequence[object]) -> PeriodTotals:
        row = await self.db.fetchone(f"SELECT {_TOTALS_SQL} FROM usage WHERE {where}", list(params))
        return _period_totals(row)

    async def mark_wasted(self, trace_id: str) -> int:
        """Every attempt of a failed turn was wasted spend; returns the tokens the turn used."""
        await self.db.execute("UPDATE usage SET wasted = 1 WHERE trace_id = ?", [trace_id])
        row = await self.db.fetchone("SELECT COALESCE(SUM(total_tokens), 0) FROM usage WHERE trace_id = ?",
                              [trace_id])
        return int(row[0])

    async def user_day_tokens(self, user_id: int, day: str) -> int:
        """From the running totals: one row read, however busy the day (checked every turn)."""
        row = await self.db.fetchone("SELECT total_tokens FROM usage_totals WHERE scope = ? AND period = ?",
                              [f"user:{user_id}", day])
        return int(row[0]) if row else 0

    async def month_cost_usd(self, month: str) -> float:
        """The bot's known spend this month, from the running totals (checked every turn)."""
        row = await self.db.fetchone("SELECT cost_usd FROM usage_totals WHERE scope = 'all' AND period = ?",
                              [month])
        return float(row[0]) if row else 0.0

    async def user_day(self, user_id: int, day: str) -> PeriodTotals:
        return await self._totals("user_id = ? AND day = ?", [user_id, day])

    async def user_month(self, user_id: int, month: str) -> PeriodTotals:
        # A range on `day` keeps this on the (user_id, day) index.
        return await self._totals("user_id = ? AND day >= ? AND day <= ?", [user_id, f"{month}-01", f"{month}-31"])

    async def month_totals(self, month: str) -> PeriodTotals:
        return await self._totals("month = ?", [month])

    async def day_totals(self, day: str) -> PeriodTotals:
        return await self._totals("month = ? AND day = ?", [day[:7], day])

    async def wasted(self, month: str) -> PeriodTotals:
        return await self._totals("month = ? AND wasted = 1", [month])

    async def top_users(self, month: str, n: int = 5) -> list[UserTotals]:
        rows = await self.db.fetchall(
            f"SELECT user_id, {_TOTALS_SQL} FROM usage WHERE month = ? GROUP BY user_id"
            " ORDER BY COALESCE(SUM(cost_usd), 0) DESC, SUM(total_tokens) DESC, user_id LIMIT ?", [month, n])
        return [UserTotals(row[0], _period_totals(row[1:])) for row in rows]

    async def unknown_models(self, month: str) -> list[str]:
        """Models used this month whose price is unknown (to name in the operator's report)."""
        rows = await self.db.fetchall("SELECT DISTINCT model FROM usage WHERE month = ? AND cost_usd IS NULL ORDER BY model",
                               [month])
        return [row[0] for row in rows]

    async def by_model(self, *, month: str | None = None, days: Sequence[str] = (),
                 user_id: int | None = None) -> list[ModelTotals]:
        """Totals per model for a month or for some days (the model that really answered or
        failed: fallbacks appear under their own name), the costliest first."""
        if month is not None:
            where, params = "month = ?", [month]
        else:
            where, params = f"day IN ({','.join('?' * len(days)) or 'NULL'})", list(days)
        if user_id is not None:
            where, params = f"user_id = ? AND {where}", [user_id, *params]
        rows = await self.db.fetchall(f"SELECT model, {_TOTALS_SQL} FROM usage WHERE {where} GROUP BY model"
                               " ORDER BY COALESCE(SUM(cost_usd), 0) DESC, SUM(total_tokens) DESC, model", params)
        return [ModelTotals(row[0], _period_totals(row[1:])) for row in rows]

    async def _per_day(self, where: str, params: Sequence[object], days: list[str]) -> list[DayTotals]:
        if not days:
            return []
        marks = ",".join("?" * len(days))
        rows = await self.db.fetchall(f"SELECT day, {_TOTALS_SQL} FROM usage WHERE {where} AND day IN ({marks})"
                               " GROUP BY day", [*params, *days])
        found = {row[0]: _period_totals(row[1:]) for row in rows}
        return [DayTotals(day, found.get(day, PeriodTotals())) for day in days]

    async def user_days(self, user_id: int, days: list[str]) -> list[DayTotals]:
        """One entry per requested day, in the order given; zeros where there was no usage."""
        return await self._per_day("user_id = ?", [user_id], days)

    async def daily_spend(self, days: list[str]) -> list[DayTotals]:
        """The whole bot's totals per requested day (zeros where there was no usage)."""
        months = sorted({day[:7] for day in days})
        return await self._per_day(f"month IN ({','.join('?' * len(months))})", months, days)


# Warnings -----------------------------------------------------------------------------
class WarningLog:
    """The `warnings` table: remembers which once-per-period warnings were already given."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def once(self, key: str, *, now: str) -> bool:
        """True the first time `key` is seen (the caller should warn), False afterwards."""
        return await self.db.execute("INSERT INTO warnings(key, at) VALUES (?, ?) ON CONFLICT DO NOTHING",
                                     [key, now]) == 1


# Prompt sizes ------------------------------------------------------------------------
async def record_prompt_metrics(db: Database, chats: Chats, *, trace_id: str, chat_id: int,
                          plan: ContextPlan, now: str) -> None:
    """What a turn's prompt cost (the context plan), for /status and `python -m bot trace`: the
    context stage records it, and the llm stage again when an overflow made the prompt smaller."""
    async with db.transaction():
        await db.execute(
            "INSERT INTO prompt_metrics(trace_id, chat_id, at, hot_state_tokens, history_tokens,"
            " history_kept, history_dropped, artifact_count, total_tokens, budget_tokens)"
            " VALUES (?,?,?,?,?,?,?,?,?,?) ON CONFLICT(trace_id) DO UPDATE SET chat_id = excluded.chat_id,"
            " at = excluded.at, hot_state_tokens = excluded.hot_state_tokens,"
            " history_tokens = excluded.history_tokens, history_kept = excluded.history_kept,"
            " history_dropped = excluded.history_dropped, artifact_count = excluded.artifact_count,"
            " total_tokens = excluded.total_tokens, budget_tokens = excluded.budget_tokens",
            [trace_id, chat_id, now, plan.hot_state_tokens, plan.history_tokens, plan.history_kept,
             plan.history_dropped, plan.artifact_count, plan.total_tokens, plan.budget_tokens])
        await chats.record_prompt(chat_id, tokens=plan.total_tokens, budget=plan.budget_tokens, trace_id=trace_id, now=now)
