"""``ccvault profile purge`` and ``profile export`` by data subject (issue 12, finding 1):
every profile the identity ever belonged to, a dry run that prints the same report and
erases nothing, the not-found exit code, and no personal data in the report."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import pytest
from click.testing import CliRunner

from ccvault.cli import EXIT_NOT_FOUND, cli
from ccvault.models import Channel, Consent, ProfileField
from ccvault_inmemory import InMemoryProfileStore

TENANT = uuid4()
PHONE = "+4915112345678"
EMAIL = "subject.cli@example.com"


@pytest.fixture
def shared(shared_provider: Any) -> Any:
    return shared_provider("erasuretest", InMemoryProfileStore())


@pytest.fixture
def config(tmp_path: Path, shared: Any) -> Path:
    path = tmp_path / "vault.toml"
    path.write_text(
        '[profile]\nstore_provider = "erasuretest"\ncache_enabled = false\n'
        "auto_encrypt_pii = false\n"
    )
    return path


async def _seed(db: InMemoryProfileStore) -> dict[str, UUID]:
    """The subject: an earlier profile soft-deleted, the live one, one merged into it."""
    old = await db.get_or_create(TENANT, Channel.WHATSAPP, PHONE)
    await db.update_field(TENANT, old.id, ProfileField(name="name", value="Ana Old"))
    await db.delete(TENANT, old.id)
    live = await db.get_or_create(TENANT, Channel.WHATSAPP, PHONE)
    await db.update_field(TENANT, live.id, ProfileField(name="name", value="Ana"))
    away = await db.get_or_create(TENANT, Channel.EMAIL, EMAIL)
    found = await db.get_by_id(TENANT, away.id)
    assert found is not None
    found.consents = [Consent(consent_type="mail", granted=True, ip_address="192.0.2.1")]
    await db.save(found)
    await db.merge_profiles(TENANT, away.id, live.id)
    other = await db.get_or_create(TENANT, Channel.SMS, "+3100000000")
    return {"old": old.id, "live": live.id, "away": away.id, "other": other.id}


def _invoke(config: Path, *args: str) -> Any:
    return CliRunner().invoke(cli, ["-c", str(config), *args], catch_exceptions=False)


def _purge(config: Path, *extra: str) -> Any:
    return _invoke(
        config, "profile", "purge", "-t", str(TENANT), "--channel", "whatsapp", "--user", PHONE,
        *extra,
    )  # fmt: skip


def test_purge_dry_run_prints_the_report_and_erases_nothing(shared: Any, config: Path) -> None:
    ids = asyncio.run(_seed(shared.db))
    dry = _purge(config, "--dry-run", "--json")
    assert dry.exit_code == 0, dry.output
    report = json.loads(dry.stdout)
    assert report["dry_run"] is True
    assert {UUID(p["profile_id"]): p["kind"] for p in report["profiles"]} == {
        ids["old"]: "deleted",
        ids["live"]: "live",
        ids["away"]: "merged_away",
    }
    assert report["totals"] == {
        "profiles": 3,
        "field_versions": 2,
        "assets": 0,
        "identities": 3,
        "consents": 1,
        "merge_log_entries": 1,
    }
    assert PHONE not in dry.stdout and EMAIL not in dry.stdout and "192.0.2.1" not in dry.stdout
    assert len(asyncio.run(shared.db.list_profile_ids(TENANT))) == 4
    # the real purge prints the same report (only the flag differs) and erases all three
    done = _purge(config, "--json", "--yes")
    assert done.exit_code == 0, done.output
    erased = json.loads(done.stdout)
    assert erased["dry_run"] is False
    assert {**erased, "dry_run": True} == report
    assert asyncio.run(shared.db.list_profile_ids(TENANT)) == [ids["other"]]
    # nobody left: the not-found exit code, for the dry run too
    assert _purge(config, "--yes").exit_code == EXIT_NOT_FOUND
    assert _purge(config, "--dry-run").exit_code == EXIT_NOT_FOUND


def test_purge_text_report_and_confirmation(shared: Any, config: Path) -> None:
    ids = asyncio.run(_seed(shared.db))
    dry = _purge(config, "--dry-run")  # no confirmation asked: nothing is erased
    assert dry.exit_code == 0
    assert f"profile {ids['away']} would be purged (merged_away" in dry.stdout
    assert "dry run: nothing was erased" in dry.stdout
    refused = CliRunner().invoke(
        cli,
        ["-c", str(config), "profile", "purge", "-t", str(TENANT), "-p", str(ids["old"])],
        input="n\n",
    )
    assert refused.exit_code == 1
    assert len(asyncio.run(shared.db.list_profile_ids(TENANT))) == 4
    # by the earlier profile's id: the same subject
    done = _invoke(config, "profile", "purge", "-t", str(TENANT), "-p", str(ids["old"]), "-y")
    assert done.exit_code == 0, done.output
    for key in ("old", "live", "away"):
        assert f"profile {ids[key]} purged" in done.stdout
    assert "3 profile(s), 2 field version(s)" in done.stdout
    assert PHONE not in done.stdout and EMAIL not in done.stdout


def test_export_by_subject_covers_the_purge_set(shared: Any, config: Path, tmp_path: Path) -> None:
    ids = asyncio.run(_seed(shared.db))
    out = tmp_path / "subject.json"
    exported = _invoke(
        config, "profile", "export", "-t", str(TENANT), "--channel", "whatsapp", "--user", PHONE,
        "-o", str(out),
    )  # fmt: skip
    assert exported.exit_code == 0, exported.output
    document = json.loads(out.read_text())
    assert document["format"] == "ccvault.subject-export/1"
    assert {UUID(p["profile"]["id"]) for p in document["profiles"]} == {
        ids["old"],
        ids["live"],
        ids["away"],
    }
    old = next(p["profile"] for p in document["profiles"] if p["kind"] == "deleted")
    assert old["field_history"]["name"][0]["value"] == "Ana Old"
    # -p alone keeps the one-profile document; with --subject the whole subject
    single = json.loads(
        _invoke(config, "profile", "export", "-t", str(TENANT), "-p", str(ids["old"])).stdout
    )
    assert single["format"] == "ccvault.export/1"
    whole = json.loads(
        _invoke(
            config, "profile", "export", "-t", str(TENANT), "-p", str(ids["old"]), "--subject"
        ).stdout
    )
    assert len(whole["profiles"]) == 3
    missing = _invoke(config, "profile", "export", "-t", str(TENANT), "--customer-id", str(uuid4()))
    assert missing.exit_code == EXIT_NOT_FOUND
