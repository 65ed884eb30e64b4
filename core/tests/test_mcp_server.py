"""The MCP tools, driven by the official MCP SDK's own client: over streamable HTTP (mounted
in a real ``ccvault serve`` behind the API keys) and over stdio (``ccvault mcp`` as a
subprocess)."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import httpx
import httpx2
import pytest
from mcp.client import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client

from ccvault.crypto import generate_key_entry
from ccvault.server.testing import ServerProcess, embedded_config, running_server

TOOLS = {"find_customer", "missing_fields", "record_field", "fill_gaps", "explain_field"}
PHONE = "+4915199990000"


@dataclass
class Setup:
    server: ServerProcess
    config: Path
    env: dict[str, str]
    tenant: UUID
    token: str
    agent: str
    scenario: str


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    directory = tmp_path_factory.mktemp("mcp")
    env = {"PROFILE_PII_ENCRYPTION_KEY": generate_key_entry("k1")}
    config = embedded_config(directory)
    with running_server(config, directory, env=env) as server:
        tenant = uuid4()
        token = server.mint(tenant)
        agent, scenario = str(uuid4()), str(uuid4())
        with httpx.Client(
            base_url=server.base_url, headers={"Authorization": f"Bearer {token}"}, timeout=30
        ) as http:
            for order, (name, kind, pii) in enumerate(
                (("email", "email", True), ("city", "string", False))
            ):
                definition = {
                    "tenant_id": str(tenant),
                    "agent_id": agent,
                    "name": name,
                    "value_type": kind,
                    "is_pii": pii,
                }
                assert http.put("/v1/definitions", json=definition).status_code == 200
                requirement = {
                    "tenant_id": str(tenant),
                    "agent_id": agent,
                    "scenario_id": scenario,
                    "field_name": name,
                    "collection_order": order,
                    "fallback_action": "extract" if name == "email" else "ask",
                }
                assert http.put("/v1/requirements", json=requirement).status_code == 200
        yield Setup(server, config, env, tenant, token, agent, scenario)


@contextlib.asynccontextmanager
async def http_session(setup: Setup, token: str) -> AsyncIterator[ClientSession]:
    """An MCP client session over streamable HTTP, authenticated with ``token``."""
    async with (
        httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=30) as client,
        streamable_http_client(f"{setup.server.base_url}/mcp/", http_client=client) as streams,
        ClientSession(streams[0], streams[1]) as session,
    ):
        await session.initialize()
        yield session


def _result(result: Any) -> dict[str, Any]:
    assert not result.is_error, result.content
    if result.structured_content is not None:
        data: dict[str, Any] = result.structured_content
        return data.get("result", data) if set(data) == {"result"} else data
    return dict(json.loads(result.content[0].text))


async def _conversation(session: ClientSession, setup: Setup, phone: str) -> None:
    tools = await session.list_tools()
    assert {tool.name for tool in tools.tools} == TOOLS
    for tool in tools.tools:
        assert tool.description and len(tool.description) > 120  # written for an LLM

    found = _result(
        await session.call_tool(
            "find_customer",
            {"channel": "whatsapp", "channel_user_id": phone, "create_if_missing": True},
        )
    )
    assert found["found"] is True and found["known_fields"] == {}
    pid = found["profile_id"]

    missing = _result(
        await session.call_tool(
            "missing_fields", {"profile_id": pid, "scenario_id": setup.scenario}
        )
    )
    assert [m["field_name"] for m in missing["missing"]] == ["email", "city"]

    filled = _result(
        await session.call_tool(
            "fill_gaps",
            {
                "profile_id": pid,
                "agent_id": setup.agent,
                "scenario_id": setup.scenario,
                "conversation": [
                    {"role": "assistant", "content": "How can we reach you?"},
                    {"role": "user", "content": "write to ana.mcp@example.com"},
                ],
            },
        )
    )
    by_name = {r["field_name"]: r for r in filled["results"]}
    assert by_name["email"]["filled"] is True
    assert by_name["email"]["value"] == "ana.mcp@example.com"
    assert by_name["city"]["filled"] is False and by_name["city"]["next_action"] == "ask"

    recorded = _result(
        await session.call_tool(
            "record_field",
            {
                "profile_id": pid,
                "field_name": "city",
                "value": "Lisbon",
                "quote": "I live in Lisbon",
            },
        )
    )
    assert recorded["recorded"] is True

    missing = _result(
        await session.call_tool(
            "missing_fields", {"profile_id": pid, "scenario_id": setup.scenario}
        )
    )
    assert missing == {"missing": [], "complete": True}

    explained = _result(
        await session.call_tool("explain_field", {"profile_id": pid, "field_name": "city"})
    )
    assert explained["current"]["value"] == "Lisbon"
    assert explained["history"][0]["source_metadata"]["quote"] == "I live in Lisbon"
    assert [step["name"] for step in explained["derivation_chain"]] == ["city"]

    again = _result(
        await session.call_tool("find_customer", {"channel": "whatsapp", "channel_user_id": phone})
    )
    assert again["profile_id"] == pid
    assert set(again["known_fields"]) == {"email", "city"}

    # a failing call is a tool error that does not quote the value
    bad = await session.call_tool(
        "record_field", {"profile_id": str(uuid4()), "field_name": "city", "value": "Zq-77"}
    )
    assert bad.is_error
    assert "Zq-77" not in json.dumps([c.model_dump() for c in bad.content])


async def test_tools_over_streamable_http(setup: Setup) -> None:
    async with http_session(setup, setup.token) as session:
        await _conversation(session, setup, PHONE)
    # the same tools with a read-only key: PII masked, writes refused
    async with http_session(setup, setup.server.mint(setup.tenant, "read")) as session:
        found = _result(
            await session.call_tool(
                "find_customer", {"channel": "whatsapp", "channel_user_id": PHONE}
            )
        )
        assert found["known_fields"]["email"]["value"] == "[pii:masked]"
        assert found["known_fields"]["city"]["value"] == "Lisbon"
        denied = await session.call_tool(
            "find_customer",
            {"channel": "sms", "channel_user_id": "+100", "create_if_missing": True},
        )
        assert denied.is_error
        assert "write" in denied.content[0].text


async def test_tools_over_stdio(setup: Setup) -> None:
    params = StdioServerParameters(
        command=sys.executable,
        args=[
            "-m",
            "ccvault",
            "--config",
            str(setup.config),
            "mcp",
            "--api-keys",
            str(setup.server.keys_path),
        ],
        env={**setup.env, "CCVAULT_API_KEY": setup.token},
    )
    async with stdio_client(params) as streams, ClientSession(streams[0], streams[1]) as session:
        await session.initialize()
        await _conversation(session, setup, "+4915188880000")


async def test_another_tenants_key_sees_nothing(setup: Setup) -> None:
    async with http_session(setup, setup.token) as session:
        found = _result(
            await session.call_tool(
                "find_customer",
                {"channel": "web", "channel_user_id": "iso-1", "create_if_missing": True},
            )
        )
        pid = found["profile_id"]
        _result(
            await session.call_tool(
                "record_field", {"profile_id": pid, "field_name": "city", "value": "Porto"}
            )
        )
    async with http_session(setup, setup.server.mint(uuid4())) as session:
        lookup = _result(
            await session.call_tool("find_customer", {"channel": "web", "channel_user_id": "iso-1"})
        )
        assert lookup == {"found": False}
        explained = _result(
            await session.call_tool("explain_field", {"profile_id": pid, "field_name": "city"})
        )
        assert explained == {"known": False, "field_name": "city"}
        write = await session.call_tool(
            "record_field", {"profile_id": pid, "field_name": "city", "value": "Faro"}
        )
        assert write.is_error and "not found" in write.content[0].text
        missing = await session.call_tool(
            "missing_fields", {"profile_id": pid, "scenario_id": setup.scenario}
        )
        assert missing.is_error and "not found" in missing.content[0].text
    async with http_session(setup, setup.token) as session:
        explained = _result(
            await session.call_tool("explain_field", {"profile_id": pid, "field_name": "city"})
        )
        assert explained["current"]["value"] == "Porto"
        assert len(explained["history"]) == 1


def test_http_refuses_a_foreign_host_header_on_loopback(setup: Setup) -> None:
    """DNS rebinding: a page on another origin cannot reach the loopback server's tools."""
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
    headers = {
        "Authorization": f"Bearer {setup.token}",
        "Accept": "application/json, text/event-stream",
        "Host": "evil.example",
        "Origin": "http://evil.example",
    }
    with httpx.Client(base_url=setup.server.base_url, timeout=30) as http:
        response = http.post("/mcp/", json=body, headers=headers)
    assert 400 <= response.status_code < 500
    assert "find_customer" not in response.text


def test_stdio_refuses_a_revoked_key(setup: Setup) -> None:
    key, token = setup.server.keys.create(setup.tenant, "read")
    setup.server.keys.revoke(key.key_id)
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "ccvault",
            "--config",
            str(setup.config),
            "mcp",
            "--api-keys",
            str(setup.server.keys_path),
            "--api-key",
            token,
        ],
        env={**os.environ, **setup.env},
        input=b"",
        capture_output=True,
        timeout=60,
    )
    assert completed.returncode not in (0, 1)  # a configuration error's exit code
    assert b"API key is not valid" in completed.stderr
    assert token.encode() not in completed.stderr
