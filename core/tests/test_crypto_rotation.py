"""rotate-keys: batched, with progress, and one undecryptable row neither stops the run
nor goes unnamed (issue 12, smaller items)."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from click.testing import CliRunner

from ccvault.cli import cli
from ccvault.crypto import (
    EncryptedProfileStore,
    Keyring,
    RotationProgress,
    generate_key_entry,
    key_id_of,
)
from ccvault.models import Channel, ProfileField, ProfileFieldDefinition
from ccvault_inmemory import InMemoryProfileStore

TENANT = UUID("8d4d3a52-0000-4000-8000-000000000001")
AGENT = UUID("8d4d3a52-0000-4000-8000-000000000002")
SECRET = "tampered-row-secret@example.com"


def _tamper(envelope: str) -> str:
    """The same envelope with one ciphertext byte flipped: it no longer authenticates."""
    head, _, body = envelope.rpartition(":")
    raw = bytearray(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    raw[-1] ^= 0x01
    return f"{head}:{base64.urlsafe_b64encode(bytes(raw)).decode().rstrip('=')}"


async def _seed(db: InMemoryProfileStore, k1: str) -> tuple[list[UUID], UUID]:
    """Five profiles with two sealed email versions each; one version of the *second*
    profile (in id order) is tampered. Returns the profile ids (sorted) and the bad id."""
    store = EncryptedProfileStore(db, Keyring.parse(k1))
    await store.save_field_definition(
        ProfileFieldDefinition(tenant_id=TENANT, agent_id=AGENT, name="email", is_pii=True)
    )
    for n in range(5):
        pid = (await store.get_or_create(TENANT, Channel.WHATSAPP, f"+3161000000{n}")).id
        await store.update_field(TENANT, pid, ProfileField(name="email", value=f"old{n}@x.org"))
        value = SECRET if n == 0 else f"new{n}@x.org"
        await store.update_field(TENANT, pid, ProfileField(name="email", value=value))
    pids = sorted(await db.list_profile_ids(TENANT))
    victim = pids[1]
    history = await db.get_field_history(TENANT, victim, "email")
    bad = history[0]
    assert isinstance(bad.value, str)
    await db._rewrite_field_payloads(
        TENANT, victim, {bad.id: (_tamper(bad.value), bad.source_metadata)}
    )
    return pids, bad.id


async def test_one_undecryptable_row_is_named_and_the_run_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    db = InMemoryProfileStore()
    k1, k2 = generate_key_entry("k1"), generate_key_entry("k2")
    pids, bad_id = await _seed(db, k1)
    store = EncryptedProfileStore(db, Keyring.parse(f"{k1},{k2}"))
    seen: list[RotationProgress] = []
    with caplog.at_level(logging.WARNING, logger="ccvault.crypto"):
        # before the fix the first bad row raised EncryptionError and stopped the run
        reports = await store.rotate_keys([TENANT], progress=seen.append, batch_size=2)
    (report,) = reports
    assert report.profiles == 5
    (failure,) = report.failures
    assert (failure.tenant_id, failure.profile_id, failure.item_id, failure.key_id) == (
        TENANT,
        pids[1],
        bad_id,
        "k1",
    )
    # every other version, of the same profile and of every later one, is under k2
    assert report.rewritten == 5 * 2 - 1
    for pid in pids:
        for version in await db.get_field_history(TENANT, pid, "email"):
            assert key_id_of(version.value) == ("k1" if version.id == bad_id else "k2")
    # the log names the row, never a value
    text = caplog.text
    assert str(bad_id) in text and str(pids[1]) in text and "k1" in text
    assert "@x.org" not in text and SECRET not in text
    # progress after each batch of at most 2: 3 batches, the last one complete
    assert [p.profiles_done for p in seen] == [2, 4, 5]
    assert all(p.profiles_total == 5 for p in seen)
    assert seen[-1].failed == 1 and seen[-1].rewritten == 9
    assert seen[-1].eta_seconds in (None, 0.0)


async def test_rotate_keys_refuses_a_batch_size_out_of_range() -> None:
    from ccvault import errors

    store = EncryptedProfileStore(InMemoryProfileStore(), Keyring.parse(generate_key_entry("k")))
    with pytest.raises(errors.ValidationError, match="batch_size"):
        await store.rotate_keys([TENANT], batch_size=0)


@pytest.fixture
def shared(shared_provider: Any) -> Any:
    return shared_provider("sealrotate", InMemoryProfileStore())


def test_cli_rotate_keys_completes_with_errors_and_names_the_row(
    shared: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    k1, k2 = generate_key_entry("k1"), generate_key_entry("k2")
    pids, bad_id = asyncio.run(_seed(shared.db, k1))
    monkeypatch.setenv("PROFILE_PII_ENCRYPTION_KEY", f"{k1},{k2}")
    config = tmp_path / "vault.toml"
    config.write_text(
        '[profile]\nstore_provider = "sealrotate"\ncache_enabled = false\nauto_encrypt_pii = true\n'
    )
    result = CliRunner().invoke(cli, ["-c", str(config), "--json", "rotate-keys"])
    # exit 1: completed with errors (docs/operations.md, CLI exit codes)
    assert result.exit_code == 1, result.output
    report = json.loads(result.stdout)
    assert report["rewritten"] == 9 and report["profiles"] == 5
    assert [(f["profile_id"], f["item_id"], f["key_id"]) for f in report["failed"]] == [
        (str(pids[1]), str(bad_id), "k1")
    ]
    assert "completed with errors" in result.stderr
    assert SECRET not in result.output and "@x.org" not in result.stderr
    # plain text: the row is named on stdout
    again = CliRunner().invoke(cli, ["-c", str(config), "rotate-keys"])
    assert again.exit_code == 1
    assert f"field version {bad_id} key id 'k1'" in again.stdout
    assert "re-encrypted 0 field version(s) in 5 profile(s)" in again.stdout
