"""`python -m bot doctor`: check settings, storage, the LLM endpoint and the Bot API, and say
what to fix. Exit status 0 when everything needed to run is fine, 1 otherwise.
"""

from __future__ import annotations

import tempfile
from urllib.parse import urlparse

import httpx

from bot.doctor_database import Check, database_findings
from bot.doctor_voice import check_transcription
from bot.startup import check_get_me
from config.settings import Settings
from core.context.tokens import counter_for_model
from core.failures.llm_errors import classify_llm_error
from core.models import ModelCatalog, ModelsFileError
from core.openai_client import openai_client
from core.store import GATEWAY_DB, open_database

TIMEOUT_S = 10.0


def check_storage(settings: Settings) -> Check:
    data_dir = settings.data_dir
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=data_dir, prefix=".doctor-", delete=True) as handle:
            handle.write(b"ok")
        db = open_database(data_dir / GATEWAY_DB)
        tables = set(db.table_names())
        db.close()
    except Exception as error:  # noqa: BLE001 - any failure is the finding
        return Check("storage", False, f"{data_dir}: {type(error).__name__}: {error}",
                     "point DATA_DIR at a writable directory (a persistent volume on a PaaS)")
    return Check("storage", True, f"{data_dir.resolve()} writable, {len(tables)} tables, migrations applied")


async def check_llm(settings: Settings) -> Check:
    key = settings.llm_api_key.get_secret_value() if settings.llm_api_key else None
    return await check_endpoint("llm", base_url=settings.llm_base_url, api_key=key, model=settings.llm_model,
                                secrets=settings.secrets(), key_name="LLM_API_KEY (or OPENAI_API_KEY)",
                                url_name="LLM_BASE_URL")


async def check_models(settings: Settings) -> list[Check]:
    """config/models.toml reads, and every other endpoint it names answers for its first model."""
    try:
        catalog = ModelCatalog.from_settings(settings, path=settings.models_file)
    except ModelsFileError as error:
        return [Check("models", False, str(error), "fix config/models.toml (see config/models.example.toml)")]
    checks = [Check("models", True, f"choices {', '.join(catalog.choices)}; "
                    f"fallbacks {', '.join(catalog.fallbacks) or 'none'}")]
    main = catalog.endpoint(catalog.default)
    for endpoint in catalog.endpoints():
        if endpoint == main:
            continue
        model = next(m for m in catalog.all_models() if catalog.endpoint(m) == endpoint)
        checks.append(await check_endpoint(f"llm {model}", base_url=endpoint.base_url, api_key=endpoint.api_key,
                                           model=model, secrets=settings.secrets(),
                                           key_name="its api_key_env in config/models.toml",
                                           url_name="its base_url in config/models.toml"))
    return checks


async def check_endpoint(name: str, *, base_url: str, api_key: str | None, model: str, secrets: list[str],
                         key_name: str, url_name: str) -> Check:
    """One endpoint answers for `model`: its models list, or else a one-token completion."""
    host = urlparse(base_url).netloc
    client = openai_client(base_url=base_url, api_key=api_key, timeout_s=TIMEOUT_S)
    try:
        try:
            models = await client.models.list()
            names = [m.id for m in models.data]
            found = model in names
            detail = f"{host}: {len(names)} models listed" + (
                f", {model} available" if found else f"; {model} not listed (may still work)")
            return Check(name, True, detail)
        except Exception:  # noqa: BLE001 - some providers have no models list: try a one-token completion
            await client.chat.completions.create(model=model, max_tokens=1,
                                                 messages=[{"role": "user", "content": "ping"}])
            return Check(name, True, f"{host}: one-token completion with {model} worked")
    except Exception as error:  # noqa: BLE001
        classified = classify_llm_error(error, secrets=secrets)
        fix = {"llm_auth": f"check {key_name}",
               "llm_connection": f"check {url_name} and the network",
               "llm_timeout": f"check {url_name} and the network",
               "llm_quota": "add credit or raise the quota at the provider",
               "llm_bad_request": "check LLM_MODEL" if name == "llm" else f"check the model name {model}"}.get(str(classified.kind), "see the error above")
        return Check(name, False, f"{host}: {classified.kind}: {classified.detail}", fix)
    finally:
        await client.close()


async def check_telegram(settings: Settings) -> list[Check]:
    if settings.telegram_bot_token is None:
        return [Check("telegram", False, "TELEGRAM_BOT_TOKEN is not set",
                      "create a bot with @BotFather and export TELEGRAM_BOT_TOKEN")]
    token = settings.telegram_bot_token.get_secret_value()
    # The very check `run` makes before it starts: the two say the same thing about getMe.
    me = await check_get_me(settings.telegram_api_base_url, token, timeout_s=TIMEOUT_S)
    if not me.ok:
        return [Check("telegram", False, me.problem, me.fix)]
    return [Check("telegram", True, f"getMe: @{me.me['username']} (id {me.me['id']})"),
            *await check_webhook(settings, token)]


