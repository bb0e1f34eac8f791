"""The models this gateway may call: which ones users may choose, which ones stand in, and where
each one lives.

`LLM_MODEL` is the default, `LLM_MODELS` adds choices for `/model`, `LLM_FALLBACK_MODELS` are
tried in order when the chat's model is down. An optional `config/models.toml` describes models
by name (read with the standard library's `tomllib`):

    [models."llama3.1"]
    base_url = "http://localhost:11434/v1"   # its own endpoint (default: LLM_BASE_URL)
    api_key_env = "OLLAMA_API_KEY"            # the NAME of the variable holding its key
    context_tokens = 131072                   # default: LLM_CONTEXT_TOKENS
    vision = false
    input_per_mtok = 0.0                      # prices: beside config/prices.json, and win over it
    output_per_mtok = 0.0

A model the file does not describe uses LLM_BASE_URL and LLM_API_KEY. The key's value is read
from the environment at start and never stored or shown; only the variable's name is in the file.
"""

from __future__ import annotations

import math
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from core.usage_prices import Price

if TYPE_CHECKING:
    from config.settings import Settings

_KNOWN_KEYS = frozenset({"base_url", "api_key_env", "context_tokens", "vision", "input_per_mtok",
                         "output_per_mtok"})


@dataclass(frozen=True)
class Endpoint:
    """Where a model is called: a base URL and its key (the key never printed: see __repr__)."""

    base_url: str
    api_key: str | None

    def __repr__(self) -> str:
        return f"Endpoint({self.base_url!r}, key={'set' if self.api_key else 'none'})"

    @property
    def host(self) -> str:
        return urlparse(self.base_url).netloc


@dataclass(frozen=True)
class ModelSpec:
    name: str
    endpoint: Endpoint
    context_tokens: int
    vision: bool
    price: Price | None  # from config/models.toml; None: look it up in config/prices.json


class ModelsFileError(ValueError):
    """config/models.toml is malformed: the message names the model and the field."""


class ModelCatalog:
    """The default model, the choices, the fallbacks, and each model's spec."""

    def __init__(self, *, default: str, choices: tuple[str, ...], fallbacks: tuple[str, ...],
                 specs: Mapping[str, ModelSpec], default_spec: ModelSpec) -> None:
        self.default = default
        self.choices = choices
        self.fallbacks = fallbacks
        self._specs = dict(specs)
        self._default_spec = default_spec

    @classmethod
    def from_settings(cls, settings: Settings, *, environ: Mapping[str, str] | None = None,
                      path: Path | None = None) -> ModelCatalog:
        environ = os.environ if environ is None else environ
        key = settings.llm_api_key.get_secret_value() if settings.llm_api_key else None
        default_spec = ModelSpec(settings.llm_model, Endpoint(settings.llm_base_url, key),
                                 settings.llm_context_tokens, True, None)
        described = read_models_file(path) if path is not None else _shipped_models_file()
        specs = {name: _spec(name, entry, default_spec, environ) for name, entry in described.items()}
        choices = _unique((settings.llm_model, *split_names(settings.llm_models)))
        fallbacks = tuple(name for name in _unique(split_names(settings.llm_fallback_models)))
        return cls(default=settings.llm_model, choices=choices, fallbacks=fallbacks, specs=specs,
                   default_spec=default_spec)

    def spec(self, name: str) -> ModelSpec:
        found = self._specs.get(name)
        if found is not None:
            return found
        base = self._default_spec
        return ModelSpec(name, base.endpoint, base.context_tokens, base.vision, None)

    def endpoint(self, name: str) -> Endpoint:
        return self.spec(name).endpoint

    def resolve(self, stored: str | None) -> str:
        """The chat's model: its stored choice while that is still offered, else the default."""
        return stored if stored in self.choices else self.default

    def order_for(self, model: str) -> tuple[str, ...]:
        """The chat's model first, then the fallbacks that are not it."""
        return (model, *(name for name in self.fallbacks if name != model))

    def all_models(self) -> tuple[str, ...]:
        return _unique((*self.choices, *self.fallbacks))

    def prices(self) -> dict[str, Price]:
        """Prices the models file gives (they win over config/prices.json for these names)."""
        return {name: spec.price for name, spec in self._specs.items() if spec.price is not None}

    def endpoints(self) -> list[Endpoint]:
        """Each distinct endpoint (base URL and key) among the models offered, default first."""
        return list(dict.fromkeys(self.endpoint(name) for name in (self.default, *self.all_models())))


def split_names(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


def _unique(names: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(names))


def _shipped_models_file() -> dict[str, dict[str, Any]]:
    shipped = resources.files("config").joinpath("models.toml")
    if not shipped.is_file():
        return {}
    return _parse(shipped.read_text(encoding="utf-8"), "config/models.toml")


def read_models_file(path: Path) -> dict[str, dict[str, Any]]:
    if not path.is_file():
        raise ModelsFileError(f"{path}: no such models file")
    return _parse(path.read_text(encoding="utf-8"), str(path))


def _parse(text: str, where: str) -> dict[str, dict[str, Any]]:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ModelsFileError(f"{where}: not valid TOML ({error})") from None
    models = data.get("models", {})
    if not isinstance(models, dict) or not all(isinstance(v, dict) for v in models.values()):
        raise ModelsFileError(f"{where}: expected [models.\"NAME\"] tables")
    for name, entry in models.items():
        unknown = set(entry) - _KNOWN_KEYS
        if unknown:
            raise ModelsFileError(f"{where}: model {name!r} has unknown field(s) {', '.join(sorted(unknown))}")
    return models


def _spec(name: str, entry: dict[str, Any], base: ModelSpec, environ: Mapping[str, str]) -> ModelSpec:
    base_url = str(entry.get("base_url", base.endpoint.base_url)).rstrip("/")
    parsed = urlparse(base_url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ModelsFileError(f"model {name!r}: base_url {base_url!r} is not an http(s) URL")
    key = base.endpoint.api_key
    if "api_key_env" in entry:
        variable = str(entry["api_key_env"])
        if not variable or variable not in environ:
            raise ModelsFileError(f"model {name!r}: api_key_env names {variable!r}, which is not set")
        key = environ[variable]
    elif "base_url" in entry and base_url != base.endpoint.base_url:
        key = None  # another provider never receives LLM_API_KEY unless told to
    context = entry.get("context_tokens", base.context_tokens)
    if not isinstance(context, int) or context < 1024:
        raise ModelsFileError(f"model {name!r}: context_tokens must be an integer of at least 1024")
    return ModelSpec(name, Endpoint(base_url, key), context, bool(entry.get("vision", base.vision)),
                     _price(name, entry))


def _price(name: str, entry: dict[str, Any]) -> Price | None:
    if "input_per_mtok" not in entry and "output_per_mtok" not in entry:
        return None
    try:
        price = Price(float(entry["input_per_mtok"]), float(entry["output_per_mtok"]))
    except (KeyError, TypeError, ValueError):
        raise ModelsFileError(f"model {name!r}: give both input_per_mtok and output_per_mtok, as numbers") from None
    if min(price.input_per_mtok, price.output_per_mtok) < 0 or not all(
            map(math.isfinite, (price.input_per_mtok, price.output_per_mtok))):
        raise ModelsFileError(f"model {name!r}: prices must be finite and non-negative")
    return price
