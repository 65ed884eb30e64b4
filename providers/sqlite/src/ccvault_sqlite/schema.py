"""The relational schema and its versioned migrations.

Every table's keys and indexes lead with ``tenant_id``. Field versions and assets carry a
``seq`` column: a per-tenant, strictly increasing write-order number (assigned as
``MAX(seq)+1`` inside the writing transaction, which holds SQLite's single write lock), so
history ties on ``collected_at`` are broken by write order and the order survives
``VACUUM`` (a rowid would not).

Timestamps are stored as fixed-width ISO-8601 UTC text (``YYYY-MM-DDTHH:MM:SS.ffffff+00:00``)
so text order is time order; JSON values as JSON text; UUIDs as canonical text; booleans as
0/1.

Migrations are applied by :func:`migrate` (``ccvault migrate``, i.e.
``SqliteProfileStore.migrate()``; at start only with ``migrate_on_start`` or for a private
``:memory:`` database) inside one ``BEGIN IMMEDIATE`` transaction: the first of several
migrators applies them, the others wait for the write lock and then find nothing left to do.
Each applied version is recorded in ``ccvault_schema_version``. A database whose recorded
version is newer than :data:`LATEST_VERSION` is refused with
:class:`~ccvault.errors.SchemaVersionError` before anything is written.
"""

from __future__ import annotations

from dataclasses import dataclass

import aiosqlite

from ccvault import errors
from ccvault.migration import SchemaStatus, SchemaStep

__all__ = [
    "LATEST_VERSION",
    "MIGRATIONS",
    "OWN_TABLES",
    "VERSION_TABLE",
    "Migration",
    "migrate",
    "read_version",
    "status_at",
]

VERSION_TABLE = "ccvault_schema_version"

#: The tables this provider creates (besides the version table).
OWN_TABLES = (
    "profiles",
    "channel_identities",
    "consents",
    "fields",
    "assets",
    "field_definitions",
    "scenario_requirements",
    "released_identities",
    "merge_log",
)


@dataclass(frozen=True)
class Migration:
    """One schema step: ``statements`` run in order inside the migration transaction."""

    version: int
    description: str
    statements: tuple[str, ...]

    def step(self) -> SchemaStep:
        """The step as reported by ``schema_status()`` / ``migrate()``: its SQL, as run."""
        return SchemaStep(
            self.version, self.description, tuple(" ".join(s.split()) for s in self.statements)
        )


