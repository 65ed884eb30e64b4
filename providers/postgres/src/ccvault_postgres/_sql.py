"""Every SQL statement of the provider, as constants.

Nothing here is ever formatted with a caller's value: column lists are spliced in once, at
import time, from the column tuples below (derived from the models); every value travels
as a bind parameter. Each statement is prepared once per pooled connection (asyncpg's
statement cache).
"""

from __future__ import annotations

from ccvault.models import (
    ProfileAsset,
    ProfileField,
    ProfileFieldDefinition,
    ScenarioFieldRequirement,
)
from ccvault.storage import columns

# Model attributes stored as columns of the same name (the model's order; definitions and
# requirements lead with tenant_id, id, which the UPDATE ... WHERE statements rely on).
FIELD_COLS = columns(ProfileField)
ASSET_COLS = columns(ProfileAsset)
DEFINITION_COLS = columns(ProfileFieldDefinition, first=("tenant_id", "id"))
REQUIREMENT_COLS = columns(ScenarioFieldRequirement, first=("tenant_id", "id"))


def _params(first: int, count: int) -> str:
    return ", ".join(f"${i}" for i in range(first, first + count))


def _assign_excluded(cols: tuple[str, ...], keep: tuple[str, ...]) -> str:
    return ", ".join(f"{c} = EXCLUDED.{c}" for c in cols if c not in keep)


_FIELD_LIST = ", ".join(FIELD_COLS)
_ASSET_LIST = ", ".join(ASSET_COLS)
_N_FIELD = len(FIELD_COLS)
_N_ASSET = len(ASSET_COLS)

# ---------------------------------------------------------------------------------------
# whole-profile reads: one statement, one round trip, whatever the number of fields.
# Identities, consents and assets (few per profile) come back as arrays of the tables'
# composite types, decoded by asyncpg in binary. Without history only ACTIVE rows are read,
# via the partial indexes, so the cost does not grow with the number of old versions.
# ---------------------------------------------------------------------------------------

# The statement returns one row per field version plus one row for the profile itself
# (UNION ALL; many rows of one statement are still one round trip). Plain rows cost the
# server less than aggregating every column into arrays, and asyncpg decodes them in C.
# Every row has the same columns: first the field's, then the profile's; a field row has
# NULL profile columns and the profile row NULL field columns (a field's id never is
# NULL, which tells the profile row apart). value and source_metadata travel as JSON text,
# so the client parses every value of the profile in ONE call. A read without history
# fetches only ACTIVE rows, whose status and superseded_* columns are known, so those are
# not sent at all.
_JSON_COLS = ("value", "source_metadata")
_ACTIVE_CONSTANT_COLS = ("status", "superseded_by_id", "superseded_at")
FIELD_ROW_COLS: dict[bool, tuple[str, ...]] = {
    True: tuple(c for c in FIELD_COLS if c not in _JSON_COLS),
    False: tuple(c for c in FIELD_COLS if c not in _JSON_COLS + _ACTIVE_CONSTANT_COLS),
}
#: Columns of a profile read after the field columns (history reads add ``seq``).
PROFILE_ROW_COLS: tuple[str, ...] = (
    "id",
    "tenant_id",
    "customer_id",
    "verification_level",
    "created_at",
    "updated_at",
    "last_interaction_at",
    "identities",
    "consents",
    "assets",
)


def field_row_width(history: bool) -> int:
    """How many leading columns of a profile read belong to the field: the columns of
    :data:`FIELD_ROW_COLS`, ``seq`` (history only), value and source_metadata as JSON."""
    return len(FIELD_ROW_COLS[history]) + (3 if history else 2)


def _field_select(history: bool) -> str:
    cols = [f"f.{c}" for c in FIELD_ROW_COLS[history]]
    if history:
        cols.append("f.seq")  # write order, to sort ties
    cols.append("coalesce(f.value::text, 'null')")
    cols.append("f.source_metadata::text")
    return ", ".join(cols)


_PROFILE_TEMPLATE = """
WITH p AS ({locate})
SELECT {field_nulls},
       p.id, p.tenant_id, p.customer_id, p.verification_level, p.created_at, p.updated_at,
       p.last_interaction_at,
       ARRAY(SELECT ci FROM channel_identities ci
             WHERE ci.tenant_id = $1 AND ci.profile_id = p.id
             ORDER BY ci.created_at, ci.seq) AS identities,
       ARRAY(SELECT c FROM consents c
             WHERE c.tenant_id = $1 AND c.profile_id = p.id
             ORDER BY c.position) AS consents,
       ARRAY(SELECT a FROM profile_assets a
             WHERE a.tenant_id = $1 AND a.profile_id = p.id {asset_filter}
             ORDER BY a.uploaded_at, a.seq) AS assets
FROM p
UNION ALL
SELECT {field_cols}, {profile_nulls}
FROM p
JOIN profile_fields f ON f.tenant_id = $1 AND f.profile_id = p.id {field_filter}
"""

_LOCATE_BY_ID = (
    "SELECT * FROM customer_profiles WHERE tenant_id = $1 AND id = $2 AND deleted_at IS NULL"
)
_LOCATE_BY_CUSTOMER = (
    "SELECT * FROM customer_profiles"
    " WHERE tenant_id = $1 AND customer_id = $2 AND deleted_at IS NULL"
)
_LOCATE_BY_IDENTITY = """
    SELECT cp.* FROM channel_identities ci
    JOIN customer_profiles cp ON cp.tenant_id = ci.tenant_id AND cp.id = ci.profile_id
    WHERE ci.tenant_id = $1 AND ci.channel = $2 AND ci.channel_user_id = $3
      AND NOT ci.released AND cp.deleted_at IS NULL
"""
_LOCATE_ANY_BY_ID = "SELECT * FROM customer_profiles WHERE tenant_id = $1 AND id = $2"


