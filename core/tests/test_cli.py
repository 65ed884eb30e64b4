"""The ccvault command line: every command, its help, its settings, its failures."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import httpx
import pytest
from click.testing import CliRunner

from ccvault import errors, registry
from ccvault.cli import cli
from ccvault.crypto import EncryptedProfileStore, Keyring, generate_key_entry, key_id_of
from ccvault.models import Channel, ProfileField, ProfileFieldDefinition
from ccvault_inmemory import InMemoryProfileStore

PYTHON = sys.executable
COMMANDS = [
    [],
    ["providers"],
    ["demo"],
    ["keygen"],
    ["migrate"],
    ["expire"],
    ["mark-orphans"],
    ["status"],
    ["profile"],
    ["profile", "show"],
    ["profile", "export"],
    ["profile", "purge"],
    ["worker"],
    ["metrics"],
    ["rotate-keys"],
    ["config"],
    ["config", "show"],
    ["config", "check"],
]


# ---------------------------------------------------------------------------------------
# a provider whose stores all share one in-memory database, so that successive commands
# (each opening its own store, as separate processes would) see each other's data
# ---------------------------------------------------------------------------------------


class _RotatableInMemory(InMemoryProfileStore):
    async def _list_profile_ids(self, tenant_id: UUID) -> list[UUID]:
        return list(self._tenant(tenant_id).profiles)

    async def _rewrite_field_payloads(
        self, tenant_id: UUID, profile_id: UUID, payloads: dict[UUID, tuple[Any, dict[str, Any]]]
    ) -> int:
        tenant = self._tenant(tenant_id)
        count = 0
        for field_id, (value, metadata) in payloads.items():
            row = tenant.fields.get(field_id)
            if row is not None and row.profile_id == profile_id:
                row.item = row.item.model_copy(update={"value": value, "source_metadata": metadata})
                count += 1
        return count


@pytest.fixture
def shared(shared_provider: Any) -> Any:
    """A provider "clitest" whose stores share one in-memory database that can also rewrite
    payloads for rotate-keys (conftest.py): successive commands see each other's data."""
    return shared_provider("clitest", _RotatableInMemory())


@pytest.fixture
def key() -> str:
    return generate_key_entry("k1")


@pytest.fixture
def config(tmp_path: Path, key: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("PROFILE_PII_ENCRYPTION_KEY", key)
    path = tmp_path / "vault.toml"
    path.write_text(
        '[profile]\nstore_provider = "clitest"\ncache_enabled = false\nauto_encrypt_pii = true\n'
    )
    return path


def _invoke(*args: str, **kwargs: Any) -> Any:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False, **kwargs)


TENANT = uuid4()
AGENT = uuid4()


async def _seed(db: InMemoryProfileStore, key: str) -> UUID:
    store = EncryptedProfileStore(db, Keyring.parse(key))
    await store.save_field_definition(
        ProfileFieldDefinition(tenant_id=TENANT, agent_id=AGENT, name="email", is_pii=True)
    )
    pid = (await store.get_or_create(TENANT, Channel.WHATSAPP, "+31612345678")).id
    await store.update_field(TENANT, pid, ProfileField(name="email", value="old@example.com"))
    await store.update_field(TENANT, pid, ProfileField(name="email", value="ann@example.com"))
    await store.update_field(TENANT, pid, ProfileField(name="language", value="nl"))
    return pid


# ---------------------------------------------------------------------------------------
# help, providers, keygen, failures
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "ccvault")
def test_every_command_has_help(command: list[str]) -> None:
    result = _invoke(*command, "--help")
    assert result.exit_code == 0
    assert "Usage:" in result.output and "--help" in result.output


def test_providers_lists_installed_with_distribution_and_version() -> None:
    result = _invoke("providers")
    assert result.exit_code == 0, result.output
    for name, info in registry.installed_providers().items():
        assert name in result.output
        assert info.distribution in result.output
        assert info.version in result.output


def test_keygen_prints_a_usable_entry() -> None:
    result = _invoke("keygen", "2026a")
    assert result.exit_code == 0
    assert Keyring.parse(result.output.strip()).current == "2026a"


