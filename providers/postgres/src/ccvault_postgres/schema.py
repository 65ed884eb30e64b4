"""The versioned schema of the PostgreSQL provider.

:data:`MIGRATIONS` is an ordered list; :func:`apply_migrations` (``ccvault migrate``, i.e.
``PostgresProfileStore.migrate()``) applies, in one transaction under a transaction-scoped
advisory lock, every migration whose version is not yet recorded in
``ccvault_schema_version``. ``setup()`` only reads the recorded versions
(:func:`read_status`) and refuses a schema that is missing, behind or newer. A migration is
never edited once released: changes go in a new, higher version.

Every primary key, unique constraint and foreign key starts with ``tenant_id``, so the tables
can be distributed by tenant (Citus-style) without redesign.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import asyncpg

from ccvault.migration import SchemaStatus, SchemaStep, require_ready

__all__ = [
    "LATEST_VERSION",
    "MIGRATIONS",
    "VERSION_TABLE",
    "Migration",
    "apply_migrations",
    "bootstrap_statements",
    "read_status",
]

logger = logging.getLogger("ccvault_postgres")

VERSION_TABLE = "ccvault_schema_version"


@dataclass(frozen=True)
class Migration:
    """One schema step: ``sql`` runs inside the migration transaction."""

    version: int
    description: str
    sql: str

    def step(self) -> SchemaStep:
        """The step as reported by ``schema_status()`` / ``migrate()``: its SQL, as run."""
        return SchemaStep(self.version, self.description, (self.sql.strip(),))


_V1 = """
CREATE TABLE customer_profiles (
    tenant_id           uuid        NOT NULL,
    id                  uuid        NOT NULL,
    customer_id         uuid        NOT NULL,
    verification_level  text        NOT NULL,
    created_at          timestamptz NOT NULL,
    updated_at          timestamptz NOT NULL,
    last_interaction_at timestamptz,
    deleted_at          timestamptz,
    merged_into_id      uuid,
    PRIMARY KEY (tenant_id, id)
);
-- a customer id belongs to at most one live profile
CREATE UNIQUE INDEX customer_profiles_live_customer
    ON customer_profiles (tenant_id, customer_id) WHERE deleted_at IS NULL;

CREATE TABLE channel_identities (
    tenant_id       uuid        NOT NULL,
    profile_id      uuid        NOT NULL,
    channel         text        NOT NULL,
    channel_user_id text        NOT NULL,
    verified        boolean     NOT NULL,
    verified_at     timestamptz,
    is_primary      boolean     NOT NULL,
    created_at      timestamptz NOT NULL,
    -- released when the profile is soft-deleted, so the channel user can start afresh
    released        boolean     NOT NULL DEFAULT false,
    seq             bigint      GENERATED ALWAYS AS IDENTITY,
    PRIMARY KEY (tenant_id, profile_id, channel, channel_user_id),
    FOREIGN KEY (tenant_id, profile_id)
        REFERENCES customer_profiles (tenant_id, id) ON DELETE CASCADE
);
-- an identity belongs to at most one live profile
CREATE UNIQUE INDEX channel_identities_owner
    ON channel_identities (tenant_id, channel, channel_user_id) WHERE NOT released;

CREATE TABLE consents (
    tenant_id         uuid        NOT NULL,
    profile_id        uuid        NOT NULL,
    position          integer     NOT NULL,
    consent_type      text        NOT NULL,
    granted           boolean     NOT NULL,
    granted_at        timestamptz,
    revoked_at        timestamptz,
    source_session_id uuid,
    ip_address        text,
    PRIMARY KEY (tenant_id, profile_id, position),
    FOREIGN KEY (tenant_id, profile_id)
        REFERENCES customer_profiles (tenant_id, id) ON DELETE CASCADE
);