def _profile_sql(locate: str, history: bool) -> str:
    active = "" if history else "AND {alias}.status = 'active'"
    return _PROFILE_TEMPLATE.format(
        locate=locate,
        field_nulls=", ".join(["NULL"] * field_row_width(history)),
        field_cols=_field_select(history),
        profile_nulls=", ".join(["NULL"] * len(PROFILE_ROW_COLS)),
        field_filter=active.format(alias="f"),
        asset_filter=active.format(alias="a"),
    )


PROFILE_BY_ID = {h: _profile_sql(_LOCATE_BY_ID, h) for h in (False, True)}
PROFILE_BY_CUSTOMER = {h: _profile_sql(_LOCATE_BY_CUSTOMER, h) for h in (False, True)}
PROFILE_BY_IDENTITY = {h: _profile_sql(_LOCATE_BY_IDENTITY, h) for h in (False, True)}
PROFILE_EXPORT = _profile_sql(_LOCATE_ANY_BY_ID, True)

# ---------------------------------------------------------------------------------------
# profiles
# ---------------------------------------------------------------------------------------

# get_or_create: profile and primary identity in one statement; a lost race is a unique
# violation of channel_identities_owner and the whole statement is undone.
CREATE_WITH_IDENTITY = """
WITH p AS (
    INSERT INTO customer_profiles
        (tenant_id, id, customer_id, verification_level, created_at, updated_at)
    VALUES ($1, $2, $3, $4, $5, $5)
    RETURNING tenant_id, id
)
INSERT INTO channel_identities
    (tenant_id, profile_id, channel, channel_user_id, verified, is_primary, created_at)
SELECT p.tenant_id, p.id, $6, $7, false, true, $5 FROM p
"""

LOCK_PROFILE_FOR_SAVE = """
SELECT deleted_at IS NULL AS live FROM customer_profiles
WHERE tenant_id = $1 AND id = $2 FOR UPDATE
"""

UPSERT_PROFILE = """
INSERT INTO customer_profiles (tenant_id, id, customer_id, verification_level, created_at,
                               updated_at, last_interaction_at)
VALUES ($1, $2, $3, $4, $5, $6, $7)
ON CONFLICT (tenant_id, id) DO UPDATE
SET customer_id = EXCLUDED.customer_id, verification_level = EXCLUDED.verification_level,
    created_at = EXCLUDED.created_at, updated_at = EXCLUDED.updated_at,
    last_interaction_at = EXCLUDED.last_interaction_at
"""

# identities not listed any more are released (deleted); listed ones are upserted
DELETE_UNLISTED_IDENTITIES = """
DELETE FROM channel_identities ci
WHERE ci.tenant_id = $1 AND ci.profile_id = $2
  AND (ci.channel, ci.channel_user_id) NOT IN (
      SELECT u.channel, u.channel_user_id
      FROM unnest($3::text[], $4::text[]) AS u (channel, channel_user_id))
"""

UPSERT_IDENTITIES = """
INSERT INTO channel_identities
    (tenant_id, profile_id, channel, channel_user_id, verified, verified_at, is_primary,
     created_at)
SELECT $1, $2, u.channel, u.channel_user_id, u.verified, u.verified_at, u.is_primary,
       u.created_at
FROM unnest($3::text[], $4::text[], $5::boolean[], $6::timestamptz[], $7::boolean[],
            $8::timestamptz[])
     AS u (channel, channel_user_id, verified, verified_at, is_primary, created_at)
ON CONFLICT (tenant_id, profile_id, channel, channel_user_id) DO UPDATE
SET verified = EXCLUDED.verified, verified_at = EXCLUDED.verified_at,
    is_primary = EXCLUDED.is_primary, created_at = EXCLUDED.created_at, released = false
"""

DELETE_CONSENTS = "DELETE FROM consents WHERE tenant_id = $1 AND profile_id = $2"

INSERT_CONSENTS = """
INSERT INTO consents (tenant_id, profile_id, position, consent_type, granted, granted_at,
                      revoked_at, source_session_id, ip_address, ip_address_sealed)
SELECT $1, $2, u.ord - 1, u.consent_type, u.granted, u.granted_at, u.revoked_at,
       u.source_session_id, u.ip_address, u.ip_address_sealed
FROM unnest($3::text[], $4::boolean[], $5::timestamptz[], $6::timestamptz[], $7::uuid[],
            $8::text[], $9::text[])
     WITH ORDINALITY AS u (consent_type, granted, granted_at, revoked_at, source_session_id,
                           ip_address, ip_address_sealed, ord)
"""

# what plan_save reads (inside the save's transaction, the profile row locked)
SAVE_STATE_OWNERS = """
SELECT 'customer' AS kind, id AS profile_id, NULL AS channel, NULL AS channel_user_id
FROM customer_profiles WHERE tenant_id = $1 AND customer_id = $2 AND deleted_at IS NULL
UNION ALL
SELECT 'identity', ci.profile_id, ci.channel, ci.channel_user_id
FROM channel_identities ci
JOIN unnest($3::text[], $4::text[]) AS u (channel, channel_user_id)
  ON ci.channel = u.channel AND ci.channel_user_id = u.channel_user_id
WHERE ci.tenant_id = $1 AND NOT ci.released
"""
FIND_ITEM_STATE = """
SELECT id, profile_id, name, status, superseded_by_id, superseded_at
FROM {table} WHERE tenant_id = $1 AND id = ANY($2::uuid[])
"""
FIND_FIELD_STATE = FIND_ITEM_STATE.format(table="profile_fields")
FIND_ASSET_STATE = FIND_ITEM_STATE.format(table="profile_assets")

