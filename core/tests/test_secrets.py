"""Issue 12: secrets in settings are never printed; secrets can come from ``*_FILE`` files."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

import ccvault
from ccvault import errors
from ccvault.registry import create_store
from ccvault.secretvalues import SecretUrl, mask_url
from ccvault.settings import VaultSettings

PG_PASSWORD = "pg-Pa55word-7f3a"
REDIS_PASSWORD = "redis-Pa55word-91c2"
MONGO_PASSWORD = "mongo-Pa55word-44d0"
KEY_MATERIAL = "3q2+7w3q2+7w3q2+7w3q2+7w3q2+7w3q2+7w3q2+7w0="
SECRETS = (PG_PASSWORD, REDIS_PASSWORD, MONGO_PASSWORD, KEY_MATERIAL)


def _renderings(settings: VaultSettings) -> list[str]:
    return [
        repr(settings),
        str(settings),
        settings.model_dump_json(),
        repr(settings.model_dump()),
        repr(settings.profile),
        repr(settings.redis),
        str(settings.redis.url),
        f"{settings.redis.url}",
        f"{settings.profile.pii_encryption_key_id}",
    ]


def _loaded(monkeypatch: pytest.MonkeyPatch) -> VaultSettings:
    monkeypatch.setenv("PROFILE_PII_ENCRYPTION_KEY", f"k1:{KEY_MATERIAL}")
    monkeypatch.setenv(
        "CCVAULT_PROVIDERS__POSTGRES__DSN", f"postgresql://vault:{PG_PASSWORD}@db.example:5432/v"
    )
    monkeypatch.setenv(
        "CCVAULT_PROVIDERS__MONGO__URI", f"mongodb://vault:{MONGO_PASSWORD}@mongo.example/"
    )
    monkeypatch.setenv("CCVAULT_REDIS__URL", f"redis://:{REDIS_PASSWORD}@cache.example:6379/0")
    return ccvault.load_settings()


def test_settings_never_show_a_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = _loaded(monkeypatch)
    for text in _renderings(settings):
        for secret in SECRETS:
            assert secret not in text
    # what is masked is still visibly there: the host and database, the user
    assert "db.example" in repr(settings) and "vault:***@" in repr(settings)
    assert str(settings.redis.url) == "redis://:***@cache.example:6379/0"
    # and the code that connects gets the real values
    assert settings.redis.connection_url() == f"redis://:{REDIS_PASSWORD}@cache.example:6379/0"
    assert settings.profile.pii_encryption_key_id.get_secret_value() == f"k1:{KEY_MATERIAL}"


def test_provider_settings_never_show_a_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = _loaded(monkeypatch)
    for name, password in (("postgres", PG_PASSWORD), ("mongo", MONGO_PASSWORD)):
        store = create_store(
            settings.model_copy(
                update={"profile": settings.profile.model_copy(update={"store_provider": name})}
            )
        )
        options = store.settings  # type: ignore[attr-defined]
        for text in (repr(options), str(options), options.model_dump_json()):
            assert password not in text
        assert password in (options.dsn if name == "postgres" else options.uri).get_secret_value()


def test_logged_settings_show_no_secret(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    settings = _loaded(monkeypatch)
    with caplog.at_level(logging.INFO):
        logging.getLogger("test").info("settings %s / %r / %s", settings, settings, settings.redis)
    for secret in SECRETS:
        assert secret not in caplog.text


def test_masking_of_urls() -> None:
    assert (
        mask_url("postgresql://u:p%40ss@h1:5432,h2:5433/db")
        == "postgresql://u:***@h1:5432,h2:5433/db"
    )
    assert mask_url("postgresql://h/db?user=u&password=s3cret&sslmode=require") == (
        "postgresql://h/db?user=u&password=***&sslmode=require"
    )
    assert mask_url("redis://h:6379/0") == "redis://h:6379/0"
    assert mask_url("not a url with s3cret") == "***"
    assert repr(SecretUrl("mongodb://u:pw@h/")) == "SecretUrl('mongodb://u:***@h/')"
    assert SecretUrl("redis://h") == SecretUrl("redis://h")
    assert SecretUrl("redis://h") != "redis://h"


@pytest.mark.parametrize("port", ["54x2", "99999", "0", "-1"])
def test_malformed_dsn_port_is_a_clear_configuration_error(
    monkeypatch: pytest.MonkeyPatch, port: str
) -> None:
    monkeypatch.setenv(
        "CCVAULT_PROVIDERS__POSTGRES__DSN", f"postgresql://vault:{PG_PASSWORD}@db.example:{port}/v"
    )
    settings = ccvault.load_settings(store_provider="postgres")
    with pytest.raises(
        errors.ConfigurationError, match=r"providers\.postgres\.dsn: .*invalid port"
    ) as raised:
        create_store(settings)
    assert PG_PASSWORD not in str(raised.value)


def test_malformed_redis_port_is_a_clear_configuration_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CCVAULT_REDIS__URL", f"redis://:{REDIS_PASSWORD}@cache.example:63x9/0")
    with pytest.raises(errors.ConfigurationError, match=r"redis\.url: .*invalid port") as raised:
        ccvault.load_settings()
    assert REDIS_PASSWORD not in str(raised.value)


def _secret_file(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text + "\n")  # as `echo` and most platforms write them
    return str(path)


def test_secrets_from_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dsn = f"postgresql://vault:{PG_PASSWORD}@db.example:5432/v"
    monkeypatch.delenv("PROFILE_PII_ENCRYPTION_KEY", raising=False)
    monkeypatch.setenv(
        "PROFILE_PII_ENCRYPTION_KEY_FILE", _secret_file(tmp_path, "key", f"k1:{KEY_MATERIAL}")
    )
    monkeypatch.setenv("CCVAULT_PROVIDERS__POSTGRES__DSN_FILE", _secret_file(tmp_path, "dsn", dsn))
    monkeypatch.setenv(
        "CCVAULT_REDIS__URL_FILE", _secret_file(tmp_path, "url", "redis://cache.example:6379/2")
    )
    monkeypatch.setenv(
        "CCVAULT_REDIS__PASSWORD_FILE", _secret_file(tmp_path, "redis-pw", REDIS_PASSWORD)
    )
    settings = ccvault.load_settings(store_provider="postgres")
    assert settings.profile.pii_encryption_key_id.get_secret_value() == f"k1:{KEY_MATERIAL}"
    assert settings.redis.connection_url() == f"redis://:{REDIS_PASSWORD}@cache.example:6379/2"
    store = create_store(settings)
    assert store.settings.dsn.get_secret_value() == dsn  # type: ignore[attr-defined]
    for text in _renderings(settings):
        for secret in SECRETS:
            assert secret not in text


def test_secret_file_in_toml(tmp_path: Path) -> None:
    dsn = f"postgresql://vault:{PG_PASSWORD}@db.example:5432/v"
    config = tmp_path / "c.toml"
    config.write_text(f'[providers.postgres]\ndsn_file = "{_secret_file(tmp_path, "dsn", dsn)}"\n')
    settings = ccvault.load_settings(config, store_provider="postgres")
    assert create_store(settings).settings.dsn.get_secret_value() == dsn  # type: ignore[attr-defined]
    assert PG_PASSWORD not in repr(settings)


def test_secret_and_its_file_together_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CCVAULT_REDIS__URL", "redis://a:6379/0")
    monkeypatch.setenv("CCVAULT_REDIS__URL_FILE", _secret_file(tmp_path, "u", "redis://b:6379/0"))
    with pytest.raises(errors.ConfigurationError, match="both set"):
        ccvault.load_settings()
    monkeypatch.delenv("CCVAULT_REDIS__URL")
    monkeypatch.setenv("PROFILE_PII_ENCRYPTION_KEY", "k1:x")
    monkeypatch.setenv("PROFILE_PII_ENCRYPTION_KEY_FILE", _secret_file(tmp_path, "k", "k1:y"))
    with pytest.raises(errors.ConfigurationError, match="both set"):
        ccvault.load_settings()


def test_unreadable_secret_file_names_the_variable_not_the_contents(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CCVAULT_PROVIDERS__POSTGRES__DSN_FILE", str(tmp_path / "absent"))
    with pytest.raises(errors.ConfigurationError, match=r"providers\.postgres\.dsn_file"):
        ccvault.load_settings()
    big = tmp_path / "big"
    big.write_bytes(b"x" * (65 * 1024))
    monkeypatch.setenv("CCVAULT_PROVIDERS__POSTGRES__DSN_FILE", str(big))
    with pytest.raises(errors.ConfigurationError, match="larger than"):
        ccvault.load_settings()


def test_a_non_secret_file_option_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    # only secret-bearing names are read from files: a provider's own ``*_file`` option stays
    settings = ccvault.load_settings(providers={"custom": {"cert_file": "/etc/ssl/c.pem"}})
    assert settings.provider_options("custom") == {"cert_file": "/etc/ssl/c.pem"}


async def test_redis_connects_with_a_url_from_a_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from redis.asyncio import Redis

    monkeypatch.setenv(
        "CCVAULT_REDIS__URL_FILE", _secret_file(tmp_path, "url", "redis://127.0.0.1:6379/0")
    )
    settings = ccvault.load_settings()
    client = Redis.from_url(settings.redis.connection_url())
    try:
        assert await client.ping()
    finally:
        await client.aclose()


async def test_postgres_connects_with_a_dsn_from_a_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncpg

    monkeypatch.setenv(
        "CCVAULT_PROVIDERS__POSTGRES__DSN_FILE",
        _secret_file(tmp_path, "dsn", "postgresql://postgres@127.0.0.1:5432/postgres"),
    )
    store = create_store(ccvault.load_settings(store_provider="postgres"))
    conn = await asyncpg.connect(store.settings.dsn.get_secret_value())  # type: ignore[attr-defined]
    try:
        assert await conn.fetchval("SELECT 1") == 1
    finally:
        await conn.close()


def test_pydantic_errors_of_settings_built_by_hand_do_not_echo_secrets() -> None:
    import pydantic

    from ccvault.settings import RedisSettings
    from ccvault_mongo.settings import MongoSettings
    from ccvault_postgres.settings import PostgresSettings

    attempts = [
        lambda: PostgresSettings(dsn=f"postgresql://u:{PG_PASSWORD}@h:5x/db"),
        lambda: PostgresSettings(dsn=f"mysql://u:{PG_PASSWORD}@h/db"),
        lambda: RedisSettings(url=f"redis://:{REDIS_PASSWORD}@h:99999/0"),
        lambda: MongoSettings(uri=f"mongodb://u:{MONGO_PASSWORD}@h/", bogus=1),
        lambda: VaultSettings(redis={"url": f"http://:{REDIS_PASSWORD}@h/"}),
    ]
    for attempt in attempts:
        with pytest.raises(pydantic.ValidationError) as raised:
            attempt()
        for secret in SECRETS:
            assert secret not in str(raised.value)
            assert secret not in repr(raised.value)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://h:6379/0", "redis://:p%40ss%2Fw%3Ard@h:6379/0"),
        ("redis://user:old@h:6379/0", "redis://user:p%40ss%2Fw%3Ard@h:6379/0"),
        ("rediss://h", "rediss://:p%40ss%2Fw%3Ard@h"),
        ("unix:///run/redis.sock?db=1", "unix:///run/redis.sock?db=1&password=p%40ss%2Fw%3Ard"),
    ],
)
def test_redis_password_is_merged_into_the_connection_url(url: str, expected: str) -> None:
    from ccvault.settings import RedisSettings

    settings = RedisSettings(url=url, password="p@ss/w:rd")
    assert settings.connection_url() == expected
    assert "p@ss" not in repr(settings) and "p%40ss" not in repr(settings)
