"""``ccvault eval sgd``: a slice of the Schema-Guided Dialogue dataset replayed with the oracle
extractor scores perfectly on every provider and stack; the CLI prints the promised JSON and
refuses bad data with one clear line."""

from __future__ import annotations

import asyncio
import json
import shutil
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from redis.asyncio import Redis

import ccvault
from ccvault import errors
from ccvault.cache import CachedProfileStore
from ccvault.cli import cli
from ccvault.crypto import EncryptedProfileStore, generate_key_entry
from ccvault.evaluation.sgd import (
    DONTCARE,
    DatasetError,
    OracleExtractor,
    SgdScores,
    field_name_for,
    load_dataset,
    run_sgd_eval,
)
from ccvault.extraction import ExtractionRequest
from ccvault.models import FIELD_NAME_PATTERN, ConversationTurn
from ccvault_postgres.testing import admin_dsn, create_database, drop_database, dsn_with_database

SLICE = Path(__file__).parent / "data" / "sgd_slice"
REDIS_URL = "redis://127.0.0.1:6379/0"
JSON_KEYS = {
    "dialogues",
    "turns",
    "jga",
    "slot_precision",
    "slot_recall",
    "missing_accuracy",
    "supersede_errors",
    "turns_per_s",
}


# ---------------------------------------------------------------------------------------
# the oracle on every provider and stack
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pg_dsn() -> Iterator[str]:
    server = admin_dsn()
    name = asyncio.run(create_database(server))
    try:
        yield dsn_with_database(server, name)
    finally:
        asyncio.run(drop_database(server, name))