# soft delete: the profile stays (export, audit) but its identities are released
SOFT_DELETE = """
WITH d AS (
    UPDATE customer_profiles SET deleted_at = $3, updated_at = $3
    WHERE tenant_id = $1 AND id = $2 AND deleted_at IS NULL
    RETURNING id
), r AS (
    UPDATE channel_identities ci SET released = true
    FROM d WHERE ci.tenant_id = $1 AND ci.profile_id = d.id
)
SELECT count(*) FROM d
"""

PURGE = "DELETE FROM customer_profiles WHERE tenant_id = $1 AND id = $2"

LINK_CHANNEL = """
WITH p AS (
    SELECT id FROM customer_profiles
    WHERE tenant_id = $1 AND id = $2 AND deleted_at IS NULL
    FOR KEY SHARE
), ins AS (
    INSERT INTO channel_identities
        (tenant_id, profile_id, channel, channel_user_id, verified, verified_at, is_primary,
         created_at)
    SELECT $1, p.id, $3, $4, $5, $6, $7, $8 FROM p
    ON CONFLICT DO NOTHING
    RETURNING 1
)
SELECT EXISTS (SELECT 1 FROM p) AS found,
       EXISTS (SELECT 1 FROM ins) AS inserted,
       (SELECT ci.profile_id FROM channel_identities ci
        WHERE ci.tenant_id = $1 AND ci.channel = $3 AND ci.channel_user_id = $4
          AND NOT ci.released) AS owner
"""

# link_channel with max_per_channel: one transaction that locks the profile (concurrent
# limited links of one profile take turns), reads the identity's owner and the profile's
# identities on the channel, then evicts (deletes, as save releases an unlisted identity)
# and inserts
LINK_LOCK_PROFILE = """
SELECT id FROM customer_profiles
WHERE tenant_id = $1 AND id = $2 AND deleted_at IS NULL
FOR UPDATE
"""

IDENTITY_OWNER = """
SELECT profile_id FROM channel_identities
WHERE tenant_id = $1 AND channel = $2 AND channel_user_id = $3 AND NOT released
"""

PROFILE_CHANNEL_IDENTITIES = """
SELECT channel, channel_user_id, verified, verified_at, is_primary, created_at
FROM channel_identities
WHERE tenant_id = $1 AND profile_id = $2 AND channel = $3 AND NOT released
"""

EVICT_IDENTITY = """
DELETE FROM channel_identities
WHERE tenant_id = $1 AND profile_id = $2 AND channel = $3 AND channel_user_id = $4
"""

INSERT_IDENTITY = """
INSERT INTO channel_identities
    (tenant_id, profile_id, channel, channel_user_id, verified, verified_at, is_primary,
     created_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
ON CONFLICT DO NOTHING
RETURNING 1
"""

# ---------------------------------------------------------------------------------------
# fields
# ---------------------------------------------------------------------------------------

# update_field in ONE statement (so one round trip and its own transaction):
#   prof  - the live profile, key-share locked so a concurrent merge waits for us (and we
#           for it);
#   old   - the ACTIVE version becomes SUPERSEDED by the new id ($N+3 = supersede); without
#           supersede only a version already past expires_at is closed (as EXPIRED);
#   ins   - the new ACTIVE version; it reads `old` first, so the supersede has happened
#           before the insert checks the one-ACTIVE-per-name unique index.
# A concurrent writer that won the race makes this fail with a unique violation of
# profile_fields_one_active; the whole statement is undone and the provider retries.
UPDATE_FIELD = f"""
WITH prof AS (
    SELECT id FROM customer_profiles
    WHERE tenant_id = $1 AND id = $2 AND deleted_at IS NULL
    FOR KEY SHARE
), old AS (
    UPDATE profile_fields f
    SET status = CASE WHEN ${_N_FIELD + 3}::boolean THEN 'superseded' ELSE 'expired' END,
        superseded_by_id = CASE WHEN ${_N_FIELD + 3}::boolean THEN $3::uuid END,
        superseded_at = CASE WHEN ${_N_FIELD + 3}::boolean THEN ${_N_FIELD + 4}::timestamptz END,
        updated_at = ${_N_FIELD + 4}::timestamptz
    FROM prof
    WHERE f.tenant_id = $1 AND f.profile_id = prof.id AND f.name = $4 AND f.status = 'active'
      AND (${_N_FIELD + 3}::boolean OR f.expires_at <= ${_N_FIELD + 4}::timestamptz)
    RETURNING f.id
), ins AS (
    INSERT INTO profile_fields (tenant_id, profile_id, {_FIELD_LIST})
    SELECT $1, prof.id, {_params(3, _N_FIELD)}
    FROM prof CROSS JOIN (SELECT count(*) FROM old) AS superseded
    RETURNING id
)
SELECT EXISTS (SELECT 1 FROM prof) AS found, (SELECT id FROM ins) AS new_id
"""

# save's in-place update: only of a version still ACTIVE (a stale copy never revives one
# that a concurrent sweep closed after the save read it)
UPDATE_FIELD_IN_PLACE = f"""
UPDATE profile_fields SET ({_FIELD_LIST}) = ({_params(3, _N_FIELD)})
WHERE tenant_id = $1 AND id = $3 AND profile_id = $2 AND status = 'active'
"""

