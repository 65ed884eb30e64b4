"""The committed OpenAPI document matches the code, and property-based tests generated from
it (Schemathesis) find no 5xx and no response outside its schema on a live server."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from uuid import UUID, uuid4

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from ccvault.crypto import generate_key_entry
from ccvault.server.openapi import DOCUMENT_PATH, current_document, render
from ccvault.server.testing import ServerProcess, embedded_config, running_server


def test_committed_document_matches_the_code() -> None:
    committed = DOCUMENT_PATH.read_text(encoding="utf-8")
    assert committed == render(current_document()), (
        "core/src/ccvault/server/openapi.json is stale: run python -m ccvault.server.openapi"
    )


def test_document_covers_the_api() -> None:
    document = json.loads(DOCUMENT_PATH.read_text(encoding="utf-8"))
    paths = document["paths"]
    assert "/healthz" in paths and "/readyz" in paths
    operations = {op["operationId"] for item in paths.values() for op in item.values()}
    for name in (
        "get_by_id",
        "get_by_customer_id",
        "get_by_channel_identity",
        "get_or_create",
        "delete_profile",
        "update_field",
        "get_field",
        "get_field_history",
        "verify_field",
        "add_asset",
        "get_asset",
        "get_derivation_chain",
        "get_derived_items",
        "check_has_dependents",
        "link_channel",
        "merge_profiles",
        "save_field_definition",
        "save_scenario_requirement",
        "get_missing_fields",
        "fill_scenario",
        "export_profile",
        "purge_profile",
    ):
        assert name in operations
    assert document["components"]["securitySchemes"]["ApiKey"]["scheme"] == "bearer"


@dataclass
class Live:
    server: ServerProcess
    token: str
    tenant: UUID


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    directory = tmp_path_factory.mktemp("schemathesis")
    env = {"PROFILE_PII_ENCRYPTION_KEY": generate_key_entry("k1")}
    with running_server(embedded_config(directory), directory, env=env) as server:
        tenant = uuid4()
        token = server.mint(tenant)
        # some data, so generated ids sometimes hit nothing and reads run the full path
        with httpx.Client(
            base_url=server.base_url, headers={"Authorization": f"Bearer {token}"}, timeout=30
        ) as http:
            http.post(
                "/v1/profiles/get-or-create", json={"channel": "web", "channel_user_id": "u1"}
            )
        yield Live(server, token, tenant)
        log = server.log()
        assert "Traceback" not in log, log[-4000:]


schema = schemathesis.openapi.from_dict(json.loads(DOCUMENT_PATH.read_text(encoding="utf-8")))


@schema.parametrize()
@settings(
    max_examples=8,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_generated_requests(case: schemathesis.Case, live: Live) -> None:
    """No 5xx on any generated input; every status, content type and body as documented."""
    case.call_and_validate(
        base_url=live.server.base_url,
        headers={"Authorization": f"Bearer {live.token}"},
        checks=[
            not_a_server_error,
            status_code_conformance,
            content_type_conformance,
            response_schema_conformance,
        ],
    )
