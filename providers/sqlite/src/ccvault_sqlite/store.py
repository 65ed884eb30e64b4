"""``SqliteProfileStore``: the vault on one SQLite file (or a private in-memory database).

Concurrency model
-----------------
One store holds two aiosqlite connections to a file (in autocommit mode: every transaction
here is explicit), each with its own :class:`asyncio.Lock`, so the statements of one
transaction never interleave with another coroutine's: writes run on the write connection,
plain reads on a ``query_only`` read connection. In WAL mode a read never needs the write
lock, so a read is never queued behind a write that waits for another process's write lock
(an in-memory database has one connection for both). Every write runs
in ``BEGIN IMMEDIATE``, which takes SQLite's single database write lock up front: writers
in other store instances or other processes on the same file wait for it (``busy_timeout``),
and if it is still held the whole transaction is rolled back and retried with bounded
exponential back-off (see :class:`~ccvault_sqlite.settings.SqliteSettings`). Because the
write lock is held from the first statement, read-then-write sequences inside a write
transaction are race-free across processes. A whole profile is read by one statement
(so it is one snapshot, and one round trip whatever its size); the few other reads of
several tables run inside one ``BEGIN`` ... ``COMMIT``. WAL mode lets reads proceed while
another process writes.

Every multi-row change (save, supersede, merge, purge, soft delete) is one transaction: any
failure rolls all of it back.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import random
import sqlite3
import stat
import time
from bisect import bisect_left, bisect_right
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import datetime
from itertools import compress, repeat
from operator import attrgetter, is_, itemgetter
from pathlib import Path
from typing import Any, TypeVar, cast
from uuid import UUID

import aiosqlite
import orjson

from ccvault import errors
from ccvault.batches import KeysetBatch, parse_orphans_position
from ccvault.migration import MigrationReport, SchemaStatus, require_ready
from ccvault.models import (
    Channel,
    ChannelIdentity,
    CustomerProfile,
    FallbackAction,
    ItemStatus,
    ItemType,
    LineageEntry,
    MergeRecord,
    ProfileAsset,
    ProfileField,
    ProfileFieldDefinition,
    RequiredLevel,
    ScenarioFieldRequirement,
    SourceType,
    UnmergeResult,
)
from ccvault.requirements import (
    FieldCheck,
    RecordValues,
    RequirementRecords,
    records_of,
)
from ccvault.rules.definitions import plan_definition_save, plan_requirement_save
from ccvault.rules.identity import channel_eviction, link_outcome
from ccvault.rules.merge import (
    IdentityPlacement,
    MergeLogRequest,
    MergeSide,
    merge_record,
    plan_merge,
)
from ccvault.rules.save import SaveState, StoredItem, plan_save
from ccvault.rules.unmerge import UnmergeState, plan_unmerge
from ccvault.store import MergeWinner, ProfileStore, StoreRules
from ccvault_sqlite import codec
from ccvault_sqlite.codec import (
    ASSET_COLUMNS,
    ASSET_SELECT,
    CONSENT_COLUMNS,
    CONSENT_SELECT,
    DEFINITION_COLUMNS,
    DEFINITION_SELECT,
    FIELD_COLUMNS,
    FIELD_SELECT,
    IDENTITY_SELECT,
    REQUIREMENT_COLUMNS,
    REQUIREMENT_SELECT,
    ts,
)
from ccvault_sqlite.schema import (
    LATEST_VERSION,
    Migration,
    migrate,
    read_version,
    status_at,
)
from ccvault_sqlite.settings import MEMORY, SqliteSettings

__all__ = ["SqliteProfileStore"]

_REQUIREMENTS_OF_STEP = (
    "FROM scenario_requirements INDEXED BY scenario_requirements_key "
    "WHERE tenant_id = ?1 AND scenario_id = ?2 AND step_id IS ?3"
)
# get_missing_fields' reads in one statement (see _get_requirements_with_definitions): a
# requirement row (kind 0) and a definition row (kind 1) share the columns after the kind
# (SQLite's columns are untyped), the narrower padded with NULLs
_SHARED_WIDTH = max(len(REQUIREMENT_COLUMNS), len(DEFINITION_COLUMNS))


def _in_shared_columns(columns: tuple[str, ...]) -> str:
    return ", ".join([*columns, *["NULL"] * (_SHARED_WIDTH - len(columns))])


_REQUIREMENTS_WITH_DEFINITIONS = (
    f"SELECT 0, {_in_shared_columns(REQUIREMENT_COLUMNS)} {_REQUIREMENTS_OF_STEP} "
    f"UNION ALL SELECT 1, {_in_shared_columns(DEFINITION_COLUMNS)} FROM field_definitions "
    "INDEXED BY sqlite_autoindex_field_definitions_2 WHERE tenant_id = ?1 AND enabled = 1 "
    f"AND agent_id IN (SELECT agent_id {_REQUIREMENTS_OF_STEP})"
)

# get_missing_fields' narrow read (see _get_requirement_checks): each requirement of the
# step with the two check columns of its own field's enabled definition (NULL: none). The
# LEFT JOIN keeps the requirements outermost; each definition is one search of the
# (tenant, agent, name) key
_REQUIREMENT_CHECKS = (
    f"SELECT {', '.join(f'r.{column}' for column in REQUIREMENT_COLUMNS)}, "
    "d.required_verification, d.freshness_seconds "
    "FROM scenario_requirements AS r INDEXED BY scenario_requirements_key "
    "LEFT JOIN field_definitions AS d INDEXED BY sqlite_autoindex_field_definitions_2 "
    "ON d.tenant_id = ?1 AND d.agent_id = r.agent_id AND d.name = r.field_name "
    "AND d.enabled = 1 "
    "WHERE r.tenant_id = ?1 AND r.scenario_id = ?2 AND r.step_id IS ?3"
)


class _NotOurRecord(Exception):
    """A column _requirement_records reads is not in the form this provider writes."""


_RECORD_AT = tuple(
    REQUIREMENT_COLUMNS.index(name)
    for name in ("field_name", "required_level", "when_condition", "depends_on_fields")
)
_CHECK_AT = len(REQUIREMENT_COLUMNS)  # required_verification, then freshness_seconds
_AGENT_AT = REQUIREMENT_COLUMNS.index("agent_id")
_LEVELS = {level.value: level for level in RequiredLevel}
_CONDITION_TYPES = {str, type(None)}
_MAX_CONDITION = 2000  # ScenarioFieldRequirement.when_condition's max_length
# field names as the models allow them (FieldName): the codec's check, which keeps the names
# it accepted in a bounded set, so that the names of a scenario read again cost a set lookup
_FIELD_NAMES = codec.FIELD_NAMES


def _field_names(names: set[Any]) -> None:
    """Every one of ``names`` is a field name, or _NotOurRecord."""
    try:
        _FIELD_NAMES(list(names))
    except codec._NotOurs:
        raise _NotOurRecord from None


def _depends_on(column: Sequence[Any]) -> list[tuple[str, ...]]:
    """``depends_on_fields`` (JSON lists of field names) of each row, as tuples (records
    are read, never handed out): each distinct text parsed once."""
    if column.count("[]") == len(column):  # no row depends on anything (the usual case)
        return [()] * len(column)
    parsed: dict[Any, tuple[str, ...]] = {}
    try:
        for text in set(column):
            items = orjson.loads(text)
            if type(items) is not list:
                raise _NotOurRecord
            _field_names(set(items))
            parsed[text] = tuple(items)
    except (orjson.JSONDecodeError, TypeError):  # not JSON, not text, an item not hashable
        raise _NotOurRecord from None
    return list(map(parsed.__getitem__, column))


def _field_checks(verifications: Sequence[Any], freshnesses: Sequence[Any]) -> list[Any]:
    """The FieldCheck of each row's own enabled definition (None: NULL, no definition);
    StorageError for values not in our form (as ``codec.requirement_checks``). Each
    distinct pair is checked once; all rows alike (the same pair), no pair is built."""
    flags, periods = set(verifications), set(freshnesses)  # SQLite values: hashable
    if len(flags) == 1 and len(periods) == 1:
        return [codec.field_check_of(*flags, *periods)] * len(verifications)
    pairs = list(zip(verifications, freshnesses, strict=True))
    check_of = {pair: codec.field_check_of(*pair) for pair in set(pairs)}
    return list(map(check_of.__getitem__, pairs))


# the requirement models of a few rows (get_missing_fields' missing ones), row by row: for
# a handful of rows the codec's column-by-column build costs more in fixed overhead per
# column than this costs per row. Every value is checked to be in the form this provider
# writes (codec.ts, str(UUID), enumeration values, JSON lists of field names), or the rows
# go through the codec instead (validation: StorageError for a row that is not valid)
_REQUIREMENT_FIELDS = tuple(ScenarioFieldRequirement.model_fields)
_FIELDS_SET = set(_REQUIREMENT_FIELDS)
_FALLBACKS = {action.value: action for action in FallbackAction}
_MAX_INT64 = 2**63 - 1
# ids and times: the codec's memos of texts found in our form (one per kind, bounded)
_UUIDS = codec._UUID_MEMO
_TIMES = codec._TIMESTAMP_MEMO


def _our_uuid(text: Any) -> UUID:
    try:
        return cast(UUID, _UUIDS((text,))[0])
    except codec._NotOurs:
        raise _NotOurRecord from None


def _our_time(text: Any) -> datetime:
    try:
        return cast(datetime, _TIMES((text,))[0])
    except codec._NotOurs:
        raise _NotOurRecord from None


def _requirement_of(row: Sequence[Any], fields_set: set[str]) -> ScenarioFieldRequirement:
    """One row's model, every value checked (_NotOurRecord for one not in our form), its
    fields-set ``fields_set`` (every field: the models of one build share one)."""
    (
        id_,
        tenant_id,
        agent_id,
        scenario_id,
        step_id,
        rule_id,
        name,
        level,
        fallback,
        condition,
        depends_on,
        order,
        created_at,
        updated_at,
    ) = row[: len(REQUIREMENT_COLUMNS)]
    if name not in _FIELD_NAMES.known:  # a name accepted before: one set lookup
        _field_names({name})
    if condition is not None and (type(condition) is not str or len(condition) > _MAX_CONDITION):
        raise _NotOurRecord
    if type(order) is not int or not -_MAX_INT64 <= order <= _MAX_INT64:
        raise _NotOurRecord
    try:
        items = orjson.loads(depends_on)
        required_level, fallback_action = _LEVELS[level], _FALLBACKS[fallback]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        raise _NotOurRecord from None
    if type(items) is not list:
        raise _NotOurRecord
    if items:
        try:
            _field_names(set(items))
        except TypeError:
            raise _NotOurRecord from None
    # a dict display, in the fields' declaration order (as validation leaves it); ids and
    # times found in their memo first (each holds only texts of our form, of its own kind)
    known = _UUIDS.entries.get
    known_time = _TIMES.entries.get
    values = {
        "id": known(id_) or _our_uuid(id_),
        "tenant_id": known(tenant_id) or _our_uuid(tenant_id),
        "agent_id": known(agent_id) or _our_uuid(agent_id),
        "scenario_id": known(scenario_id) or _our_uuid(scenario_id),
        "step_id": None if step_id is None else known(step_id) or _our_uuid(step_id),
        "rule_id": None if rule_id is None else known(rule_id) or _our_uuid(rule_id),
        "field_name": name,
        "required_level": required_level,
        "fallback_action": fallback_action,
        "when_condition": condition,
        "depends_on_fields": items,
        "collection_order": order,
        "created_at": known_time(created_at) or _our_time(created_at),
        "updated_at": known_time(updated_at) or _our_time(updated_at),
    }
    model = codec._new(ScenarioFieldRequirement)
    codec._SET_DICT(model, values)
    codec._SET_FIELDS_SET(model, fields_set)
    codec._SET_EXTRA(model, None)
    codec._SET_PRIVATE(model, None)
    return model


def _requirements_of(rows: list[Any]) -> list[ScenarioFieldRequirement]:
    """The requirement models of ``rows`` (``_REQUIREMENT_CHECKS``), in their order:
    :func:`_requirement_of` each, or, if one is not in our form, every one through the
    codec (validated; StorageError for a row that is not a valid requirement). The models
    share one fields-set, as the versions of one profile read do: pydantic only adds a
    name to it (every name is in it already) and copies it for ``model_copy``."""
    try:
        return list(map(_requirement_of, rows, repeat(set(_FIELDS_SET))))
    except _NotOurRecord:
        return codec.requirements_from_rows(rows)


def _requirement_records(rows: Sequence[Any]) -> RequirementRecords:
    """The records of ``rows`` (``_REQUIREMENT_CHECKS``), their sources the rows, built
    into models by the codec (``codec.requirements_from_rows``: StorageError for a row
    that is not a valid requirement). Each column a record holds is checked here, column
    by column, as the models allow it (a field name, a level, a condition of at most 2,000
    characters, a JSON list of field names), and so is the agent id that chose its check;
    a row not in our form anywhere there is
    judged as before, every requirement a model (validated) with its checks."""
    if not rows:
        return RequirementRecords([], _requirements_of)
    # the rows as columns (one pass in C, cheaper than a pass per column read)
    columns = list(zip(*rows, strict=True))
    names, levels, conditions, depends_on = (columns[at] for at in _RECORD_AT)
    checks = _field_checks(columns[_CHECK_AT], columns[_CHECK_AT + 1])
    try:
        _field_names(set(names))
        # the agent picks the definition (the statement's join): an id not of our form
        # would leave its requirement without its check, silently
        try:
            codec._uuids(list(set(columns[_AGENT_AT])))
        except codec._NotOurs:
            raise _NotOurRecord from None
        count, first = len(levels), levels[0]
        try:
            if levels.count(first) == count:  # one level (the usual case): looked up once
                level_of = [_LEVELS[first]] * count
            else:
                level_of = list(map(_LEVELS.__getitem__, levels))
        except (KeyError, TypeError):
            raise _NotOurRecord from None
        if not set(map(type, conditions)) <= _CONDITION_TYPES or (
            max(map(len, filter(None, conditions)), default=0) > _MAX_CONDITION
        ):
            raise _NotOurRecord
        depended = _depends_on(depends_on)
    except _NotOurRecord:
        requirements = codec.requirements_from_rows(rows)  # StorageError if corrupt
        return records_of(requirements, codec.requirement_checks(requirements, rows))
    # each record a plain tuple of RequirementRecord's values, in its order (no class call)
    # read once, as they are made (no list of them)
    records: Iterable[RecordValues] = zip(
        names, level_of, conditions, depended, checks, rows, strict=True
    )
    return RequirementRecords(records, _requirements_of)


logger = logging.getLogger(__name__)

T = TypeVar("T")
Op = Callable[[aiosqlite.Connection], Awaitable[T]]

_SQLITE_HEADER = b"SQLite format 3\x00"
# rows ANALYZE samples per index when PRAGMA optimize runs it (SQLite's docs: 100-1000)
_ANALYSIS_LIMIT = 400
_OPTIMIZE_INTERVAL_S = 3600.0
_SQLITE_BUSY = 5
_SQLITE_LOCKED = 6
_SQLITE_READONLY = 8
_SQLITE_NOTADB = 26
_ACTIVE = ItemStatus.ACTIVE.value
_SUPERSEDED = ItemStatus.SUPERSEDED.value

_PROFILE_SELECT = "id, customer_id, verification_level, created_at, updated_at, last_interaction_at"


def _insert(table: str, columns: Sequence[str], *, if_live: bool) -> str:
    """INSERT of one item with parameters (tenant, profile, *columns).

    ``seq`` is the tenant's next write-order number: the transaction holds the database
    write lock, so ``MAX + 1`` cannot be taken twice. ``if_live`` inserts nothing (0 rows)
    unless the profile exists and is not soft-deleted.
    """
    values = ", ".join(f"?{n}" for n in range(1, len(columns) + 3))
    seq = f"(SELECT COALESCE(MAX(seq), 0) + 1 FROM {table} WHERE tenant_id = ?1)"
    head = f"INSERT INTO {table} (tenant_id, profile_id, {', '.join(columns)}, seq) "
    if not if_live:
        return f"{head}VALUES ({values}, {seq})"
    return (
        f"{head}SELECT {values}, {seq} WHERE EXISTS "
        "(SELECT 1 FROM profiles WHERE tenant_id = ?1 AND id = ?2 AND deleted_at IS NULL)"
    )


_INSERT_FIELD = _insert("fields", FIELD_COLUMNS, if_live=False)
_INSERT_FIELD_IF_LIVE = _insert("fields", FIELD_COLUMNS, if_live=True)
_UPDATE_FIELD = (
    f"UPDATE fields SET {', '.join(f'{c} = ?' for c in FIELD_COLUMNS[1:])} "
    "WHERE tenant_id = ? AND id = ?"
)
_SUPERSEDE_FIELD = (
    "UPDATE fields SET status = 'superseded', superseded_by_id = ?, superseded_at = ?, "
    "updated_at = ? WHERE tenant_id = ? AND profile_id = ? AND name = ? AND status = 'active'"
)
_EXPIRE_DUE = (
    "UPDATE fields SET status = 'expired', updated_at = :now "
    "WHERE tenant_id = :tenant AND status = 'active' AND expires_at IS NOT NULL "
    "AND expires_at <= :now"
)
_INSERT_ASSET = _insert("assets", ASSET_COLUMNS, if_live=False)
_INSERT_ASSET_IF_LIVE = _insert("assets", ASSET_COLUMNS, if_live=True)
_UPDATE_ASSET = (
    f"UPDATE assets SET {', '.join(f'{c} = ?' for c in ASSET_COLUMNS[1:])} "
    "WHERE tenant_id = ? AND id = ?"
)
_SUPERSEDE_ASSET = (
    "UPDATE assets SET status = 'superseded', superseded_by_id = ?, superseded_at = ? "
    "WHERE tenant_id = ? AND profile_id = ? AND name = ? AND status = 'active'"
)
_INSERT_IDENTITY = (
    "INSERT INTO channel_identities (tenant_id, profile_id, position, "
    f"{IDENTITY_SELECT}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_INSERT_CONSENT = (
    f"INSERT INTO consents (tenant_id, profile_id, position, {CONSENT_SELECT}) "
    f"VALUES (?, ?, ?, {', '.join('?' * len(CONSENT_COLUMNS))})"
)
_UPSERT_DEFINITION = (
    f"INSERT INTO field_definitions ({DEFINITION_SELECT}) "
    f"VALUES ({', '.join('?' * len(DEFINITION_COLUMNS))}) "
    "ON CONFLICT (tenant_id, agent_id, name) DO UPDATE SET "
    + ", ".join(
        f"{c} = excluded.{c}"
        for c in DEFINITION_COLUMNS
        if c not in ("id", "tenant_id", "agent_id", "name", "created_at")
    )
    + " RETURNING id"
)
_UPSERT_REQUIREMENT = (
    f"INSERT INTO scenario_requirements ({REQUIREMENT_SELECT}) "
    f"VALUES ({', '.join('?' * len(REQUIREMENT_COLUMNS))}) "
    "ON CONFLICT (tenant_id, scenario_id, ifnull(step_id, ''), ifnull(rule_id, ''), field_name) "
    "DO UPDATE SET "
    + ", ".join(
        f"{c} = excluded.{c}"
        for c in REQUIREMENT_COLUMNS
        if c
        not in ("id", "tenant_id", "scenario_id", "step_id", "rule_id", "field_name", "created_at")
    )
    + " RETURNING id"
)
# the whole derivation chain in one statement: item first, then each source, PK lookups only.
# likelihood(): the walk has few steps; without telling the planner so, once statistics
# exist it expects many and builds a Bloom filter over the tenant's items for the join
# (reading all of them on every call: test_query_plans.py refuses such plans)
_DERIVATION_CHAIN = """
WITH RECURSIVE chain (depth, kind, id, name, source_metadata, source_item_id, source_item_type)
AS (
    SELECT 0, 'profile_field', id, name, source_metadata, source_item_id, source_item_type
      FROM fields INDEXED BY sqlite_autoindex_fields_1
     WHERE tenant_id = :tenant AND id = :item AND :kind = 'profile_field'
    UNION ALL
    SELECT 0, 'profile_asset', id, name, '{}', source_item_id, source_item_type
      FROM assets INDEXED BY sqlite_autoindex_assets_1
     WHERE tenant_id = :tenant AND id = :item AND :kind = 'profile_asset'
    UNION ALL
    SELECT link.depth + 1, 'profile_field', f.id, f.name, f.source_metadata, f.source_item_id,
           f.source_item_type
      FROM chain AS link CROSS JOIN fields AS f INDEXED BY sqlite_autoindex_fields_1
        ON f.tenant_id = :tenant AND f.id = link.source_item_id
     WHERE likelihood(link.source_item_type = 'profile_field', 0.001)
       AND link.depth + 1 < :max_depth
    UNION ALL
    SELECT link.depth + 1, 'profile_asset', a.id, a.name, '{}', a.source_item_id,
           a.source_item_type
      FROM chain AS link CROSS JOIN assets AS a INDEXED BY sqlite_autoindex_assets_1
        ON a.tenant_id = :tenant AND a.id = link.source_item_id
     WHERE likelihood(link.source_item_type = 'profile_asset', 0.001)
       AND link.depth + 1 < :max_depth
)
SELECT kind, id, name, source_metadata, source_item_id, source_item_type
  FROM chain ORDER BY depth