GET_FIELD_ACTIVE = """
SELECT * FROM profile_fields
WHERE tenant_id = $1 AND profile_id = $2 AND name = $3 AND status = 'active'
"""
GET_FIELD_WITH_STATUS = """
SELECT * FROM profile_fields
WHERE tenant_id = $1 AND profile_id = $2 AND name = $3 AND status = $4
ORDER BY collected_at DESC, seq DESC LIMIT 1
"""
GET_FIELD_ANY = """
SELECT * FROM profile_fields
WHERE tenant_id = $1 AND profile_id = $2 AND name = $3
ORDER BY collected_at DESC, seq DESC LIMIT 1
"""
FIELD_HISTORY = """
SELECT * FROM profile_fields
WHERE tenant_id = $1 AND profile_id = $2 AND name = $3
ORDER BY collected_at DESC, seq DESC
"""

# one batch of expire_stale_fields: at most $3 due rows, locked and updated by ctid; rows a
# concurrent writer holds are skipped (that writer supersedes or expires them itself), so a
# batch never waits on a profile write. ORDER BY expires_at keeps the plan on the partial
# index of ACTIVE expires_at, which rows leave once expired: every batch reads about $3 index
# entries wherever it stands (a sequential scan would re-read the rows expired by the
# batches before it, each batch slower than the last, until one outlives statement_timeout)
EXPIRE_BATCH = """
UPDATE profile_fields SET status = 'expired', updated_at = $2
WHERE ctid = ANY(ARRAY(
    SELECT ctid FROM profile_fields
    WHERE tenant_id = $1 AND status = 'active' AND expires_at <= $2
    ORDER BY expires_at
    LIMIT $3 FOR UPDATE SKIP LOCKED))
  AND tenant_id = $1 AND status = 'active' AND expires_at <= $2
"""
EXPIRE_PROFILE_BATCH = """
UPDATE profile_fields SET status = 'expired', updated_at = $2
WHERE ctid = ANY(ARRAY(
    SELECT ctid FROM profile_fields
    WHERE tenant_id = $1 AND status = 'active' AND expires_at <= $2 AND profile_id = $4
    ORDER BY expires_at
    LIMIT $3 FOR UPDATE SKIP LOCKED))
  AND tenant_id = $1 AND status = 'active' AND expires_at <= $2 AND profile_id = $4
"""
EXPIRE_PROFILE = """
UPDATE profile_fields SET status = 'expired', updated_at = $2
WHERE tenant_id = $1 AND status = 'active' AND expires_at <= $2 AND profile_id = $3
"""

# ---------------------------------------------------------------------------------------
# assets
# ---------------------------------------------------------------------------------------

INSERT_ASSET = f"""
WITH prof AS (
    SELECT id FROM customer_profiles
    WHERE tenant_id = $1 AND id = $2 AND deleted_at IS NULL
    FOR KEY SHARE
), ins AS (
    INSERT INTO profile_assets (tenant_id, profile_id, {_ASSET_LIST})
    SELECT $1, prof.id, {_params(3, _N_ASSET)} FROM prof
    RETURNING id
)
SELECT EXISTS (SELECT 1 FROM prof) AS found, (SELECT id FROM ins) AS new_id
"""

# assets have no one-ACTIVE-per-name index (adding without supersede may keep several), so
# a superseding add first locks the profile row; the statement after it sees every
# committed asset (READ COMMITTED takes a new snapshot per statement)
LOCK_PROFILE_FOR_ASSET = """
SELECT true FROM customer_profiles
WHERE tenant_id = $1 AND id = $2 AND deleted_at IS NULL
FOR NO KEY UPDATE
"""

SUPERSEDE_ASSETS = """
UPDATE profile_assets SET status = 'superseded', superseded_by_id = $4, superseded_at = $5
WHERE tenant_id = $1 AND profile_id = $2 AND name = $3 AND status = 'active'
"""

INSERT_ASSET_PLAIN = f"""
INSERT INTO profile_assets (tenant_id, profile_id, {_ASSET_LIST})
VALUES ($1, $2, {_params(3, _N_ASSET)})
"""

UPDATE_ASSET_IN_PLACE = f"""
UPDATE profile_assets SET ({_ASSET_LIST}) = ({_params(3, _N_ASSET)})
WHERE tenant_id = $1 AND id = $3 AND profile_id = $2 AND status = 'active'
"""

GET_ASSET = "SELECT * FROM profile_assets WHERE tenant_id = $1 AND profile_id = $2 AND id = $3"
GET_ASSET_WITH_STATUS = """
SELECT * FROM profile_assets
WHERE tenant_id = $1 AND profile_id = $2 AND name = $3 AND status = $4
ORDER BY uploaded_at DESC, seq DESC LIMIT 1
"""
GET_ASSET_ANY = """
SELECT * FROM profile_assets
WHERE tenant_id = $1 AND profile_id = $2 AND name = $3
ORDER BY uploaded_at DESC, seq DESC LIMIT 1
"""

# ---------------------------------------------------------------------------------------
# lineage: one recursive query; depth limit ($4) and cycle guard (the path array)
# ---------------------------------------------------------------------------------------

_LINEAGE_NODE = """
    SELECT f.id, 'profile_field'::text AS type, f.name, f.source_metadata,
           f.source_item_id, f.source_item_type
    FROM profile_fields f
    WHERE {type_} = 'profile_field' AND f.tenant_id = $1 AND f.id = {id_}
    UNION ALL
    SELECT a.id, 'profile_asset'::text AS type, a.name, '{{}}'::jsonb,
           a.source_item_id, a.source_item_type
    FROM profile_assets a
    WHERE {type_} = 'profile_asset' AND a.tenant_id = $1 AND a.id = {id_}
"""

