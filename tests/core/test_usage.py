"""Usage accounting: prices, UTC periods, the ledger, cap checks, warnings and budget texts."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.contracts import TokenUsage, UsageRecord
from core.store import open_sqlite
from core.usage import (
    DayTotals,
    PeriodTotals,
    UsageLedger,
    UserTotals,
    WarningLog,
    days_back,
    next_day_start,
    next_month_start,
    utc_day,
    utc_month,
)
from core.usage_caps import CapDecision, check_caps, daily_warning_key, monthly_warning_key
from core.usage_prices import Price, PriceTable, cost_usd
from core.usage_text import (
    format_cap_warning,
    format_cost,
    format_duration,
    format_operator_budget,
    format_refusal,
    format_usage_table,
    format_usd,
    format_user_budget,
)

TRACE = "ab" * 16
MINI = Price(input_per_mtok=0.15, output_per_mtok=0.60)


def at(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)  # type: ignore[misc]


# Prices -------------------------------------------------------------------------------
def test_shipped_table_lists_the_common_models_and_says_where_prices_come_from() -> None:
    table = PriceTable.load()
    for model in ["gpt-4o", "gpt-4o-mini", "gpt-4.1-nano", "o3-mini", "o4-mini", "gpt-3.5-turbo", "gpt-5-nano",
                  "anthropic/claude-3.5-haiku", "anthropic/claude-opus-4", "meta-llama/llama-3.3-70b-instruct",
                  "mistralai/mixtral-8x7b-instruct", "deepseek/deepseek-chat", "google/gemini-flash-1.5"]:
        assert table.price_for(model) is not None, model
    data = json.loads((Path(__file__).parents[2] / "config" / "prices.json").read_text())
    assert data["_source"] and data["_as_of"]
    assert table.price_for("gpt-4o-mini") == MINI


@pytest.mark.parametrize("model", ["gpt-4o-mini", "openai/gpt-4o-mini", "gpt-4o-mini-2024-07-18",
                                   "openai/gpt-4o-mini-2024-07-18", "GPT-4o-Mini", "openrouter/openai/gpt-4o-mini"])
def test_prefixed_and_dated_variants_map_to_the_base_price(model: str) -> None:
    assert PriceTable.load().price_for(model) == MINI


def test_anthropic_native_names_reach_the_openrouter_entries() -> None:
    table = PriceTable.load()
    assert table.price_for("claude-sonnet-4-20250514") == table.price_for("anthropic/claude-sonnet-4")
    assert table.price_for("claude-3-5-sonnet-20241022") == table.price_for("anthropic/claude-3.5-sonnet")


@pytest.mark.parametrize("model", ["llama3", "gpt-4o-mini-realtime-preview", "my-finetune", "gpt-4", ""])
def test_unknown_models_have_no_price(model: str) -> None:
    assert PriceTable.load().price_for(model) is None


def test_load_reads_a_custom_file_and_rejects_malformed_prices(tmp_path: Path) -> None:
    good = tmp_path / "prices.json"
    good.write_text(json.dumps({"_as_of": "x", "models": {"local/x": {"input_per_mtok": 1, "output_per_mtok": 2}}}))
    assert PriceTable.load(good).price_for("x") == Price(1.0, 2.0)
    for bad in [{"m": {"input_per_mtok": 1}}, {"m": {"input_per_mtok": -1, "output_per_mtok": 1}}]:
        good.write_text(json.dumps({"models": bad}))
        with pytest.raises(ValueError, match="'m'"):
            PriceTable.load(good)


def test_cost_arithmetic() -> None:
    assert cost_usd(price=MINI, input_tokens=1_000_000, output_tokens=0) == pytest.approx(0.15, rel=1e-12)
    assert cost_usd(price=MINI, input_tokens=1000, output_tokens=500) == pytest.approx(0.00045, rel=1e-12)
    assert cost_usd(price=MINI, input_tokens=0, output_tokens=0) == 0
    assert cost_usd(price=None, input_tokens=1000, output_tokens=500) is None
    with pytest.raises(ValueError):
        cost_usd(price=MINI, input_tokens=-1, output_tokens=0)


prices = st.builds(Price, st.floats(0, 200), st.floats(0, 200))
tokens = st.integers(0, 10_000_000)


@given(price=prices, a_in=tokens, a_out=tokens, b_in=tokens, b_out=tokens)
def test_cost_is_non_negative_and_linear(price: Price, a_in: int, a_out: int, b_in: int, b_out: int) -> None:
    a = cost_usd(price=price, input_tokens=a_in, output_tokens=a_out)
    b = cost_usd(price=price, input_tokens=b_in, output_tokens=b_out)
    both = cost_usd(price=price, input_tokens=a_in + b_in, output_tokens=a_out + b_out)
    assert a is not None and b is not None and both is not None
    assert a >= 0 and b >= 0
    assert both == pytest.approx(a + b, rel=1e-9, abs=1e-12)
    assert cost_usd(price=price, input_tokens=3 * a_in, output_tokens=3 * a_out) == pytest.approx(3 * a, rel=1e-9,
                                                                                                    abs=1e-12)


# Periods ------------------------------------------------------------------------------
def test_days_and_months_switch_at_utc_midnight() -> None:
    assert utc_day(at(2028, 2, 28, 23, 59, 59, 999999)) == "2028-02-28"
    assert utc_day(at(2028, 2, 29)) == "2028-02-29"
    assert utc_day(datetime(2028, 1, 1, 1, 0, tzinfo=timezone(timedelta(hours=2)))) == "2027-12-31"
    assert utc_month(at(2027, 12, 31, 23, 59)) == "2027-12" and utc_month(at(2028, 1, 1)) == "2028-01"
    with pytest.raises(ValueError, match="naive"):
        utc_day(datetime(2028, 1, 1))


@pytest.mark.parametrize(("now", "day_start", "month_start"), [
    (at(2027, 12, 31, 23, 59), at(2028, 1, 1), at(2028, 1, 1)),
    (at(2028, 2, 28, 12), at(2028, 2, 29), at(2028, 3, 1)),
    (at(2028, 2, 29, 23, 59, 59), at(2028, 3, 1), at(2028, 3, 1)),
    (at(2027, 2, 28, 0), at(2027, 3, 1), at(2027, 3, 1)),
    (at(2028, 1, 31, 6), at(2028, 2, 1), at(2028, 2, 1)),
    (at(2028, 3, 1), at(2028, 3, 2), at(2028, 4, 1)),
    (at(2028, 4, 30, 22), at(2028, 5, 1), at(2028, 5, 1)),
])
def test_next_period_starts(now: datetime, day_start: datetime, month_start: datetime) -> None:
    assert next_day_start(now) == day_start
    assert next_month_start(now) == month_start


def test_days_back_is_oldest_first_and_ends_today() -> None:
    assert days_back(at(2028, 3, 1, 12), 3) == ["2028-02-28", "2028-02-29", "2028-03-01"]
    assert days_back(at(2028, 1, 1), 2) == ["2027-12-31", "2028-01-01"]
    assert len(days_back(at(2028, 3, 1), 30)) == 30 and days_back(at(2028, 3, 1), 0) == []


# Ledger -------------------------------------------------------------------------------
def record(when: datetime, *, user_id: int, input_tokens: int, output_tokens: int, cost: float | None,
           wasted: bool = False, estimated: bool = False, model: str = "gpt-4o-mini") -> UsageRecord:
    usage = TokenUsage(input_tokens=input_tokens, output_tokens=output_tokens,
                       total_tokens=input_tokens + output_tokens, estimated=estimated)
    return UsageRecord(at=when, trace_id=TRACE, chat_id=user_id, user_id=user_id, model=model, usage=usage,
                       cost_usd=cost, wasted=wasted)


@pytest.fixture
async def ledger() -> UsageLedger:
    ledger = UsageLedger(open_sqlite(":memory:"))
    await ledger.record(record(at(2028, 2, 28, 23, 59), user_id=1, input_tokens=100, output_tokens=50, cost=0.001))
    await ledger.record(record(at(2028, 2, 29, 0, 0, 1), user_id=1, input_tokens=200, output_tokens=100, cost=None,
                         estimated=True, model="mystery-model"))
    await ledger.record(record(at(2028, 2, 29, 10), user_id=2, input_tokens=10, output_tokens=10, cost=0.5, wasted=True))
    await ledger.record(record(datetime(2028, 3, 1, 1, tzinfo=timezone(timedelta(hours=2))), user_id=1,
                         input_tokens=5, output_tokens=5, cost=0.0))  # 23:00 UTC on Feb 29
    await ledger.record(record(at(2028, 3, 1, 0, 30), user_id=1, input_tokens=1000, output_tokens=0, cost=0.002))
    return ledger


async def test_per_user_day_queries(ledger: UsageLedger) -> None:
    assert await ledger.user_day_tokens(1, "2028-02-28") == 150
    assert await ledger.user_day_tokens(1, "2028-02-29") == 310
    assert await ledger.user_day_tokens(3, "2028-02-29") == 0
    assert await ledger.user_day(1, "2028-02-28") == PeriodTotals(100, 50, 150, pytest.approx(0.001), 0, 1, 0)
    assert await ledger.user_day(1, "2028-02-29") == PeriodTotals(205, 105, 310, 0.0, 1, 2, 1)
    assert await ledger.user_day(1, "2028-01-01") == PeriodTotals()


async def test_month_and_day_totals(ledger: UsageLedger) -> None:
    assert await ledger.user_month(1, "2028-02") == PeriodTotals(305, 155, 460, pytest.approx(0.001), 1, 3, 1)
    assert await ledger.user_month(1, "2028-03") == PeriodTotals(1000, 0, 1000, pytest.approx(0.002), 0, 1, 0)
    assert await ledger.month_totals("2028-02") == PeriodTotals(315, 165, 480, pytest.approx(0.501), 1, 4, 1)
    assert await ledger.day_totals("2028-02-29") == PeriodTotals(215, 115, 330, pytest.approx(0.5), 1, 3, 1)
    assert await ledger.month_totals("2027-02") == PeriodTotals()
    assert await ledger.wasted("2028-02") == PeriodTotals(10, 10, 20, 0.5, 0, 1, 0)
    assert await ledger.wasted("2028-03") == PeriodTotals()
    assert await ledger.unknown_models("2028-02") == ["mystery-model"]


async def test_top_users_rank_by_cost(ledger: UsageLedger) -> None:
    top = await ledger.top_users("2028-02")
    assert [u.user_id for u in top] == [2, 1]
    assert top[1].totals.total_tokens == 460
    assert len(await ledger.top_users("2028-02", n=1)) == 1


async def test_day_series_fill_missing_days_with_zeros(ledger: UsageLedger) -> None:
    days = ["2028-02-27", "2028-02-28", "2028-02-29", "2028-03-01"]
    mine = await ledger.user_days(1, days)
    assert [d.day for d in mine] == days
    assert [d.totals.total_tokens for d in mine] == [0, 150, 310, 1000]
    assert mine[0] == DayTotals("2028-02-27", PeriodTotals())
    whole = await ledger.daily_spend(days)
    assert [d.totals.total_tokens for d in whole] == [0, 150, 330, 1000]
    assert [d.totals.cost_usd for d in whole] == pytest.approx([0, 0.001, 0.5, 0.002])
    assert await ledger.daily_spend([]) == [] and await ledger.user_days(1, []) == []


async def test_every_ledger_query_is_an_index_search(ledger: UsageLedger) -> None:
    statements: list[str] = []
    ledger.db.conn.set_trace_callback(statements.append)
    await ledger.user_day_tokens(1, "2028-02-29")
    await ledger.month_cost_usd("2028-02")
    await ledger.user_day(1, "2028-02-29")
    await ledger.user_month(1, "2028-02")
    await ledger.month_totals("2028-02")
    await ledger.day_totals("2028-02-29")
    await ledger.wasted("2028-02")
    await ledger.top_users("2028-02")
    await ledger.unknown_models("2028-02")
    await ledger.user_days(1, days_back(at(2028, 3, 1), 30))
    await ledger.daily_spend(days_back(at(2028, 3, 1), 30))
    ledger.db.conn.set_trace_callback(None)
    selects = [s for s in statements if s.lstrip().upper().startswith("SELECT")]
    assert len(selects) == 11
    for sql in selects:
        plan = [row[3] for row in ledger.db.conn.execute(f"EXPLAIN QUERY PLAN {sql}").fetchall()]
        table = "usage_totals" if "usage_totals" in sql else "usage"
        steps = [step for step in plan if f" {table} " in f" {step} "]
        # SEARCH = a lookup by index key; a SCAN (even "USING INDEX") would read every row.
        assert steps and all(step.startswith(f"SEARCH {table} USING") and "INDEX" in step for step in steps), \
            (sql, plan)


@pytest.mark.parametrize(("last_moment", "first_moment"), [
    (at(2028, 2, 28, 23, 59, 59, 999000), at(2028, 2, 29)),  # into a leap day
    (at(2028, 2, 29, 23, 59, 59, 999000), at(2028, 3, 1)),  # out of it: a day and a month end
    (at(2027, 2, 28, 23, 59, 59, 999000), at(2027, 3, 1)),  # no leap day
    (at(2027, 12, 31, 23, 59, 59, 999000), at(2028, 1, 1)),  # a year end
])
async def test_ledger_periods_split_exactly_at_utc_midnight(last_moment: datetime, first_moment: datetime) -> None:
    ledger = UsageLedger(open_sqlite(":memory:"))
    await ledger.record(record(last_moment, user_id=7, input_tokens=900, output_tokens=100, cost=0.25))
    await ledger.record(record(first_moment, user_id=7, input_tokens=30, output_tokens=20, cost=0.5))
    assert await ledger.user_day_tokens(7, utc_day(last_moment)) == 1000
    assert await ledger.user_day_tokens(7, utc_day(first_moment)) == 50
    new_month = first_moment.day == 1
    before, after = await ledger.month_totals(utc_month(last_moment)), await ledger.month_totals(utc_month(first_moment))
    assert (before.total_tokens, after.total_tokens) == ((1000, 50) if new_month else (1050, 1050))
    assert (await ledger.user_month(7, utc_month(first_moment))).cost_usd == pytest.approx(0.5 if new_month else 0.75)
    # A daily cap used up at the last moment of a day is free again at the first of the next.
    spent = dict(is_operator=False, estimated_tokens=1, estimated_cost_usd=0.0, user_daily_token_cap=1000,
                 month_cost_usd=0.0, monthly_cap_usd=0.0)
    assert not check_caps(user_tokens_today=await ledger.user_day_tokens(7, utc_day(last_moment)), **spent).allowed
    assert check_caps(user_tokens_today=await ledger.user_day_tokens(7, utc_day(first_moment)), **spent).allowed


@pytest.mark.parametrize(("now", "daily", "monthly"), [
    (at(2028, 2, 29, 23, 59, 30), "at 00:00 UTC (in 1 min)", "on 2028-03-01 at 00:00 UTC (in 1 min)"),
    (at(2028, 2, 1), "at 00:00 UTC (in 1 d)", "on 2028-03-01 at 00:00 UTC (in 29 d)"),  # leap February
    (at(2027, 2, 1), "at 00:00 UTC (in 1 d)", "on 2027-03-01 at 00:00 UTC (in 28 d)"),
    (at(2027, 12, 31, 12), "at 00:00 UTC (in 12 h)", "on 2028-01-01 at 00:00 UTC (in 12 h)"),
    (at(2028, 1, 31, 22, 30), "at 00:00 UTC (in 1 h 30 min)", "on 2028-02-01 at 00:00 UTC (in 1 h 30 min)"),
])
def test_refusals_name_the_next_period_start(now: datetime, daily: str, monthly: str) -> None:
    day = format_refusal(CapDecision(False, "user_daily_tokens", limit=1000, left=0), now=now)
    assert day == f"You have used your daily budget of 1,000 tokens. It resets {daily}."
    month = format_refusal(CapDecision(False, "monthly_usd", limit=5.0, left=0.0), now=now)
    assert month == f"This bot's monthly budget of $5.00 is used up. It resets {monthly}."


# Caps ---------------------------------------------------------------------------------
NOW = at(2028, 2, 29, 20, 48)  # 3 h 12 min before midnight and before the month ends


def caps(**overrides: object) -> CapDecision:
    values: dict[str, object] = dict(is_operator=False, estimated_tokens=1000, estimated_cost_usd=0.01,
                                     user_tokens_today=0, user_daily_token_cap=200_000, month_cost_usd=0.0,
                                     monthly_cap_usd=10.0)
    values.update(overrides)
    return check_caps(**values)  # type: ignore[arg-type]


def test_under_the_caps_is_allowed_without_warning() -> None:
    decision = caps()
    assert decision.allowed and decision.cap is None and decision.warn == ()
    assert format_refusal(decision, now=NOW) == ""


def test_exactly_at_the_caps_is_allowed_and_warns() -> None:
    decision = caps(user_tokens_today=190_000, estimated_tokens=10_000, month_cost_usd=0.3,
                    estimated_cost_usd=0.2, monthly_cap_usd=0.5)  # 0.3 + 0.2 > 0.5 in floats
    assert decision.allowed and set(decision.warn) == {"user_daily_tokens", "monthly_usd"}


def test_over_the_daily_cap_says_what_is_left_and_when_it_resets() -> None:
    decision = caps(user_tokens_today=187_655, estimated_tokens=20_000)
    assert not decision.allowed and decision.cap == "user_daily_tokens"
    assert format_refusal(decision, now=NOW) == ("Your daily budget of 200,000 tokens would be exceeded by this request"
                                " (12,345 left today). It resets at 00:00 UTC (in 3 h 12 min).")
    spent = caps(user_tokens_today=200_000, estimated_tokens=1)
    assert format_refusal(spent, now=NOW).startswith("You have used your daily budget of 200,000 tokens.")


def test_over_the_monthly_cap_is_refused_even_for_the_operator() -> None:
    decision = caps(is_operator=True, month_cost_usd=9.95, estimated_cost_usd=0.1)
    assert not decision.allowed and decision.cap == "monthly_usd"
    assert format_refusal(decision, now=NOW) == ("This bot's monthly budget of $10.00 would be exceeded by this request"
                                " ($0.0500 left this month). It resets on 2028-03-01 at 00:00 UTC (in 3 h 12 min).")
    assert "is used up" in format_refusal(caps(month_cost_usd=10.0), now=NOW)


def test_monthly_cap_is_checked_before_the_daily_one() -> None:
    assert caps(month_cost_usd=10.0, user_tokens_today=200_000).cap == "monthly_usd"


def test_operator_is_exempt_from_the_daily_cap() -> None:
    decision = caps(is_operator=True, user_tokens_today=500_000, estimated_tokens=50_000)
    assert decision.allowed and "user_daily_tokens" not in decision.warn


def test_unknown_price_fails_closed_only_when_a_monthly_cap_is_set() -> None:
    decision = caps(estimated_cost_usd=None)
    assert not decision.allowed and decision.cap == "monthly_usd"
    message = format_refusal(decision, now=NOW)
    assert "unknown" in message and "MONTHLY_BUDGET_USD=0" in message and "config/prices.json" in message
    assert caps(estimated_cost_usd=None, monthly_cap_usd=0.0).allowed


def test_zero_caps_mean_unlimited() -> None:
    decision = caps(user_daily_token_cap=0, monthly_cap_usd=0.0, user_tokens_today=10**9,
                    estimated_tokens=10**6, month_cost_usd=1e6, estimated_cost_usd=None)
    assert decision.allowed and decision.warn == ()


def test_warning_starts_at_eighty_percent() -> None:
    assert caps(user_tokens_today=158_999, estimated_tokens=1000).warn == ()
    assert caps(user_tokens_today=159_000, estimated_tokens=1000).warn == ("user_daily_tokens",)
    assert caps(month_cost_usd=7.98, estimated_cost_usd=0.01).warn == ()
    assert caps(month_cost_usd=7.99, estimated_cost_usd=0.01).warn == ("monthly_usd",)


def test_negative_inputs_are_rejected() -> None:
    with pytest.raises(ValueError):
        caps(estimated_tokens=-1)


@pytest.mark.parametrize(("seconds", "text"), [(1, "1 min"), (60, "1 min"), (61, "2 min"), (3600, "1 h"),
                                               (3 * 3600 + 12 * 60, "3 h 12 min"), (86400, "1 d"),
                                               (5 * 86400 + 3 * 3600, "5 d 3 h")])
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds=seconds) == text


def test_cap_warnings_read_well() -> None:
    daily = format_cap_warning(cap="user_daily_tokens", now=NOW, used=160_000, limit=200_000)
    assert daily.startswith("Heads-up: with this message you have used up to 80% of your daily budget of"
                            " 200,000 tokens (40,000 tokens left). It resets at 00:00 UTC (in 3 h 12 min).")
    monthly = format_cap_warning(cap="monthly_usd", now=NOW, used=8.5, limit=10.0)
    assert "85% of its monthly budget of $10.00 ($1.50 left)" in monthly and "2028-03-01" in monthly


# Warnings -----------------------------------------------------------------------------
async def test_warning_log_says_yes_once_per_key() -> None:
    log = WarningLog(open_sqlite(":memory:"))
    key = daily_warning_key(7, "2028-02-29")
    assert key == "daily:7:2028-02-29" and monthly_warning_key("2028-02") == "monthly:2028-02"
    assert await log.once(key, now="2028-02-29T20:48:00Z")
    assert not await log.once(key, now="2028-02-29T21:00:00Z")
    assert await log.once(daily_warning_key(7, "2028-03-01"), now="2028-03-01T00:00:00Z")


# Texts --------------------------------------------------------------------------------
def test_money_formatting() -> None:
    assert format_usd(None) == "unknown"
    assert format_usd(0.0123) == "$0.0123" and format_usd(0) == "$0.00"
    assert format_usd(1234.5) == "$1,234.50" and format_usd(0.00001) == "<$0.0001"
    assert format_cost(PeriodTotals(cost_usd=0.5, attempts=2)) == "$0.5000"
    assert format_cost(PeriodTotals(cost_usd=0.5, attempts=2, unknown_cost_attempts=1)) == "$0.5000 + unknown"
    assert format_cost(PeriodTotals(attempts=2, unknown_cost_attempts=2)) == "unknown"


def test_usage_table_has_one_aligned_line_per_day_and_a_total() -> None:
    days = [DayTotals("2028-02-28", PeriodTotals(total_tokens=1234, cost_usd=0.0123, attempts=1)),
            DayTotals("2028-02-29", PeriodTotals()),
            DayTotals("2028-03-01", PeriodTotals(total_tokens=10, cost_usd=1.5, attempts=2, unknown_cost_attempts=1))]
    lines = format_usage_table(days).splitlines()
    assert len(lines) == 1 + 3 + 1 + 1  # header, days, total, footnote for "+?"
    assert len({len(line) for line in lines[:5]}) == 1
    assert lines[1].split() == ["2028-02-28", "1,234", "$0.0123"]
    assert lines[3].split() == ["2028-03-01", "10", "$1.50+?"]
    assert lines[4].split() == ["total", "1,244", "$1.51+?"]


def test_budget_texts() -> None:
    month = PeriodTotals(1000, 500, 1500, 0.25, 1, 4, 0)
    user = format_user_budget(now=NOW, user_tokens_today=12_345, user_daily_token_cap=200_000, user_month=month)
    assert "12,345 of 200,000 tokens used (187,655 left)" in user and "in 3 h 12 min" in user
    assert "1,500 tokens, $0.2500 + unknown" in user
    assert "does not apply" in format_user_budget(now=NOW, user_tokens_today=5, user_daily_token_cap=100,
                                                  user_month=month, is_operator=True)
    report = format_operator_budget(
        now=NOW, month=month, today=PeriodTotals(), wasted=PeriodTotals(10, 0, 10, 0.01, 0, 1, 0),
        top=[UserTotals(42, month)], monthly_cap_usd=10.0, user_daily_token_cap=0,
        unknown_models=["mystery-model"], user_labels={42: "alice"})
    assert "$0.2500 + unknown of $10.00 (2%, $9.75 left)" in report
    assert "mystery-model" in report and "alice: 1,500 tok" in report and "unlimited" in report
    assert "Wasted on failed attempts: 10 tokens, $0.0100 (1 attempt)." in report


async def test_running_totals_match_the_rows(ledger: UsageLedger) -> None:
    """The per-turn reads (user's day tokens, bot's month cost) equal the sums over the rows."""
    import random

    rng = random.Random(7)
    for index in range(200):
        user = rng.choice([1, 2, 3])
        moment = at(2028, 2, rng.choice([27, 28, 29]), rng.randrange(24))
        prompt, completion = rng.randrange(500), rng.randrange(100)
        cost = None if index % 17 == 0 else (prompt + completion) / 1e6
        await ledger.record(UsageRecord(at=moment, trace_id=f"{index:032x}", chat_id=user, user_id=user,
                                  model="gpt-4o-mini", cost_usd=cost, wasted=index % 5 == 0,
                                  usage=TokenUsage(input_tokens=prompt, output_tokens=completion,
                                                   total_tokens=prompt + completion)))
    for user in (1, 2, 3):
        for day in ("2028-02-27", "2028-02-28", "2028-02-29"):
            assert await ledger.user_day_tokens(user, day) == (await ledger.user_day(user, day)).total_tokens
    assert await ledger.month_cost_usd("2028-02") == pytest.approx((await ledger.month_totals("2028-02")).cost_usd)