def test_bad_config_is_one_line_and_exit_6(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[profile]\ncache_ttl_seconds = -5\n")
    result = CliRunner().invoke(cli, ["--config", str(path), "migrate"])
    assert result.exit_code == 6
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith("ccvault: error:") and "cache_ttl_seconds" in result.stderr


def test_unknown_provider_fails_with_what_to_install(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[profile]\nstore_provider = "cassandra"\n')
    result = CliRunner().invoke(cli, ["-c", str(path), "expire"])
    assert result.exit_code == 6
    assert "cassandra" in result.stderr and "inmemory" in result.stderr


def test_missing_key_with_encryption_on_fails_at_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PROFILE_PII_ENCRYPTION_KEY", raising=False)
    path = tmp_path / "c.toml"
    path.write_text('[profile]\nstore_provider = "inmemory"\ncache_enabled = false\n')
    # migrate works on the provider's schema only (no keys needed); expire opens the vault
    result = CliRunner().invoke(cli, ["-c", str(path), "expire"])
    assert result.exit_code == 6
    assert "PROFILE_PII_ENCRYPTION_KEY" in result.stderr


def test_config_comes_from_the_environment_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[profile]\nstore_provider = "nosuch"\n')
    monkeypatch.setenv("CCVAULT_CONFIG", str(path))
    result = CliRunner().invoke(cli, ["migrate"])
    assert result.exit_code == 6 and "nosuch" in result.stderr


def test_no_config_file_is_read_from_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CCVAULT_CONFIG", raising=False)
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "default.toml").write_text('[profile]\nstore_provider = "fromcwd"\n')
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["config", "show", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["settings"]["profile"]["store_provider"] == "postgres"


def test_environment_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[profile]\nstore_provider = "nosuch"\n')
    monkeypatch.setenv("CCVAULT_PROFILE__STORE_PROVIDER", "inmemory")
    monkeypatch.setenv("CCVAULT_PROFILE__CACHE_ENABLED", "false")
    monkeypatch.setenv("CCVAULT_PROFILE__AUTO_ENCRYPT_PII", "false")
    result = CliRunner().invoke(cli, ["-c", str(path), "migrate"])
    assert result.exit_code == 0, result.stderr
    assert "inmemory" in result.output


# ---------------------------------------------------------------------------------------
# store commands over a shared store
# ---------------------------------------------------------------------------------------


def test_migrate_and_expire(shared: Any, config: Path, key: str) -> None:
    assert _invoke("-c", str(config), "migrate").exit_code == 0
    pid = asyncio.run(_seed(shared.db, key))
    from datetime import timedelta

    from ccvault.models import utcnow

    asyncio.run(
        shared.db.update_field(
            TENANT,
            pid,
            ProfileField(name="otp", value="1234", expires_at=utcnow() - timedelta(seconds=1)),
        )
    )
    result = _invoke("-c", str(config), "expire", "--tenant", str(TENANT))
    assert result.exit_code == 0, result.output
    assert f"tenant {TENANT}: 1 field(s) expired" in result.output
    again = _invoke("-c", str(config), "expire")
    assert "total: 0 field(s) expired in 1 tenant(s)" in again.output


def test_profile_show_by_every_selector(shared: Any, config: Path, key: str) -> None:
    pid = asyncio.run(_seed(shared.db, key))
    customer = asyncio.run(shared.db.get_by_id(TENANT, pid))
    assert customer is not None
    for selector in (
        ["--profile-id", str(pid)],
        ["--customer-id", str(customer.customer_id)],
        ["--channel", "whatsapp", "--user", "+31612345678"],
    ):
        result = _invoke("-c", str(config), "profile", "show", "-t", str(TENANT), *selector)
        assert result.exit_code == 0, result.output
        assert "ann@example.com" in result.output and "old@example.com" not in result.output
    history = _invoke(
        "-c", str(config), "profile", "show", "-t", str(TENANT), "-p", str(pid), "--history"
    )
    assert "old@example.com" in history.output and "superseded" in history.output
    as_json = _invoke(
        "-c", str(config), "profile", "show", "-t", str(TENANT), "-p", str(pid), "--json"
    )
    assert json.loads(as_json.output)["fields"]["email"]["value"] == "ann@example.com"


def test_profile_show_unknown_is_one_line_exit_3(shared: Any, config: Path) -> None:
    result = CliRunner().invoke(
        cli, ["-c", str(config), "profile", "show", "-t", str(TENANT), "-p", str(uuid4())]
    )
    assert result.exit_code == 3
    assert result.stderr.startswith("ccvault: error:") and result.stderr.count("\n") == 1


def test_profile_selector_misuse_is_a_usage_error(shared: Any, config: Path) -> None:
    result = CliRunner().invoke(cli, ["-c", str(config), "profile", "show", "-t", str(TENANT)])
    assert result.exit_code == 2
    bad = CliRunner().invoke(cli, ["-c", str(config), "profile", "show", "-t", "nope"])
    assert bad.exit_code == 2 and "not a UUID" in bad.stderr


def test_profile_export_writes_the_whole_decrypted_document(
    shared: Any, config: Path, key: str, tmp_path: Path
) -> None:
    pid = asyncio.run(_seed(shared.db, key))
    out = tmp_path / "export.json"
    result = _invoke(
        "-c", str(config), "profile", "export", "-t", str(TENANT), "-p", str(pid), "-o", str(out)
    )
    assert result.exit_code == 0, result.output
    document = json.loads(out.read_text())
    assert document["format"] == "ccvault.export/1"
    values = [v["value"] for v in document["profile"]["field_history"]["email"]]
    assert values == ["ann@example.com", "old@example.com"]
    to_stdout = _invoke(
        "-c",
        str(config),
        "profile",
        "export",
        "-t",
        str(TENANT),
        "--channel",
        "whatsapp",
        "--user",
        "+31612345678",
    )
    # by identity: the data subject, every profile it ever had (here one)
    subject = json.loads(to_stdout.output)
    assert subject["format"] == "ccvault.subject-export/1"
    assert [p["profile"]["id"] for p in subject["profiles"]] == [str(pid)]


def test_profile_purge_erases_everything(shared: Any, config: Path, key: str) -> None:
    pid = asyncio.run(_seed(shared.db, key))
    refused = CliRunner().invoke(
        cli, ["-c", str(config), "profile", "purge", "-t", str(TENANT), "-p", str(pid)], input="n\n"
    )
    assert refused.exit_code == 1
    assert asyncio.run(shared.db.get_by_id(TENANT, pid)) is not None
    result = _invoke(
        "-c", str(config), "profile", "purge", "-t", str(TENANT), "-p", str(pid), "--yes"
    )
    assert result.exit_code == 0 and f"profile {pid} purged" in result.output
    with pytest.raises(errors.NotFoundError):
        asyncio.run(shared.db.export_profile(TENANT, pid))
    assert (
        asyncio.run(shared.db.get_by_channel_identity(TENANT, Channel.WHATSAPP, "+31612345678"))
        is None
    )
    assert asyncio.run(shared.db.list_profile_ids(TENANT)) == []


def test_rotate_keys_reencrypts_under_the_newest_key(
    shared: Any, config: Path, key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    pid = asyncio.run(_seed(shared.db, key))
    monkeypatch.setenv("PROFILE_PII_ENCRYPTION_KEY", f"{key},{generate_key_entry('k2')}")
    result = _invoke("-c", str(config), "rotate-keys")
    assert result.exit_code == 0, result.output
    assert "re-encrypted 2 field version(s) in 1 profile(s) under key 'k2'" in result.output
    history = asyncio.run(shared.db.get_field_history(TENANT, pid, "email"))
    assert {key_id_of(v.value) for v in history} == {"k2"}


def test_rotate_keys_needs_encryption_on(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[profile]\nstore_provider = "inmemory"\nauto_encrypt_pii = false\n')
    result = CliRunner().invoke(cli, ["-c", str(path), "rotate-keys"])
    assert result.exit_code == 6 and "auto_encrypt_pii" in result.stderr


# ---------------------------------------------------------------------------------------
# real processes: python -m ccvault, signals, the metrics endpoint
# ---------------------------------------------------------------------------------------


def _inmemory_config(tmp_path: Path, port: int, prefix: str) -> Path:
    path = tmp_path / "worker.toml"
    path.write_text(
        "[profile]\n"
        'store_provider = "inmemory"\n'
        "cache_enabled = false\n"
        "auto_encrypt_pii = false\n"
        "expire_check_interval_seconds = 1\n"
        "[redis]\n"
        f'key_prefix = "{prefix}"\n'
        "[metrics]\n"
        f"port = {port}\n"
        "refresh_interval_seconds = 0.2\n"
        "[worker]\n"
        f'lease_dir = "{tmp_path / "leases"}"\n'
    )
    return path


def _wait_for(predicate: Any, what: str, timeout: float = 60.0) -> Any:
    # a bound, not a timing assertion: a loaded 2-core machine can take many seconds to
    # start a Python process that imports the whole CLI
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _metrics_port(process: subprocess.Popen[str], err: Path) -> int | None:
    """The port a child given ``[metrics] port = 0`` reports it serves on (the one it bound,
    so nobody else can be answering there); None until it does."""
    text = err.read_text(encoding="utf-8", errors="replace")
    match = re.search(r"serving Prometheus metrics on http://127\.0\.0\.1:(\d+)/metrics", text)
    if match is not None:
        return int(match.group(1))
    assert process.poll() is None, f"exited before serving metrics:\n{text}"
    return None


def _scrape(port: int) -> str | None:
    try:
        response = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=1)
    except httpx.HTTPError:
        return None
    return response.text if response.status_code == 200 else None


def test_python_dash_m_runs_the_cli() -> None:
    result = subprocess.run(
        [PYTHON, "-m", "ccvault", "--help"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0 and "rotate-keys" in result.stdout


@pytest.mark.parametrize("command", ["worker", "metrics"])
def test_long_running_commands_serve_metrics_and_stop_on_sigterm(
    tmp_path: Path, command: str
) -> None:
    # port 0: the child binds a port of its own and logs it (no race for a port picked here)
    config = _inmemory_config(tmp_path, 0, f"test-cli-{uuid4().hex}:")
    err_path = tmp_path / f"{command}.stderr"
    with err_path.open("wb") as err_file:
        process = subprocess.Popen(
            [PYTHON, "-m", "ccvault", "-c", str(config), command],
            stdout=subprocess.PIPE,
            stderr=err_file,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    try:
        port = _wait_for(lambda: _metrics_port(process, err_path), f"{command} to bind metrics")
        text = _wait_for(lambda: _scrape(port), f"{command} to serve metrics")
        assert "# TYPE profile_fields_by_status gauge" in text
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    err = err_path.read_text(encoding="utf-8", errors="replace")
    assert process.returncode == 0, err
    if command == "worker":
        assert "worker started" in err and "worker stopped" in err