DERIVATION_CHAIN = f"""
WITH RECURSIVE chain (id, type, name, source_metadata, source_item_id, source_item_type,
                      depth, path) AS (
    SELECT n.id, n.type, n.name, n.source_metadata, n.source_item_id, n.source_item_type,
           1, ARRAY[n.id]
    FROM ({_LINEAGE_NODE.format(type_="$3::text", id_="$2::uuid")}) AS n
    UNION ALL
    SELECT n.id, n.type, n.name, n.source_metadata, n.source_item_id, n.source_item_type,
           c.depth + 1, c.path || n.id
    FROM chain c
    CROSS JOIN LATERAL ({_LINEAGE_NODE.format(type_="c.source_item_type", id_="c.source_item_id")}
    ) AS n
    WHERE c.depth < $4 AND n.id <> ALL (c.path)
)
SELECT id, type, name, source_metadata, source_item_id, source_item_type
FROM chain ORDER BY depth DESC
"""

DERIVED_ITEMS = """
SELECT ARRAY(SELECT f FROM profile_fields f WHERE f.tenant_id = $1 AND f.source_item_id = $2
             ORDER BY f.collected_at, f.seq) AS fields,
       ARRAY(SELECT a FROM profile_assets a WHERE a.tenant_id = $1 AND a.source_item_id = $2
             ORDER BY a.uploaded_at, a.seq) AS assets
"""

HAS_DEPENDENTS = """
SELECT EXISTS (SELECT 1 FROM profile_fields
               WHERE tenant_id = $1 AND source_item_id = $2 AND status = 'active')
    OR EXISTS (SELECT 1 FROM profile_assets
               WHERE tenant_id = $1 AND source_item_id = $2 AND status = 'active')
"""

# the item row is locked first, so the dependents check and the delete see one state
DELETE_ITEM = """
WITH item AS (
    SELECT id FROM {table} WHERE tenant_id = $1 AND id = $2 FOR UPDATE
), dep AS (
    SELECT EXISTS (SELECT 1 FROM profile_fields
                   WHERE tenant_id = $1 AND source_item_id = $2 AND status = 'active')
        OR EXISTS (SELECT 1 FROM profile_assets
                   WHERE tenant_id = $1 AND source_item_id = $2 AND status = 'active') AS has
), del AS (
    DELETE FROM {table} t USING item
    WHERE t.tenant_id = $1 AND t.id = item.id AND NOT (SELECT has FROM dep)
    RETURNING 1
)
SELECT EXISTS (SELECT 1 FROM item) AS present, (SELECT has FROM dep) AS has_dependents,
       (SELECT count(*) FROM del) AS deleted
"""
DELETE_FIELD_ITEM = DELETE_ITEM.format(table="profile_fields")
DELETE_ASSET_ITEM = DELETE_ITEM.format(table="profile_assets")

_SOURCE_GONE = """
    {alias}.source_item_id IS NOT NULL AND (
        ({alias}.source_item_type = 'profile_field' AND NOT EXISTS (
            SELECT 1 FROM profile_fields s
            WHERE s.tenant_id = $1 AND s.id = {alias}.source_item_id))
     OR ({alias}.source_item_type = 'profile_asset' AND NOT EXISTS (
            SELECT 1 FROM profile_assets s
            WHERE s.tenant_id = $1 AND s.id = {alias}.source_item_id)))
"""

# one batch of mark_orphans, per table (fields first, then assets with what is left of the
# batch, in one transaction): at most $3 orphans, locked and updated by ctid
MARK_ORPHAN_FIELDS_BATCH = f"""
UPDATE profile_fields SET status = 'orphaned', updated_at = $2
WHERE ctid = ANY(ARRAY(
    SELECT ctid FROM profile_fields o
    WHERE o.tenant_id = $1 AND o.status <> 'orphaned' AND {_SOURCE_GONE.format(alias="o")}
    LIMIT $3 FOR UPDATE SKIP LOCKED))
  AND tenant_id = $1 AND status <> 'orphaned'
"""
MARK_ORPHAN_ASSETS_BATCH = f"""
UPDATE profile_assets SET status = 'orphaned'
WHERE ctid = ANY(ARRAY(
    SELECT ctid FROM profile_assets o
    WHERE o.tenant_id = $1 AND o.status <> 'orphaned' AND {_SOURCE_GONE.format(alias="o")}
    LIMIT $2 FOR UPDATE SKIP LOCKED))
  AND tenant_id = $1 AND status <> 'orphaned'
"""

# one keyset page of mark_orphans (after: the last id of the previous page, or NULL): at
# most `limit` derived items of one table read in id order through the partial index
# {table}_derived_by_id (migration 5), the orphans among them marked in the same statement;
# returns how many were examined and marked and the last id examined
_MARK_ORPHANS_PAGE = """
WITH page AS (
    SELECT o.id FROM {table} o
    WHERE o.tenant_id = $1 AND o.source_item_id IS NOT NULL AND {after}
    ORDER BY o.id LIMIT {limit}
), marked AS (
    -- the source check per page item (index probes); a check in the page's own target list
    -- lets the planner hash every id of the tenant instead (measured: 12x slower per page)
    UPDATE {table} o SET status = 'orphaned'{touch}
    FROM page
    WHERE o.tenant_id = $1 AND o.id = page.id AND o.status <> 'orphaned'
      AND {gone}
    RETURNING 1
)
SELECT (SELECT count(*) FROM page) AS examined,
       (SELECT id FROM page ORDER BY id DESC LIMIT 1) AS last_id,
       (SELECT count(*) FROM marked) AS marked
"""