_V1 = (
    f"""
    CREATE TABLE IF NOT EXISTS {VERSION_TABLE} (
        version     INTEGER PRIMARY KEY,
        description TEXT NOT NULL,
        applied_at  TEXT NOT NULL
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS profiles (
        tenant_id           TEXT NOT NULL,
        id                  TEXT NOT NULL,
        customer_id         TEXT NOT NULL,
        verification_level  TEXT NOT NULL,
        created_at          TEXT NOT NULL,
        updated_at          TEXT NOT NULL,
        last_interaction_at TEXT,
        deleted_at          TEXT,
        PRIMARY KEY (tenant_id, id)
    )
    """,
    # one live profile per customer id; a deleted one no longer claims it
    """
    CREATE UNIQUE INDEX IF NOT EXISTS profiles_live_customer
        ON profiles (tenant_id, customer_id) WHERE deleted_at IS NULL
    """,
    # identities of a deleted profile are deleted with the soft delete (released), so the
    # plain unique key below only ever holds identities of live profiles
    """
    CREATE TABLE IF NOT EXISTS channel_identities (
        tenant_id       TEXT NOT NULL,
        channel         TEXT NOT NULL,
        channel_user_id TEXT NOT NULL,
        profile_id      TEXT NOT NULL,
        position        INTEGER NOT NULL,
        verified        INTEGER NOT NULL,
        verified_at     TEXT,
        is_primary      INTEGER NOT NULL,
        created_at      TEXT NOT NULL,
        PRIMARY KEY (tenant_id, channel, channel_user_id),
        FOREIGN KEY (tenant_id, profile_id) REFERENCES profiles (tenant_id, id)
            ON DELETE CASCADE
    )
    """,
    """
    CREATE INDEX IF NOT EXISTS channel_identities_profile
        ON channel_identities (tenant_id, profile_id, position)
    """,
    """
    CREATE TABLE IF NOT EXISTS consents (
        tenant_id         TEXT NOT NULL,
        profile_id        TEXT NOT NULL,
        position          INTEGER NOT NULL,
        consent_type      TEXT NOT NULL,
        granted           INTEGER NOT NULL,
        granted_at        TEXT,
        revoked_at        TEXT,
        source_session_id TEXT,
        ip_address        TEXT,
        PRIMARY KEY (tenant_id, profile_id, position),
        FOREIGN KEY (tenant_id, profile_id) REFERENCES profiles (tenant_id, id)
            ON DELETE CASCADE
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS fields (
        tenant_id             TEXT NOT NULL,
        id                    TEXT NOT NULL,
        profile_id            TEXT NOT NULL,
        name                  TEXT NOT NULL,
        value                 TEXT NOT NULL,
        value_type            TEXT NOT NULL,
        source                TEXT NOT NULL,
        source_session_id     TEXT,
        source_scenario_id    TEXT,
        source_step_id        TEXT,
        source_item_id        TEXT,
        source_item_type      TEXT,
        source_metadata       TEXT NOT NULL,
        status                TEXT NOT NULL,
        superseded_by_id      TEXT,
        superseded_at         TEXT,
        verified              INTEGER NOT NULL,
        verification_method   TEXT,
        verified_at           TEXT,
        verified_by           TEXT,
        confidence            REAL NOT NULL,
        requires_confirmation INTEGER NOT NULL,
        collected_at          TEXT NOT NULL,
        updated_at            TEXT NOT NULL,
        expires_at            TEXT,
        field_definition_id   TEXT,
        seq                   INTEGER NOT NULL,
        PRIMARY KEY (tenant_id, id),
        FOREIGN KEY (tenant_id, profile_id) REFERENCES profiles (tenant_id, id)
            ON DELETE CASCADE
    )
    """,
    # THE invariant: at most one ACTIVE version per (tenant, profile, name)
    """
    CREATE UNIQUE INDEX IF NOT EXISTS fields_one_active
        ON fields (tenant_id, profile_id, name) WHERE status = 'active'
    """,
    """
    CREATE INDEX IF NOT EXISTS fields_history
        ON fields (tenant_id, profile_id, name, collected_at, seq)
    """,
    "CREATE UNIQUE INDEX IF NOT EXISTS fields_seq ON fields (tenant_id, seq)",
    """
    CREATE TABLE IF NOT EXISTS assets (
        tenant_id               TEXT NOT NULL,
        id                      TEXT NOT NULL,
        profile_id              TEXT NOT NULL,
        name                    TEXT NOT NULL,
        asset_type              TEXT NOT NULL,
        storage_provider        TEXT NOT NULL,
        storage_path            TEXT NOT NULL,
        mime_type               TEXT,
        size_bytes              INTEGER NOT NULL,
        checksum                TEXT,
        uploaded_at             TEXT NOT NULL,
        uploaded_in_session_id  TEXT,
        uploaded_in_scenario_id TEXT,
        source_item_id          TEXT,
        source_item_type        TEXT,
        derived_from_tool       TEXT,
        status                  TEXT NOT NULL,
        superseded_by_id        TEXT,
        superseded_at           TEXT,
        verified                INTEGER NOT NULL,
        verification_result     TEXT,
        retention_policy        TEXT,
        expires_at              TEXT,
        analysis_field_ids      TEXT NOT NULL,
        seq                     INTEGER NOT NULL,
        PRIMARY KEY (tenant_id, id),
        FOREIGN KEY (tenant_id, profile_id) REFERENCES profiles (tenant_id, id)
            ON DELETE CASCADE
    )
    """,
    """
    CREATE INDEX IF NOT EXISTS assets_by_name
        ON assets (tenant_id, profile_id, name, uploaded_at, seq)
    """,
    "CREATE UNIQUE INDEX IF NOT EXISTS assets_seq ON assets (tenant_id, seq)",
    """
    CREATE TABLE IF NOT EXISTS field_definitions (
        tenant_id              TEXT NOT NULL,
        id                     TEXT NOT NULL,
        agent_id               TEXT NOT NULL,
        name                   TEXT NOT NULL,
        display_name           TEXT NOT NULL,
        description            TEXT,
        value_type             TEXT NOT NULL,
        validation_regex       TEXT,
        validation_tool_id     TEXT,
        allowed_values         TEXT,
        required_verification  INTEGER NOT NULL,
        verification_methods   TEXT NOT NULL,
        collection_prompt      TEXT,
        extraction_examples    TEXT NOT NULL,
        extraction_prompt_hint TEXT,
        is_pii                 INTEGER NOT NULL,
        encryption_required    INTEGER NOT NULL,
        retention_days         INTEGER,
        freshness_seconds      INTEGER,
        created_at             TEXT NOT NULL,
        updated_at             TEXT NOT NULL,
        enabled                INTEGER NOT NULL,
        PRIMARY KEY (tenant_id, id),
        UNIQUE (tenant_id, agent_id, name)
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS scenario_requirements (
        tenant_id         TEXT NOT NULL,
        id                TEXT NOT NULL,
        agent_id          TEXT NOT NULL,
        scenario_id       TEXT NOT NULL,
        step_id           TEXT,
        rule_id           TEXT,
        field_name        TEXT NOT NULL,
        required_level    TEXT NOT NULL,
        fallback_action   TEXT NOT NULL,
        when_condition    TEXT,
        depends_on_fields TEXT NOT NULL,
        collection_order  INTEGER NOT NULL,
        created_at        TEXT NOT NULL,
        updated_at        TEXT NOT NULL,
        PRIMARY KEY (tenant_id, id)
    )
    """,
    # NULL step/rule ids must compare equal here (SQL NULLs never do), hence ifnull()
    """
    CREATE UNIQUE INDEX IF NOT EXISTS scenario_requirements_key
        ON scenario_requirements
        (tenant_id, scenario_id, ifnull(step_id, ''), ifnull(rule_id, ''), field_name)
    """,
)

