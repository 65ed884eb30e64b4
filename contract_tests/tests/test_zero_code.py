"""Zero-code mode: the suite builds the store from a TOML file through the entry point."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

INMEMORY_TOML = """
[profile]
store_provider = "inmemory"
cache_enabled = false
auto_encrypt_pii = false
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
            "-q",
            *args,
        ],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_zero_code_mode_runs_the_whole_suite_against_inmemory(tmp_path: Path) -> None:
    config = tmp_path / "vault.toml"
    config.write_text(INMEMORY_TOML)
    result = _run(tmp_path, "--ccvault-config", str(config))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "TestConfiguredStoreContract: CONFORMANT" in result.stdout
    summary = result.stdout.strip().splitlines()[-1]
    passed = int(summary.split(" passed")[0].split()[-1])
    assert passed > 300, summary
    assert "failed" not in summary and "skipped" not in summary


def test_zero_code_mode_with_a_relative_config_path(tmp_path: Path) -> None:
    (tmp_path / "vault.toml").write_text(INMEMORY_TOML)
    result = _run(tmp_path, "--ccvault-config", "vault.toml", "-k", "get_or_create")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert " passed" in result.stdout.strip().splitlines()[-1]


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
)
def test_a_bad_config_fails_with_a_clear_error(tmp_path: Path, toml: str, message: str) -> None:
    config = tmp_path / "vault.toml"
    config.write_text(toml)
    result = _run(tmp_path, "--ccvault-config", str(config), "-k", "get_or_create")
    assert result.returncode != 0
    assert message in result.stdout + result.stderr, result.stdout[-3000:]