def _orphans_page(table: str, stamp: bool, first: bool) -> str:
    # fields: ($1 tenant, $2 now, $3 after, $4 limit); assets: ($1 tenant, $2 after, $3 limit)
    after, limit = ("$3", "$4") if stamp else ("$2", "$3")
    return _MARK_ORPHANS_PAGE.format(
        table=table,
        touch=", updated_at = $2" if stamp else "",
        after=f"{after}::uuid IS NULL" if first else f"o.id > {after}",
        limit=limit,
        gone=_SOURCE_GONE.format(alias="o"),
    )


#: keyed by "is this the first page" (no resume id yet)
MARK_ORPHAN_FIELDS_PAGE = {
    first: _orphans_page("profile_fields", True, first) for first in (True, False)
}
MARK_ORPHAN_ASSETS_PAGE = {
    first: _orphans_page("profile_assets", False, first) for first in (True, False)
}

# ---------------------------------------------------------------------------------------
# merge (run in one transaction by the store)
# ---------------------------------------------------------------------------------------

# both profiles locked in id order, so two opposite merges cannot deadlock
MERGE_LOCK = """
SELECT id FROM customer_profiles
WHERE tenant_id = $1 AND id = ANY($2::uuid[]) AND deleted_at IS NULL
ORDER BY id FOR UPDATE
"""

MERGE_SUPERSEDE = """
UPDATE profile_fields f
SET status = 'superseded', superseded_by_id = u.winner, superseded_at = $4, updated_at = $4
FROM unnest($2::uuid[], $3::uuid[]) AS u (loser, winner)
WHERE f.tenant_id = $1 AND f.id = u.loser
"""

MERGE_MOVE = """
WITH mf AS (
    UPDATE profile_fields SET profile_id = $3 WHERE tenant_id = $1 AND profile_id = $2
), ma AS (
    UPDATE profile_assets SET profile_id = $3 WHERE tenant_id = $1 AND profile_id = $2
), mi AS (
    -- every identity of both, on the target, with the primary flag the plan gives it
    UPDATE channel_identities ci
    SET profile_id = $3, is_primary = u.is_primary
    FROM unnest($5::text[], $6::text[], $7::boolean[]) AS u (channel, channel_user_id, is_primary)
    WHERE ci.tenant_id = $1 AND ci.profile_id IN ($2, $3) AND NOT ci.released
      AND ci.channel = u.channel AND ci.channel_user_id = u.channel_user_id
), mc AS (
    UPDATE consents
    SET profile_id = $3,
        position = position + (SELECT coalesce(max(position) + 1, 0) FROM consents
                               WHERE tenant_id = $1 AND profile_id = $3)
    WHERE tenant_id = $1 AND profile_id = $2
), src AS (
    UPDATE customer_profiles SET deleted_at = $4, updated_at = $4, merged_into_id = $3
    WHERE tenant_id = $1 AND id = $2
)
UPDATE customer_profiles SET updated_at = $4 WHERE tenant_id = $1 AND id = $3
"""

# the merge log (issue 16): what the merge's log entry reads of the source, and unmerge
MERGE_SOURCE_ITEMS = """
SELECT 'field' AS kind, id, seq FROM profile_fields WHERE tenant_id = $1 AND profile_id = $2
UNION ALL
SELECT 'asset' AS kind, id, seq FROM profile_assets WHERE tenant_id = $1 AND profile_id = $2
ORDER BY kind, seq
"""
MERGE_SOURCE_CONSENTS = """
SELECT * FROM consents WHERE tenant_id = $1 AND profile_id = $2 ORDER BY position
"""
INSERT_MERGE_LOG = """
INSERT INTO merge_log (tenant_id, id, source_profile_id, target_profile_id, merged_at,
                       unmerged_at, record)
VALUES ($1, $2, $3, $4, $5, NULL, $6)
ON CONFLICT DO NOTHING
"""
LOCK_MERGE_LOG = "SELECT record FROM merge_log WHERE tenant_id = $1 AND id = $2 FOR UPDATE"
OPEN_MERGES = """
SELECT record FROM merge_log
WHERE tenant_id = $1 AND id <> $2 AND unmerged_at IS NULL
  AND (source_profile_id = ANY($3::uuid[]) OR target_profile_id = ANY($3::uuid[]))
"""
UNMERGE_LOCK = """
SELECT id, deleted_at IS NULL AS live FROM customer_profiles
WHERE tenant_id = $1 AND id = ANY($2::uuid[])
ORDER BY id FOR UPDATE
"""
UNMERGE_MOVE = """
WITH mf AS (
    UPDATE profile_fields SET profile_id = $2 WHERE tenant_id = $1 AND id = ANY($3::uuid[])
), ma AS (
    UPDATE profile_assets SET profile_id = $2 WHERE tenant_id = $1 AND id = ANY($4::uuid[])
)
UPDATE channel_identities ci
SET profile_id = u.profile_id, is_primary = u.is_primary
FROM unnest($5::text[], $6::text[], $7::uuid[], $8::boolean[])
     AS u (channel, channel_user_id, profile_id, is_primary)
WHERE ci.tenant_id = $1 AND NOT ci.released
  AND ci.channel = u.channel AND ci.channel_user_id = u.channel_user_id
"""
UNMERGE_REACTIVATE = """
UPDATE profile_fields
SET status = 'active', superseded_by_id = NULL, superseded_at = NULL, updated_at = $3
WHERE tenant_id = $1 AND id = ANY($2::uuid[])
"""
UNMERGE_PROFILES = """
WITH src AS (
    UPDATE customer_profiles SET deleted_at = NULL, merged_into_id = NULL, updated_at = $4
    WHERE tenant_id = $1 AND id = $2
), log AS (
    UPDATE merge_log SET unmerged_at = $4, record = $6 WHERE tenant_id = $1 AND id = $5
)
UPDATE customer_profiles SET updated_at = $4 WHERE tenant_id = $1 AND id = $3
"""
GET_MERGE_LOG = """
SELECT record FROM merge_log
WHERE tenant_id = $1 AND (source_profile_id = $2 OR target_profile_id = $2)
"""
PURGE_MERGE_LOG = """
DELETE FROM merge_log
WHERE tenant_id = $1 AND (source_profile_id = $2 OR target_profile_id = $2)
"""
GET_TENANT_DEFINITIONS = "SELECT * FROM profile_field_definitions WHERE tenant_id = $1"

