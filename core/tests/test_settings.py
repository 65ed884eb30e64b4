"""Settings: defaults, TOML files, ${VAR} interpolation, environment overrides, clear errors."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

import ccvault
from ccvault import errors
from ccvault.settings import VaultSettings, expand_env

REPO = Path(__file__).resolve().parents[2]


def test_builtin_defaults_are_the_seeds() -> None:
    settings = ccvault.load_settings()
    assert settings.profile.store_provider == "postgres"
    assert settings.profile.cache_ttl_seconds == 1800
    assert settings.profile.field_definitions_ttl_seconds == 3600
    assert settings.profile.max_derivation_chain_depth == 10
    assert settings.profile.freshness.stale_field_action == "warn"
    assert settings.redis.url.get_secret_value() == "redis://127.0.0.1:6379/0"


def test_default_toml_equals_builtin_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROFILE_PII_ENCRYPTION_KEY", "k1")
    from_file = ccvault.load_settings(REPO / "config" / "default.toml")
    builtin = ccvault.load_settings()
    assert from_file.model_dump(exclude={"providers"}) == builtin.model_dump(exclude={"providers"})


def test_partial_file_changes_only_its_keys(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(
        '[profile]\nstore_provider = "sqlite"\n[profile.freshness]\nstale_field_action = "block"\n'
    )
    settings = ccvault.load_settings(path)
    assert settings.profile.store_provider == "sqlite"
    assert settings.profile.freshness.stale_field_action == "block"
    assert settings.profile.freshness.default_freshness_seconds == 0
    assert settings.profile.cache_enabled is True


def test_env_var_interpolation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_DSN", "postgresql://db.example/vault")
    monkeypatch.setenv("PROFILE_PII_ENCRYPTION_KEY", "secret-from-env")
    path = tmp_path / "c.toml"
    path.write_text('[providers.postgres]\ndsn = "${MY_DSN}"\n')
    settings = ccvault.load_settings(path)
    assert settings.provider_options("postgres")["dsn"] == "postgresql://db.example/vault"
    assert settings.profile.pii_encryption_key_id.get_secret_value() == "secret-from-env"


def test_unset_variable_expands_to_empty(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CCVAULT_SURELY_UNSET", raising=False)
    assert expand_env({"a": ["x${CCVAULT_SURELY_UNSET}y"]}) == {"a": ["xy"]}


def test_environment_overrides_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[profile]\ncache_ttl_seconds = 10\n")
    monkeypatch.setenv("CCVAULT_PROFILE__CACHE_TTL_SECONDS", "20")
    monkeypatch.setenv("CCVAULT_REDIS__URL", "redis://127.0.0.1:6380/1")
    settings = ccvault.load_settings(path)
    assert settings.profile.cache_ttl_seconds == 20
    assert settings.redis.url.get_secret_value() == "redis://127.0.0.1:6380/1"
    # env overrides only its key: the rest of [profile] still comes from the file/defaults
    assert settings.profile.field_definitions_ttl_seconds == 3600


def test_keyword_overrides_win(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[profile]\nstore_provider = "postgres"\ncache_ttl_seconds = 10\n')
    monkeypatch.setenv("CCVAULT_PROFILE__STORE_PROVIDER", "mongo")
    settings = ccvault.load_settings(path, store_provider="sqlite", redis={"cluster": True})
    assert settings.profile.store_provider == "sqlite"
    assert settings.profile.cache_ttl_seconds == 10
    assert settings.redis.cluster is True


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        ("[profile]\ncache_ttl_seconds = -5\n", "profile.cache_ttl_seconds"),
        (
            '[profile.freshness]\nstale_field_action = "explode"\n',
            "profile.freshness.stale_field_action",
        ),
        ("[profile]\ncache_enabld = true\n", "profile.cache_enabld"),
        ('[redis]\ncluster = "sometimes"\n', "redis.cluster"),
    ],
)
def test_bad_value_names_the_key(tmp_path: Path, toml: str, key: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(toml)
    with pytest.raises(errors.ConfigurationError, match=key.replace(".", r"\.")):
        ccvault.load_settings(path)


def test_unknown_table_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[profiles]\nstore_provider = 'x'\n")
    with pytest.raises(errors.ConfigurationError, match="unknown table"):
        ccvault.load_settings(path)


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(errors.ConfigurationError, match="not found"):
        ccvault.load_settings(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[profile\n")
    with pytest.raises(errors.ConfigurationError, match="not valid TOML"):
        ccvault.load_settings(bad)


def test_store_rules_follow_settings() -> None:
    settings = ccvault.load_settings(
        max_derivation_chain_depth=4,
        freshness={"default_freshness_seconds": 60, "stale_field_action": "block"},
    )
    rules = settings.profile.store_rules()
    assert rules.max_derivation_chain_depth == 4
    assert rules.default_freshness_seconds == 60
    assert rules.stale_field_action == "block"


def test_every_config_file_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROFILE_PII_ENCRYPTION_KEY", "k")
    configs = sorted((REPO / "config").glob("*.toml"))
    assert configs, "config/ holds the ready configurations"
    for path in configs:
        tomllib.loads(path.read_text())
        assert isinstance(ccvault.load_settings(path), VaultSettings)
