"""The base of every contract: strict pydantic models whose errors are named ContractViolations."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

TraceId = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{32}$")]
NonNegInt = Annotated[int, Field(ge=0)]
NonNegFloat = Annotated[float, Field(ge=0, allow_inf_nan=False)]
# Telegram ids fit in 52 bits; the bound is what SQLite can store, so a bigger number fails here,
# named, instead of as an OverflowError deep inside storage.
Int64 = Annotated[int, Field(ge=-(2**63), le=2**63 - 1)]
ChatType = Literal["private", "group", "supergroup", "channel", "console"]


class ContractViolation(Exception):
    """A message broke a named invariant; carries what, where and who made it."""

    kind = "contract_violation"

    def __init__(self, invariant: str, *, field: str, producer: str, detail: str = "") -> None:
        self.invariant, self.field, self.producer, self.detail = invariant, field, producer, detail
        super().__init__(f"contract violation [{invariant}] field={field} producer={producer}: {detail}")


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def named_violation(error: ValidationError, *, producer: str) -> ContractViolation:
    """Name pydantic's first error after the invariant it breaks (never echoing the input). Also
    what a ValidationError escaping a stage becomes (core/failures/llm_errors.py): a direct
    `Model(...)` of a contract raises pydantic's own error, and it is still a named violation."""
    first = error.errors(include_url=False, include_input=False)[0]
    loc, kind = first["loc"], first["type"]
    ctx = first.get("ctx") or {}
    if loc and loc[0] == "producer":
        invariant = "role_exclusivity"
    elif kind == "extra_forbidden":
        invariant = "no_unknown_fields"
    elif kind == "string_unicode":  # lone surrogates: JSON can carry them, UTF-8 storage cannot
        invariant = "text_is_unicode"
    elif (kind in ("greater_than_equal", "greater_than") and 0 in (ctx.get("ge"), ctx.get("gt"))) \
            or kind == "finite_number":
        invariant = "counts_sane"
    else:
        invariant = f"{_snake(error.title)}_valid"
    field = ".".join(str(part) for part in loc) or error.title
    return ContractViolation(invariant, field=field, producer=producer, detail=first["msg"])


class Contract(BaseModel):
    """Base of every boundary message: strict, closed, immutable; violations are named.

    Made from data through a public path that names its errors: `build(Model, invariant, producer,
    **data)` where data crosses a boundary, `Model.model_validate(data)` where it is consumed.
    There is no custom `__init__` on purpose: one would put pydantic's validation of every nested
    model back into Python (about twice as slow) and name a nested error after the inner model
    instead of its path. `Model(...)` of known-good values is fine; if it fails anyway, pydantic's
    ValidationError is classified as a contract violation all the same (core/failures/llm_errors.py).
    """

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)
    # Who makes this kind of message when it has no `producer` field of its own.
    made_by: ClassVar[str] = "pipeline"

    @classmethod
    def model_validate(cls, obj: Any, *args: Any, **kwargs: Any) -> Any:
        """Consumer-side re-validation: pydantic's errors become named ContractViolations."""
        try:
            return super().model_validate(obj, *args, **kwargs)
        except ValidationError as error:
            raise named_violation(error, producer=cls.producer_of(obj)) from None

    @classmethod
    def model_validate_json(cls, json_data: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().model_validate_json(json_data, *args, **kwargs)
        except ValidationError as error:
            raise named_violation(error, producer=cls.producer_of({})) from None

    def __setattr__(self, name: str, value: Any) -> None:
        raise ContractViolation("immutable", field=name, producer=self.producer_of(self.__dict__),
                                detail=f"{type(self).__name__} is frozen: make a new one instead")

    def __delattr__(self, name: str) -> None:
        self.__setattr__(name, None)

    @classmethod
    def producer_of(cls, data: Any) -> str:
        """The producer a message claims (its `producer` field), else who makes this kind."""
        claimed = data.get("producer") if isinstance(data, Mapping) else None
        if isinstance(claimed, str):
            return claimed[:40]
        field = cls.model_fields.get("producer")
        return field.default if field is not None and isinstance(field.default, str) else cls.made_by


M = TypeVar("M", bound=Contract)


def build(model: type[M], invariant: str, made_by: str, /, **data: Any) -> M:
    """Construct a contract at its producer; a schema error is reported under `invariant`
    (the named invariants, such as role_exclusivity or counts_sane, keep their own names)."""
    try:
        return model.model_validate(data)
    except ContractViolation as violation:
        name = invariant if violation.invariant == f"{_snake(model.__name__)}_valid" else violation.invariant
        raise ContractViolation(name, field=violation.field, producer=made_by, detail=violation.detail) from None