# ---------------------------------------------------------------------------------------
# definitions and requirements
# ---------------------------------------------------------------------------------------

_DEF_LIST = ", ".join(DEFINITION_COLS)
UPSERT_DEFINITION = f"""
INSERT INTO profile_field_definitions ({_DEF_LIST})
VALUES ({_params(1, len(DEFINITION_COLS))})
ON CONFLICT ON CONSTRAINT profile_field_definitions_name DO UPDATE
SET {_assign_excluded(DEFINITION_COLS, ("tenant_id", "id", "agent_id", "name", "created_at"))}
RETURNING id
"""
# the rows core's save rule reads: the one with the given id, the one with the given key
DEFINITION_BY_ID_OR_KEY = """
SELECT (id = $2) AS by_id, (agent_id = $3 AND name = $4) AS by_key, *
FROM profile_field_definitions
WHERE tenant_id = $1 AND (id = $2 OR (agent_id = $3 AND name = $4))
FOR UPDATE
"""
GET_DEFINITIONS = """
SELECT * FROM profile_field_definitions
WHERE tenant_id = $1 AND agent_id = $2 AND (enabled OR NOT $3::boolean)
"""
GET_DEFINITION = """
SELECT * FROM profile_field_definitions WHERE tenant_id = $1 AND agent_id = $2 AND name = $3
"""
DELETE_DEFINITION = """
DELETE FROM profile_field_definitions WHERE tenant_id = $1 AND agent_id = $2 AND name = $3
"""

_REQ_LIST = ", ".join(REQUIREMENT_COLS)
UPSERT_REQUIREMENT = f"""
INSERT INTO scenario_field_requirements ({_REQ_LIST})
VALUES ({_params(1, len(REQUIREMENT_COLS))})
ON CONFLICT ON CONSTRAINT scenario_field_requirements_key DO UPDATE
SET {
    _assign_excluded(
        REQUIREMENT_COLS,
        ("tenant_id", "id", "scenario_id", "step_id", "rule_id", "field_name", "created_at"),
    )
}
RETURNING id
"""
REQUIREMENT_BY_ID_OR_KEY = """
SELECT (id = $2) AS by_id,
       (scenario_id = $3 AND step_id IS NOT DISTINCT FROM $4::uuid
        AND rule_id IS NOT DISTINCT FROM $5::uuid AND field_name = $6) AS by_key, *
FROM scenario_field_requirements
WHERE tenant_id = $1 AND (id = $2 OR (scenario_id = $3
      AND step_id IS NOT DISTINCT FROM $4::uuid AND rule_id IS NOT DISTINCT FROM $5::uuid
      AND field_name = $6))
FOR UPDATE
"""
GET_REQUIREMENTS = """
SELECT * FROM scenario_field_requirements
WHERE tenant_id = $1 AND scenario_id = $2 AND step_id IS NOT DISTINCT FROM $3::uuid
"""
# get_missing_fields in one statement (one snapshot, one round trip): the requirements
# and the enabled definitions of their agents side by side, each requirement next to its
# own field's definition (a full join: a requirement without one, or a definition no
# requirement names, has NULLs on the other side; a definition named by several
# requirements comes once per requirement). Both column lists in the models' field order,
# less the columns whose value the WHERE clause fixes to a parameter (tenant_id, and a
# requirement's scenario_id and step_id): the reader fills those in from the parameters.
# Against a UNION of both kinds padded with NULLs: half the rows, no NULL padding, and
# 100 to 200 fewer UUID objects to decode per call of 50 requirements.
REQUIREMENTS_WITH_DEFINITIONS_FIXED = ("tenant_id", "scenario_id", "step_id")
REQUIREMENT_COLUMNS_READ = tuple(
    f for f in ScenarioFieldRequirement.model_fields if f not in REQUIREMENTS_WITH_DEFINITIONS_FIXED
)
DEFINITION_COLUMNS_READ = tuple(f for f in ProfileFieldDefinition.model_fields if f != "tenant_id")
# the step's requirements and the enabled definitions of their agents (each read below
# names its definition columns and joins the two)
_WANTED_AND_ENABLED = f"""
WITH wanted AS (
  SELECT {", ".join(REQUIREMENT_COLUMNS_READ)} FROM scenario_field_requirements
  WHERE tenant_id = $1 AND scenario_id = $2 AND step_id IS NOT DISTINCT FROM $3::uuid
), enabled AS (
  SELECT {{columns}} FROM profile_field_definitions
  WHERE tenant_id = $1 AND enabled AND agent_id IN (SELECT agent_id FROM wanted)
)"""
GET_REQUIREMENTS_WITH_DEFINITIONS = (
    _WANTED_AND_ENABLED.format(columns=", ".join(DEFINITION_COLUMNS_READ))
    + """
SELECT wanted.*, enabled.* FROM wanted FULL JOIN enabled
  ON enabled.agent_id = wanted.agent_id AND enabled.name = wanted.field_name
"""
)
# get_missing_fields' narrow read (_get_requirement_checks): each requirement (its columns as
# above, less the fixed ones) next to the two check columns of its own field's enabled
# definition (unique by tenant, agent and name: at most one; NULLs when there is none,
# required_verification being NOT NULL tells so). No other definition column is read. The
# shape of GET_REQUIREMENTS_WITH_DEFINITIONS: a FULL JOIN is always a hash (or merge) join
# of the step's requirements and their agents' enabled definitions, where a LEFT JOIN on
# tables without statistics is planned as a nested loop rescanning every definition of the
# tenant per requirement (about twice the server time); the rows of definitions no
# requirement names (the requirement's id NULL) are skipped by the reader.
CHECK_COLUMNS_READ = ("required_verification", "freshness_seconds")
GET_REQUIREMENT_CHECKS = (
    _WANTED_AND_ENABLED.format(columns=", ".join(("agent_id", "name", *CHECK_COLUMNS_READ)))
    + f"""
SELECT wanted.*, {", ".join(f"enabled.{c}" for c in CHECK_COLUMNS_READ)}
FROM wanted FULL JOIN enabled
  ON enabled.agent_id = wanted.agent_id AND enabled.name = wanted.field_name
"""
)
DELETE_REQUIREMENTS_ALL = """
DELETE FROM scenario_field_requirements WHERE tenant_id = $1 AND scenario_id = $2
"""
DELETE_REQUIREMENTS_STEP = """
DELETE FROM scenario_field_requirements WHERE tenant_id = $1 AND scenario_id = $2 AND step_id = $3
"""

