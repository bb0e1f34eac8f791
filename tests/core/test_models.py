"""core/models.py: the catalog from settings and config/models.toml, keys kept to their endpoint."""

from __future__ import annotations

from pathlib import Path

import pytest

from config.settings import Settings
from core.models import ModelCatalog, ModelsFileError
from core.usage_prices import Price, PriceTable

KEY = "sk-main-key-0000"


def settings(**values: object) -> Settings:
    return Settings(_env_file=None, llm_api_key=KEY, llm_base_url="https://api.example/v1", **values)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "models.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_without_a_file_every_model_uses_the_main_endpoint(tmp_path: Path) -> None:
    catalog = ModelCatalog.from_settings(settings(llm_models="gpt-4o, gpt-4o-mini", llm_fallback_models="o3"),
                                         path=write(tmp_path, ""))
    assert catalog.choices == ("gpt-4o-mini", "gpt-4o")
    assert catalog.order_for("gpt-4o") == ("gpt-4o", "o3") and catalog.order_for("o3") == ("o3",)
    assert {catalog.endpoint(m).base_url for m in catalog.all_models()} == {"https://api.example/v1"}
    assert len(catalog.endpoints()) == 1
    assert catalog.resolve("gpt-4o") == "gpt-4o" and catalog.resolve("retired") == "gpt-4o-mini"
    assert catalog.resolve(None) == "gpt-4o-mini"


def test_another_provider_gets_its_own_key_and_never_the_main_one(tmp_path: Path) -> None:
    path = write(tmp_path, '[models."local"]\nbase_url = "http://localhost:11434/v1/"\napi_key_env = "LOCAL_KEY"\n'
                           'context_tokens = 8192\ninput_per_mtok = 0\noutput_per_mtok = 0.5\n'
                           '[models."keyless"]\nbase_url = "http://other:8000/v1"\n')
    catalog = ModelCatalog.from_settings(settings(llm_models="local,keyless"), path=path,
                                         environ={"LOCAL_KEY": "sk-local"})
    local = catalog.spec("local")
    assert local.endpoint.base_url == "http://localhost:11434/v1" and local.endpoint.api_key == "sk-local"
    assert local.context_tokens == 8192
    assert catalog.endpoint("keyless").api_key is None  # LLM_API_KEY stays with LLM_BASE_URL
    assert catalog.endpoint("gpt-4o-mini").api_key == KEY
    assert len(catalog.endpoints()) == 3
    assert "sk-local" not in repr(catalog.endpoints())
    prices = PriceTable.load().overlaid(catalog.prices())
    assert prices.price_for("local") == Price(0.0, 0.5)
    assert prices.price_for("gpt-4o-mini") == PriceTable.load().price_for("gpt-4o-mini")


@pytest.mark.parametrize(("text", "named"), [
    ('[models."m"]\nbase_url = "ftp://x"\n', "base_url"),
    ('[models."m"]\napi_key_env = "NOT_SET_ANYWHERE"\n', "NOT_SET_ANYWHERE"),
    ('[models."m"]\ncontext_tokens = 10\n', "context_tokens"),
    ('[models."m"]\ninput_per_mtok = 1\n', "output_per_mtok"),
    ('[models."m"]\ncontex_tokens = 8192\n', "contex_tokens"),
    ('[models."m"\n', "not valid TOML"),
])
def test_a_malformed_file_is_named(tmp_path: Path, text: str, named: str) -> None:
    with pytest.raises(ModelsFileError, match=named):
        ModelCatalog.from_settings(settings(), path=write(tmp_path, text), environ={})