async def _drop_prefix(prefix: str) -> None:
    client = Redis.from_url(REDIS_URL)
    try:
        keys = [key async for key in client.scan_iter(match=f"{prefix}*", count=1000)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


STACKS = ["inmemory", "sqlite", "sqlite+encryption", "postgres", "postgres+cache+encryption"]


@pytest.fixture(params=STACKS)
def stack_settings(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[ccvault.VaultSettings]:
    name: str = request.param
    monkeypatch.setenv("PROFILE_PII_ENCRYPTION_KEY", generate_key_entry("k1"))
    encrypt = name.endswith("encryption")
    options: dict[str, Any] = {"auto_encrypt_pii": encrypt, "cache_enabled": False}
    prefix = f"ccvault-test:{uuid.uuid4().hex}:"
    if name == "inmemory":
        options["store_provider"] = "inmemory"
    elif name.startswith("sqlite"):
        options["store_provider"] = "sqlite"
        options["providers"] = {"sqlite": {"path": str(tmp_path / "vault.db")}}
    else:
        dsn = request.getfixturevalue("pg_dsn")
        options["store_provider"] = "postgres"
        options["providers"] = {"postgres": {"dsn": dsn, "schema": f"sgd_{uuid.uuid4().hex[:12]}"}}
        if "cache" in name:
            options["cache_enabled"] = True
            options["redis"] = {"url": REDIS_URL, "key_prefix": prefix}
    try:
        settings = ccvault.load_settings(None, **options)
        asyncio.run(ccvault.migrate_schema(settings))  # the explicit step
        yield settings
    finally:
        asyncio.run(_drop_prefix(prefix))


def _assert_perfect(scores: SgdScores) -> None:
    assert scores.dialogues == 3
    assert scores.turns == 16
    assert scores.jga == 1.0, scores.error_examples
    assert scores.missing_accuracy == 1.0, scores.error_examples
    assert scores.missing_checked > 0
    assert scores.supersede_errors == 0, scores.error_examples
    # the slice changes values: supersede correctness is really exercised
    assert scores.supersedes >= 4
    assert scores.slots.precision == 1.0 and scores.slots.recall == 1.0
    assert scores.error_examples == []


async def test_oracle_scores_perfectly_on_every_stack(
    stack_settings: ccvault.VaultSettings,
) -> None:
    dataset = load_dataset(SLICE)
    async with ccvault.open_store(stack_settings) as store:
        if stack_settings.profile.auto_encrypt_pii:
            assert isinstance(store, EncryptedProfileStore)
        if stack_settings.profile.cache_enabled:
            assert isinstance(store, EncryptedProfileStore)
            assert isinstance(store.inner, CachedProfileStore)
        scores = await run_sgd_eval(store, dataset, settings=stack_settings)
        _assert_perfect(scores)
        # the run leaves nothing behind in the store it was given
        assert await store.list_tenant_ids() == []


# ---------------------------------------------------------------------------------------
# the mapping
# ---------------------------------------------------------------------------------------


def test_schema_maps_to_namespaced_definitions_and_requirements() -> None:
    dataset = load_dataset(SLICE)
    tenant, agent = uuid.uuid4(), uuid.uuid4()
    definitions = {d.name: d for d in dataset.definitions(tenant, agent)}
    # two services' "date" never collide
    assert "restaurants_2__date" in definitions and "weather_1__date" in definitions
    seats = definitions["restaurants_2__number_of_seats"]
    assert seats.allowed_values is not None
    assert seats.allowed_values[:4] == ["1", "2", "3", "4"] and seats.allowed_values[-1] == DONTCARE
    assert definitions["restaurants_2__location"].allowed_values is None
    assert definitions["restaurants_2__phone_number"].is_pii
    requirements = dataset.requirements(tenant, agent)
    reserve = dataset.services["Restaurants_2"].intents["ReserveRestaurant"]
    mine = [r for r in requirements if r.scenario_id == reserve.scenario_id]
    hard = {r.field_name for r in mine if r.required_level.value == "hard"}
    soft = {r.field_name for r in mine if r.required_level.value == "soft"}
    assert hard == {
        "restaurants_2__restaurant_name",
        "restaurants_2__location",
        "restaurants_2__time",
    }
    assert soft == {"restaurants_2__number_of_seats", "restaurants_2__date"}


def test_field_names_stay_valid_distinct_and_short() -> None:
    import re

    long_one = field_name_for("A_Very_Long_Service_Name_1", "an_even_longer_slot_name_here_x")
    other = field_name_for("A_Very_Long_Service_Name_1", "an_even_longer_slot_name_here_y")
    odd = field_name_for("Svc-2", "slot name")
    for name in (long_one, other, odd):
        assert re.match(FIELD_NAME_PATTERN, name) and len(name) <= 50
    assert long_one != other
    assert field_name_for("Restaurants_2", "city") == "restaurants_2__city"


async def test_oracle_keeps_its_surface_form_while_it_stays_correct() -> None:
    dataset = load_dataset(SLICE)
    slots = {s.field_name: s for svc in dataset.services.values() for s in svc.slots.values()}
    oracle = OracleExtractor(slots)
    request = ExtractionRequest(field_name="restaurants_2__time")
    turns = [ConversationTurn(content="x")]
    dialogue = dataset.dialogues[0]
    frame = (
        dialogue.turns[0]
        .frames[0]
        .model_copy(
            update={
                "state": dialogue.turns[0]
                .frames[0]
                .state.model_copy(  # type: ignore[union-attr]
                    update={"slot_values": {"time": ["half past 11"]}}
                )
            }
        )
    )
    oracle.set_turn([frame])
    first = await oracle.extract(request, turns)
    assert first is not None and first.value == "half past 11" and first.confidence == 1.0
    grown = frame.model_copy(
        update={
            "state": frame.state.model_copy(  # type: ignore[union-attr]
                update={"slot_values": {"time": ["11:30", "half past 11"]}}
            )
        }
    )
    oracle.set_turn([grown])
    again = await oracle.extract(request, turns)
    assert again is not None and again.value == "half past 11"
    assert await oracle.extract(ExtractionRequest(field_name="unknown"), turns) is None


def test_limit_keeps_the_first_dialogues() -> None:
    assert len(load_dataset(SLICE, limit=2).dialogues) == 2
    with pytest.raises(DatasetError):
        load_dataset(SLICE, limit=0)


# ---------------------------------------------------------------------------------------
# bad data: one clear error
# ---------------------------------------------------------------------------------------


def _copy_slice(tmp_path: Path) -> Path:
    target = tmp_path / "sgd"
    shutil.copytree(SLICE, target)
    return target


def _mutate(path: Path, change: Any) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def _bad_turn(data: Any) -> None:
    del data[0]["turns"][1]["speaker"]


def _unknown_service(data: Any) -> None:
    data[0]["turns"][0]["frames"][0]["service"] = "Nope_1"


def _unknown_slot(data: Any) -> None:
    data[0]["turns"][0]["frames"][0]["state"]["slot_values"]["nope"] = ["x"]


@pytest.mark.parametrize(
    ("break_it", "expected"),
    [
        (lambda d: (d / "schema.json").unlink(), "schema.json not found"),
        (lambda d: (d / "schema.json").write_text("{not json"), "schema.json"),
        (lambda d: (d / "schema.json").write_text('{"a": 1}'), "schema.json"),
        (lambda d: (d / "dialogues_001.json").unlink(), "no dialogues_*.json"),
        (lambda d: (d / "dialogues_001.json").write_text("[]"), "hold no dialogue"),
        (lambda d: _mutate(d / "dialogues_001.json", _bad_turn), "turns[1].speaker"),
        (lambda d: _mutate(d / "dialogues_001.json", _unknown_service), "'Nope_1'"),
        (lambda d: _mutate(d / "dialogues_001.json", _unknown_slot), "unknown slot 'nope'"),
    ],
)
def test_bad_data_is_one_clear_line(tmp_path: Path, break_it: Any, expected: str) -> None:
    folder = _copy_slice(tmp_path)
    break_it(folder)
    with pytest.raises(DatasetError) as caught:
        load_dataset(folder)
    assert isinstance(caught.value, errors.ValidationError)
    assert expected in str(caught.value)
    result = CliRunner().invoke(cli, ["eval", "sgd", "--data", str(folder)])
    assert result.exit_code not in (0, None)
    assert "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ccvault: error: ")


def test_missing_folder_is_a_clear_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["eval", "sgd", "--data", str(tmp_path / "none")])
    assert result.exit_code not in (0, None)
    assert (
        result.output.strip() == f"ccvault: error: SGD data folder not found: {tmp_path / 'none'}"
    )


