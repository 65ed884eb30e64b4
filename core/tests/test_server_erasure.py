"""Erasure and export by data subject over HTTP (``POST /v1/subjects/erase|export``): the
identity travels in the body, the report carries no personal data, scopes are enforced,
and the remote client's public ``erase_subject`` works over its hooks."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import uuid4

import httpx
import pytest

from ccvault.crypto import generate_key_entry
from ccvault.server.testing import ServerProcess, embedded_config, running_server

PHONE = "+4915177788899"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    directory = tmp_path_factory.mktemp("erasure-api")
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


def test_subject_erase_and_export_over_http(server: ServerProcess, tmp_path: Path) -> None:
    tenant = uuid4()
    lookup = {"channel": "whatsapp", "channel_user_id": PHONE}
    with _client(server, server.mint(tenant)) as admin:
        old = _ok(admin.post("/v1/profiles/get-or-create", json=lookup))["id"]
        _ok(admin.delete(f"/v1/profiles/{old}"))
        live = _ok(admin.post("/v1/profiles/get-or-create", json=lookup))["id"]
        assert live != old
        # a key without admin may not erase
        with _client(server, server.mint(tenant, "read,write,pii:read")) as writer:
            assert writer.post("/v1/subjects/erase", json=lookup).status_code == 403
        exported = _ok(admin.post("/v1/subjects/export", json=lookup))
        assert {p["profile"]["id"] for p in exported["profiles"]} == {old, live}
        dry = admin.post("/v1/subjects/erase", json={**lookup, "dry_run": True})
        report = _ok(dry)
        assert PHONE not in dry.text
        assert {p["profile_id"]: p["kind"] for p in report["profiles"]} == {
            old: "deleted",
            live: "live",
        }
        done = _ok(admin.post("/v1/subjects/erase", json=lookup))
        assert done == {**report, "dry_run": False}
        assert admin.post("/v1/subjects/erase", json=lookup).status_code == 404
        # a bad key: refused before anything is read
        bad = admin.post("/v1/subjects/erase", json={"channel": "whatsapp"})
        assert bad.status_code in (400, 422), bad.text
