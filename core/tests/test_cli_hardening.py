"""Issue 12: customer strings in the CLI are never markup and never reach the terminal with
control characters; exports are private files; arguments are not echoed in errors."""

from __future__ import annotations

import asyncio
import json
import os
import stat
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import pytest
from click.testing import CliRunner

from ccvault import errors
from ccvault.cli import _one_line, cli
from ccvault.models import Channel, ProfileAsset, ProfileField
from ccvault_inmemory import InMemoryProfileStore

TENANT = uuid4()
# the store refuses C0 controls in channel ids; C1 (\x9b is CSI), bidi and markup pass it
HOSTILE_ID = "ann[/]x[bold]\x9b31m\u202eevil\u2028x"
HOSTILE_VALUE = "[red]x[/] \x1b]0;pwned\x07\x1b[31mred\x1b[0m \u202egnp.exe\u2028next\x00"
RAW_CONTROLS = ("\x1b", "\x07", "\x9b", "\u202e", "\u2028", "\x00")


@pytest.fixture
def shared(shared_provider: Any) -> Any:
    """A provider "clihard" whose stores share one in-memory database (conftest.py)."""
    return shared_provider("clihard")


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "vault.toml"
    path.write_text(
        '[profile]\nstore_provider = "clihard"\ncache_enabled = false\nauto_encrypt_pii = false\n'
    )
    return path


async def _seed(db: InMemoryProfileStore) -> UUID:
    pid = (await db.get_or_create(TENANT, Channel.WHATSAPP, HOSTILE_ID)).id
    await db.update_field(TENANT, pid, ProfileField(name="nickname", value=HOSTILE_VALUE))
    await db.add_asset(
        TENANT,
        pid,
        ProfileAsset(
            name="scan",
            asset_type="id_document",
            storage_provider="s3",
            storage_path="bucket/[/]\x1b[2J",
            mime_type="image/png",
            size_bytes=1,
            checksum="0" * 64,
        ),
    )
    return pid


def _run(*args: str) -> Any:
    return CliRunner().invoke(cli, list(args))


def test_profile_show_renders_hostile_strings_as_plain_escaped_text(
    shared: Any, config: Path
) -> None:
    pid = asyncio.run(_seed(shared.db))
    result = _run("-c", str(config), "profile", "show", "-t", str(TENANT), "-p", str(pid))
    assert result.exit_code == 0, result.output  # `[/]` used to crash rich's markup parser
    assert "ann[/]x[bold]" in result.stdout  # shown literally, not as markup
    assert "[red]x[/]" in result.stdout
    assert "bucket/[/]" in result.stdout
    for raw in RAW_CONTROLS:
        assert raw not in result.stdout
    assert "\\x9b31m\\u202eevil\\u2028x" in result.stdout  # visible escapes


def test_json_outputs_carry_no_raw_control_characters(
    shared: Any, config: Path, tmp_path: Path
) -> None:
    pid = asyncio.run(_seed(shared.db))
    shown = _run("-c", str(config), "profile", "show", "-t", str(TENANT), "-p", str(pid), "--json")
    exported = _run("-c", str(config), "profile", "export", "-t", str(TENANT), "-p", str(pid))
    for result in (shown, exported):
        assert result.exit_code == 0, result.output
        for raw in RAW_CONTROLS:
            assert raw not in result.stdout
    # the same JSON: the characters are escaped, not lost
    assert json.loads(shown.stdout)["fields"]["nickname"]["value"] == HOSTILE_VALUE
    document = json.loads(exported.stdout)
    assert document["profile"]["channel_identities"][0]["channel_user_id"] == HOSTILE_ID


@pytest.mark.parametrize("existing", [False, True])
def test_export_file_is_private(shared: Any, config: Path, tmp_path: Path, existing: bool) -> None:
    pid = asyncio.run(_seed(shared.db))
    out = tmp_path / "export.json"
    if existing:
        out.write_text("old")
        os.chmod(out, 0o644)
    old_umask = os.umask(0o022)
    try:
        result = _run(
            "-c",
            str(config),
            "profile",
            "export",
            "-t",
            str(TENANT),
            "-p",
            str(pid),
            "-o",
            str(out),
        )
    finally:
        os.umask(old_umask)
    assert result.exit_code == 0, result.output
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert json.loads(out.read_text())["profile"]["id"] == str(pid)


def test_a_mistyped_argument_is_not_echoed(shared: Any, config: Path) -> None:
    result = _run("-c", str(config), "profile", "show", "-t", "ana.lopez@example.com", "-p", "x")
    assert result.exit_code == 2
    assert "not a UUID" in result.stderr and "ana.lopez@example.com" not in result.stderr


def test_error_lines_carry_no_control_characters() -> None:
    line = _one_line(errors.ConflictError("identity \x1b]0;pwned\x07\x1b[2J\u202e taken\nnow"))
    for raw in RAW_CONTROLS:
        assert raw not in line
    assert "\n" not in line and "\\x1b" in line


def test_a_bad_uuid_argument_is_not_echoed_by_the_store() -> None:
    from ccvault.store import check_uuid

    with pytest.raises(errors.ValidationError, match="tenant_id must be a UUID") as raised:
        check_uuid("ana.lopez@example.com", "tenant_id")
    assert "ana.lopez" not in str(raised.value)


def test_export_to_a_pipe_leaves_the_pipe_alone(shared: Any, config: Path, tmp_path: Path) -> None:
    pid = asyncio.run(_seed(shared.db))
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo, 0o644)
    os.chmod(fifo, 0o644)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # so that the writer can open it
    try:
        result = _run(
            "-c",
            str(config),
            "profile",
            "export",
            "-t",
            str(TENANT),
            "-p",
            str(pid),
            "-o",
            str(fifo),
        )
        assert result.exit_code == 0, result.output
        data = os.read(reader, 1 << 16)
    finally:
        os.close(reader)
    assert json.loads(data)["profile"]["id"] == str(pid)
    assert _mode(fifo) == 0o644  # `-o /dev/stdout` must not chmod the terminal or a pipe


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)
