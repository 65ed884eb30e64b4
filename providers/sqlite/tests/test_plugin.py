"""The provider through configuration: entry point, settings, open_store, embedded.toml."""

from __future__ import annotations

import base64
import os
import sqlite3
from pathlib import Path
from uuid import uuid4

import pytest

import ccvault
from ccvault import errors
from ccvault.models import Channel, ProfileField, ProfileFieldDefinition
from ccvault.registry import create_store, installed_providers, load_provider
from ccvault.settings import data_dir
from ccvault_sqlite import SqliteProfileStore, SqliteSettings

EMBEDDED = Path(__file__).resolve().parents[3] / "config" / "embedded.toml"


def test_the_entry_point_provides_sqlite() -> None:
    assert installed_providers()["sqlite"].distribution == "ccvault-sqlite"
    spec = load_provider("sqlite")
    assert spec.name == "sqlite" and spec.settings_model is SqliteSettings
    assert {"large_values", "nul_characters", "high_concurrency"} <= spec.capabilities


def test_settings_defaults_and_bad_options() -> None:
    # the default file is in the data directory, whatever the working directory
    assert SqliteSettings().path == str(data_dir() / "vault.db")
    assert Path(SqliteSettings().path).is_absolute()
    settings = ccvault.load_settings(
        store_provider="sqlite", providers={"sqlite": {"busy_timeout_ms": -1}}
    )
    with pytest.raises(errors.ConfigurationError, match=r"providers\.sqlite\.busy_timeout_ms"):
        create_store(settings)
    settings = ccvault.load_settings(store_provider="sqlite", providers={"sqlite": {"pth": "x"}})
    with pytest.raises(errors.ConfigurationError, match=r"providers\.sqlite\.pth"):
        create_store(settings)


def test_embedded_config_selects_sqlite_without_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CCVAULT_DATA_DIR", str(tmp_path))
    settings = ccvault.load_settings(EMBEDDED)
    assert settings.profile.store_provider == "sqlite"
    assert settings.profile.cache_enabled is False
    # the database lives in the data directory, never relative to the working directory
    assert settings.provider_options("sqlite")["path"] == f"{tmp_path}/vault.db"
    # everything else is the default configuration
    default = ccvault.load_settings(EMBEDDED.parent / "default.toml")
    mine = settings.model_dump()
    theirs = default.model_dump()
    # embedded: its own local key file when no keyring is set (default.toml has none)
    for key in ("store_provider", "cache_enabled", "pii_local_key_path", "pii_encryption_key_id"):
        mine["profile"].pop(key), theirs["profile"].pop(key)
    assert mine["profile"] == theirs["profile"]
    assert mine["redis"] == theirs["redis"] and mine["metrics"] == theirs["metrics"]
    store = create_store(settings)
    assert isinstance(store, SqliteProfileStore)
    assert store.rules == settings.profile.store_rules()


async def test_open_store_on_embedded_config_persists_across_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What `make demo` does twice: the second run finds the first run's data."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CCVAULT_DATA_DIR", str(tmp_path / "data"))
    key = base64.b64encode(os.urandom(32)).decode()
    monkeypatch.setenv("PROFILE_PII_ENCRYPTION_KEY", f"demo:{key}")
    tenant, agent = uuid4(), uuid4()
    for run in range(2):
        settings = ccvault.load_settings(EMBEDDED)
        async with ccvault.open_store(settings) as store:
            if run == 0:
                await store.save_field_definition(
                    ProfileFieldDefinition(
                        tenant_id=tenant, agent_id=agent, name="email", is_pii=True
                    )
                )
            profile = await store.get_or_create(tenant, Channel.EMAIL, "ada@example.com")
            await store.update_field(
                tenant, profile.id, ProfileField(name="email", value=f"ada{run}@example.com")
            )
            history = await store.get_field_history(tenant, profile.id, "email")
            assert [v.value for v in history] == [f"ada{i}@example.com" for i in range(run, -1, -1)]
    database = tmp_path / "data" / "vault.db"
    assert database.is_file()
    # PII is ciphertext in the file
    with sqlite3.connect(database) as conn:
        stored = [row[0] for row in conn.execute("SELECT value FROM fields WHERE name = 'email'")]
    conn.close()
    assert len(stored) == 2 and not any("ada" in value for value in stored)