"""
# one batch: at most :limit items of {table} whose source is gone
_MARK_ORPHANS = """
UPDATE {table} SET status = 'orphaned'{touch}
 WHERE rowid IN (
    SELECT o.rowid FROM {table} AS o
     WHERE o.tenant_id = :tenant AND o.status != 'orphaned' AND o.source_item_id IS NOT NULL
       AND ((o.source_item_type = 'profile_field' AND NOT EXISTS (
                SELECT 1 FROM fields AS s
                 WHERE s.tenant_id = :tenant AND s.id = o.source_item_id))
         OR (o.source_item_type = 'profile_asset' AND NOT EXISTS (
                SELECT 1 FROM assets AS s
                 WHERE s.tenant_id = :tenant AND s.id = o.source_item_id)))
     LIMIT :limit)
"""


# one keyset page of mark_orphans in one table: the ids of at most :limit derived items after
# :after (the last id of the previous page, '' from the start), through the partial index
# {table}_derived_by_id (migration 6); then the orphans among exactly those ids (the id range
# of the page, in the same write transaction) are marked
_ORPHAN_PAGE_IDS = """
SELECT id FROM {table} INDEXED BY {table}_derived_by_id
 WHERE tenant_id = :tenant AND source_item_id IS NOT NULL AND id > :after
 ORDER BY id LIMIT :limit
"""
_MARK_ORPHANS_IN_RANGE = """
UPDATE {table} SET status = 'orphaned'{touch}
 WHERE tenant_id = :tenant AND source_item_id IS NOT NULL AND id > :after AND id <= :last
   AND status != 'orphaned'
   AND ((source_item_type = 'profile_field' AND NOT EXISTS (
            SELECT 1 FROM fields AS s
             WHERE s.tenant_id = :tenant AND s.id = {table}.source_item_id))
     OR (source_item_type = 'profile_asset' AND NOT EXISTS (
            SELECT 1 FROM assets AS s
             WHERE s.tenant_id = :tenant AND s.id = {table}.source_item_id)))