_V2 = (
    # lineage: get_derived_items, check_has_dependents, delete_item and mark_orphans look
    # items up by their source; without these they scan the tenant's items
    """
    CREATE INDEX IF NOT EXISTS fields_by_source
        ON fields (tenant_id, source_item_id) WHERE source_item_id IS NOT NULL
    """,
    """
    CREATE INDEX IF NOT EXISTS assets_by_source
        ON assets (tenant_id, source_item_id) WHERE source_item_id IS NOT NULL
    """,
    # the expiry sweep reads only ACTIVE versions that can expire
    """
    CREATE INDEX IF NOT EXISTS fields_expiring
        ON fields (tenant_id, expires_at)
        WHERE status = 'active' AND expires_at IS NOT NULL
    """,
)

_V3 = (
    # the identities a soft-deleted profile held: released (another profile may claim them,
    # so they leave channel_identities) but still held, and exported, until a purge
    """
    CREATE TABLE IF NOT EXISTS released_identities (
        tenant_id       TEXT NOT NULL,
        profile_id      TEXT NOT NULL,
        position        INTEGER NOT NULL,
        channel         TEXT NOT NULL,
        channel_user_id TEXT NOT NULL,
        verified        INTEGER NOT NULL,
        verified_at     TEXT,
        is_primary      INTEGER NOT NULL,
        created_at      TEXT NOT NULL,
        PRIMARY KEY (tenant_id, profile_id, position),
        FOREIGN KEY (tenant_id, profile_id) REFERENCES profiles (tenant_id, id)
            ON DELETE CASCADE
    )
    """,
)

_V4 = (
    # issue 16: per-field survivorship policies, and the merge log (one row per merge; the
    # entry itself is JSON, the columns serve the lookups by profile and the purge)
    "ALTER TABLE field_definitions ADD COLUMN survivorship TEXT NOT NULL DEFAULT 'verified_first'",
    "ALTER TABLE field_definitions ADD COLUMN source_priority TEXT NOT NULL DEFAULT '[]'",
    """
    CREATE TABLE IF NOT EXISTS merge_log (
        tenant_id         TEXT NOT NULL,
        id                TEXT NOT NULL,
        source_profile_id TEXT NOT NULL,
        target_profile_id TEXT NOT NULL,
        merged_at         TEXT NOT NULL,
        unmerged_at       TEXT,
        record            TEXT NOT NULL,
        PRIMARY KEY (tenant_id, id)
    )
    """,
    "CREATE INDEX IF NOT EXISTS merge_log_by_source ON merge_log (tenant_id, source_profile_id)",
    "CREATE INDEX IF NOT EXISTS merge_log_by_target ON merge_log (tenant_id, target_profile_id)",
)