async def check_webhook(settings: Settings, token: str) -> list[Check]:
    """Whether Telegram's webhook setting agrees with the mode WEBHOOK_URL selects."""
    try:
        async with httpx.AsyncClient(timeout=TIMEOUT_S) as client:
            response = await client.get(f"{settings.telegram_api_base_url}/bot{token}/getWebhookInfo")
            info = response.json().get("result") or {}
    except (httpx.HTTPError, ValueError, AttributeError) as error:
        return [Check("webhook", False, f"getWebhookInfo failed ({type(error).__name__})",
                      "check TELEGRAM_API_BASE_URL and the network", warning=True)]
    checks = []
    current = info.get("url") or ""
    if settings.webhook_url and current != settings.webhook_url:
        checks.append(Check("webhook", True, f"webhook is {current or 'not set'}; it is set to WEBHOOK_URL "
                            "when the bot starts", warning=True))
    elif not settings.webhook_url and current:
        checks.append(Check("webhook", True, "a webhook is set but WEBHOOK_URL is not: polling deletes it at "
                            "start", warning=True))
    if info.get("last_error_message"):
        checks.append(Check("webhook", False, f"Telegram's last webhook error: {info['last_error_message']}",
                            "check that WEBHOOK_URL reaches this app over https", warning=True))
    return checks


FIND_YOUR_ID = "send /start to the bot in a private chat: it answers with your user id"


def check_access(settings: Settings) -> list[Check]:
    """Who can chat and who is the operator, as the code decides it (core/services.py: the
    operator is the *sender* whose user id equals OPERATOR_CHAT_ID)."""
    operator = settings.operator_chat_id
    if operator is not None and operator < 0:
        return [Check("operator", False, f"OPERATOR_CHAT_ID is {operator}, a group or channel id: the operator is "
                      "recognised by their user id, so nobody can use the operator commands",
                      f"set OPERATOR_CHAT_ID to your own user id ({FIND_YOUR_ID})")]
    if operator is None and not settings.allowed_user_ids:
        return [Check("access", True, "neither OPERATOR_CHAT_ID nor ALLOWED_USER_IDS is set: nobody can chat "
                      "with the bot, and alerts are only logged",
                      f"set OPERATOR_CHAT_ID to your own user id ({FIND_YOUR_ID}), and ALLOWED_USER_IDS "
                      "for anyone else", warning=True)]
    checks = []
    if operator is None:
        checks.append(Check("operator", True, "OPERATOR_CHAT_ID is not set: alerts are only logged and nobody can use "
                            "the operator commands", f"set OPERATOR_CHAT_ID to your own user id ({FIND_YOUR_ID})",
                            warning=True))
    if settings.access_mode == "pairing":
        checks.append(Check("access", True, "ACCESS_POLICY pairing: strangers get a pairing code, approved with the "
                            "buttons in your chat or /allow CODE"))
    elif not settings.allowed_user_ids:
        checks.append(Check("access", True, "ALLOWED_USER_IDS is empty: only the operator may chat (and whoever "
                            "they /allow)", warning=True))
    return checks


async def run_doctor(settings: Settings) -> int:
    checks = [Check("settings", True, f"model {settings.llm_model}, mode {settings.mode}, "
                    f"operator {settings.operator_chat_id or 'not set'}")]
    checks.extend(check_access(settings))
    checks.append(check_storage(settings))
    checks.extend(await database_findings(settings))
    counter = counter_for_model(settings.llm_model)
    checks.append(Check("tokens", True, f"encoding {counter.describe()}"))
    checks.append(await check_llm(settings))
    checks.extend(await check_models(settings))
    checks.append(Check("transcription", *await check_transcription(settings)))
    checks.extend(await check_telegram(settings))
    secrets = settings.secrets()
    failed = False
    for check in checks:
        mark = "ok  " if check.ok and not check.warning else ("warn" if check.warning else "FAIL")
        failed |= not check.ok and not check.warning
        line = f"[{mark}] {check.name}: {check.detail}" + (f"\n       fix: {check.fix}" if check.fix and
                                                            (not check.ok or check.warning) else "")
        for secret in secrets:
            line = line.replace(secret, "[REDACTED]")
        print(line)
    print("doctor: " + ("problems found" if failed else "all good"))
    return 1 if failed else 0