"""


def _is_busy(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(code, int):
        return code & 0xFF in (_SQLITE_BUSY, _SQLITE_LOCKED)
    text = str(exc).lower()
    return "database is locked" in text or "database is busy" in text


def _primary_code(exc: sqlite3.Error) -> int | None:
    code = getattr(exc, "sqlite_errorcode", None)
    return code & 0xFF if isinstance(code, int) else None


def _make_private(path: Path) -> None:
    """Create the database file readable by its owner only (0600), or narrow an existing one
    and its -wal/-shm files to the owner: they hold personal data. SQLite creates -wal and
    -shm with the database file's mode."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    except OSError as exc:
        raise errors.StorageError(f"cannot create SQLite database {path}: {exc}") from exc
    else:
        os.close(fd)
    for file in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        try:
            mode = stat.S_IMODE(file.stat().st_mode)
            if mode & 0o077:
                os.chmod(file, mode & 0o700)
        except FileNotFoundError:
            continue
        except OSError as exc:
            logger.warning("cannot make %s readable by its owner only: %s", file, exc)


def _writable(path: Path) -> bool:
    """Writable for us, and not marked read-only (root ignores permission bits, we don't)."""
    mode = path.stat().st_mode
    return os.access(path, os.W_OK) and bool(mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


class SqliteProfileStore(ProfileStore):
    """The vault's embedded store on SQLite, through aiosqlite.

    ``SqliteProfileStore(path=":memory:")`` or ``SqliteProfileStore(SqliteSettings(...))``.
    Use it as an async context manager (``setup()`` on entry, ``aclose()`` on exit).
    ``setup()`` refuses, with :class:`~ccvault.errors.StorageError` and without touching the
    file, a file that is not SQLite, a read-only file, a database of another application,
    or (:class:`~ccvault.errors.SchemaVersionError`) a schema newer than this code.
    """

    def __init__(
        self,
        settings: SqliteSettings | None = None,
        *,
        path: str | os.PathLike[str] | None = None,
        rules: StoreRules | None = None,
    ) -> None:
        super().__init__(rules=rules)
        settings = settings or SqliteSettings()
        if path is not None:
            settings = SqliteSettings.model_validate(
                {**settings.model_dump(), "path": os.fspath(path)}
            )
        self.settings = settings
        self._conn: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()
        # reads run on their own connection (see _open_reader): never queued behind a write
        # that waits for another process's write lock
        self._reader: aiosqlite.Connection | None = None
        self._read_lock = asyncio.Lock()
        self._optimized_at = 0.0
        #: How many times a transaction was retried because the database was locked.
        self.lock_retries = 0

    # =====================================================================================
    # lifecycle
    # =====================================================================================

    @property
    def path(self) -> str:
        """The database path as configured (``":memory:"`` for an in-memory database)."""
        return self.settings.path

    @property
    def connection(self) -> aiosqlite.Connection:
        """The open connection, for diagnostics and tests. Do not run transactions on it."""
        if self._conn is None:
            raise errors.StorageError("the SQLite store is not set up (use `async with`)")
        return self._conn

    @property
    def schema_version(self) -> int:
        """The schema version this code writes (the database must be at it to open)."""
        return LATEST_VERSION

    async def setup(self) -> None:
        """Open the database, refuse what is not ours, set WAL mode, check the schema
        version (migrating only with ``migrate_on_start`` or for ``:memory:``). Idempotent."""
        async with self._lock:
            if self._conn is not None:
                return
            self._conn = await self._open(migrating=self._migrates_on_start())
            try:
                self._reader = await self._open_reader(self._conn)
            except BaseException:
                conn, self._conn = self._conn, None
                await conn.close()
                raise

    def _migrates_on_start(self) -> bool:
        return self.settings.migrate_on_start or self.settings.path == MEMORY

    def _database(self, *, create: bool) -> str:
        """The database to connect to, checked. ``create`` False: a missing file is refused
        (:class:`~ccvault.errors.SchemaNotReadyError`) and nothing is created."""
        if self.settings.path == MEMORY:
            return MEMORY
        path = Path(self.settings.path).expanduser()
        if path.exists():
            if not path.is_file():
                raise errors.StorageError(f"SQLite database path {path} is not a regular file")
            with path.open("rb") as file:
                header = file.read(len(_SQLITE_HEADER))
            if header and header != _SQLITE_HEADER:
                raise errors.StorageError(f"{path} is not a SQLite database (wrong file header)")
            if not _writable(path):
                raise errors.StorageError(
                    f"SQLite database {path} is read-only; the vault needs to write to it"
                )
        elif not create:
            require_ready(status_at(0, f"SQLite file {path}"), distribution="ccvault-sqlite")
        elif not path.parent.is_dir():
            if not self.settings.create_parent_dirs:
                raise errors.StorageError(
                    f"folder {path.parent} of the SQLite database does not exist"
                )
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise errors.StorageError(f"cannot create folder {path.parent}: {exc}") from exc
        _make_private(path)
        return str(path)

    async def _open(
        self, *, migrating: bool, applied: list[Migration] | None = None
    ) -> aiosqlite.Connection:
        """A configured connection to a database at the latest schema version: migrated
        first when ``migrating`` (the steps applied appended to ``applied``), else refused
        unless already there (nothing written)."""
        database = self._database(create=migrating)
        try:
            conn = await aiosqlite.connect(
                database,
                isolation_level=None,
                timeout=self.settings.busy_timeout_ms / 1000,
            )
        except sqlite3.Error as exc:
            raise errors.StorageError(f"cannot open SQLite database {database}: {exc}") from exc
        try:
            await conn.execute(f"PRAGMA busy_timeout = {int(self.settings.busy_timeout_ms)}")
            await conn.execute("PRAGMA foreign_keys = ON")
            # deleted content is overwritten with zeros, whatever SQLite was compiled with
            await conn.execute("PRAGMA secure_delete = ON")
            # read-only checks first: a foreign, newer or unmigrated database is left as it is
            status = status_at(await read_version(conn), self._location(database))
            if not migrating:
                require_ready(status, distribution="ccvault-sqlite")
            if database != MEMORY:
                rows = await self._retry_busy(
                    lambda: conn.execute_fetchall("PRAGMA journal_mode = WAL")
                )
                mode = str(next(iter(rows))[0]).lower()
                if mode != "wal":
                    logger.warning("SQLite kept journal_mode=%s for %s", mode, database)
            await conn.execute(f"PRAGMA synchronous = {self.settings.synchronous}")
            if migrating:
                version = await self._retry_busy(
                    lambda: migrate(conn, ts(self.now()), applied=applied)
                )
                logger.debug("SQLite database %s at schema version %d", database, version)
        except BaseException as exc:
            await conn.close()
            if isinstance(exc, sqlite3.Error):
                raise self._storage_error(exc, database) from exc
            raise
        return conn

    def _shown(self) -> str:
        """The database as messages name it."""
        path = self.settings.path
        return path if path == MEMORY else str(Path(path).expanduser())

    @staticmethod
    def _location(database: str) -> str:
        return "SQLite in-memory database" if database == MEMORY else f"SQLite file {database}"

    async def schema_status(self) -> SchemaStatus:
        """The schema version of the file (reads only; a missing file: version 0, nothing
        created). On an open store: of its connection. An unopened ``:memory:`` database
        does not exist yet and is migrated whenever it is opened: up to date."""
        if self._conn is not None:
            return status_at(await read_version(self._conn), self._location(self._shown()))
        if self.settings.path == MEMORY:
            return status_at(LATEST_VERSION, self._location(MEMORY))
        try:
            database = self._database(create=False)
        except errors.SchemaNotReadyError:  # no file: nothing created yet
            return status_at(0, self._location(self._shown()))
        try:
            async with aiosqlite.connect(database, isolation_level=None) as conn:
                return status_at(await read_version(conn), self._location(database))
        except sqlite3.Error as exc:
            raise self._storage_error(exc, database) from exc

    async def migrate(self, *, dry_run: bool = False) -> MigrationReport:
        """Apply the pending migrations to the file (creating it and its folder), in one
        ``BEGIN IMMEDIATE`` transaction: concurrent migrators serialize on the write lock.
        ``dry_run``: reads only (a missing file stays missing)."""
        before = await self.schema_status()
        if before.newer:
            require_ready(before, distribution="ccvault-sqlite")
        if dry_run or (self.settings.path == MEMORY and self._conn is None):
            # (an unopened private in-memory database: nothing exists to migrate)
            return MigrationReport(applied=before.pending, status=before, dry_run=dry_run)
        applied: list[Migration] = []
        if self._conn is not None and self.settings.path == MEMORY:
            # a private in-memory database exists only on this connection (migrated when
            # opened, so there is nothing left to apply)
            conn = self._conn
            await self._retry_busy(lambda: migrate(conn, ts(self.now()), applied=applied))
            after = status_at(await read_version(conn), before.location)
        else:
            conn = await self._open(migrating=True, applied=applied)
            try:
                after = status_at(await read_version(conn), before.location)
            finally:
                await conn.close()
        return MigrationReport(applied=tuple(m.step() for m in applied), status=after)

    @staticmethod
    def _storage_error(exc: sqlite3.Error, database: str) -> errors.VaultError:
        code = _primary_code(exc)
        if code == _SQLITE_NOTADB:
            return errors.StorageError(f"{database} is not a SQLite database: {exc}")
        if code == _SQLITE_READONLY:
            return errors.StorageError(f"SQLite database {database} is read-only: {exc}")
        if _is_busy(exc):
            return errors.ProviderUnavailableError(
                f"SQLite database {database} stayed locked by another writer: {exc}"
            )
        return errors.StorageError(f"SQLite database {database} is unusable: {exc}")

    async def aclose(self) -> None:
        """Close the connections (a WAL checkpoint happens on the last close), after a
        ``PRAGMA optimize``. Idempotent."""
        async with self._lock:
            conn, self._conn = self._conn, None
            if self._reader is not None and self._reader is not conn:
                async with self._read_lock:  # after the read running now, if any
                    await self._reader.close()
            self._reader = None
            if conn is not None:
                await self._optimize(conn, "PRAGMA optimize")
                await conn.close()

    # =====================================================================================
    # connections
    # =====================================================================================

    @property
    def read_connection(self) -> aiosqlite.Connection:
        """The connection plain reads run on, for diagnostics and tests (the write
        connection itself for ``:memory:``, whose database only that connection sees)."""
        if self._reader is None:
            raise errors.StorageError("the SQLite store is not set up (use `async with`)")
        return self._reader

    def _reads_lock(self) -> asyncio.Lock:
        """The lock of the read connection: the write lock when both are one connection."""
        return self._lock if self._reader is self._conn else self._read_lock

    async def _open_reader(self, writer: aiosqlite.Connection) -> aiosqlite.Connection:
        """The connection for reads outside write transactions.

        In WAL mode a reader never needs the write lock, but one connection runs one
        statement at a time: a write waiting (``busy_timeout``, then retries) for another
        process's write lock would hold every read queued behind it. So reads get their own
        connection, ``query_only`` (it can never take the write lock itself), and its own
        :class:`asyncio.Lock`. Each statement on it (autocommit) reads the latest committed
        state, so a read issued after a write returned sees that write.

        ``PRAGMA optimize=0x10002`` runs on the write connection here, as SQLite recommends
        for long-lived connections, and plain ``PRAGMA optimize`` before close and after a
        write once an hour has passed: statistics cannot change the query plans (every read pins
        its index and join order, see ``test_query_plans.py``), they only keep
        ``sqlite_stat1`` current for anything else.
        """
        await self._optimize(writer, "PRAGMA optimize = 0x10002")
        if self.settings.path == MEMORY:
            return writer
        database = self._shown()
        try:
            reader = await aiosqlite.connect(
                database, isolation_level=None, timeout=self.settings.busy_timeout_ms / 1000
            )
        except sqlite3.Error as exc:
            raise self._storage_error(exc, database) from exc
        try:
            await reader.execute(f"PRAGMA busy_timeout = {int(self.settings.busy_timeout_ms)}")
            await reader.execute("PRAGMA query_only = ON")
        except BaseException as exc:
            await reader.close()
            if isinstance(exc, sqlite3.Error):
                raise self._storage_error(exc, database) from exc
            raise
        return reader

    async def _optimize(self, conn: aiosqlite.Connection, pragma: str) -> None:
        """Run ``pragma`` (a ``PRAGMA optimize``), best effort: bounded work
        (``analysis_limit``, which SQLite before 3.46 does not set by itself) and no wait
        for the write lock (``busy_timeout`` 0 meanwhile): if another connection writes,
        statistics are refreshed another time."""
        self._optimized_at = time.monotonic()
        try:
            await conn.execute(f"PRAGMA analysis_limit = {_ANALYSIS_LIMIT}")
            await conn.execute("PRAGMA busy_timeout = 0")
            try:
                await conn.execute(pragma)
            finally:
                await conn.execute(f"PRAGMA busy_timeout = {int(self.settings.busy_timeout_ms)}")
        except sqlite3.Error as exc:
            logger.info("SQLite %s skipped: %s", pragma, exc)

    async def _optimize_now_and_then(self, conn: aiosqlite.Connection) -> None:
        """``PRAGMA optimize`` after a write once ``_OPTIMIZE_INTERVAL_S`` has passed."""
        if time.monotonic() - self._optimized_at >= _OPTIMIZE_INTERVAL_S:
            await self._optimize(conn, "PRAGMA optimize")

    # =====================================================================================
    # transactions
    # =====================================================================================

    def _backoff(self, attempt: int) -> float:
        delay_ms = min(
            self.settings.lock_retry_max_ms,
            self.settings.lock_retry_initial_ms * float(2 ** (attempt - 1)),
        )
        # jitter, so two retrying writers do not collide again in lock step
        return delay_ms * random.uniform(0.5, 1.0) / 1000

    async def _retry_busy(self, call: Callable[[], Awaitable[T]]) -> T:
        """``call()``, retried with back-off while SQLite reports the database locked."""
        attempt = 0
        while True:
            try:
                return await call()
            except sqlite3.OperationalError as exc:
                attempt += 1
                if not _is_busy(exc) or attempt >= self.settings.lock_retry_attempts:
                    raise
                self.lock_retries += 1
                logger.info("SQLite database locked, retry %d: %s", attempt, exc)
                await asyncio.sleep(self._backoff(attempt))

    async def _transaction(self, op: Op[T], *, write: bool) -> T:
        """Run ``op`` in one transaction under the store's lock; all or nothing.

        Writes use ``BEGIN IMMEDIATE``. A busy/locked database rolls back and retries the
        whole transaction (``op`` must be safe to run again). SQLite errors are mapped to
        the vault's errors; the transaction is always rolled back on failure.
        """
        async with self._lock if write else self._reads_lock():
            conn = self.connection if write else self.read_connection
            begin = "BEGIN IMMEDIATE" if write else "BEGIN"

            async def attempt() -> T:
                await conn.execute(begin)
                try:
                    result = await op(conn)
                    await conn.execute("COMMIT")
                except BaseException:
                    await self._rollback(conn)
                    raise
                return result

            try:
                result = await self._retry_busy(attempt)
                if write:
                    await self._optimize_now_and_then(conn)
                return result
            except sqlite3.IntegrityError as exc:
                raise errors.ConflictError(f"the write conflicts with stored data: {exc}") from exc
            except sqlite3.Error as exc:
                raise self._storage_error(exc, self.settings.path) from exc
            except (OverflowError, UnicodeEncodeError) as exc:
                raise errors.ValidationError(f"value cannot be stored in SQLite: {exc}") from exc

    @staticmethod
    async def _rollback(conn: aiosqlite.Connection) -> None:
        if conn.in_transaction:
            try:
                await conn.execute("ROLLBACK")
            except sqlite3.Error as exc:  # pragma: no cover - e.g. a COMMIT cancelled late
                logger.warning("ROLLBACK found no transaction to undo: %s", exc)

    async def _write(self, op: Op[T]) -> T:
        return await self._transaction(op, write=True)

    async def _read(self, op: Op[T]) -> T:
        return await self._transaction(op, write=False)

    async def _fetch(self, sql: str, params: Sequence[Any] | dict[str, Any]) -> list[Any]:
        """One SELECT (one statement reads one snapshot; no transaction needed)."""

        async def op(conn: aiosqlite.Connection) -> list[Any]:
            return list(await conn.execute_fetchall(sql, params))

        async with self._reads_lock():
            conn = self.read_connection
            try:
                return await self._retry_busy(lambda: op(conn))
            except sqlite3.Error as exc:
                raise self._storage_error(exc, self.settings.path) from exc

    # =====================================================================================
    # profiles
    # =====================================================================================

    @staticmethod
    async def _load_profile(
        conn: aiosqlite.Connection,
        tenant_id: UUID,
        where: str,
        params: dict[str, Any],
        include_history: bool,
    ) -> CustomerProfile | None:
        """The profile matched by ``where`` (over ``profiles AS p``), in ONE statement.

        One statement reads one snapshot, so no transaction is needed and the number of
        round trips is the same for 1 field or 1,000 versions.
        """
        sql = _profile_query(where, include_history)
        rows = await conn.execute_fetchall(sql, {"tenant": str(tenant_id), **params})
        return _assemble_profile(tenant_id, list(rows), include_history)

    async def _read_profile(
        self, tenant_id: UUID, where: str, params: dict[str, Any], include_history: bool
    ) -> CustomerProfile | None:
        # the rows go straight in: _assemble_profile lets them go once it has their columns
        return _assemble_profile(
            tenant_id,
            await self._fetch(
                _profile_query(where, include_history), {"tenant": str(tenant_id), **params}
            ),
            include_history,
        )

    async def _get_by_customer_id(
        self, tenant_id: UUID, customer_id: UUID, include_history: bool
    ) -> CustomerProfile | None:
        return await self._read_profile(
            tenant_id, _LIVE_BY_CUSTOMER, {"key": str(customer_id)}, include_history
        )

    async def _get_by_id(
        self, tenant_id: UUID, profile_id: UUID, include_history: bool
    ) -> CustomerProfile | None:
        return await self._read_profile(
            tenant_id, _LIVE_BY_ID, {"key": str(profile_id)}, include_history
        )

    async def _get_by_channel_identity(
        self, tenant_id: UUID, channel: Channel, channel_user_id: str, include_history: bool
    ) -> CustomerProfile | None:
        return await self._read_profile(
            tenant_id,
            _LIVE_BY_IDENTITY,
            {"channel": channel.value, "user": channel_user_id},
            include_history,
        )

    async def _get_or_create(self, tenant_id: UUID, candidate: CustomerProfile) -> CustomerProfile:
        identity = candidate.channel_identities[0]
        found = await self._get_by_channel_identity(
            tenant_id, identity.channel, identity.channel_user_id, False
        )
        if found is not None:
            return found

        async def op(conn: aiosqlite.Connection) -> CustomerProfile:
            # under the write lock: nobody can create the owner between this read and insert
            owner = await self._load_profile(
                conn,
                tenant_id,
                _LIVE_BY_IDENTITY,
                {"channel": identity.channel.value, "user": identity.channel_user_id},
                False,
            )
            if owner is not None:
                return owner
            await self._insert_profile_row(conn, candidate)
            await conn.execute(
                _INSERT_IDENTITY,
                (str(tenant_id), str(candidate.id), 0, *codec.identity_params(identity)),
            )
            return candidate

        return await self._write(op)

    @staticmethod
    async def _insert_profile_row(conn: aiosqlite.Connection, profile: CustomerProfile) -> None:
        await conn.execute(
            "INSERT INTO profiles (tenant_id, id, customer_id, verification_level, created_at, "
            "updated_at, last_interaction_at, deleted_at) VALUES (?, ?, ?, ?, ?, ?, ?, NULL) "
            "ON CONFLICT (tenant_id, id) DO UPDATE SET customer_id = excluded.customer_id, "
            "verification_level = excluded.verification_level, "
            "created_at = excluded.created_at, updated_at = excluded.updated_at, "
            "last_interaction_at = excluded.last_interaction_at",
            (
                str(profile.tenant_id),
                str(profile.id),
                str(profile.customer_id),
                profile.verification_level.value,
                ts(profile.created_at),
                ts(profile.updated_at),
                codec.ts_opt(profile.last_interaction_at),
            ),
        )

    async def _save(self, profile: CustomerProfile) -> UUID:
        tenant = str(profile.tenant_id)
        profile_id = str(profile.id)
        # encode everything before the transaction: bad values fail before any statement
        for item in profile.fields.values():
            codec.field_params(item)
        for asset in profile.assets:
            codec.asset_params(asset)
        identity_rows = [
            (tenant, profile_id, n, *codec.identity_params(item))
            for n, item in enumerate(profile.channel_identities)
        ]
        consent_rows = [
            (tenant, profile_id, n, *codec.consent_params(item))
            for n, item in enumerate(profile.consents)
        ]

        async def op(conn: aiosqlite.Connection) -> UUID:
            state = await self._read_save_state(conn, profile)
            plan = plan_save(state, profile, self.now())
            await self._insert_profile_row(conn, plan.profile)
            await conn.execute(
                "DELETE FROM channel_identities WHERE tenant_id = ? AND profile_id = ?",
                (tenant, profile_id),
            )
            if identity_rows:
                await conn.executemany(_INSERT_IDENTITY, identity_rows)
            await conn.execute(
                "DELETE FROM consents WHERE tenant_id = ? AND profile_id = ?", (tenant, profile_id)
            )
            if consent_rows:
                await conn.executemany(_INSERT_CONSENT, consent_rows)
            if plan.updated_fields:
                await conn.executemany(
                    _UPDATE_FIELD,
                    [(*codec.field_params(f)[1:], tenant, str(f.id)) for f in plan.updated_fields],
                )
            if plan.new_fields:
                now = ts(plan.now)
                await conn.executemany(
                    _SUPERSEDE_FIELD,
                    [(str(f.id), now, now, tenant, profile_id, f.name) for f in plan.new_fields],
                )
                await conn.executemany(
                    _INSERT_FIELD,
                    [(tenant, profile_id, *codec.field_params(f)) for f in plan.new_fields],
                )
            if plan.updated_assets:
                await conn.executemany(
                    _UPDATE_ASSET,
                    [(*codec.asset_params(a)[1:], tenant, str(a.id)) for a in plan.updated_assets],
                )
            if plan.new_assets:
                await conn.executemany(
                    _INSERT_ASSET,
                    [(tenant, profile_id, *codec.asset_params(a)) for a in plan.new_assets],
                )
            return profile.id

        return await self._write(op)

    @staticmethod
    async def _read_save_state(conn: aiosqlite.Connection, profile: CustomerProfile) -> SaveState:
        """What :func:`plan_save` needs, read inside the save's write transaction."""
        tenant, profile_id = str(profile.tenant_id), str(profile.id)
        rows = await conn.execute_fetchall(
            "SELECT deleted_at IS NOT NULL FROM profiles WHERE tenant_id = ? AND id = ?",
            (tenant, profile_id),
        )
        owner = await conn.execute_fetchall(
            "SELECT id FROM profiles WHERE tenant_id = ? AND customer_id = ? "
            "AND deleted_at IS NULL",
            (tenant, str(profile.customer_id)),
        )
        identities = await conn.execute_fetchall(
            "SELECT channel, channel_user_id, profile_id FROM channel_identities "
            "WHERE tenant_id = ? AND (channel, channel_user_id) IN "
            "(SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]') "
            "FROM json_each(?))",
            (
                tenant,
                codec.dumps(
                    [[i.channel.value, i.channel_user_id] for i in profile.channel_identities],
                    "identities",
                ),
            ),
        )
        items: list[dict[UUID, StoredItem]] = []
        for table, ids in (
            ("fields", [str(f.id) for f in profile.fields.values()]),
            ("assets", [str(a.id) for a in profile.assets]),
        ):
            found = await conn.execute_fetchall(
                f"SELECT id, profile_id, name, status, superseded_by_id, superseded_at "
                f"FROM {table} WHERE tenant_id = ? AND id IN (SELECT value FROM json_each(?))",
                (tenant, codec.dumps(ids, "ids")),
            )
            items.append(
                {
                    UUID(row[0]): StoredItem(
                        profile_id=UUID(row[1]),
                        name=row[2],
                        status=ItemStatus(row[3]),
                        superseded_by_id=None if row[4] is None else UUID(row[4]),
                        superseded_at=None if row[5] is None else datetime.fromisoformat(row[5]),
                    )
                    for row in found
                }
            )
        return SaveState(
            exists=bool(rows),
            gone=any(row[0] for row in rows),
            customer_owner=UUID(next(iter(owner))[0]) if owner else None,
            identity_owners={(Channel(row[0]), row[1]): UUID(row[2]) for row in identities},
            fields=items[0],
            assets=items[1],
        )

    async def _delete(self, tenant_id: UUID, profile_id: UUID) -> bool:
        key = (str(tenant_id), str(profile_id))

        async def op(conn: aiosqlite.Connection) -> bool:
            cursor = await conn.execute(
                "UPDATE profiles SET deleted_at = ? "
                "WHERE tenant_id = ? AND id = ? AND deleted_at IS NULL",
                (ts(self.now()), *key),
            )
            if cursor.rowcount != 1:
                return False
            # release the identities (the same channel user can start afresh); the profile
            # still holds, and exports, what it had until a purge
            await conn.execute(
                f"INSERT INTO released_identities (tenant_id, profile_id, position, "
                f"{IDENTITY_SELECT}) SELECT tenant_id, profile_id, position, {IDENTITY_SELECT} "
                "FROM channel_identities WHERE tenant_id = ? AND profile_id = ?",
                key,
            )
            await conn.execute(
                "DELETE FROM channel_identities WHERE tenant_id = ? AND profile_id = ?", key
            )
            return True

        return await self._write(op)

    # =====================================================================================
    # fields
    # =====================================================================================

    async def _update_field(
        self, tenant_id: UUID, profile_id: UUID, field: ProfileField, supersede_existing: bool
    ) -> UUID:
        tenant, profile = str(tenant_id), str(profile_id)
        params = codec.field_params(field)

        async def op(conn: aiosqlite.Connection) -> UUID:
            if supersede_existing:
                now = ts(self.now())
                await conn.execute(
                    _SUPERSEDE_FIELD, (str(field.id), now, now, tenant, profile, field.name)
                )
            else:
                # the profile's overdue versions close first, in this transaction: if the
                # insert is refused (an unexpired ACTIVE version), the rollback undoes it
                await conn.execute(
                    _EXPIRE_DUE + " AND profile_id = :profile",
                    {"tenant": tenant, "now": ts(field.updated_at), "profile": profile},
                )
            try:
                cursor = await conn.execute(_INSERT_FIELD_IF_LIVE, (tenant, profile, *params))
            except sqlite3.IntegrityError as exc:
                reason = getattr(exc, "sqlite_errorname", "")
                if reason == "SQLITE_CONSTRAINT_PRIMARYKEY":
                    raise errors.ConflictError(f"field id {field.id} is already stored") from exc
                if reason == "SQLITE_CONSTRAINT_UNIQUE":  # the one-ACTIVE-per-name index
                    raise errors.ActiveFieldConflictError(
                        f"field {field.name!r} already has an ACTIVE version"
                    ) from exc
                raise
            if cursor.rowcount != 1:
                raise errors.NotFoundError(f"profile {profile_id} not found")
            return field.id

        return await self._write(op)

    async def _get_field(
        self, tenant_id: UUID, profile_id: UUID, field_name: str, status: ItemStatus | None
    ) -> ProfileField | None:
        status_filter = "" if status is None else " AND status = ?"
        params: tuple[str, ...] = (str(tenant_id), str(profile_id), field_name)
        if status is not None:
            params = (*params, status.value)
        rows = await self._fetch(
            f"SELECT {FIELD_SELECT} FROM fields INDEXED BY fields_history "
            f"WHERE tenant_id = ? AND profile_id = ? AND name = ?{status_filter} "
            "ORDER BY collected_at DESC, seq DESC LIMIT 1",
            params,
        )
        return codec.fields_from_rows(rows)[0] if rows else None

    async def _get_field_history(
        self, tenant_id: UUID, profile_id: UUID, field_name: str
    ) -> list[ProfileField]:
        rows = await self._fetch(
            f"SELECT {FIELD_SELECT} FROM fields INDEXED BY fields_history "
            "WHERE tenant_id = ? AND profile_id = ? AND name = ? "
            "ORDER BY collected_at DESC, seq DESC",
            (str(tenant_id), str(profile_id), field_name),
        )
        return codec.fields_from_rows(rows)

    async def _expire_stale_fields_batch(
        self, tenant_id: UUID, profile_id: UUID | None, now: datetime, limit: int
    ) -> int:
        # the due rows (by the ACTIVE expiry index), at most `limit`, in one write transaction
        due = (
            "SELECT rowid FROM fields WHERE tenant_id = :tenant AND status = 'active' "
            "AND expires_at IS NOT NULL AND expires_at <= :now"
        )
        params: dict[str, Any] = {"tenant": str(tenant_id), "now": ts(now), "limit": limit}
        if profile_id is not None:
            due += " AND profile_id = :profile"
            params["profile"] = str(profile_id)
        sql = (
            "UPDATE fields SET status = 'expired', updated_at = :now "
            f"WHERE rowid IN ({due} LIMIT :limit)"
        )

        async def op(conn: aiosqlite.Connection) -> int:
            cursor = await conn.execute(sql, params)
            return max(cursor.rowcount, 0)

        return await self._write(op)

    # =====================================================================================
    # assets
    # =====================================================================================

    async def _add_asset(
        self, tenant_id: UUID, profile_id: UUID, asset: ProfileAsset, supersede_existing: bool
    ) -> UUID:
        tenant, profile = str(tenant_id), str(profile_id)
        params = codec.asset_params(asset)

        async def op(conn: aiosqlite.Connection) -> UUID:
            if supersede_existing:
                await conn.execute(
                    _SUPERSEDE_ASSET,
                    (str(asset.id), ts(self.now()), tenant, profile, asset.name),
                )
            try:
                cursor = await conn.execute(_INSERT_ASSET_IF_LIVE, (tenant, profile, *params))
            except sqlite3.IntegrityError as exc:
                if getattr(exc, "sqlite_errorname", "") != "SQLITE_CONSTRAINT_PRIMARYKEY":
                    raise
                raise errors.ConflictError(f"asset id {asset.id} is already stored") from exc
            if cursor.rowcount != 1:
                raise errors.NotFoundError(f"profile {profile_id} not found")
            return asset.id

        return await self._write(op)

    async def _get_asset(
        self, tenant_id: UUID, profile_id: UUID, asset_id: UUID
    ) -> ProfileAsset | None:
        rows = await self._fetch(
            f"SELECT {ASSET_SELECT} FROM assets INDEXED BY sqlite_autoindex_assets_1 "
            "WHERE tenant_id = ? AND profile_id = ? AND id = ?",
            (str(tenant_id), str(profile_id), str(asset_id)),
        )
        return codec.assets_from_rows(rows)[0] if rows else None

    async def _get_asset_by_name(
        self, tenant_id: UUID, profile_id: UUID, asset_name: str, status: ItemStatus | None
    ) -> ProfileAsset | None:
        status_filter = "" if status is None else " AND status = ?"
        params: tuple[str, ...] = (str(tenant_id), str(profile_id), asset_name)
        if status is not None:
            params = (*params, status.value)
        rows = await self._fetch(
            f"SELECT {ASSET_SELECT} FROM assets INDEXED BY assets_by_name "
            "WHERE tenant_id = ? AND profile_id = ? "
            f"AND name = ?{status_filter} ORDER BY uploaded_at DESC, seq DESC LIMIT 1",
            params,
        )
        return codec.assets_from_rows(rows)[0] if rows else None

    # =====================================================================================
    # lineage
    # =====================================================================================

    async def _get_derivation_chain(
        self, tenant_id: UUID, item_id: UUID, item_type: ItemType, max_depth: int
    ) -> list[LineageEntry]:
        rows = await self._fetch(
            _DERIVATION_CHAIN,
            {
                "tenant": str(tenant_id),
                "item": str(item_id),
                "kind": item_type.value,
                "max_depth": max_depth,
            },
        )
        chain: list[LineageEntry] = []
        seen: set[str] = set()
        for kind, found_id, name, metadata, source_id, source_type in rows:
            if found_id in seen:  # a cycle: stop before the item comes round again
                break
            seen.add(found_id)
            chain.append(
                LineageEntry(
                    id=found_id,
                    type=ItemType(kind),
                    name=name,
                    source_metadata=codec.loads(metadata) or {},
                    source_item_id=source_id,
                    source_item_type=None if source_type is None else SourceType(source_type),
                )
            )
        chain.reverse()
        return chain

    async def _get_derived_items(
        self, tenant_id: UUID, source_item_id: UUID
    ) -> tuple[list[ProfileField], list[ProfileAsset]]:
        key = (str(tenant_id), str(source_item_id))

        async def op(conn: aiosqlite.Connection) -> tuple[list[ProfileField], list[ProfileAsset]]:
            field_rows = await conn.execute_fetchall(
                f"SELECT {FIELD_SELECT} FROM fields INDEXED BY fields_by_source "
                "WHERE tenant_id = ? AND source_item_id = ? "
                "ORDER BY collected_at, seq",
                key,
            )
            asset_rows = await conn.execute_fetchall(
                f"SELECT {ASSET_SELECT} FROM assets INDEXED BY assets_by_source "
                "WHERE tenant_id = ? AND source_item_id = ? "
                "ORDER BY uploaded_at, seq",
                key,
            )
            return (
                codec.fields_from_rows(list(field_rows)),
                codec.assets_from_rows(list(asset_rows)),
            )

        return await self._read(op)

    _HAS_DEPENDENTS = (
        "SELECT EXISTS (SELECT 1 FROM fields INDEXED BY fields_by_source WHERE tenant_id = :tenant "
        "AND source_item_id = :item AND status = 'active') "
        "OR EXISTS (SELECT 1 FROM assets INDEXED BY assets_by_source WHERE tenant_id = :tenant "
        "AND source_item_id = :item AND status = 'active')"
    )

    async def _check_has_dependents(self, tenant_id: UUID, item_id: UUID) -> bool:
        rows = await self._fetch(
            self._HAS_DEPENDENTS, {"tenant": str(tenant_id), "item": str(item_id)}
        )
        return bool(rows[0][0])

    # =====================================================================================
    # channels and merge
    # =====================================================================================

    async def _link_channel(
        self,
        tenant_id: UUID,
        profile_id: UUID,
        identity: ChannelIdentity,
        *,
        max_per_channel: int | None = None,
    ) -> bool:
        tenant, profile = str(tenant_id), str(profile_id)

        async def op(conn: aiosqlite.Connection) -> bool:
            await self._require_live(conn, tenant, profile)
            rows = list(
                await conn.execute_fetchall(
                    "SELECT profile_id FROM channel_identities "
                    "WHERE tenant_id = ? AND channel = ? AND channel_user_id = ?",
                    (tenant, identity.channel.value, identity.channel_user_id),
                )
            )
            owner = UUID(rows[0][0]) if rows else None
            if not link_outcome(profile_id, owner, identity.channel):
                return False
            if max_per_channel is not None:
                # read in the write transaction (BEGIN IMMEDIATE): no concurrent link of
                # this profile can slip in between the read and the writes
                held = [
                    codec.identity_from_row(row)
                    for row in await conn.execute_fetchall(
                        f"SELECT {IDENTITY_SELECT} FROM channel_identities "
                        "WHERE tenant_id = ? AND profile_id = ? AND channel = ?",
                        (tenant, profile, identity.channel.value),
                    )
                ]
                evicted = channel_eviction(held, identity.channel, max_per_channel)
                if evicted is not None:
                    # released as delete releases identities: it leaves channel_identities
                    # (a live profile does not keep it, so it is not in released_identities)
                    await conn.execute(
                        "DELETE FROM channel_identities WHERE tenant_id = ? AND profile_id = ? "
                        "AND channel = ? AND channel_user_id = ?",
                        (tenant, profile, evicted.channel.value, evicted.channel_user_id),
                    )
            position = await self._next_position(conn, "channel_identities", tenant, profile)
            await conn.execute(
                _INSERT_IDENTITY, (tenant, profile, position, *codec.identity_params(identity))
            )
            return True

        return await self._write(op)

    @staticmethod
    async def _require_live(conn: aiosqlite.Connection, tenant: str, profile: str) -> None:
        rows = await conn.execute_fetchall(
            "SELECT 1 FROM profiles WHERE tenant_id = ? AND id = ? AND deleted_at IS NULL",
            (tenant, profile),
        )
        if not rows:
            raise errors.NotFoundError(f"profile {profile} not found")

    @staticmethod
    async def _next_position(
        conn: aiosqlite.Connection, table: str, tenant: str, profile: str
    ) -> int:
        rows = await conn.execute_fetchall(
            f"SELECT COALESCE(MAX(position), -1) + 1 FROM {table} "
            "WHERE tenant_id = ? AND profile_id = ?",
            (tenant, profile),
        )
        return int(next(iter(rows))[0])

    async def _merge_profiles(
        self,
        tenant_id: UUID,
        source_profile_id: UUID,
        target_profile_id: UUID,
        choose_winner: MergeWinner,
        log: MergeLogRequest | None = None,
    ) -> None:
        tenant, source, target = str(tenant_id), str(source_profile_id), str(target_profile_id)
        request = log or MergeLogRequest()

        async def op(conn: aiosqlite.Connection) -> None:
            # read both live profiles, let core's rule plan the merge, write exactly the plan
            sides = []
            for key in (source, target):
                found = await self._load_profile(conn, tenant_id, _LIVE_BY_ID, {"key": key}, False)
                if found is None:
                    raise errors.NotFoundError(f"profile {key} not found")
                sides.append(MergeSide.from_profile(found))
            source_side, target_side = sides
            taken = await conn.execute_fetchall(
                "SELECT 1 FROM merge_log WHERE tenant_id = ? AND id = ?",
                (tenant, str(request.merge_id)),
            )
            if taken:
                raise errors.ConflictError(f"merge id {request.merge_id} is already taken")
            now = self.now()
            plan = plan_merge(target_side, source_side, now, choose_winner=choose_winner)
            stamp = ts(now)
            # the log entry: everything of the source, as read in this transaction
            field_ids = await conn.execute_fetchall(
                "SELECT id FROM fields WHERE tenant_id = ? AND profile_id = ? ORDER BY seq",
                (tenant, source),
            )
            asset_ids = await conn.execute_fetchall(
                "SELECT id FROM assets WHERE tenant_id = ? AND profile_id = ? ORDER BY seq",
                (tenant, source),
            )
            consents = await conn.execute_fetchall(
                f"SELECT {CONSENT_SELECT} FROM consents WHERE tenant_id = ? AND profile_id = ? "
                "ORDER BY position",
                (tenant, source),
            )
            record = merge_record(
                tenant_id,
                plan,
                request,
                moved_field_ids=[UUID(row[0]) for row in field_ids],
                moved_asset_ids=[UUID(row[0]) for row in asset_ids],
                moved_consents=[codec.consent_from_row(row) for row in consents],
                source_identities=source_side.identities,
                target_identities=target_side.identities,
            )
            await conn.execute(
                "INSERT INTO merge_log (tenant_id, id, source_profile_id, target_profile_id, "
                "merged_at, unmerged_at, record) VALUES (?, ?, ?, ?, ?, NULL, ?)",
                (tenant, str(record.id), source, target, stamp, record.model_dump_json()),
            )
            if plan.supersede:
                await conn.executemany(
                    "UPDATE fields SET status = 'superseded', superseded_by_id = ?, "
                    "superseded_at = ?, updated_at = ? WHERE tenant_id = ? AND id = ?",
                    [
                        (str(e.winner_id), stamp, stamp, tenant, str(e.loser_id))
                        for e in plan.supersede
                    ],
                )
            moved = (target, tenant, source)
            await conn.execute(
                "UPDATE fields SET profile_id = ? WHERE tenant_id = ? AND profile_id = ?", moved
            )
            await conn.execute(
                "UPDATE assets SET profile_id = ? WHERE tenant_id = ? AND profile_id = ?", moved
            )
            offset = await self._next_position(conn, "channel_identities", tenant, target)
            pair = (tenant, source, target)
            await conn.executemany(
                "UPDATE channel_identities SET profile_id = ?, position = position + ?, "
                "is_primary = ? WHERE tenant_id = ? AND profile_id IN (?, ?) AND channel = ? "
                "AND channel_user_id = ?",
                [
                    (target, offset * i.from_source, int(i.primary), *pair, *_ident(i))
                    for i in (*plan.target_flag_changes, *plan.moved_identities)
                ],
            )
            offset = await self._next_position(conn, "consents", tenant, target)
            await conn.execute(
                "UPDATE consents SET profile_id = ?, position = position + ? "
                "WHERE tenant_id = ? AND profile_id = ?",
                (target, offset, tenant, source),
            )
            await conn.execute(
                "UPDATE profiles SET deleted_at = ? WHERE tenant_id = ? AND id = ?",
                (stamp, tenant, source),
            )
            await conn.execute(
                "UPDATE profiles SET updated_at = ? WHERE tenant_id = ? AND id = ?",
                (stamp, tenant, target),
            )

        await self._write(op)

    async def _unmerge(self, tenant_id: UUID, merge_id: UUID) -> UnmergeResult:
        tenant = str(tenant_id)

        async def op(conn: aiosqlite.Connection) -> UnmergeResult:
            rows = await conn.execute_fetchall(
                "SELECT record FROM merge_log WHERE tenant_id = ? AND id = ?",
                (tenant, str(merge_id)),
            )
            if not rows:
                raise errors.NotFoundError(f"merge {merge_id} not found")
            record = MergeRecord.model_validate_json(next(iter(rows))[0])
            source, target = str(record.source_profile_id), str(record.target_profile_id)
            others = await conn.execute_fetchall(
                "SELECT record FROM merge_log WHERE tenant_id = ? AND id <> ? "
                "AND unmerged_at IS NULL AND (source_profile_id IN (?, ?) "
                "OR target_profile_id IN (?, ?))",
                (tenant, str(merge_id), source, target, source, target),
            )
            live = {
                row[0]: row[1] is None
                for row in await conn.execute_fetchall(
                    "SELECT id, deleted_at FROM profiles WHERE tenant_id = ? AND id IN (?, ?)",
                    (tenant, source, target),
                )
            }
            if source not in live:
                raise errors.NotFoundError(f"merge {merge_id} not found")
            sides = {}
            for key in (source, target):
                sides[key] = await self._load_profile(
                    conn, tenant_id, "p.id = :key", {"key": key}, True
                )
            s_side, t_side = sides[source], sides[target]

            state = UnmergeState.from_profiles(
                record,
                tuple(MergeRecord.model_validate_json(r[0]) for r in others),
                target_live=live.get(target, False),
                source_live=live[source],
                target=t_side,
                source=s_side,
            )
            plan = plan_unmerge(state, self.now())
            stamp = ts(plan.now)
            await conn.executemany(
                "UPDATE fields SET profile_id = ? WHERE tenant_id = ? AND id = ?",
                [(source, tenant, str(i)) for i in plan.field_ids_to_source],
            )
            await conn.executemany(
                "UPDATE assets SET profile_id = ? WHERE tenant_id = ? AND id = ?",
                [(source, tenant, str(i)) for i in plan.asset_ids_to_source],
            )
            await conn.executemany(
                "UPDATE fields SET status = 'active', superseded_by_id = NULL, "
                "superseded_at = NULL, updated_at = ? WHERE tenant_id = ? AND id = ?",
                [(stamp, tenant, str(i)) for i in plan.reactivate_field_ids],
            )
            offset = await self._next_position(conn, "channel_identities", tenant, source)
            moving = [u for u in plan.identities if u.to_source]
            await conn.executemany(
                "UPDATE channel_identities SET profile_id = ?, position = ?, is_primary = ? "
                "WHERE tenant_id = ? AND channel = ? AND channel_user_id = ?",
                [
                    (source, offset + n, int(u.primary), tenant, u.channel.value, u.channel_user_id)
                    for n, u in enumerate(moving)
                ],
            )
            await conn.executemany(
                "UPDATE channel_identities SET is_primary = ? "
                "WHERE tenant_id = ? AND channel = ? AND channel_user_id = ?",
                [
                    (int(u.primary), tenant, u.channel.value, u.channel_user_id)
                    for u in plan.identities
                    if not u.to_source
                ],
            )
            await conn.execute(
                "DELETE FROM consents WHERE tenant_id = ? AND profile_id IN (?, ?)",
                (tenant, source, target),
            )
            await conn.executemany(
                _INSERT_CONSENT,
                [
                    (tenant, owner, n, *codec.consent_params(item))
                    for owner, items in (
                        (target, plan.target_consents),
                        (source, plan.source_consents),
                    )
                    for n, item in enumerate(items)
                ],
            )
            await conn.execute(
                "UPDATE profiles SET deleted_at = NULL, updated_at = ? WHERE tenant_id = ? "
                "AND id = ?",
                (stamp, tenant, source),
            )
            await conn.execute(
                "UPDATE profiles SET updated_at = ? WHERE tenant_id = ? AND id = ?",
                (stamp, tenant, target),
            )
            await conn.execute(
                "UPDATE merge_log SET unmerged_at = ?, record = ? WHERE tenant_id = ? AND id = ?",
                (stamp, plan.record.model_dump_json(), tenant, str(merge_id)),
            )
            return plan.result

        return await self._write(op)

    async def _get_merge_log(self, tenant_id: UUID, profile_id: UUID) -> list[MergeRecord]:
        rows = await self._fetch(
            "SELECT record FROM merge_log INDEXED BY merge_log_by_source "
            "WHERE tenant_id = ?1 AND source_profile_id = ?2 UNION ALL "
            "SELECT record FROM merge_log INDEXED BY merge_log_by_target "
            "WHERE tenant_id = ?1 AND target_profile_id = ?2 AND source_profile_id <> ?2",
            (str(tenant_id), str(profile_id)),
        )
        return [MergeRecord.model_validate_json(row[0]) for row in rows]

    async def _get_tenant_field_definitions(self, tenant_id: UUID) -> list[ProfileFieldDefinition]:
        rows = await self._fetch(
            f"SELECT {DEFINITION_SELECT} FROM field_definitions "
            "INDEXED BY sqlite_autoindex_field_definitions_2 WHERE tenant_id = ?",
            (str(tenant_id),),
        )
        return codec.definitions_from_rows(rows)

    # =====================================================================================
    # field definitions
    # =====================================================================================

    async def _get_field_definitions(
        self, tenant_id: UUID, agent_id: UUID, enabled_only: bool
    ) -> list[ProfileFieldDefinition]:
        enabled = " AND enabled = 1" if enabled_only else ""
        rows = await self._fetch(
            f"SELECT {DEFINITION_SELECT} FROM field_definitions "
            "INDEXED BY sqlite_autoindex_field_definitions_2 WHERE tenant_id = ? "
            f"AND agent_id = ?{enabled} ORDER BY name",
            (str(tenant_id), str(agent_id)),
        )
        return codec.definitions_from_rows(rows)

    async def _get_field_definition(
        self, tenant_id: UUID, agent_id: UUID, field_name: str
    ) -> ProfileFieldDefinition | None:
        rows = await self._fetch(
            f"SELECT {DEFINITION_SELECT} FROM field_definitions "
            "INDEXED BY sqlite_autoindex_field_definitions_2 WHERE tenant_id = ? "
            "AND agent_id = ? AND name = ?",
            (str(tenant_id), str(agent_id), field_name),
        )
        return codec.definitions_from_rows(rows)[0] if rows else None

    async def _save_field_definition(self, definition: ProfileFieldDefinition) -> UUID:
        tenant = str(definition.tenant_id)

        async def op(conn: aiosqlite.Connection) -> UUID:
            # core's rule decides where it goes (or refuses), under the write lock
            select = f"SELECT {DEFINITION_SELECT} FROM field_definitions WHERE tenant_id = ? AND "
            by_id = await conn.execute_fetchall(f"{select}id = ?", (tenant, str(definition.id)))
            by_key = await conn.execute_fetchall(
                f"{select}agent_id = ? AND name = ?",
                (tenant, str(definition.agent_id), definition.name),
            )
            plan = plan_definition_save(
                definition,
                *(
                    None if row is None else codec.definition_from_row(row)
                    for row in _first(by_id, by_key)
                ),
            )
            stored = definition.model_copy(update={"id": plan.id, "created_at": plan.created_at})
            rows = await conn.execute_fetchall(_UPSERT_DEFINITION, codec.definition_params(stored))
            return UUID(next(iter(rows))[0])

        return await self._write(op)

    async def _delete_field_definition(
        self, tenant_id: UUID, agent_id: UUID, field_name: str
    ) -> bool:
        async def op(conn: aiosqlite.Connection) -> bool:
            cursor = await conn.execute(
                "DELETE FROM field_definitions WHERE tenant_id = ? AND agent_id = ? AND name = ?",
                (str(tenant_id), str(agent_id), field_name),
            )
            return cursor.rowcount > 0

        return await self._write(op)

    # =====================================================================================
    # scenario requirements
    # =====================================================================================

    async def _get_scenario_requirements(
        self, tenant_id: UUID, scenario_id: UUID, step_id: UUID | None
    ) -> list[ScenarioFieldRequirement]:
        rows = await self._fetch(
            f"SELECT {REQUIREMENT_SELECT} FROM scenario_requirements "
            "INDEXED BY scenario_requirements_key WHERE tenant_id = ? "
            "AND scenario_id = ? AND step_id IS ? ORDER BY collection_order, field_name",
            (str(tenant_id), str(scenario_id), codec.uid(step_id)),
        )
        return codec.requirements_from_rows(rows)

    async def _get_requirements_with_definitions(
        self, tenant_id: UUID, scenario_id: UUID, step_id: UUID | None
    ) -> tuple[list[ScenarioFieldRequirement], dict[UUID, list[ProfileFieldDefinition]]]:
        # ONE statement (one snapshot, one trip to the connection's thread): requirement
        # rows (kind 0) and their agents' enabled definitions (kind 1) in shared columns
        tenant, scenario, step = str(tenant_id), str(scenario_id), codec.uid(step_id)
        rows = await self._fetch(_REQUIREMENTS_WITH_DEFINITIONS, (tenant, scenario, step))
        kinds = list(map(itemgetter(0), rows))
        if kinds == sorted(kinds):  # UNION ALL's order: each kind one slice, no copy
            split = kinds.count(0)
            requirement_rows, definition_rows = rows[:split], rows[split:]
        else:
            requirement_rows = [row for row in rows if row[0] == 0]
            definition_rows = [row for row in rows if row[0] == 1]
        requirements = codec.requirements_from_rows(requirement_rows, 1)
        definitions: dict[UUID, list[ProfileFieldDefinition]] = {}
        found = codec.definitions_from_rows(definition_rows, 1)
        agents = list(map(_AGENT_OF, found))
        if agents and agents.count(agents[0]) == len(agents):
            # one agent (the usual case): no grouping loop (UUID hashes in Python)
            definitions[agents[0]] = found
        else:
            for agent, definition in zip(agents, found, strict=True):
                definitions.setdefault(agent, []).append(definition)
        return requirements, definitions

    async def _get_requirement_checks(
        self, tenant_id: UUID, scenario_id: UUID, step_id: UUID | None
    ) -> tuple[list[ScenarioFieldRequirement], dict[UUID, dict[str, FieldCheck]]]:
        # ONE statement, no definition model: the requirements and, per requirement, the
        # two columns get_missing_fields reads of its own field's enabled definition
        rows = await self._fetch(
            _REQUIREMENT_CHECKS, (str(tenant_id), str(scenario_id), codec.uid(step_id))
        )
        requirements = codec.requirements_from_rows(rows)
        return requirements, codec.requirement_checks(requirements, rows)

    async def _get_requirement_records(
        self, tenant_id: UUID, scenario_id: UUID, step_id: UUID | None
    ) -> RequirementRecords:
        # the same ONE statement as _get_requirement_checks; a record per row (what the
        # evaluation reads, checked column by column) and a model only for the sources
        # get_missing_fields asks for (the missing requirements' rows)
        rows = await self._fetch(
            _REQUIREMENT_CHECKS, (str(tenant_id), str(scenario_id), codec.uid(step_id))
        )
        return _requirement_records(rows)

    async def _save_scenario_requirement(self, requirement: ScenarioFieldRequirement) -> UUID:
        tenant = str(requirement.tenant_id)

        async def op(conn: aiosqlite.Connection) -> UUID:
            # core's rule decides where it goes (or refuses), under the write lock
            select = f"SELECT {REQUIREMENT_SELECT} FROM scenario_requirements WHERE tenant_id = ? "
            by_id = await conn.execute_fetchall(
                f"{select}AND id = ?", (tenant, str(requirement.id))
            )
            by_key = await conn.execute_fetchall(
                f"{select}AND scenario_id = ? AND step_id IS ? AND rule_id IS ? AND field_name = ?",
                (
                    tenant,
                    str(requirement.scenario_id),
                    codec.uid(requirement.step_id),
                    codec.uid(requirement.rule_id),
                    requirement.field_name,
                ),
            )
            plan = plan_requirement_save(
                requirement,
                *(
                    None if row is None else codec.requirement_from_row(row)
                    for row in _first(by_id, by_key)
                ),
            )
            stored = requirement.model_copy(update={"id": plan.id, "created_at": plan.created_at})
            rows = await conn.execute_fetchall(
                _UPSERT_REQUIREMENT, codec.requirement_params(stored)
            )
            return UUID(next(iter(rows))[0])

        return await self._write(op)

    async def _delete_scenario_requirements(
        self, tenant_id: UUID, scenario_id: UUID, step_id: UUID | None
    ) -> int:
        sql = "DELETE FROM scenario_requirements WHERE tenant_id = ? AND scenario_id = ?"
        params: tuple[str, ...] = (str(tenant_id), str(scenario_id))
        if step_id is not None:
            sql += " AND step_id = ?"
            params = (*params, str(step_id))

        async def op(conn: aiosqlite.Connection) -> int:
            cursor = await conn.execute(sql, params)
            return max(cursor.rowcount, 0)

        return await self._write(op)

    # =====================================================================================
    # erasure, portability, hard delete, orphans, operations
    # =====================================================================================

    async def _after_purge(self, purged: bool) -> bool:
        """Checkpoint the WAL into the database file and truncate it, so that purged rows do
        not live on in the -wal file while the store runs (``secure_delete`` zeroes them in
        the database file). Best effort: a reader in another process holding an older
        snapshot keeps the WAL from being reset; that is logged, and the next checkpoint
        (a later purge, SQLite's automatic ones, the last close) completes it."""
        if not purged or self.settings.path == MEMORY:
            return purged
        async with self._lock:
            conn = self.connection
            try:
                rows = await self._retry_busy(
                    lambda: conn.execute_fetchall("PRAGMA wal_checkpoint(TRUNCATE)")
                )
            except sqlite3.Error as exc:
                logger.warning("WAL checkpoint after a purge failed: %s", exc)
                return purged
        if next(iter(rows))[0]:
            logger.warning("WAL checkpoint after a purge was blocked by another connection")
        return purged

    async def _purge_profile(self, tenant_id: UUID, profile_id: UUID) -> bool:
        async def op(conn: aiosqlite.Connection) -> bool:
            # identities, consents, fields and assets go with it (ON DELETE CASCADE)
            cursor = await conn.execute(
                "DELETE FROM profiles WHERE tenant_id = ? AND id = ?",
                (str(tenant_id), str(profile_id)),
            )
            # and every merge log entry naming it (issue 16)
            await conn.execute(
                "DELETE FROM merge_log WHERE tenant_id = ? "
                "AND (source_profile_id = ? OR target_profile_id = ?)",
                (str(tenant_id), str(profile_id), str(profile_id)),
            )
            return cursor.rowcount > 0

        return await self._after_purge(await self._write(op))

    async def _export_profile(self, tenant_id: UUID, profile_id: UUID) -> CustomerProfile | None:
        rows = await self._fetch(
            _profile_query("p.id = :key", True, released=True),
            {"tenant": str(tenant_id), "key": str(profile_id)},
        )
        return _assemble_profile(tenant_id, rows, True)

    # erasure by data subject (issue 12): the identity held now or released by a soft delete
    _SUBJECT_BY_IDENTITY = (
        "SELECT profile_id FROM channel_identities "
        "WHERE tenant_id = :tenant AND channel = :channel AND channel_user_id = :user "
        "UNION SELECT profile_id FROM released_identities "
        "WHERE tenant_id = :tenant AND channel = :channel AND channel_user_id = :user"
    )
    _SUBJECT_BY_CUSTOMER = (
        "SELECT id FROM profiles WHERE tenant_id = :tenant AND customer_id = :customer"
    )
    _SUBJECT_MERGE_LOG = (
        "merge_log WHERE tenant_id = :tenant "
        "AND (source_profile_id IN (SELECT value FROM json_each(:ids)) "
        "OR target_profile_id IN (SELECT value FROM json_each(:ids)))"
    )

    async def _find_subject_profiles(
        self,
        tenant_id: UUID,
        channel: Channel | None,
        channel_user_id: str | None,
        customer_id: UUID | None,
    ) -> list[UUID]:
        if channel is None:
            params = {"tenant": str(tenant_id), "customer": str(customer_id)}
            rows = await self._fetch(self._SUBJECT_BY_CUSTOMER, params)
        else:
            params = {
                "tenant": str(tenant_id),
                "channel": channel.value,
                "user": str(channel_user_id),
            }
            rows = await self._fetch(self._SUBJECT_BY_IDENTITY, params)
        return [UUID(row[0]) for row in rows]

    async def _erase_subject(
        self, tenant_id: UUID, profile_ids: list[UUID], merge_ids: list[UUID]
    ) -> int:
        params = {"tenant": str(tenant_id), "ids": json.dumps([str(p) for p in profile_ids])}

        async def op(conn: aiosqlite.Connection) -> int:
            # one write transaction: the merge log the plan read must still be the log
            rows = await conn.execute_fetchall(f"SELECT id FROM {self._SUBJECT_MERGE_LOG}", params)
            if {UUID(row[0]) for row in rows} != set(merge_ids):
                raise errors.ConflictError("the merge log of the subject changed")
            await conn.execute(f"DELETE FROM {self._SUBJECT_MERGE_LOG}", params)
            # identities (released ones too), consents, fields and assets: ON DELETE CASCADE
            cursor = await conn.execute(
                "DELETE FROM profiles WHERE tenant_id = :tenant "
                "AND id IN (SELECT value FROM json_each(:ids))",
                params,
            )
            return max(cursor.rowcount, 0)

        erased = await self._write(op)
        # secure_delete zeroed the rows in the database pages; the checkpoint empties the WAL
        await self._after_purge(True)
        return erased

    async def _delete_item(self, tenant_id: UUID, item_id: UUID, item_type: ItemType) -> bool:
        table = "fields" if item_type is ItemType.PROFILE_FIELD else "assets"
        params = {"tenant": str(tenant_id), "item": str(item_id)}

        async def op(conn: aiosqlite.Connection) -> bool:
            rows = await conn.execute_fetchall(self._HAS_DEPENDENTS, params)
            if next(iter(rows))[0]:
                raise errors.DependentsError(
                    f"{item_type.value} {item_id} has ACTIVE items derived from it"
                )
            cursor = await conn.execute(
                f"DELETE FROM {table} WHERE tenant_id = :tenant AND id = :item", params
            )
            return cursor.rowcount > 0

        return await self._write(op)

    async def _mark_orphans_batch(self, tenant_id: UUID, now: datetime, limit: int) -> int:
        params: dict[str, Any] = {"tenant": str(tenant_id), "now": ts(now), "limit": limit}

        async def op(conn: aiosqlite.Connection) -> int:
            # fields first, then assets with what is left of the batch: one transaction
            fields = await conn.execute(
                _MARK_ORPHANS.format(table="fields", touch=", updated_at = :now"), params
            )
            marked = max(fields.rowcount, 0)
            if marked >= limit:
                return marked
            assets = await conn.execute(
                _MARK_ORPHANS.format(table="assets", touch=""), {**params, "limit": limit - marked}
            )
            return marked + max(assets.rowcount, 0)

        return await self._write(op)

    async def _mark_orphans_page(
        self, tenant_id: UUID, now: datetime, limit: int, after: str | None
    ) -> KeysetBatch:
        # keyset pages in (table, id) order: derived fields, then derived assets (a page
        # that runs out of fields goes on with the assets, with what is left of the limit);
        # the position is "field:<uuid>", "asset:" (assets from the start) or "asset:<uuid>"
        kind, last = parse_orphans_position(after)
        start = "" if last is None else str(last)

        async def op(conn: aiosqlite.Connection) -> KeysetBatch:
            examined = marked = 0
            for table_kind, table, touch in (
                ("field", "fields", ", updated_at = :now"),
                ("asset", "assets", ""),
            ):
                if kind == "asset" and table_kind == "field":
                    continue
                budget = limit - examined
                params: dict[str, Any] = {
                    "tenant": str(tenant_id),
                    "after": start if table_kind == kind else "",
                    "limit": budget,
                }
                cursor = await conn.execute(_ORPHAN_PAGE_IDS.format(table=table), params)
                ids = [row[0] for row in await cursor.fetchall()]
                examined += len(ids)
                if ids:
                    changed = await conn.execute(
                        _MARK_ORPHANS_IN_RANGE.format(table=table, touch=touch),
                        {**params, "last": ids[-1], "now": ts(now)},
                    )
                    marked += max(changed.rowcount, 0)
                if len(ids) == budget:
                    return KeysetBatch(marked, examined, f"{table_kind}:{ids[-1]}")
            return KeysetBatch(marked, examined, None)

        return await self._write(op)

    async def _list_tenant_ids(self) -> list[UUID]:
        rows = await self._fetch("SELECT DISTINCT tenant_id FROM profiles", ())
        return [UUID(row[0]) for row in rows]

    async def _count_items_by_status(self, tenant_id: UUID) -> dict[str, dict[str, int]]:
        rows = await self._fetch(
            "SELECT 'fields', status, COUNT(*) FROM fields INDEXED BY fields_seq "
            "WHERE tenant_id = :tenant GROUP BY status UNION ALL "
            "SELECT 'assets', status, COUNT(*) FROM assets INDEXED BY assets_seq "
            "WHERE tenant_id = :tenant "
            "GROUP BY status",
            {"tenant": str(tenant_id)},
        )
        counted: dict[str, dict[str, int]] = {"fields": {}, "assets": {}}
        for kind, status, count in rows:
            counted[kind][status] = int(count)
        return counted

    async def _list_profile_ids(self, tenant_id: UUID) -> list[UUID]:
        rows = await self._fetch(
            "SELECT id FROM profiles INDEXED BY sqlite_autoindex_profiles_1 WHERE tenant_id = ?",
            (str(tenant_id),),
        )
        return [UUID(row[0]) for row in rows]

    async def _rewrite_field_payloads(
        self,
        tenant_id: UUID,
        profile_id: UUID,
        payloads: dict[UUID, tuple[Any, dict[str, Any]]],
    ) -> int:
        # encode before the transaction: a value SQLite cannot hold fails before any statement
        rows = [
            (
                codec.dumps(value, f"field {field_id} value"),
                codec.dumps(metadata, f"field {field_id} source_metadata"),
                str(tenant_id),
                str(profile_id),
                str(field_id),
            )
            for field_id, (value, metadata) in payloads.items()
        ]

        async def op(conn: aiosqlite.Connection) -> int:
            # status, timestamps and supersede links are not touched; rowcount sums all rows
            cursor = await conn.executemany(
                "UPDATE fields SET value = ?, source_metadata = ? "
                "WHERE tenant_id = ? AND profile_id = ? AND id = ?",
                rows,
            )
            return max(cursor.rowcount, 0)

        return await self._write(op)


# ---------------------------------------------------------------------------------------
# the one-statement profile read
# ---------------------------------------------------------------------------------------

_LIVE_BY_ID = "p.id = :key AND p.deleted_at IS NULL"
_LIVE_BY_CUSTOMER = "p.customer_id = :key AND p.deleted_at IS NULL"
_LIVE_BY_IDENTITY = (
    "p.deleted_at IS NULL AND p.id = (SELECT profile_id FROM channel_identities AS ci "
    "INDEXED BY sqlite_autoindex_channel_identities_1 "
    "WHERE ci.tenant_id = :tenant AND ci.channel = :channel AND ci.channel_user_id = :user)"
)

# Every part of the aggregate comes back as rows of one UNION ALL: (kind, 3 sort keys,
# then the part's own columns padded with NULLs to a common width).
_PROFILE, _IDENTITY, _CONSENT, _FIELD, _ASSET = range(5)
_DATA = 4  # where a row's own columns start (after the kind and 3 sort keys)
_STATUS_OF = attrgetter("status")
_AGENT_OF = attrgetter("agent_id")
_NAME_OF = attrgetter("name")
_WIDTH = max(len(FIELD_COLUMNS), len(ASSET_COLUMNS))
_PROFILE_COLUMNS = _PROFILE_SELECT.split(", ")
_IDENTITY_COLUMNS = IDENTITY_SELECT.split(", ")


def _first(*results: Iterable[Any]) -> list[Any]:
    """The first row of each result, or None where it is empty."""
    return [next(iter(rows), None) for rows in results]


def _ident(placement: IdentityPlacement) -> tuple[str, str]:
    return (placement.channel.value, placement.channel_user_id)


def _padded(alias: str, columns: Sequence[str]) -> str:
    return ", ".join([f"{alias}.{c}" for c in columns] + ["NULL"] * (_WIDTH - len(columns)))


# which index finds the profile for each lookup (see _profile_query)
_PROFILE_INDEX = {_LIVE_BY_CUSTOMER: "profiles_live_customer"}


# built once per (lookup, history, released): a handful of constant statements
@functools.cache
def _profile_query(where: str, include_history: bool, *, released: bool = False) -> str:
    """The statement reading a whole profile: ordered so that identities and consents come
    in list order, field versions grouped by name newest first (``collected_at``, then
    write order), assets oldest first.

    Its plan does not depend on statistics (``sqlite_stat1``, which ANALYZE and
    ``PRAGMA optimize`` write): the profile row (``hit``) is found first and every part
    looks its rows up by (tenant_id, that profile's id: a scalar subquery run once) through
    a pinned index. No join, so the planner cannot reorder one into a scan of other profiles
    or tenants, nor build a Bloom filter over the whole table (which it did, with
    statistics, for a join with ``hit``: a cost growing with the table).
    ``test_query_plans.py`` checks the plans after ANALYZE.
    """
    active = "" if include_history else " AND f.status = 'active'"
    active_assets = "" if include_history else " AND a.status = 'active'"
    # the partial index holds exactly the ACTIVE rows
    field_index = "fields_history" if include_history else "fields_one_active"
    profile_index = _PROFILE_INDEX.get(where, "sqlite_autoindex_profiles_1")
    # ``released``: also the identities a soft-deleted profile held (export)
    released_part = (
        f"""
UNION ALL
SELECT {_IDENTITY}, r.position, NULL, NULL, {_padded("r", _IDENTITY_COLUMNS)}
  FROM released_identities AS r INDEXED BY sqlite_autoindex_released_identities_1
 WHERE r.tenant_id = :tenant AND r.profile_id = (SELECT id FROM hit)"""
        if released
        else ""
    )
    return f"""
WITH hit AS (
    SELECT tenant_id, {_PROFILE_SELECT} FROM profiles AS p INDEXED BY {profile_index}
     WHERE p.tenant_id = :tenant AND {where}
)
SELECT {_PROFILE}, NULL, NULL, NULL, {_padded("hit", _PROFILE_COLUMNS)} FROM hit
UNION ALL
SELECT {_IDENTITY}, i.position, NULL, NULL, {_padded("i", _IDENTITY_COLUMNS)}
  FROM channel_identities AS i INDEXED BY channel_identities_profile
 WHERE i.tenant_id = :tenant AND i.profile_id = (SELECT id FROM hit){released_part}
UNION ALL
SELECT {_CONSENT}, c.position, NULL, NULL, {_padded("c", CONSENT_COLUMNS)}
  FROM consents AS c INDEXED BY sqlite_autoindex_consents_1
 WHERE c.tenant_id = :tenant AND c.profile_id = (SELECT id FROM hit)
UNION ALL
SELECT {_FIELD}, f.name, f.collected_at, f.seq, {_padded("f", FIELD_COLUMNS)}
  FROM fields AS f INDEXED BY {field_index}
 WHERE f.tenant_id = :tenant AND f.profile_id = (SELECT id FROM hit){active}
UNION ALL
SELECT {_ASSET}, a.uploaded_at, NULL, -a.seq, {_padded("a", ASSET_COLUMNS)}
  FROM assets AS a INDEXED BY assets_by_name
 WHERE a.tenant_id = :tenant AND a.profile_id = (SELECT id FROM hit){active_assets}
ORDER BY 1, 2, 3 DESC, 4 DESC
"""


def _assemble_profile(
    tenant_id: UUID, rows: list[Sequence[Any]], include_history: bool
) -> CustomerProfile | None:
    """The profile of the rows of one ``_profile_query``: ordered by kind (so each kind is
    one slice), field versions by name then newest first. Consumes ``rows`` (emptied)."""
    kinds = list(map(itemgetter(0), rows))
    if not kinds or kinds[0] != _PROFILE:
        return None
    identities, consents, fields, assets = map(
        bisect_left, repeat(kinds), (_IDENTITY, _CONSENT, _FIELD, _ASSET)
    )
    head = rows[0][_DATA:]
    identity_rows = rows[identities:consents]
    consent_rows = rows[consents:fields]
    asset_rows = rows[assets:]
    # the versions as columns, and the rows let go before the models are built: fewer
    # objects for the garbage collector to visit (a history of 1,000 versions)
    field_columns = list(zip(*rows[fields:assets], strict=True))
    rows.clear()
    versions = codec.fields_from_columns(field_columns, _DATA)
    stored_assets = codec.assets_from_rows(asset_rows, _DATA)
    history: dict[str, list[ProfileField]] = {}
    if include_history:
        # rows come grouped by name (the first sort key): one slice per name, found by
        # bisection over the names, not a loop over every version. The ACTIVE version is
        # the same object in fields and history.
        names = field_columns[1] if field_columns else ()
        at = 0
        while at < len(names):
            end = bisect_right(names, names[at], at)
            history[versions[at].name] = versions[at:end]
            at = end
        active = ItemStatus.ACTIVE
        active_versions = list(
            compress(versions, map(is_, map(_STATUS_OF, versions), repeat(active)))
        )
        fields_of = dict(zip(map(_NAME_OF, active_versions), active_versions, strict=True))
        active_assets = [asset for asset in stored_assets if asset.status is active]
    else:
        # the statement read the ACTIVE rows only (one per name: the partial unique index)
        fields_of = dict(zip(field_columns[1], versions, strict=True)) if versions else {}
        active_assets = stored_assets
    return codec.profile_from_parts(
        tenant_id,
        head,
        channel_identities=codec.identities_from_rows(identity_rows, _DATA),
        consents=[codec.consent_from_row(row[_DATA:]) for row in consent_rows],
        fields=fields_of,
        field_history=history,
        assets=active_assets,
        asset_history=stored_assets if include_history else [],
    )
