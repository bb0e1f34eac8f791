"""Prices per model and what one LLM attempt costs.

Money is only ever computed from a listed price (config/prices.json): a model missing there has an
unknown cost (None), never a guessed one, and the monthly cap then fails closed (core/usage_caps.py).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

TOKENS_PER_MTOK = 1_000_000
_DATED_SUFFIX = re.compile(r"-(?:\d{4}-\d{2}-\d{2}|\d{8}|\d{4})$")  # -2024-07-18, -20241022, -0125


@dataclass(frozen=True)
class Price:
    input_per_mtok: float
    output_per_mtok: float


class PriceTable:
    """Model name -> Price. Lookup: exact, then without provider prefixes, then a dated
    variant mapped to its base; aliases and "anthropic/x" reachable as bare "x" at each step."""

    def __init__(self, prices: Mapping[str, Price], aliases: Mapping[str, str] | None = None) -> None:
        self._prices = {name.lower(): price for name, price in prices.items()}
        self._aliases = {alias.lower(): target.lower() for alias, target in (aliases or {}).items()}
        bare: dict[str, str | None] = {}
        for name in self._prices:
            if "/" in name:
                short = name.rsplit("/", 1)[1]
                bare[short] = None if short in bare else name  # ambiguous bare names map to nothing
        self._bare = {short: name for short, name in bare.items() if name and short not in self._prices}

    @classmethod
    def load(cls, path: Path | None = None) -> PriceTable:
        """Read a prices file (default: the shipped config/prices.json); malformed = ValueError."""
        if path is None:
            text = resources.files("config").joinpath("prices.json").read_text(encoding="utf-8")
        else:
            text = Path(path).read_text(encoding="utf-8")
        data = json.loads(text)
        prices: dict[str, Price] = {}
        for name, entry in data.get("models", {}).items():
            if name.startswith("_"):
                continue
            try:
                price = Price(float(entry["input_per_mtok"]), float(entry["output_per_mtok"]))
            except (KeyError, TypeError, ValueError) as error:
                raise ValueError(f"prices: model {name!r} needs numeric input_per_mtok and output_per_mtok") from error
            if price.input_per_mtok < 0 or price.output_per_mtok < 0 or not all(
                    map(math.isfinite, (price.input_per_mtok, price.output_per_mtok))):
                raise ValueError(f"prices: model {name!r} has a negative or non-finite price")
            prices[name] = price
        aliases = {k: v for k, v in data.get("aliases", {}).items() if not k.startswith("_")}
        known = {name.lower() for name in prices}
        for alias, target in aliases.items():
            if target.lower() not in known:
                raise ValueError(f"prices: alias {alias!r} points to unknown model {target!r}")
        return cls(prices, aliases)

    def overlaid(self, prices: Mapping[str, Price]) -> PriceTable:
        """This table with `prices` (config/models.toml's) added or taking precedence."""
        return PriceTable({**self._prices, **{name.lower(): p for name, p in prices.items()}}, self._aliases)

    def _lookup(self, name: str) -> Price | None:
        name = self._aliases.get(name, name)
        return self._prices.get(name) or self._prices.get(self._bare.get(name, ""))

    def price_for(self, model: str) -> Price | None:
        name = model.strip().lower()
        candidates = [name]
        while "/" in name:  # "openrouter/openai/gpt-4o" -> "openai/gpt-4o" -> "gpt-4o"
            name = name.split("/", 1)[1]
            candidates.append(name)
        for candidate in [*candidates, *(_DATED_SUFFIX.sub("", c) for c in candidates)]:
            if (price := self._lookup(candidate)) is not None:
                return price
        return None


def cost_usd(*, price: Price | None, input_tokens: int, output_tokens: int) -> float | None:
    """Dollars for one attempt, or None when the price is unknown."""
    if input_tokens < 0 or output_tokens < 0:
        raise ValueError("token counts must be non-negative")
    if price is None:
        return None
    return (input_tokens * price.input_per_mtok + output_tokens * price.output_per_mtok) / TOKENS_PER_MTOK
