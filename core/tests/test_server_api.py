"""The HTTP API end to end on a real ``ccvault serve`` process: every concept's routes, PII
masking, error bodies that never quote a value, access logs without personal data, body
limits, operations endpoints; on the embedded default and on PostgreSQL + Redis."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import uuid4

import httpx
import pytest

from ccvault.crypto import generate_key_entry
from ccvault.server.testing import ServerProcess, embedded_config, running_server, wait_until_ok

PHONE = "+4915112345678"
EMAIL = "ana.private@example.com"
REDIS_URL = "redis://127.0.0.1:6379/0"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    directory = tmp_path_factory.mktemp("api")
    env = {"PROFILE_PII_ENCRYPTION_KEY": generate_key_entry("k1")}
    with running_server(embedded_config(directory), directory, env=env) as running:
        yield running


def _client(server: ServerProcess, token: str) -> httpx.Client:
    return httpx.Client(
        base_url=server.base_url, headers={"Authorization": f"Bearer {token}"}, timeout=30
    )


def _ok(response: httpx.Response) -> Any:
    assert response.status_code == 200, (response.status_code, response.text)
    return response.json()


def test_operations_endpoints(server: ServerProcess) -> None:
    with httpx.Client(base_url=server.base_url, timeout=30) as http:
        assert http.get("/healthz").json() == {"status": "ok", "checks": {}}
        # /readyz gives the store 2 s: poll (bounded) past a slow first query on a busy host
        ready = wait_until_ok(server, "/readyz", timeout=10)
        assert ready.json()["checks"] == {"store": "ok"}
        assert http.get("/openapi.json").json()["info"]["title"] == "ccvault"
        http.get("/v1/profiles/" + str(uuid4()))  # one 401, counted
        metrics = http.get("/metrics")
        assert metrics.status_code == 200
        assert 'ccvault_http_requests_total{method="GET",route="/v1/profiles/{profile_id}"' in (
            metrics.text
        )


def test_a_conversation_through_every_concept(server: ServerProcess) -> None:
    tenant, agent, scenario = uuid4(), uuid4(), uuid4()
    with _client(server, server.mint(tenant)) as http:
        profile = _ok(
            http.post(
                "/v1/profiles/get-or-create", json={"channel": "whatsapp", "channel_user_id": PHONE}
            )
        )
        pid = profile["id"]
        assert profile["tenant_id"] == str(tenant)
        again = _ok(
            http.post("/v1/profiles/lookup", json={"channel": "whatsapp", "channel_user_id": PHONE})
        )
        assert again["id"] == pid
        by_customer = _ok(http.get(f"/v1/profiles/by-customer/{profile['customer_id']}"))
        assert by_customer["id"] == pid

        # definitions and requirements
        for name, pii in (("email", True), ("city", False)):
            definition = {
                "tenant_id": str(tenant),
                "agent_id": str(agent),
                "name": name,
                "value_type": "email" if name == "email" else "string",
                "is_pii": pii,
            }
            _ok(http.put("/v1/definitions", json=definition))
        listed = _ok(http.get(f"/v1/agents/{agent}/definitions"))
        assert [d["name"] for d in listed] == ["city", "email"]
        assert _ok(http.get(f"/v1/agents/{agent}/definitions/email"))["is_pii"] is True
        for order, name in enumerate(("email", "city")):
            requirement = {
                "tenant_id": str(tenant),
                "agent_id": str(agent),
                "scenario_id": str(scenario),
                "field_name": name,
                "collection_order": order,
            }
            _ok(http.put("/v1/requirements", json=requirement))
        assert len(_ok(http.get(f"/v1/scenarios/{scenario}/requirements"))) == 2
        missing = _ok(http.post(f"/v1/profiles/{pid}/missing", json={"scenario_id": str(scenario)}))
        assert [m["field_name"] for m in missing] == ["email", "city"]

        # gap fill from the conversation
        session = {
            "tenant_id": str(tenant),
            "agent_id": str(agent),
            "customer_profile_id": pid,
            "variables": {"city": "Berlin"},
            "turns": [{"role": "user", "content": f"You can reach me at {EMAIL} please"}],
        }
        filled = _ok(
            http.post("/v1/gap-fill", json={"session": session, "scenario_id": str(scenario)})
        )
        by_name = {r["field_name"]: r for r in filled["results"]}
        assert by_name["email"]["filled"] and by_name["email"]["value"] == EMAIL
        assert by_name["city"]["filled"] and by_name["city"]["value"] == "Berlin"
        assert filled["blocked"] is False
        missing = _ok(http.post(f"/v1/profiles/{pid}/missing", json={"scenario_id": str(scenario)}))
        assert missing == []

        # fields: update, get, history, verify
        email = _ok(http.get(f"/v1/profiles/{pid}/fields/email"))
        assert email["value"] == EMAIL and email["source_session_id"]
        new_id = _ok(
            http.post(
                f"/v1/profiles/{pid}/fields", json={"name": "email", "value": "ana@work.example"}
            )
        )["id"]
        history = _ok(http.get(f"/v1/profiles/{pid}/fields/email/history"))
        assert [v["status"] for v in history] == ["active", "superseded"]
        assert history[1]["superseded_by_id"] == new_id
        verified_id = _ok(
            http.post(
                f"/v1/profiles/{pid}/fields/email/verify", json={"verification_method": "otp"}
            )
        )["id"]
        current = _ok(http.get(f"/v1/profiles/{pid}/fields/email"))
        assert current["id"] == verified_id and current["verified"] is True
        assert current["value"] == "ana@work.example"
        old = _ok(http.get(f"/v1/profiles/{pid}/fields/email", params={"status": "superseded"}))
        assert old["status"] == "superseded"
        conflict = http.post(
            f"/v1/profiles/{pid}/fields",
            params={"supersede_existing": False},
            json={"name": "email", "value": "x@example.com"},
        )
        assert conflict.status_code == 409 and conflict.json()["code"] == "active_field_conflict"

        # assets and lineage
        asset_id = _ok(
            http.post(
                f"/v1/profiles/{pid}/assets",
                json={
                    "name": "id_card",
                    "asset_type": "id_document",
                    "storage_provider": "s3",
                    "storage_path": "bucket/ana.png",
                },
            )
        )["id"]
        assert _ok(http.get(f"/v1/profiles/{pid}/assets/{asset_id}"))["name"] == "id_card"
        assert _ok(http.get(f"/v1/profiles/{pid}/assets/by-name/id_card"))["id"] == asset_id
        dob_id = _ok(
            http.post(
                f"/v1/profiles/{pid}/fields",
                json={
                    "name": "date_of_birth",
                    "value": "1990-01-02",
                    "source": "document_extracted",
                    "source_item_id": asset_id,
                    "source_item_type": "profile_asset",
                },
            )
        )["id"]
        chain = _ok(http.get(f"/v1/lineage/profile_field/{dob_id}/chain"))
        assert [(c["type"], c["name"]) for c in chain] == [
            ("profile_asset", "id_card"),
            ("profile_field", "date_of_birth"),
        ]
        derived = _ok(http.get(f"/v1/lineage/{asset_id}/derived"))
        assert [f["id"] for f in derived["fields"]] == [dob_id]
        assert _ok(http.get(f"/v1/lineage/{asset_id}/has-dependents")) == {"has_dependents": True}
        blocked = http.delete(f"/v1/items/profile_asset/{asset_id}")
        assert blocked.status_code == 409 and blocked.json()["code"] == "has_dependents"

        # channels and merge
        assert _ok(
            http.post(
                f"/v1/profiles/{pid}/channels", json={"channel": "email", "channel_user_id": EMAIL}
            )
        ) == {"linked": True}
        other = _ok(
            http.post(
                "/v1/profiles/get-or-create", json={"channel": "sms", "channel_user_id": "+491700"}
            )
        )
        taken = http.post(
            f"/v1/profiles/{other['id']}/channels",
            json={"channel": "email", "channel_user_id": EMAIL},
        )
        assert taken.status_code == 409 and taken.json()["code"] == "identity_conflict"
        _ok(
            http.post(
                "/v1/profiles/merge",
                json={"source_profile_id": other["id"], "target_profile_id": pid},
            )
        )
        merged = _ok(http.get(f"/v1/profiles/{pid}", params={"include_history": True}))
        assert {i["channel"] for i in merged["channel_identities"]} == {"whatsapp", "email", "sms"}
        assert http.get(f"/v1/profiles/{other['id']}").status_code == 404

        # operations, export and erasure
        counts = _ok(http.get("/v1/operations/counts"))
        assert counts["fields"]["active"] == 3
        assert _ok(http.get("/v1/operations/tenants")) == [str(tenant)]
        exported = _ok(http.get(f"/v1/profiles/{pid}/export"))
        assert exported["format"] == "ccvault.export/1"
        assert exported["profile"]["fields"]["email"]["value"] == "ana@work.example"
        assert _ok(http.post(f"/v1/profiles/{pid}/purge")) == {"deleted": True}
        assert http.get(f"/v1/profiles/{pid}").status_code == 404
        assert http.get(f"/v1/profiles/{pid}/export").status_code == 404
        assert _ok(http.delete(f"/v1/scenarios/{scenario}/requirements")) == {"count": 2}
        assert _ok(http.delete(f"/v1/agents/{agent}/definitions/city")) == {"deleted": True}


def test_pii_is_masked_without_pii_read(server: ServerProcess) -> None:
    tenant, agent = uuid4(), uuid4()
    with _client(server, server.mint(tenant)) as admin:
        pid = _ok(
            admin.post(
                "/v1/profiles/get-or-create", json={"channel": "web", "channel_user_id": "u1"}
            )
        )["id"]
        _ok(
            admin.put(
                "/v1/definitions",
                json={
                    "tenant_id": str(tenant),
                    "agent_id": str(agent),
                    "name": "email",
                    "is_pii": True,
                },
            )
        )
        for name, value in (("email", EMAIL), ("city", "Berlin")):
            _ok(
                admin.post(
                    f"/v1/profiles/{pid}/fields",
                    json={"name": name, "value": value, "source_metadata": {"quote": value}},
                )
            )
        assert _ok(admin.get(f"/v1/profiles/{pid}"))["fields"]["email"]["value"] == EMAIL
    with _client(server, server.mint(tenant, "read")) as reader:
        responses = [
            reader.get(f"/v1/profiles/{pid}", params={"include_history": True}),
            reader.get(f"/v1/profiles/{pid}/fields/email"),
            reader.get(f"/v1/profiles/{pid}/fields/email/history"),
            reader.post("/v1/profiles/lookup", json={"channel": "web", "channel_user_id": "u1"}),
        ]
        for response in responses:
            assert response.status_code == 200
            assert EMAIL not in response.text
            assert "[pii:masked]" in response.text
        profile = responses[0].json()
        assert profile["fields"]["email"]["source_metadata"] == {"masked": True}
        assert profile["fields"]["city"]["value"] == "Berlin"  # not PII: shown
        assert reader.get(f"/v1/profiles/{pid}/export").status_code == 403


def test_errors_never_quote_the_value(server: ServerProcess) -> None:
    tenant = uuid4()
    secret = "Zq-secret-7781"
    with _client(server, server.mint(tenant)) as http:
        pid = _ok(
            http.post(
                "/v1/profiles/get-or-create", json={"channel": "web", "channel_user_id": "u2"}
            )
        )["id"]
        agent = uuid4()
        _ok(
            http.put(
                "/v1/definitions",
                json={
                    "tenant_id": str(tenant),
                    "agent_id": str(agent),
                    "name": "phone",
                    "value_type": "phone",
                    "validation_regex": "^[0-9]+$",
                },
            )
        )
        cases: list[tuple[httpx.Response, int, str]] = [
            (http.get(f"/v1/profiles/{secret}"), 422, "invalid_request"),
            (
                http.post(f"/v1/profiles/{pid}/fields", json={"name": secret, "value": secret}),
                422,
                "invalid_request",
            ),
            (
                http.post(
                    f"/v1/profiles/{pid}/fields",
                    content=b'{"name": "' + secret.encode() + b'", ',
                    headers={"Content-Type": "application/json"},
                ),
                400,
                "malformed_json",
            ),
            (
                http.post(
                    "/v1/profiles/lookup",
                    json={"channel": "web", "channel_user_id": f" {secret}\x01"},
                ),
                400,
                "invalid_argument",
            ),
            (
                http.post(
                    "/v1/profiles/merge", json={"source_profile_id": pid, "target_profile_id": pid}
                ),
                400,
                "invalid_argument",
            ),
            (http.get(f"/v1/profiles/{uuid4()}/fields/{'a' * 60}"), 422, "invalid_request"),
            (
                http.put(
                    "/v1/definitions",
                    json={
                        "tenant_id": str(tenant),
                        "agent_id": str(agent),
                        "name": "bad",
                        "validation_regex": f"({secret}",
                    },
                ),
                400,
                "invalid_argument",
            ),
            (
                http.post(
                    f"/v1/profiles/{pid}/fields",
                    json={"name": "city", "value": secret, "confidence": 7},
                ),
                422,
                "invalid_request",
            ),
        ]
        for response, status, code in cases:
            assert response.status_code == status, (status, response.text)
            body = response.json()
            assert body["code"] == code
            assert secret not in response.text
            assert set(body) == {"code", "message", "details", "ids"}
    log = server.log()
    assert secret not in log


def test_the_pii_registry_cannot_be_written_through_the_api(server: ServerProcess) -> None:
    from ccvault.crypto import PII_REGISTRY_AGENT_ID

    tenant = uuid4()
    with _client(server, server.mint(tenant)) as http:
        saved = http.put(
            "/v1/definitions",
            json={"tenant_id": str(tenant), "agent_id": str(PII_REGISTRY_AGENT_ID), "name": "x"},
        )
        assert saved.status_code == 400 and saved.json()["code"] == "reserved_agent"
        deleted = http.delete(f"/v1/agents/{PII_REGISTRY_AGENT_ID}/definitions/email")
        assert deleted.status_code == 400 and deleted.json()["code"] == "reserved_agent"


def test_schema_validation_error_names_the_field_not_the_value(server: ServerProcess) -> None:
    tenant, agent, scenario = uuid4(), uuid4(), uuid4()
    with _client(server, server.mint(tenant)) as http:
        pid = _ok(
            http.post(
                "/v1/profiles/get-or-create", json={"channel": "web", "channel_user_id": "u3"}
            )
        )["id"]
        _ok(
            http.put(
                "/v1/definitions",
                json={
                    "tenant_id": str(tenant),
                    "agent_id": str(agent),
                    "name": "email",
                    "value_type": "email",
                },
            )
        )
        _ok(
            http.put(
                "/v1/requirements",
                json={
                    "tenant_id": str(tenant),
                    "agent_id": str(agent),
                    "scenario_id": str(scenario),
                    "field_name": "email",
                },
            )
        )
        session = {
            "tenant_id": str(tenant),
            "agent_id": str(agent),
            "customer_profile_id": pid,
            "variables": {"email": "not-an-email-Qx91"},
        }
        result = _ok(
            http.post("/v1/gap-fill", json={"session": session, "scenario_id": str(scenario)})
        )
        email = result["results"][0]
        assert email["filled"] is False and email["next_action"] == "ask"


def test_body_limit_gives_413(server: ServerProcess) -> None:
    with _client(server, server.mint(uuid4())) as http:
        big = http.post(
            f"/v1/profiles/{uuid4()}/fields",
            content=json.dumps({"name": "blob", "value": "x" * 2_000_000}).encode(),
            headers={"Content-Type": "application/json"},
        )
        assert big.status_code == 413
        assert big.json()["code"] == "payload_too_large"

        def chunks() -> Iterator[bytes]:  # no Content-Length: counted while reading
            yield b'{"name": "blob", "value": "'
            for _ in range(40):
                yield b"y" * 65536
            yield b'"}'

        streamed = http.post(
            f"/v1/profiles/{uuid4()}/fields",
            content=chunks(),
            headers={"Content-Type": "application/json"},
        )
        assert streamed.status_code == 413


def test_access_log_is_structured_and_holds_no_personal_data(server: ServerProcess) -> None:
    tenant = uuid4()
    with _client(server, server.mint(tenant)) as http:
        pid = _ok(
            http.post(
                "/v1/profiles/get-or-create",
                json={"channel": "email", "channel_user_id": "log.check@example.com"},
            )
        )["id"]
        _ok(http.get(f"/v1/profiles/{pid}", params={"include_history": "true"}))
    lines = [line for line in server.log().splitlines() if line.startswith('{"event": "access"')]
    assert lines
    for line in lines:
        entry = json.loads(line)
        assert set(entry) == {"event", "method", "route", "status", "duration_ms", "key_id"}
    text = server.log()
    assert "log.check@example.com" not in text
    assert pid not in text
    assert str(tenant) not in text
    assert "include_history" not in text


def test_apikey_cli(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from ccvault.cli import cli

    keys = str(tmp_path / "keys.db")
    runner = CliRunner()
    tenant = str(uuid4())
    created = runner.invoke(
        cli, ["apikey", "create", "--tenant", tenant, "--scopes", "read,write", "--api-keys", keys]
    )
    assert created.exit_code == 0, created.output
    token = created.stdout.strip().splitlines()[0]
    assert token.startswith("ccv_")
    listed = runner.invoke(cli, ["apikey", "list", "--json", "--api-keys", keys])
    row = json.loads(listed.stdout.strip())
    assert row["tenant_id"] == tenant and row["scopes"] == ["read", "write"]
    assert token not in listed.stdout
    assert (
        runner.invoke(cli, ["apikey", "revoke", row["key_id"], "--api-keys", keys]).exit_code == 0
    )
    again = runner.invoke(cli, ["apikey", "revoke", row["key_id"], "--api-keys", keys])
    assert again.exit_code != 0 and "no active key" in again.output
    bad = runner.invoke(
        cli, ["apikey", "create", "--tenant", tenant, "--scopes", "root", "--api-keys", keys]
    )
    assert bad.exit_code != 0 and "unknown scope" in bad.output


def test_readyz_reports_an_unreachable_cache(tmp_path: Path) -> None:
    """Cache enabled, Redis at a port nobody listens on: not ready, 503 (the store is fine)."""
    from ccvault.server.testing import free_port

    config = embedded_config(
        tmp_path, extra=f'[redis]\nurl = "redis://127.0.0.1:{free_port()}/0"\n'
    )
    text = config.read_text().replace("cache_enabled = false", "cache_enabled = true")
    config.write_text(text)
    env = {"PROFILE_PII_ENCRYPTION_KEY": generate_key_entry("k1")}
    with running_server(config, tmp_path, env=env) as running, httpx.Client(timeout=30) as http:
        ready = http.get(f"{running.base_url}/readyz")
        assert ready.status_code == 503
        assert ready.json()["checks"]["cache"].startswith("unreachable")
        assert http.get(f"{running.base_url}/healthz").status_code == 200


@pytest.fixture
def pg_dsn() -> Iterator[str]:
    from ccvault_postgres.testing import (
        admin_dsn,
        create_database,
        drop_database,
        dsn_with_database,
    )

    server = admin_dsn()
    name = asyncio.run(create_database(server))
    try:
        yield dsn_with_database(server, name)
    finally:
        asyncio.run(drop_database(server, name))


def test_production_stack_postgres_and_redis(tmp_path: Path, pg_dsn: str) -> None:
    prefix = f"ccvault-serve-test:{uuid4().hex}:"
    config = tmp_path / "prod.toml"
    config.write_text(
        "[profile]\n"
        'store_provider = "postgres"\n'
        "cache_enabled = true\n"
        "auto_encrypt_pii = true\n"
        "[providers.postgres]\n"
        f'dsn = "{pg_dsn}"\n'
        "[redis]\n"
        f'url = "{REDIS_URL}"\n'
        f'key_prefix = "{prefix}"\n',
        encoding="utf-8",
    )
    env = {"PROFILE_PII_ENCRYPTION_KEY": generate_key_entry("k1")}
    with running_server(config, tmp_path, env=env) as running:
        tenant, other = uuid4(), uuid4()
        with httpx.Client(base_url=running.base_url, timeout=30) as http:
            # polled (a 200 within 10 s): the store's first query
            ready = wait_until_ok(running, "/readyz", timeout=10)
            assert ready.json()["checks"] == {"store": "ok", "cache": "ok"}
        with _client(running, running.mint(tenant)) as http:
            pid = _ok(
                http.post(
                    "/v1/profiles/get-or-create", json={"channel": "sms", "channel_user_id": PHONE}
                )
            )["id"]
            _ok(http.post(f"/v1/profiles/{pid}/fields", json={"name": "email", "value": EMAIL}))
            # twice: the second read is served through the Redis cache
            for _ in range(2):
                assert _ok(http.get(f"/v1/profiles/{pid}"))["fields"]["email"]["value"] == EMAIL
        with _client(running, running.mint(other)) as http:
            assert http.get(f"/v1/profiles/{pid}").status_code == 404
            assert http.get(f"/v1/profiles/{pid}/fields/email").status_code == 404


def test_a_corrupt_row_is_a_500_whose_log_line_names_table_and_column(
    tmp_path: Path,
) -> None:
    """A row the vault cannot read back is not "retry later": a 500, and one ERROR line in
    the server's log naming its table and column (never the stored value)."""
    tenant, visitor = uuid4(), f"visitor-{uuid4()}"
    env = {"PROFILE_PII_ENCRYPTION_KEY": generate_key_entry("k1")}
    with running_server(embedded_config(tmp_path), tmp_path, env=env) as running:
        with _client(running, running.mint(tenant)) as http:
            profile = _ok(
                http.post(
                    "/v1/profiles/get-or-create",
                    json={"channel": "web", "channel_user_id": visitor},
                )
            )
            with sqlite3.connect(tmp_path / "vault.db") as db:
                db.execute(
                    "UPDATE profiles SET verification_level = ? WHERE id = ?",
                    (f"level of {visitor}", profile["id"]),
                )
            refused = http.get(f"/v1/profiles/by-customer/{profile['customer_id']}")
        log = running.log()
    assert refused.status_code == 500, refused.text
    assert refused.json()["code"] == "corrupt_row"
    assert "Retry-After" not in refused.headers
    assert "profiles.verification_level" in log
    assert visitor not in log and visitor not in refused.text
