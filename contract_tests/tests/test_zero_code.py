"""Zero-code mode: the suite builds the store from a TOML file through the entry point, and
its second instance from the same file."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

INMEMORY_TOML = """
[profile]
store_provider = "inmemory"
cache_enabled = false
auto_encrypt_pii = false

[providers.inmemory]
shared_state = "contract"
"""

#: stores keep their data in a shared "server" (per database name) but serialise with a lock
#: of their own: correct in one process, racy between two (see test_plugin.py)
LOCKSTEP_PROVIDER = """
import asyncio

from pydantic import BaseModel, ConfigDict

from ccvault.hookspecs import ProviderSpec, hookimpl
from ccvault_inmemory import InMemoryProfileStore

SERVER = {}


class LockstepSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    database: str = "main"


class LockstepStore(InMemoryProfileStore):
    def __init__(self, database, rules):
        super().__init__(rules=rules)
        first = SERVER.setdefault(database, self)
        if first is not self:
            self._tenants, self._seq = first._tenants, first._seq
        self._process_lock = asyncio.Lock()

    async def _get_or_create(self, tenant_id, candidate):
        async with self._process_lock:
            identity = candidate.channel_identities[0]
            found = await self._get_by_channel_identity(
                tenant_id, identity.channel, identity.channel_user_id, False
            )
            await asyncio.sleep(0)
            if found is not None:
                return found
            await self._save(candidate)
            return candidate


@hookimpl
def ccvault_provider():
    return ProviderSpec(
        name="lockstep",
        distribution="lockstep-provider",
        settings_model=LockstepSettings,
        create_store=lambda options, rules: LockstepStore(options.database, rules),
    )
"""


def _run(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "--pyargs",
            "ccvault_contract_tests",
            "-p",
            "no:cacheprovider",
            "-p",
            "no:schemathesis",
            "-p",
            "no:hypothesispytest",
            "-q",
            "-rf",
            *args,
        ],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def test_zero_code_mode_runs_the_whole_suite_against_inmemory(tmp_path: Path) -> None:
    config = tmp_path / "vault.toml"
    config.write_text(INMEMORY_TOML)
    report = tmp_path / "report.json"
    result = _run(tmp_path, "--ccvault-config", str(config), "--ccvault-report", str(report))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "TestConfiguredStoreContract: CONFORMANT" in result.stdout
    summary = result.stdout.strip().splitlines()[-1]
    passed = int(summary.split(" passed")[0].split()[-1])
    assert passed > 400, summary
    assert "failed" not in summary and "skipped" not in summary
    (entry,) = json.loads(report.read_text())["classes"]
    assert entry["provider"] == "inmemory" and entry["verdict"] == "CONFORMANT"
    assert entry["counts"]["ran"] == entry["counts"]["expected"] == passed
    assert entry["counts"]["cross_instance_ran"] >= 10


def test_a_second_instance_that_does_not_share_the_data_fails_clearly(tmp_path: Path) -> None:
    config = tmp_path / "vault.toml"
    config.write_text(INMEMORY_TOML.replace('shared_state = "contract"', ""))
    result = _run(tmp_path, "--ccvault-config", str(config), "-k", "get_or_create")
    assert result.returncode == pytest.ExitCode.TESTS_FAILED, result.stdout[-3000:]
    assert "do not share their data" in result.stdout
    assert "TestConfiguredStoreContract: NOT CONFORMANT" in result.stdout


def test_a_per_process_lock_is_not_conformant_in_zero_code_mode(tmp_path: Path) -> None:
    """A provider found through its entry point, whose stores share one database but each
    serialise with a lock of their own: the second instance zero-code mode opens exposes it."""
    (tmp_path / "lockstep_provider.py").write_text(textwrap.dedent(LOCKSTEP_PROVIDER))
    info = tmp_path / "lockstep_provider-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: lockstep-provider\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[ccvault.providers]\nlockstep = lockstep_provider\n")
    config = tmp_path / "vault.toml"
    config.write_text(
        '[profile]\nstore_provider = "lockstep"\ncache_enabled = false\n'
        'auto_encrypt_pii = false\n\n[providers.lockstep]\ndatabase = "orders"\n'
    )
    result = _run(tmp_path, "--ccvault-config", str(config), "-k", "concurrent_get_or_create")
    assert result.returncode == pytest.ExitCode.TESTS_FAILED, result.stdout[-3000:]
    assert "FAILED" in result.stdout and "test_20_concurrent_get_or_create" in result.stdout
    assert "TestConfiguredStoreContract: NOT CONFORMANT" in result.stdout
    assert "contract gate: 1 of 1 classes not CONFORMANT; the run fails" in result.stdout


def test_zero_code_mode_with_a_relative_config_path(tmp_path: Path) -> None:
    (tmp_path / "vault.toml").write_text(INMEMORY_TOML)
    result = _run(
        tmp_path,
        "--ccvault-config",
        "vault.toml",
        "-k",
        "get_or_create",
        "--ccvault-allow-incomplete",
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert " passed" in result.stdout.strip().splitlines()[-1]
    assert "TestConfiguredStoreContract: INCOMPLETE" in result.stdout


def test_without_a_config_the_zero_code_module_is_skipped(tmp_path: Path) -> None:
    result = _run(tmp_path, "-rs")
    # pytest's "no tests collected" exit status: the module skipped itself
    assert result.returncode == pytest.ExitCode.NO_TESTS_COLLECTED, result.stdout + result.stderr
    assert "needs --ccvault-config" in " ".join(result.stdout.split())
    assert "1 skipped" in result.stdout


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ('[profile]\nstore_provider = "nosuchdb"\n', "no storage provider named 'nosuchdb'"),
        ('[profile]\nstore_provider = "inmemory"\n[providers.inmemory]\nbogus = 1\n', "bogus"),
        ("[profile\n", "not valid TOML"),
    ],
    ids=["unknown-provider", "unknown-key", "bad-toml"],
)
def test_a_bad_config_fails_with_a_clear_error(tmp_path: Path, toml: str, message: str) -> None:
    config = tmp_path / "vault.toml"
    config.write_text(toml)
    result = _run(tmp_path, "--ccvault-config", str(config), "-k", "get_or_create")
    assert result.returncode != 0
    assert message in result.stdout + result.stderr, result.stdout[-3000:]