# ---------------------------------------------------------------------------------------
# the command
# ---------------------------------------------------------------------------------------


def test_json_output_has_the_promised_keys() -> None:
    result = CliRunner().invoke(cli, ["eval", "sgd", "--data", str(SLICE), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert JSON_KEYS <= set(report)
    for key in ("jga", "slot_precision", "slot_recall", "missing_accuracy"):
        assert 0.0 <= report[key] <= 1.0
    assert report["jga"] == 1.0 and report["supersede_errors"] == 0
    assert report["dialogues"] == 3 and report["turns"] == 16
    assert report["provider"] == "inmemory" and report["extractor"] == "oracle"


def test_offline_extractor_and_limit_through_the_command() -> None:
    result = CliRunner().invoke(
        cli,
        ["eval", "sgd", "--data", str(SLICE), "--extractor", "offline", "--limit", "1", "--json"],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["extractor"] == "offline" and report["dialogues"] == 1
    assert 0.0 <= report["jga"] <= 1.0


def test_the_environment_never_picks_the_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "prod.toml"
    config.write_text(
        '[profile]\nstore_provider = "sqlite"\n[providers.sqlite]\n'
        f'path = "{tmp_path / "prod.db"}"\n'
    )
    monkeypatch.setenv("CCVAULT_CONFIG", str(config))
    result = CliRunner().invoke(cli, ["eval", "sgd", "--data", str(SLICE), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["provider"] == "inmemory"
    assert not (tmp_path / "prod.db").exists()


def test_table_output_and_config_before_the_subcommand(tmp_path: Path) -> None:
    config = tmp_path / "eval.toml"
    config.write_text(
        "[profile]\n"
        'store_provider = "sqlite"\n'
        "cache_enabled = false\n"
        "auto_encrypt_pii = false\n"
        "[providers.sqlite]\n"
        f'path = "{tmp_path / "eval.db"}"\n'
    )
    assert CliRunner().invoke(cli, ["--config", str(config), "migrate"]).exit_code == 0
    result = CliRunner().invoke(cli, ["--config", str(config), "eval", "sgd", "--data", str(SLICE)])
    assert result.exit_code == 0, result.output
    assert "joint goal accuracy" in result.output and "100.0%" in result.output
    assert "sqlite" in result.output
    assert (tmp_path / "eval.db").exists()


def test_openai_without_its_settings_is_a_configuration_error() -> None:
    result = CliRunner().invoke(
        cli, ["eval", "sgd", "--data", str(SLICE), "--extractor", "openai", "--json"]
    )
    assert result.exit_code not in (0, 1, None)  # a configuration error
    assert "[extraction.openai]" in result.output


# ---------------------------------------------------------------------------------------
# the openai extractor, against a real HTTP server on loopback
# ---------------------------------------------------------------------------------------


class _LLM:
    """A loopback OpenAI-compatible endpoint: answers each field with a fixed value."""

    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.requests: list[dict[str, Any]] = []
        self.auth: list[str] = []
        llm = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                llm.requests.append(body)
                llm.auth.append(self.headers.get("Authorization", ""))
                asked = body["messages"][1]["content"]
                found = '"field": "restaurants_2__location"' in asked
                content = (
                    json.dumps({"found": True, "value": "San Jose", "confidence": 0.9, "quote": ""})
                    if found
                    else '{"found": false}'
                )
                payload = json.dumps(
                    {"choices": [{"message": {"role": "assistant", "content": content}}]}
                ).encode()
                self.send_response(llm.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> _LLM:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def _openai_config(tmp_path: Path, url: str) -> Path:
    config = tmp_path / "eval.toml"
    config.write_text(
        "[profile]\n"
        'store_provider = "inmemory"\n'
        "cache_enabled = false\n"
        "auto_encrypt_pii = false\n"
        "[extraction.openai]\n"
        f'base_url = "{url}"\n'
        'model = "tiny"\n'
        'api_key = "${SGD_TEST_KEY}"\n'
    )
    return config


def test_openai_extractor_through_the_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SGD_TEST_KEY", "sk-secret-test")
    with _LLM() as llm:
        config = _openai_config(tmp_path, llm.url)
        result = CliRunner().invoke(
            cli,
            [
                *("eval", "sgd", "--data", str(SLICE), "--extractor", "openai", "--limit", "1"),
                *("--config", str(config), "--json"),
            ],
        )
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["extractor"] == "openai" and report["dialogues"] == 1
    assert report["supersede_errors"] == 0
    # the probe, then one request per collected slot of the turn's service per user turn
    assert len(llm.requests) > 1 and all(r["model"] == "tiny" for r in llm.requests)
    assert set(llm.auth) == {"Bearer sk-secret-test"}
    assert "sk-secret-test" not in result.output


def test_an_openai_endpoint_that_fails_is_one_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SGD_TEST_KEY", "sk-secret-test")
    with _LLM(status=500) as llm:
        config = _openai_config(tmp_path, llm.url)
        result = CliRunner().invoke(
            cli,
            [
                *("--config", str(config), "eval", "sgd", "--data", str(SLICE)),
                *("--extractor", "openai", "--json"),
            ],
        )
    assert result.exit_code not in (0, 1, None)  # a configuration error
    assert len(llm.requests) == 1  # the probe only
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "the openai extractor cannot run" in lines[0]
    assert "HTTP 500" in lines[0] and "sk-secret" not in lines[0]


async def test_the_extractor_names_itself_and_offline_scores_are_fractions() -> None:
    from ccvault.evaluation.sgd import SGD_TODAY
    from ccvault.extraction import OfflineExtractor

    settings = ccvault.load_settings(
        None, store_provider="inmemory", cache_enabled=False, auto_encrypt_pii=False
    )
    async with ccvault.open_store(settings) as store:
        oracle = await run_sgd_eval(store, load_dataset(SLICE, limit=1), settings=settings)
        offline = await run_sgd_eval(
            store, load_dataset(SLICE), extractor=OfflineExtractor(today=SGD_TODAY)
        )
    assert oracle.extractor == "oracle" and offline.extractor == "offline"
    assert offline.turns == 16 and offline.supersede_errors == 0
    for value in (offline.jga, offline.slots.precision, offline.slots.recall):
        assert 0.0 <= value <= 1.0