_V5 = (
    # issue 12: a consent's IP address sealed by the encryption wrapper (an envelope
    # string; ip_address then stays NULL)
    "ALTER TABLE consents ADD COLUMN ip_address_sealed TEXT",
)

_V6_DERIVED_ITEMS_KEYSET = (
    # issue 17: mark_orphans pages through a tenant's derived items in id order (keyset
    # pagination): each batch reads at most its limit entries of these indexes
    """
    CREATE INDEX IF NOT EXISTS fields_derived_by_id
        ON fields (tenant_id, id) WHERE source_item_id IS NOT NULL
    """,
    """
    CREATE INDEX IF NOT EXISTS assets_derived_by_id
        ON assets (tenant_id, id) WHERE source_item_id IS NOT NULL
    """,
)

MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "profiles, identities, consents, fields, assets, definitions, requirements", _V1),
    Migration(2, "lineage and expiry indexes", _V2),
    Migration(3, "identities held by soft-deleted profiles", _V3),
    Migration(4, "survivorship policies and the merge log", _V4),
    Migration(5, "sealed consent IP addresses", _V5),
    Migration(6, "keyset index for mark_orphans", _V6_DERIVED_ITEMS_KEYSET),
)

LATEST_VERSION = MIGRATIONS[-1].version


def status_at(version: int, location: str = "") -> SchemaStatus:
    """The status of a database recorded at ``version`` (from :func:`read_version`)."""
    pending = tuple(m.step() for m in MIGRATIONS if version < m.version)
    return SchemaStatus(
        current=version,
        latest=LATEST_VERSION,
        pending=() if version > LATEST_VERSION else pending,
        location=location,
    )


async def read_version(conn: aiosqlite.Connection) -> int:
    """The schema version recorded in the database (0 for a database without our tables).

    Reads only. A database that holds tables named like ours but no version table belongs
    to something else: :class:`~ccvault.errors.StorageError`. A newer version than this code
    knows: :class:`~ccvault.errors.SchemaVersionError`.
    """
    rows = await conn.execute_fetchall(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name IN "
        f"({', '.join('?' * (len(OWN_TABLES) + 1))})",
        (VERSION_TABLE, *OWN_TABLES),
    )
    names = {row[0] for row in rows}
    if VERSION_TABLE not in names:
        if names:
            raise errors.StorageError(
                f"the database already holds table(s) {sorted(names)} but no "
                f"{VERSION_TABLE} table: it was not created by ccvault-sqlite; "
                "point [providers.sqlite] path at a new or ccvault file"
            )
        return 0
    rows = await conn.execute_fetchall(f"SELECT MAX(version) FROM {VERSION_TABLE}")
    version = int(next(iter(rows))[0] or 0)
    if version > LATEST_VERSION:
        raise errors.SchemaVersionError(
            f"the database is at schema version {version}, newer than this ccvault-sqlite "
            f"knows (latest {LATEST_VERSION}); upgrade ccvault-sqlite to open it"
        )
    return version


async def migrate(
    conn: aiosqlite.Connection,
    now: str,
    *,
    target: int = LATEST_VERSION,
    applied: list[Migration] | None = None,
) -> int:
    """Apply every migration above the recorded version up to ``target``; return the version.
    The migrations this call applied are appended to ``applied`` when given (not those a
    concurrent migrator applied before this call got the write lock).

    Runs in one ``BEGIN IMMEDIATE`` transaction, so concurrent starters serialize on
    SQLite's write lock and a failure leaves the database at its previous version. The
    connection must be in autocommit mode (``isolation_level=None``). Busy errors are left
    to the caller to retry.
    """
    done: list[Migration] = []
    await conn.execute("BEGIN IMMEDIATE")
    try:
        version = await read_version(conn)
        for migration in MIGRATIONS:
            if version < migration.version <= target:
                for statement in migration.statements:
                    await conn.execute(statement)
                await conn.execute(
                    f"INSERT INTO {VERSION_TABLE} (version, description, applied_at) "
                    "VALUES (?, ?, ?)",
                    (migration.version, migration.description, now),
                )
                version = migration.version
                done.append(migration)
        await conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            await conn.execute("ROLLBACK")
        raise
    if applied is not None:
        applied.extend(done)
    return version