CREATE TABLE profile_fields (
    tenant_id             uuid             NOT NULL,
    id                    uuid             NOT NULL,
    profile_id            uuid             NOT NULL,
    name                  text             NOT NULL,
    value                 jsonb,
    value_type            text             NOT NULL,
    source                text             NOT NULL,
    source_session_id     uuid,
    source_scenario_id    uuid,
    source_step_id        uuid,
    source_item_id        uuid,
    source_item_type      text,
    source_metadata       jsonb            NOT NULL,
    status                text             NOT NULL,
    superseded_by_id      uuid,
    superseded_at         timestamptz,
    verified              boolean          NOT NULL,
    verification_method   text,
    verified_at           timestamptz,
    verified_by           text,
    confidence            double precision NOT NULL,
    requires_confirmation boolean          NOT NULL,
    collected_at          timestamptz      NOT NULL,
    updated_at            timestamptz      NOT NULL,
    expires_at            timestamptz,
    field_definition_id   uuid,
    -- write order: breaks ties between versions collected at the same instant
    seq                   bigint           GENERATED ALWAYS AS IDENTITY,
    PRIMARY KEY (tenant_id, id),
    FOREIGN KEY (tenant_id, profile_id)
        REFERENCES customer_profiles (tenant_id, id) ON DELETE CASCADE,
    CHECK (status IN ('active', 'superseded', 'expired', 'orphaned'))
);
-- the invariant: at most one ACTIVE version per (profile, name); also serves active reads
CREATE UNIQUE INDEX profile_fields_one_active
    ON profile_fields (tenant_id, profile_id, name) WHERE status = 'active';
-- history and get_field: newest collected first, then newest write
CREATE INDEX profile_fields_history
    ON profile_fields (tenant_id, profile_id, name, collected_at DESC, seq DESC);
CREATE INDEX profile_fields_source_item
    ON profile_fields (tenant_id, source_item_id) WHERE source_item_id IS NOT NULL;
CREATE INDEX profile_fields_expiry
    ON profile_fields (tenant_id, expires_at) WHERE status = 'active' AND expires_at IS NOT NULL;

CREATE TABLE profile_assets (
    tenant_id               uuid        NOT NULL,
    id                      uuid        NOT NULL,
    profile_id              uuid        NOT NULL,
    name                    text        NOT NULL,
    asset_type              text        NOT NULL,
    storage_provider        text        NOT NULL,
    storage_path            text        NOT NULL,
    mime_type               text,
    size_bytes              bigint      NOT NULL,
    checksum                text,
    uploaded_at             timestamptz NOT NULL,
    uploaded_in_session_id  uuid,
    uploaded_in_scenario_id uuid,
    source_item_id          uuid,
    source_item_type        text,
    derived_from_tool       text,
    status                  text        NOT NULL,
    superseded_by_id        uuid,
    superseded_at           timestamptz,
    verified                boolean     NOT NULL,
    verification_result     jsonb,
    retention_policy        text,
    expires_at              timestamptz,
    analysis_field_ids      uuid[]      NOT NULL,
    seq                     bigint      GENERATED ALWAYS AS IDENTITY,
    PRIMARY KEY (tenant_id, id),
    FOREIGN KEY (tenant_id, profile_id)
        REFERENCES customer_profiles (tenant_id, id) ON DELETE CASCADE,
    CHECK (status IN ('active', 'superseded', 'expired', 'orphaned'))
);
CREATE INDEX profile_assets_by_name
    ON profile_assets (tenant_id, profile_id, name, uploaded_at DESC, seq DESC);
CREATE INDEX profile_assets_active
    ON profile_assets (tenant_id, profile_id) WHERE status = 'active';
CREATE INDEX profile_assets_source_item
    ON profile_assets (tenant_id, source_item_id) WHERE source_item_id IS NOT NULL;

