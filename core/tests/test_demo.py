"""``ccvault demo``: the story runs, shows gap fill, and runs again on the same store."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from ccvault import VaultSettings, load_settings, migrate_schema, open_store
from ccvault.demo import SCENARIO_ID, TENANT_ID, WHATSAPP_NUMBER, _story, run_demo
from ccvault.models import Channel


def _console() -> tuple[Console, io.StringIO]:
    buffer = io.StringIO()
    return Console(file=buffer, width=200, color_system=None, force_terminal=False), buffer


def _settings(**overrides: object) -> VaultSettings:
    base: dict[str, Any] = {
        "store_provider": "inmemory",
        "cache_enabled": False,
        "auto_encrypt_pii": False,
    }
    base.update(overrides)
    return load_settings(**base)


def _assert_story(text: str) -> None:
    for chapter in range(1, 7):
        assert f"{chapter}. " in text
    assert "refused at save" in text and "RE2" in text
    assert "refused email" in text
    assert "profile_asset:passport_scan  ->  profile_field:passport_number" in text
    assert "persisted with lineage to session" in text
    assert "shipping_country" in text and "Germany" in text and "2026-12-18" in text
    still = text.split("still missing: ", 1)[1].split("  (before", 1)[0]
    assert still.startswith("billing_postcode, company_name")
    assert "shipping_country" not in still and "delivery_date" not in still


async def test_run_demo_on_inmemory_tells_the_whole_story() -> None:
    console, buffer = _console()
    await run_demo(_settings(), console)
    text = buffer.getvalue()
    _assert_story(text)
    assert "(new)" in text


async def test_second_run_on_the_same_store_reuses_the_profile() -> None:
    settings = _settings()
    async with open_store(settings) as store:
        first, _ = _console()
        await _story(store, settings, first)
        second, second_buffer = _console()
        await _story(store, settings, second)
        text = second_buffer.getvalue()
        _assert_story(text)
        assert "returning customer" in text
        assert "answer(s) of the previous order retired" in text
        profile = await store.get_by_channel_identity(
            TENANT_ID, Channel.WHATSAPP, WHATSAPP_NUMBER, include_history=True
        )
        assert profile is not None
        statuses = [v.status.value for v in profile.field_history["shipping_country"]]
        # run 2's value, the closing version of run 1's order, run 1's value
        assert statuses == ["active", "expired", "superseded"]
        assert len(profile.field_history["email"]) == 4
        missing = await store.get_missing_fields(
            TENANT_ID, profile, SCENARIO_ID, required_level=None
        )
        assert [r.field_name for r in missing] == ["billing_postcode", "company_name"]


async def test_demo_on_sqlite_runs_twice(tmp_path: Path) -> None:
    pytest.importorskip("ccvault_sqlite.plugin")
    settings = _settings(
        store_provider="sqlite", providers={"sqlite": {"path": str(tmp_path / "demo.db")}}
    )
    await migrate_schema(settings)  # a configured (not the embedded) file: migrated first
    for run in range(2):
        console, buffer = _console()
        await run_demo(settings, console)
        _assert_story(buffer.getvalue())
        if run:
            assert "returning customer" in buffer.getvalue()
