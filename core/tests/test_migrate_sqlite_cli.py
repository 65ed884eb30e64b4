"""``ccvault migrate`` and ``config check`` on a SQLite file: the explicit step, the
``migrate_on_start`` of the embedded default, and nothing created by a status or a check."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner, Result

from ccvault.cli import cli


def _config(tmp_path: Path, *, migrate_on_start: bool) -> tuple[Path, Path]:
    db = tmp_path / "data" / "vault.db"
    path = tmp_path / "vault.toml"
    path.write_text(
        "[profile]\n"
        'store_provider = "sqlite"\n'
        "cache_enabled = false\n"
        "auto_encrypt_pii = false\n"
        "[providers.sqlite]\n"
        f'path = "{db}"\n'
        f"migrate_on_start = {'true' if migrate_on_start else 'false'}\n"
    )
    return path, db


def _invoke(config: Path, *args: str) -> Result:
    return CliRunner().invoke(cli, ["--config", str(config), *args])


def test_status_check_and_start_create_nothing_until_migrate(tmp_path: Path) -> None:
    config, db = _config(tmp_path, migrate_on_start=False)
    status = _invoke(config, "--json", "migrate", "--status")
    assert status.exit_code == 6
    assert json.loads(status.stdout)["current"] == 0
    check = _invoke(config, "--json", "config", "check")
    assert check.exit_code == 6
    schema = next(c for c in json.loads(check.stdout)["checks"] if c["check"] == "schema")
    assert not schema["ok"] and "ccvault migrate" in schema["detail"]
    start = _invoke(config, "expire")
    assert start.exit_code == 6 and "ccvault migrate" in start.stderr
    assert not db.exists() and not db.parent.exists()

    dry = _invoke(config, "migrate", "--dry-run")
    assert dry.exit_code == 0 and "CREATE TABLE IF NOT EXISTS profiles" in dry.stdout
    assert not db.exists()

    applied = _invoke(config, "migrate")
    assert applied.exit_code == 0 and "applied migration 1:" in applied.stdout
    assert "up to date" in _invoke(config, "migrate").stdout
    assert _invoke(config, "migrate", "--status").exit_code == 0
    assert _invoke(config, "config", "check").exit_code == 0
    assert _invoke(config, "expire").exit_code == 0


def test_migrate_on_start_passes_config_check_without_creating_the_file(tmp_path: Path) -> None:
    config, db = _config(tmp_path, migrate_on_start=True)
    check = _invoke(config, "--json", "config", "check")
    assert check.exit_code == 0, check.output
    schema = next(c for c in json.loads(check.stdout)["checks"] if c["check"] == "schema")
    assert schema["ok"] and "migrate_on_start" in schema["detail"]
    assert not db.exists()  # config check never migrates, even where starting would
    assert _invoke(config, "expire").exit_code == 0  # starting migrates: the embedded way
    assert db.exists()
    assert _invoke(config, "migrate", "--status").exit_code == 0
