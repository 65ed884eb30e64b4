"""``PRAGMA optimize`` as SQLite recommends for long-lived connections: ``optimize=0x10002``
when the store opens, plain ``optimize`` before it closes; best effort, never waiting for
another process's write lock (the plans do not depend on its statistics:
test_query_plans.py)."""

from __future__ import annotations

from pathlib import Path
from uuid import uuid4

from ccvault.models import Channel
from ccvault_sqlite import SqliteProfileStore, SqliteSettings


async def test_optimize_runs_at_open_and_before_close(tmp_path: Path) -> None:
    settings = SqliteSettings(path=str(tmp_path / "vault.db"), migrate_on_start=True)
    store = SqliteProfileStore(settings)
    await store.setup()
    try:
        tenant = uuid4()
        await store.get_or_create(tenant, Channel.WEB, "visitor")
        seen: list[str] = []
        await store.connection.set_trace_callback(seen.append)
    finally:
        await store.aclose()
    assert "PRAGMA optimize" in seen
    # analysis bounded, and the lock wait restored after a no-wait optimize
    assert any(s.startswith("PRAGMA analysis_limit") for s in seen)
    assert seen[-1].startswith("PRAGMA busy_timeout = ")
