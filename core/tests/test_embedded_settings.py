"""The embedded settings (issue 17): the same wherever the process starts, data in
``$CCVAULT_DATA_DIR`` (``$XDG_DATA_HOME/ccvault``, ``~/.local/share/ccvault``), and a local
key generated once, mode 0600, only when no keyring is configured; every load says where its
settings came from, by name only.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

import ccvault
from ccvault import errors
from ccvault.crypto import Keyring, generate_key_entry
from ccvault.settings import data_dir, embedded_settings

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in list(os.environ):
        if name.startswith(("CCVAULT_", "PROFILE_PII_", "XDG_")):
            monkeypatch.delenv(name)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    return home


def test_the_data_dir_never_depends_on_the_working_directory(
    _home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert data_dir() == _home / ".local" / "share" / "ccvault"
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert data_dir() == tmp_path / "xdg" / "ccvault"
    monkeypatch.setenv("CCVAULT_DATA_DIR", str(tmp_path / "explicit"))
    assert data_dir() == tmp_path / "explicit"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CCVAULT_DATA_DIR", "relative")
    assert data_dir() == tmp_path / "relative"  # made absolute once, at load


def test_embedded_settings_generate_a_private_local_key_once(
    _home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.chdir(tmp_path)
    first = embedded_settings()
    folder = _home / ".local" / "share" / "ccvault"
    key = folder / "pii.key"
    assert first.profile.store_provider == "sqlite" and not first.profile.cache_enabled
    assert first.provider_options("sqlite")["path"] == str(folder / "vault.db")
    assert first.worker.lease_dir == str(folder / "leases")
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    keyring = first.profile.pii_encryption_key_id.get_secret_value()
    assert Keyring.parse(keyring).current == "local"
    assert any("for local use only" in r.getMessage() for r in caplog.records)
    assert keyring not in caplog.text and keyring not in repr(first)
    assert first.sources()[-1] == f"generated local key file {key}"
    caplog.clear()
    second = embedded_settings()
    assert second.profile.pii_encryption_key_id.get_secret_value() == keyring
    assert second.sources()[-1] == f"local key file {key}"
    assert not any("for local use only" in r.getMessage() for r in caplog.records)
    assert sorted(p.name for p in folder.iterdir()) == ["pii.key"]  # no draft left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home"]  # nothing in the cwd


def test_a_configured_keyring_wins_and_no_file_is_written(
    _home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    entry = generate_key_entry("prod1")
    monkeypatch.setenv("PROFILE_PII_ENCRYPTION_KEY", entry)
    settings = embedded_settings()
    assert settings.profile.pii_encryption_key_id.get_secret_value() == entry
    assert not (_home / ".local" / "share" / "ccvault" / "pii.key").exists()
    assert any("PROFILE_PII_ENCRYPTION_KEY" in source for source in settings.sources())


def test_encryption_off_needs_no_key(_home: Path) -> None:
    settings = embedded_settings(auto_encrypt_pii=False)
    assert not (_home / ".local").exists()
    assert settings.sources()[-1] == "keyword overrides auto_encrypt_pii"


def test_a_key_file_readable_by_others_is_refused(_home: Path) -> None:
    embedded_settings()
    key = _home / ".local" / "share" / "ccvault" / "pii.key"
    key.chmod(0o644)
    with pytest.raises(errors.ConfigurationError, match="readable by other users") as caught:
        embedded_settings()
    assert key.read_text().strip() not in str(caught.value)


def test_the_file_and_the_function_are_the_same_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROFILE_PII_ENCRYPTION_KEY", generate_key_entry("k1"))
    from_file = ccvault.load_settings(REPO / "config" / "embedded.toml")
    from_code = embedded_settings()
    # the file also spells out the providers' defaults; the sqlite path is the one that matters
    assert from_file.model_dump(exclude={"providers"}) == from_code.model_dump(
        exclude={"providers"}
    )
    sqlite = from_file.provider_options("sqlite")["path"]
    assert sqlite == from_code.provider_options("sqlite")["path"]


def test_the_environment_still_overrides_the_embedded_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CCVAULT_PROVIDERS__SQLITE__PATH", str(tmp_path / "elsewhere.db"))
    monkeypatch.setenv("CCVAULT_PROFILE__AUTO_ENCRYPT_PII", "false")
    settings = embedded_settings()
    assert settings.provider_options("sqlite")["path"] == str(tmp_path / "elsewhere.db")


def test_two_processes_starting_at_once_share_one_key(_home: Path) -> None:
    script = (
        "from ccvault.settings import embedded_settings;"
        "print(embedded_settings().profile.pii_encryption_key_id.get_secret_value())"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    processes = [
        subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    keys = {process.communicate(timeout=60)[0].strip() for process in processes}
    assert all(process.returncode == 0 for process in processes)
    assert len(keys) == 1 and "" not in keys