CREATE TABLE profile_field_definitions (
    tenant_id              uuid        NOT NULL,
    id                     uuid        NOT NULL,
    agent_id               uuid        NOT NULL,
    name                   text        NOT NULL,
    display_name           text        NOT NULL,
    description            text,
    value_type             text        NOT NULL,
    validation_regex       text,
    validation_tool_id     text,
    allowed_values         jsonb,
    required_verification  boolean     NOT NULL,
    verification_methods   text[]      NOT NULL,
    collection_prompt      text,
    extraction_examples    text[]      NOT NULL,
    extraction_prompt_hint text,
    is_pii                 boolean     NOT NULL,
    encryption_required    boolean     NOT NULL,
    retention_days         integer,
    freshness_seconds      bigint,
    created_at             timestamptz NOT NULL,
    updated_at             timestamptz NOT NULL,
    enabled                boolean     NOT NULL,
    PRIMARY KEY (tenant_id, id),
    CONSTRAINT profile_field_definitions_name UNIQUE (tenant_id, agent_id, name)
);

CREATE TABLE scenario_field_requirements (
    tenant_id         uuid        NOT NULL,
    id                uuid        NOT NULL,
    agent_id          uuid        NOT NULL,
    scenario_id       uuid        NOT NULL,
    step_id           uuid,
    rule_id           uuid,
    field_name        text        NOT NULL,
    required_level    text        NOT NULL,
    fallback_action   text        NOT NULL,
    when_condition    text,
    depends_on_fields text[]      NOT NULL,
    collection_order  integer     NOT NULL,
    created_at        timestamptz NOT NULL,
    updated_at        timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, id),
    CONSTRAINT scenario_field_requirements_key UNIQUE NULLS NOT DISTINCT
        (tenant_id, scenario_id, step_id, rule_id, field_name)
);
"""

_V2 = """
-- issue 16: per-field survivorship policies and the merge log (one row per merge; the
-- entry itself is jsonb, the columns serve the lookups by profile and the purge)
ALTER TABLE profile_field_definitions
    ADD COLUMN survivorship    text   NOT NULL DEFAULT 'verified_first',
    ADD COLUMN source_priority text[] NOT NULL DEFAULT '{}';

CREATE TABLE merge_log (
    tenant_id         uuid        NOT NULL,
    id                uuid        NOT NULL,
    source_profile_id uuid        NOT NULL,
    target_profile_id uuid        NOT NULL,
    merged_at         timestamptz NOT NULL,
    unmerged_at       timestamptz,
    record            text        NOT NULL,
    PRIMARY KEY (tenant_id, id)
);
CREATE INDEX merge_log_by_source ON merge_log (tenant_id, source_profile_id);
CREATE INDEX merge_log_by_target ON merge_log (tenant_id, target_profile_id);
"""

_V3_WORKER_CLAIMS = """
-- issue 17: the worker's tenant claims (ccvault_postgres.lease). A claim outlives the
-- process that took it, so two workers never sweep one tenant in the same interval
CREATE TABLE ccvault_worker_claims (
    tenant_id     uuid        PRIMARY KEY,
    holder        text        NOT NULL,
    claimed_until timestamptz NOT NULL
);
"""

_V4_CONSENT_IP_SEALED = """
-- issue 12: a consent's IP address sealed by the encryption wrapper (an envelope string;
-- ip_address then stays NULL)
ALTER TABLE consents ADD COLUMN ip_address_sealed text;
"""

_V5_DERIVED_ITEMS_KEYSET = """
-- issue 17: mark_orphans pages through a tenant's derived items in id order (keyset
-- pagination): each batch is an index range scan of at most its limit rows
CREATE INDEX profile_fields_derived_by_id
    ON profile_fields (tenant_id, id) WHERE source_item_id IS NOT NULL;
CREATE INDEX profile_assets_derived_by_id
    ON profile_assets (tenant_id, id) WHERE source_item_id IS NOT NULL;