# ---------------------------------------------------------------------------------------
# operations
# ---------------------------------------------------------------------------------------

LIST_TENANTS = "SELECT DISTINCT tenant_id FROM customer_profiles"
LIST_PROFILE_IDS = "SELECT id FROM customer_profiles WHERE tenant_id = $1"

# key rotation: new payloads for existing versions, one statement, nothing else touched
REWRITE_PAYLOADS = """
UPDATE profile_fields f SET value = u.value, source_metadata = u.metadata
FROM unnest($3::uuid[], $4::jsonb[], $5::jsonb[]) AS u (id, value, metadata)
WHERE f.tenant_id = $1 AND f.profile_id = $2 AND f.id = u.id
"""
# the status gauge's estimate (estimate_items_by_status): a table's size in pages, then an
# exact count of a small table or a page sample of a large one
TABLE_PAGES = """
SELECT pg_relation_size($1::regclass) / current_setting('block_size')::bigint
"""
COUNT_STATUS_OF = {
    table: f"SELECT status, count(*) AS n FROM {table} WHERE tenant_id = $1 GROUP BY status"
    for table in ("profile_fields", "profile_assets")
}
SAMPLE_STATUS_OF = {
    table: f"""
SELECT status, count(*) AS n FROM {table} TABLESAMPLE SYSTEM ($2)
WHERE tenant_id = $1 GROUP BY status
"""
    for table in ("profile_fields", "profile_assets")
}
COUNT_BY_STATUS = """
SELECT 'fields' AS kind, status, count(*) AS n FROM profile_fields WHERE tenant_id = $1
GROUP BY status
UNION ALL
SELECT 'assets', status, count(*) FROM profile_assets WHERE tenant_id = $1 GROUP BY status
"""

# ---------------------------------------------------------------------------------------
# erasure by data subject (issue 12): who holds the identity or customer id, any state
# ---------------------------------------------------------------------------------------

# released rows count: a soft-deleted profile keeps the identities it held
SUBJECT_BY_IDENTITY = """
SELECT DISTINCT profile_id FROM channel_identities
WHERE tenant_id = $1 AND channel = $2 AND channel_user_id = $3
"""
SUBJECT_BY_CUSTOMER = "SELECT id FROM customer_profiles WHERE tenant_id = $1 AND customer_id = $2"
# the profiles are locked in id order, as MERGE_LOCK does: a merge of one of them either
# finished before (its log entry is then read below) or waits until the erasure is done
SUBJECT_LOCK = """
SELECT id FROM customer_profiles
WHERE tenant_id = $1 AND id = ANY($2::uuid[])
ORDER BY id FOR UPDATE
"""
SUBJECT_MERGE_IDS = """
SELECT id FROM merge_log
WHERE tenant_id = $1
  AND (source_profile_id = ANY($2::uuid[]) OR target_profile_id = ANY($2::uuid[]))
FOR UPDATE
"""
SUBJECT_DELETE_MERGE_LOG = """
DELETE FROM merge_log
WHERE tenant_id = $1
  AND (source_profile_id = ANY($2::uuid[]) OR target_profile_id = ANY($2::uuid[]))
"""
# identities (released ones too), consents, fields and assets go with it (ON DELETE CASCADE)
SUBJECT_DELETE_PROFILES = """
DELETE FROM customer_profiles WHERE tenant_id = $1 AND id = ANY($2::uuid[])
"""
