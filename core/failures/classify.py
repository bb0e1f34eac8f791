"""Any exception a turn raised, as a classified GatewayError (the taxonomy's kind decides the rest)."""

from __future__ import annotations

from core.contracts import ContractViolation
from core.failures.escalation import DeliveryFailed
from core.failures.llm_errors import classify_llm_error
from core.failures.taxonomy import GatewayError, Kind


def to_gateway_error(error: BaseException) -> GatewayError:
    if isinstance(error, GatewayError):
        return error
    if isinstance(error, DeliveryFailed):  # a notice Telegram would not take: a delivery failure, not a bug
        kind = Kind.tg_blocked if error.chat_gone else Kind.tg_flood if error.retry_after_s is not None \
            else Kind.tg_network
        return GatewayError(kind, error.reason)
    if isinstance(error, ContractViolation) and error.producer != "llm":
        return GatewayError(Kind.contract_violation, str(error))
    return classify_llm_error(error)
