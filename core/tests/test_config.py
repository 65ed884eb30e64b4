"""Every key of config/default.toml is read by some code path.

For each key of the file: a changed value in a TOML file reaches the loaded settings, and
the key is mapped to the code that consumes it, which must really read it (its source names
the key, or for a provider table its settings model declares it). Adding a key to the file
without a consumer, or a consumer that stops reading its key, fails here. The keys with a
cheap observable effect are also checked end to end below.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest

import ccvault
from ccvault import errors, registry
from ccvault.settings import VaultSettings, expand_env

REPO = Path(__file__).resolve().parents[2]
DEFAULT = REPO / "config" / "default.toml"

#: key of config/default.toml -> modules (or "provider:NAME") that read it
CONSUMERS: dict[str, tuple[str, ...]] = {
    "profile.store_provider": ("ccvault.registry",),
    "profile.cache_enabled": ("ccvault.registry",),
    "profile.cache_ttl_seconds": ("ccvault.cache",),
    "profile.field_definitions_ttl_seconds": ("ccvault.cache",),
    "profile.scenario_requirements_ttl_seconds": ("ccvault.cache",),
    "profile.validation_enabled": ("ccvault.validation",),
    "profile.validation_strict": ("ccvault.validation",),
    "profile.auto_expire_enabled": ("ccvault.worker",),
    "profile.expire_check_interval_seconds": ("ccvault.worker",),
    "profile.lineage_tracking_enabled": ("ccvault.settings", "ccvault.worker"),
    "profile.max_derivation_chain_depth": ("ccvault.settings", "ccvault.store"),
    "profile.auto_encrypt_pii": ("ccvault.registry", "ccvault.crypto"),
    "profile.pii_encryption_key_id": ("ccvault.crypto",),
    "profile.pii_local_key_path": ("ccvault.settings",),
    "profile.freshness.default_freshness_seconds": ("ccvault.settings", "ccvault.requirements"),
    "profile.freshness.stale_field_action": ("ccvault.settings", "ccvault.requirements"),
    "profile.gap_fill.min_confidence": ("ccvault.gapfill",),
    "profile.gap_fill.confirm_confidence": ("ccvault.gapfill",),
    "profile.gap_fill.max_turns": ("ccvault.gapfill",),
    # cache and worker connect with RedisSettings.connection_url(), which reads it
    "redis.url": ("ccvault.settings",),
    "redis.cluster": ("ccvault.cache", "ccvault.worker"),
    "redis.key_prefix": ("ccvault.cache", "ccvault.worker"),
    "redis.socket_timeout_seconds": ("ccvault.cache", "ccvault.worker"),
    "redis.connect_timeout_seconds": ("ccvault.cache", "ccvault.worker"),
    "redis.retry_after_seconds": ("ccvault.cache",),
    "redis.operation_timeout_seconds": ("ccvault.cache",),
    "redis.max_entry_bytes": ("ccvault.cache",),
    "redis.near_cache_size": ("ccvault.cache",),
    "redis.near_cache_invalidation": ("ccvault.cache",),
    "metrics.host": ("ccvault.cli",),
    "metrics.port": ("ccvault.cli",),
    "metrics.refresh_interval_seconds": ("ccvault.cli",),
    "metrics.tenant_labels": ("ccvault.cli", "ccvault.metrics"),
    "metrics.process_metrics": ("ccvault.cli", "ccvault.metrics"),
    "logging.format": ("ccvault.cli",),
    "logging.level": ("ccvault.cli",),
    "worker.lease": ("ccvault.worker",),
    "worker.lease_dir": ("ccvault.worker",),
    "providers.postgres.dsn": ("provider:postgres",),
    "providers.sqlite.path": ("provider:sqlite",),
    "providers.mongo.uri": ("provider:mongo",),
    "providers.mongo.database": ("provider:mongo",),
    "providers.inmemory": ("provider:inmemory",),
}

#: changed values for the keys whose change cannot be derived from the default's type
CHANGED_STRINGS: dict[str, Any] = {
    "profile.store_provider": "inmemory",
    "profile.pii_encryption_key_id": "k9:AAAA",
    "profile.pii_local_key_path": "/tmp/changed-pii.key",
    "logging.format": "json",
    "logging.level": "DEBUG",
    "profile.freshness.stale_field_action": "block",
    "redis.url": "redis://127.0.0.1:6379/5",
    "redis.key_prefix": "changed:",
    "metrics.host": "0.0.0.0",
    "worker.lease": "file",
    "worker.lease_dir": "/tmp/changed-leases",
    "providers.postgres.dsn": "postgresql://127.0.0.1:5432/test",
    "providers.sqlite.path": "/tmp/changed.db",
    "providers.mongo.uri": "mongodb://127.0.0.1:27018",
    "providers.mongo.database": "changed",
    "redis.near_cache_invalidation": "push",
}


def _leaves(table: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    found: dict[str, Any] = {}
    for key, value in table.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            # an empty table (a provider without options) counts as one key
            found.update(_leaves(value, f"{path}.") if value else {path: value})
        else:
            found[path] = value
    return found


DEFAULT_KEYS = _leaves(tomllib.loads(DEFAULT.read_text()))


def _changed(key: str, value: Any) -> Any:
    if key in CHANGED_STRINGS:
        return CHANGED_STRINGS[key]
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value / 2
    raise AssertionError(f"add a changed value for {key} to CHANGED_STRINGS")


def _nest(key: str, value: Any) -> str:
    *tables, leaf = key.split(".")
    return f"[{'.'.join(tables)}]\n{leaf} = {_toml(value)}\n"


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    return repr(value)


def _lookup(settings: VaultSettings, key: str) -> Any:
    parts = key.split(".")
    if parts[0] == "providers":
        return settings.providers[parts[1]][parts[2]]
    node: Any = settings
    for part in parts:
        node = getattr(node, part)
    # secrets (the keyring, the Redis URL) are secret types: compare their real value
    return node.get_secret_value() if hasattr(node, "get_secret_value") else node


def test_every_key_of_the_file_has_a_consumer() -> None:
    assert set(DEFAULT_KEYS) == set(CONSUMERS), (
        f"keys without a consumer (or stale entries): {sorted(set(DEFAULT_KEYS) ^ set(CONSUMERS))}"
    )


def test_the_file_equals_the_builtin_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PROFILE_PII_ENCRYPTION_KEY", raising=False)
    builtin = ccvault.load_settings()
    for key, value in DEFAULT_KEYS.items():
        if key.startswith("providers."):
            continue
        if key == "profile.pii_encryption_key_id":
            assert value == "${PROFILE_PII_ENCRYPTION_KEY}"
            assert _lookup(builtin, key) == ""  # expanded from the (unset) environment
            continue
        if isinstance(value, str) and "${" in value:  # ${CCVAULT_DATA_DIR}: the data dir
            assert _lookup(builtin, key) == expand_env(value), key
            continue
        assert _lookup(builtin, key) == value, key


@pytest.mark.parametrize("key", sorted(k for k in DEFAULT_KEYS if k != "providers.inmemory"))
def test_a_changed_value_in_a_file_reaches_the_settings(key: str, tmp_path: Path) -> None:
    value = _changed(key, DEFAULT_KEYS[key])
    path = tmp_path / "c.toml"
    path.write_text(_nest(key, value))
    assert _lookup(ccvault.load_settings(path), key) == value


_PROVIDER_KEYS_SCRIPT = """
import json
from ccvault import registry
found = {}
for name in registry.installed_providers():
    model = registry.load_provider(name).settings_model
    model.model_validate({})  # an empty table is accepted
    found[name] = sorted({n for n, f in model.model_fields.items()} |
                         {f.alias for f in model.model_fields.values() if f.alias})
