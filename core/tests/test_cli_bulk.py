"""``ccvault expire``, ``mark-orphans`` and ``status`` on an SQLite vault: bulk jobs in
batches of ``--batch-size`` (or ``[worker] batch_size``), with per-tenant summaries in JSON."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner

import ccvault
from ccvault.cli import cli
from ccvault.models import Channel, ProfileField, SourceType, utcnow

_STALE = 7


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "vault.toml"
    path.write_text(
        "[profile]\n"
        'store_provider = "sqlite"\n'
        "cache_enabled = false\n"
        "auto_encrypt_pii = false\n"
        f'[providers.sqlite]\npath = "{tmp_path / "vault.db"}"\n'
        "[worker]\nbatch_size = 2\n"
    )
    asyncio.run(ccvault.migrate_schema(ccvault.load_settings(path)))
    return path


async def _seed(config: Path) -> uuid.UUID:
    """One tenant: _STALE profiles with one stale field each, one with 3 orphans."""
    tenant = uuid.uuid4()
    past = utcnow() - timedelta(minutes=1)
    async with ccvault.open_store(ccvault.load_settings(config)) as store:
        for number in range(_STALE):
            pid = (await store.get_or_create(tenant, Channel.WEB, f"user-{number}")).id
            await store.update_field(
                tenant, pid, ProfileField(name="otp", value=number, expires_at=past)
            )
        pid = (await store.get_or_create(tenant, Channel.WEB, "derived")).id
        for number in range(3):
            await store.update_field(
                tenant,
                pid,
                ProfileField(
                    name=f"derived_{number}",
                    value=number,
                    source_item_id=uuid.uuid4(),
                    source_item_type=SourceType.PROFILE_FIELD,
                ),
            )
    return tenant


def _json(config: Path, *args: str) -> dict[str, object]:
    result = CliRunner().invoke(cli, ["-c", str(config), "--json", *args])
    assert result.exit_code == 0, result.output
    document: dict[str, object] = json.loads(result.stdout)
    return document


def test_expire_runs_in_batches_of_the_configured_size_and_reports_them(config: Path) -> None:
    tenant = asyncio.run(_seed(config))
    document = _json(config, "expire")
    assert document["expired"] == _STALE and document["batch_size"] == 2
    entry = document["tenants"][str(tenant)]  # type: ignore[index]
    assert entry["rows"] == _STALE and entry["batches"] == 4  # 2, 2, 2, 1
    assert entry["rows_per_second"] >= 0
    again = _json(config, "expire", "--batch-size", "5")
    assert again["expired"] == 0 and again["batch_size"] == 5


def test_expire_prints_a_line_per_tenant(config: Path) -> None:
    tenant = asyncio.run(_seed(config))
    result = CliRunner().invoke(cli, ["-c", str(config), "expire", "--batch-size", "3"])
    assert result.exit_code == 0, result.output
    assert f"tenant {tenant}: {_STALE} field(s) expired in 3 batch(es)" in result.stdout
    assert f"total: {_STALE} field(s) expired in 1 tenant(s)" in result.stdout


def test_mark_orphans_runs_in_batches(config: Path) -> None:
    tenant = asyncio.run(_seed(config))
    document = _json(config, "mark-orphans")
    assert document["orphaned"] == 3
    assert document["tenants"][str(tenant)]["batches"] == 2  # type: ignore[index]


def test_status_reports_counts_by_status(config: Path) -> None:
    tenant = asyncio.run(_seed(config))
    _json(config, "expire")
    estimated = _json(config, "status")
    exact = _json(config, "status", "--exact", "--tenant", str(tenant))
    assert estimated["exact"] is False and exact["exact"] is True
    for document in (estimated, exact):
        fields = document["tenants"][str(tenant)]["fields"]  # type: ignore[index]
        assert fields["expired"] == _STALE and fields["active"] == 3


def test_a_bad_batch_size_is_refused_before_anything_runs(config: Path) -> None:
    asyncio.run(_seed(config))
    result = CliRunner().invoke(cli, ["-c", str(config), "expire", "--batch-size", "0"])
    assert result.exit_code != 0
    assert "batch-size" in result.output