"""

MIGRATIONS: list[Migration] = [
    Migration(1, "initial schema", _V1),
    Migration(2, "survivorship policies and the merge log", _V2),
    Migration(3, "worker tenant claims", _V3_WORKER_CLAIMS),
    Migration(4, "sealed consent IP addresses", _V4_CONSENT_IP_SEALED),
    Migration(5, "keyset index for mark_orphans", _V5_DERIVED_ITEMS_KEYSET),
]

LATEST_VERSION = MIGRATIONS[-1].version

_VERSION_TABLE_DDL = (
    f"CREATE TABLE IF NOT EXISTS {VERSION_TABLE} ("
    " version integer PRIMARY KEY, description text NOT NULL,"
    " applied_at timestamptz NOT NULL DEFAULT now(),"
    " applied_by_pid integer NOT NULL DEFAULT pg_backend_pid())"
)


def _location(schema: str) -> str:
    return f'PostgreSQL schema "{schema}"'


async def read_status(conn: asyncpg.Connection, schema: str) -> SchemaStatus:
    """The recorded versions of ``schema``: reads only (catalog lookups and one SELECT on
    the version table), so a role with USAGE on the schema and SELECT on the version table
    can run it, and nothing is created when the schema does not exist."""
    # the schema name passed the settings' identifier pattern; it cannot be a parameter
    table = await conn.fetchval(
        "SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = $1 AND c.relname = $2",
        schema,
        VERSION_TABLE,
    )
    done: set[int] = set()
    if table is not None:
        rows = await conn.fetch(f'SELECT version FROM "{schema}".{VERSION_TABLE}')
        done = {int(r["version"]) for r in rows}
    current = max(done, default=0)
    pending = (
        ()
        if current > LATEST_VERSION
        else tuple(m.step() for m in MIGRATIONS if m.version not in done)
    )
    return SchemaStatus(
        current=current, latest=LATEST_VERSION, pending=pending, location=_location(schema)
    )


async def bootstrap_statements(conn: asyncpg.Connection, schema: str) -> tuple[str, ...]:
    """The statements :func:`apply_migrations` runs before the steps: creating the schema
    (only when it does not exist: ``CREATE SCHEMA IF NOT EXISTS`` would still need CREATE
    on the database, which a migration role owning a prepared schema may lack) and the
    version table."""
    exists = await conn.fetchval("SELECT 1 FROM pg_namespace WHERE nspname = $1", schema)
    create_schema = () if exists else (f'CREATE SCHEMA IF NOT EXISTS "{schema}"',)
    return (*create_schema, _VERSION_TABLE_DDL)


async def apply_migrations(conn: asyncpg.Connection, schema: str, lock_key: int) -> list[Migration]:
    """Apply every pending migration of ``schema`` in ONE transaction; return those applied.

    The transaction first takes ``pg_advisory_xact_lock(lock_key)`` (released at commit, so
    it also works through PgBouncer in transaction mode): concurrent migrators queue, and
    every one after the first finds nothing left. A schema newer than this code:
    :class:`~ccvault.errors.SchemaVersionError`, nothing changed. A failing step rolls the
    whole run back. ``conn``'s search_path must be ``schema``.
    """
    applied: list[Migration] = []
    async with conn.transaction():
        # waiting for another process's migration must not trip statement_timeout
        await conn.execute("SET LOCAL statement_timeout = 0")
        # the steps' unqualified names land in the schema whatever the session's search_path
        # (behind a transaction pooler the connection carries none of ours)
        await conn.execute(f'SET LOCAL search_path = "{schema}"')
        await conn.execute("SELECT pg_advisory_xact_lock($1)", lock_key)
        status = await read_status(conn, schema)
        if status.newer:
            require_ready(status, distribution="ccvault-postgres")
        if not status.pending:
            # nothing to do, and no DDL at all: even CREATE ... IF NOT EXISTS needs CREATE
            # on the schema, which the runtime role does not have
            return applied
        for statement in await bootstrap_statements(conn, schema):
            await conn.execute(statement)
        pending = {step.version for step in status.pending}
        for migration in MIGRATIONS:
            if migration.version not in pending:
                continue
            logger.info("applying migration %s: %s", migration.version, migration.description)
            await conn.execute(migration.sql)
            await conn.execute(
                f"INSERT INTO {VERSION_TABLE} (version, description) VALUES ($1, $2)",
                migration.version,
                migration.description,
            )
            applied.append(migration)
    return applied
