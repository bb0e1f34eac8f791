"""budget: refuse before the call if the turn could cross a spend cap; warn once at 80%."""

from __future__ import annotations

from datetime import datetime

from opentelemetry import trace

from core.contracts import ContextPlan, Escalation
from core.failures.taxonomy import Kind
from core.turn import NoticeError, Turn
from core.usage import utc_day, utc_month
from core.usage_caps import CapDecision, CapName, check_caps, daily_warning_key, monthly_warning_key
from core.usage_prices import cost_usd
from core.usage_text import format_cap_warning, format_refusal


async def run(turn: Turn) -> None:
    """Refuse before the call if this turn, at its maximum (the prompt plus a full answer), could
    cross a cap; warn once per period when it takes a cap past 80%."""
    services, inbound, settings = turn.services, turn.inbound, turn.services.settings
    plan = turn.plan
    assert isinstance(plan, ContextPlan)
    now = services.clock.now()
    estimated_tokens = plan.total_tokens + settings.llm_max_output_tokens
    price = services.prices.price_for(turn.model or settings.llm_model)
    estimated_cost = cost_usd(price=price, input_tokens=plan.total_tokens, output_tokens=settings.llm_max_output_tokens)
    is_operator = services.is_operator_user(inbound.user_id)
    used_today = await services.ledger.user_day_tokens(inbound.user_id, utc_day(now))
    month_cost = await services.ledger.month_cost_usd(utc_month(now))
    decision = check_caps(is_operator=is_operator, estimated_tokens=estimated_tokens,
                          estimated_cost_usd=estimated_cost, user_tokens_today=used_today,
                          user_daily_token_cap=settings.user_daily_token_budget, month_cost_usd=month_cost,
                          monthly_cap_usd=settings.monthly_budget_usd)
    trace.get_current_span().set_attributes({
        "budget.estimated_tokens": estimated_tokens, "budget.user_tokens_today": used_today,
        "budget.month_cost_usd": month_cost, "budget.allowed": decision.allowed})
    if not decision.allowed:
        turn.outcome = "notice"
        raise NoticeError(Kind.budget_exhausted, format_refusal(decision, now=now), detail=f"cap {decision.cap}")
    for cap in decision.warn:
        await warn_once(turn, cap, decision, now=now)


async def warn_once(turn: Turn, cap: CapName, decision: CapDecision, *, now: datetime) -> None:
    """The 80% heads-up, once per period: the daily one to the user, the monthly one to the operator."""
    services, inbound, settings = turn.services, turn.inbound, turn.services.settings
    if cap == "user_daily_tokens":
        if await services.warnings.once(daily_warning_key(inbound.user_id, utc_day(now)), now=now.isoformat()):
            await turn.send("notice", format_cap_warning(cap=cap, now=now, used=decision.user_tokens_after,
                                                         limit=settings.user_daily_token_budget))
    elif cap == "monthly_usd" and await services.warnings.once(monthly_warning_key(utc_month(now)), now=now.isoformat()):
        await services.escalator.raise_alert(Escalation(
            producer="pipeline", key=f"monthly80:{utc_month(now)}", kind="budget_warning", severity="warning",
            summary=format_cap_warning(cap=cap, now=now, used=decision.month_cost_after_usd,
                                       limit=settings.monthly_budget_usd),
            action="raise MONTHLY_BUDGET_USD or expect refusals when it is reached (/budget shows the spend)",
            trace_id=inbound.trace_id), now=now)