print(json.dumps(found))
"""


@functools.cache
def provider_keys() -> dict[str, list[str]]:
    """Each installed provider's option names, read in a child process so that this test
    does not import every provider into the test session."""
    out = subprocess.run(
        [sys.executable, "-c", _PROVIDER_KEYS_SCRIPT],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    keys: dict[str, list[str]] = json.loads(out.stdout)
    return keys


@pytest.mark.parametrize("key", sorted(CONSUMERS))
def test_each_key_is_read_by_its_consumer(key: str) -> None:
    leaf = key.rsplit(".", 1)[-1]
    for consumer in CONSUMERS[key]:
        if consumer.startswith("provider:"):
            name = consumer.split(":", 1)[1]
            assert name in provider_keys(), f"provider {name} is not installed"
            if key != f"providers.{name}":  # an empty table: accepted, checked in the child
                assert leaf in provider_keys()[name], f"{name} does not read {leaf}"
            continue
        source = inspect.getsource(importlib.import_module(consumer))
        assert re.search(rf"\b{leaf}\b", source), f"{consumer} does not read {key}"


# ---------------------------------------------------------------------------------------
# end to end, where the effect is cheap to observe
# ---------------------------------------------------------------------------------------


async def test_provider_cache_and_encryption_switches_compose_the_stack(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from ccvault.cache import CachedProfileStore
    from ccvault.crypto import EncryptedProfileStore, generate_key_entry
    from ccvault_inmemory import InMemoryProfileStore

    monkeypatch.setenv("PROFILE_PII_ENCRYPTION_KEY", generate_key_entry("k1"))
    prefix = f"test-config-{uuid4().hex}:"
    settings = ccvault.load_settings(
        store_provider="inmemory",
        cache_enabled=True,
        auto_encrypt_pii=True,
        redis={"key_prefix": prefix},
    )
    async with ccvault.open_store(settings) as store:
        assert isinstance(store, EncryptedProfileStore)
        assert isinstance(store.inner, CachedProfileStore)
        assert isinstance(store.inner.inner, InMemoryProfileStore)
    plain = ccvault.load_settings(
        store_provider="inmemory", cache_enabled=False, auto_encrypt_pii=False
    )
    async with ccvault.open_store(plain) as store:
        assert isinstance(store, InMemoryProfileStore)


def test_rule_keys_reach_the_store() -> None:
    settings = ccvault.load_settings(
        store_provider="inmemory",
        max_derivation_chain_depth=4,
        lineage_tracking_enabled=False,
        freshness={"default_freshness_seconds": 60, "stale_field_action": "block"},
    )
    store = registry.create_store(settings)
    assert store.rules.max_derivation_chain_depth == 4
    assert store.rules.lineage_tracking_enabled is False
    assert store.rules.default_freshness_seconds == 60
    assert store.rules.stale_field_action == "block"


def test_interval_reaches_the_worker() -> None:
    from ccvault.worker import Worker

    settings = ccvault.load_settings(store_provider="inmemory", expire_check_interval_seconds=7)
    assert Worker(registry.create_store(settings), settings, lease=None).interval == 7  # type: ignore[arg-type]


def test_key_setting_reaches_the_keyring() -> None:
    from ccvault.crypto import EncryptedProfileStore, generate_key_entry

    settings = ccvault.load_settings(
        store_provider="inmemory",
        pii_encryption_key_id=f"{generate_key_entry('a')},{generate_key_entry('b')}",
    )
    wrapped = EncryptedProfileStore.from_settings(registry.create_store(settings), settings)
    assert isinstance(wrapped, EncryptedProfileStore) and wrapped.keyring.current == "b"
    with pytest.raises(errors.ConfigurationError):
        EncryptedProfileStore.from_settings(
            registry.create_store(settings),
            ccvault.load_settings(store_provider="inmemory", pii_encryption_key_id=""),
        )


def test_worker_lease_keys_choose_the_lease(tmp_path: Path) -> None:
    from ccvault.worker import FileTenantLease, RedisTenantLease, lease_from_settings

    def lease(**worker: str) -> object:
        return lease_from_settings(
            ccvault.load_settings(
                store_provider=worker.pop("provider", "sqlite"),
                cache_enabled=worker.pop("cache", "1") == "1",
                worker=worker,
            )
        )

    assert isinstance(lease(), RedisTenantLease)  # auto, cache on
    chosen = lease(cache="0", lease_dir=str(tmp_path))
    assert isinstance(chosen, FileTenantLease) and chosen.directory == tmp_path
    assert isinstance(lease(lease="file"), FileTenantLease)
    assert isinstance(lease(cache="0", lease="redis"), RedisTenantLease)
