"""``PostgresProfileStore``: the production store, on asyncpg.

Design, in short:

* **One round trip per read.** A whole profile (identities, consents, fields, assets) comes
  back from one statement: the profile's row and one plain row per field version, decoded
  in C by asyncpg, values and metadata as JSON text parsed in one ``orjson`` call, and
  models built from these trusted rows without re-validation. Without history only ACTIVE
  rows are touched (partial indexes), so the cost of a read does not grow with the number
  of old versions; with history the same statement returns every version.
* **One statement per field write.** ``update_field`` supersedes and inserts in a single
  statement (so a single round trip and an implicit transaction). The partial unique index
  on ACTIVE (tenant, profile, name) is the arbiter between concurrent writers, in this or
  any other process; the loser's statement is undone and retried here.
* **Set-based sweeps.** Expiry and orphan marking are one UPDATE each; lineage is one
  recursive query with a depth limit and a cycle guard.
* **Errors.** A lost connection, a server restarting or shutting down, an exhausted pool or
  a statement timeout raise :class:`~ccvault.errors.ProviderUnavailableError`; statements are
  atomic, so nothing is ever half-written, and the pool replaces broken connections itself.
  Unique violations become the matching :class:`~ccvault.errors.ConflictError`.
* **No SQL built from values.** Every statement is a constant in :mod:`ccvault_postgres._sql`;
  values are bind parameters. The one identifier that is configurable, the schema name, is
  validated by the settings model and set as the connections' ``search_path``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import logging
import random
import re
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from itertools import islice, repeat
from operator import itemgetter
from types import TracebackType
from typing import Any, NoReturn, TypeVar
from uuid import UUID

import asyncpg
import asyncpg.exceptions as pgerr
import orjson
import pydantic
from pydantic import BaseModel

from ccvault import errors
from ccvault.batches import KeysetBatch, parse_orphans_position
from ccvault.migration import MigrationReport, SchemaStatus, require_ready
from ccvault.models import (
    Channel,
    ChannelIdentity,
    Consent,
    CustomerProfile,
    FallbackAction,
    FieldValueType,
    ItemStatus,
    ItemType,
    LineageEntry,
    MergeRecord,
    ProfileAsset,
    ProfileField,
    ProfileFieldDefinition,
    ProfileFieldSource,
    RequiredLevel,
    ScenarioFieldRequirement,
    SourceType,
    SurvivorshipPolicy,
    UnmergeResult,
    VerificationLevel,
)
from ccvault.requirements import FieldCheck, RecordValues, RequirementRecords, field_check
from ccvault.rules.definitions import plan_definition_save, plan_requirement_save
from ccvault.rules.identity import channel_eviction, link_outcome
from ccvault.rules.merge import MergeLogRequest, MergeSide, merge_record, plan_merge
from ccvault.rules.save import SavePlan, SaveState, StoredItem, plan_save
from ccvault.rules.unmerge import UnmergeState, plan_unmerge
from ccvault.storage import corrupt_row, row_values
from ccvault.store import MergeWinner, ProfileStore, StoreRules
from ccvault_postgres import _sql as sql
from ccvault_postgres.pool import ConnectionPool
from ccvault_postgres.schema import (
    apply_migrations,
    bootstrap_statements,
    read_status,
)
from ccvault_postgres.settings import PostgresSettings

__all__ = ["PostgresProfileStore"]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

# unique indexes whose violation means "another writer got there first"
_ACTIVE_FIELD_INDEX = "profile_fields_one_active"
_IDENTITY_INDEX = "channel_identities_owner"
_CUSTOMER_INDEX = "customer_profiles_live_customer"

# errors after which the connection (or the server) is gone: the call may be retried later
_UNAVAILABLE: tuple[type[BaseException], ...] = (
    pgerr.PostgresConnectionError,  # class 08: connection lost / cannot be made
    pgerr.OperatorInterventionError,  # class 57: admin/crash shutdown, starting up, timeout
    pgerr.InsufficientResourcesError,  # class 53: too many connections, out of memory/disk
    pgerr.ConnectionDoesNotExistError,
    OSError,  # refused, reset, unreachable, name resolution
    TimeoutError,  # connect, pool acquire or client-side command timeout
)

# bytes.translate maps digits to "1" and everything else to "0"; a run of 19 "1"s marks an
# integer orjson could turn into a float (10x faster than a regex on a 5 kB document)
_DIGIT_MAP = bytes(0x31 if 0x30 <= c <= 0x39 else 0x30 for c in range(256))
_LONG_RUN = b"1" * 19


def _loads(text: bytes) -> Any:
    """Parse JSON with orjson, or exactly with the stdlib when it holds huge integers."""
    if _LONG_RUN in text.translate(_DIGIT_MAP):
        return json.loads(text)
    return orjson.loads(text)


# a float written with a positive exponent ("1e+16"): jsonb's numeric would give it back
# as the integer 10000000000000000 (and lose the float's exact value for large ones)
_POSITIVE_EXPONENT = re.compile(rb"\d[eE]\+?\d")


def _exact_json(value: Any) -> str:
    """JSON text that survives jsonb's numeric normalisation: floats with a positive
    exponent are written out positionally with a ``.0``, and big integers exactly."""
    if isinstance(value, float):
        text = repr(value)
        if "e+" in text:
            return format(Decimal(text), "f") + ".0"
        return json.dumps(value, allow_nan=False)
    if isinstance(value, dict):
        items = (json.dumps(k, ensure_ascii=False) + ":" + _exact_json(v) for k, v in value.items())
        return "{" + ",".join(items) + "}"
    if isinstance(value, list):
        return "[" + ",".join(_exact_json(v) for v in value) + "]"
    return json.dumps(value, ensure_ascii=False, allow_nan=False)


def _json_dumps(value: Any) -> bytes:
    """JSONB binary format: a version byte, then the JSON text (orjson; an exact slow path
    for the rare values jsonb would otherwise change)."""
    try:
        text = orjson.dumps(value)
    except orjson.JSONEncodeError:
        # orjson refuses integers beyond 64 bits, which JSON (and jsonb) allow
        return b"\x01" + _exact_json(value).encode()
    if _POSITIVE_EXPONENT.search(text):
        return b"\x01" + _exact_json(value).encode()
    return b"\x01" + text


def _json_loads(data: bytes) -> Any:
    return _loads(data[1:])


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec(
        "jsonb", encoder=_json_dumps, decoder=_json_loads, schema="pg_catalog", format="binary"
    )


async def _check_role_search_path(conn: asyncpg.Connection, schema: str) -> None:
    """Behind a transaction pooler the schema comes from the role's settings: refuse to
    run where unqualified table names would resolve elsewhere."""
    current = await conn.fetchval("SELECT current_setting('search_path')")
    first = str(current).split(",")[0].strip().strip('"')
    if first != schema:
        raise errors.ConfigurationError(
            f"providers.postgres.transaction_pooler: the role's search_path is {current!r}, "
            f"not {schema!r}; run ALTER ROLE <role> IN DATABASE <database> SET "
            f"search_path = {schema} (a transaction pooler cannot pass it at connect)"
        )


def _migration_lock_key(schema: str) -> int:
    """A stable signed 64-bit advisory-lock key for migrating ``schema``."""
    digest = hashlib.blake2b(f"ccvault.migrate:{schema}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def _translate(exc: BaseException) -> BaseException | None:
    """The ``ccvault.errors`` error for a driver/server error, or None to let it through."""
    if isinstance(exc, errors.VaultError | asyncio.CancelledError):
        return None
    if isinstance(exc, pgerr.QueryCanceledError):
        return errors.ProviderUnavailableError(
            f"PostgreSQL statement timed out or was cancelled: {exc}"
        )
    if isinstance(exc, _UNAVAILABLE):
        return errors.ProviderUnavailableError(f"PostgreSQL is unavailable: {exc!r}")
    if isinstance(exc, asyncpg.InterfaceError | pgerr.InternalClientError):
        # the connection was closed or left mid-protocol by a server going away
        return errors.ProviderUnavailableError(f"PostgreSQL connection lost: {exc!r}")
    # the text of the next errors may quote values (asyncpg's str() appends the server's
    # DETAIL: "Key (...)=(...) already exists", "Failing row contains (...)"; "invalid
    # input syntax for type ...: <value>"): their messages name the error class, SQLSTATE
    # and constraint only, and _cause keeps them out of the chain
    if isinstance(exc, pgerr.DataError):
        # e.g. a NUL character, which PostgreSQL text and jsonb cannot hold
        return errors.ValidationError(
            f"value cannot be stored in PostgreSQL ({type(exc).__name__}, SQLSTATE {exc.sqlstate})"
        )
    if isinstance(exc, UnicodeError):
        return errors.ValidationError(
            f"value cannot be stored in PostgreSQL ({type(exc).__name__})"
        )
    if isinstance(exc, pgerr.UniqueViolationError):
        if exc.constraint_name in (_IDENTITY_INDEX, _CUSTOMER_INDEX):
            return errors.IdentityConflictError(
                "channel identity or customer id already belongs to another live profile"
            )
        return errors.ConflictError(f"already stored ({_refused_by(exc)})")
    if isinstance(exc, pgerr.IntegrityConstraintViolationError):
        return errors.ConflictError(
            f"write contradicts stored data ({type(exc).__name__}: {_refused_by(exc)})"
        )
    if isinstance(exc, pgerr.UndefinedTableError | pgerr.UndefinedObjectError):
        return errors.StorageError(f"the vault schema is missing; run setup() first: {exc}")
    if isinstance(exc, pgerr.PostgresError):
        return errors.StorageError(f"PostgreSQL error: {exc!r}")
    return None


def _refused_by(exc: pgerr.PostgresError) -> str:
    """What refused a write, by identifiers only: table, column, constraint, and the ids
    of the key the server's DETAIL names (``Key (columns)=(values) ...`` of a unique or
    foreign key violation): the stored item a write collides with. Only values of the id
    columns (random UUIDs, never personal data) are passed on; the rest of DETAIL may quote
    a value (``Failing row contains (...)``: the whole row) and is never read."""
    names = {
        "table": exc.table_name,
        "column": exc.column_name,
        "constraint": exc.constraint_name,
    }
    parts = [", ".join(f"{kind} {name}" for kind, name in names.items() if name)]
    ids = _key_ids(exc.detail)
    if ids:
        parts.append(f"ids {', '.join(ids)}")
    return "; ".join(part for part in parts if part) or "a constraint"


#: the schema's uuid columns: the only ones whose values a conflict names (never
#: ``channel_user_id``, which ends in ``_id`` and may hold a UUID-shaped personal id)
_ID_COLUMNS = frozenset(
    {
        "agent_id", "customer_id", "field_definition_id", "id", "merged_into_id",
        "profile_id", "rule_id", "scenario_id", "source_item_id", "source_profile_id",
        "source_scenario_id", "source_session_id", "source_step_id", "step_id",
        "superseded_by_id", "target_profile_id", "tenant_id", "uploaded_in_scenario_id",
        "uploaded_in_session_id",
    }
)  # fmt: skip
_KEY_DETAIL = re.compile(
    r"Key \(([a-z_, ]+)\)=\((.*)\) (?:already exists|is not present in table|is still referenced)",
    re.DOTALL,
)
_UUID_TEXT = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _key_ids(detail: str | None) -> list[str]:
    """The values of the id columns of DETAIL's key, in key order: none when DETAIL is not
    a key, or when its values do not split one per column (a value holding ", ")."""
    found = _KEY_DETAIL.match(detail or "")
    if found is None:
        return []
    columns = [column.strip() for column in found.group(1).split(",")]
    values = found.group(2).split(", ")
    if len(values) != len(columns):
        return []
    return list(
        dict.fromkeys(
            value
            for column, value in zip(columns, values, strict=True)
            if column in _ID_COLUMNS and _UUID_TEXT.fullmatch(value)
        )
    )


def _cause(exc: BaseException) -> BaseException | None:
    """What the error raised for ``exc`` is chained to: ``exc`` itself, or nothing when its
    text may quote the values written or stored (see :func:`_translate`), so a logged
    traceback does not print it. Such an ``exc`` is also scrubbed of that text: raised
    inside the ``except`` block that caught it, the new error keeps it as its context."""
    if isinstance(exc, pgerr.DataError | pgerr.IntegrityConstraintViolationError | UnicodeError):
        _scrub(exc)
        return None
    return exc


def _scrub(exc: BaseException) -> None:
    """``exc`` with its class name for its text, and no attribute that may quote a value
    (asyncpg's message, DETAIL, hint, context and query; a codec error's input)."""
    exc.args = (type(exc).__name__,)
    if isinstance(exc, pgerr.PostgresError):
        for attribute in ("message", "detail", "hint", "context", "internal_query"):
            if getattr(exc, attribute, None) is not None:
                setattr(exc, attribute, None)
    if isinstance(exc, UnicodeEncodeError | UnicodeDecodeError | UnicodeTranslateError):
        exc.object = exc.object[:0]
        exc.start = exc.end = 0


def _breaks_connection(exc: BaseException) -> bool:
    """Whether the connection that raised ``exc`` must be discarded."""
    if isinstance(exc, pgerr.QueryCanceledError):
        return False  # a statement timeout leaves the session usable
    return isinstance(exc, (*_UNAVAILABLE, asyncpg.InterfaceError, pgerr.InternalClientError))


def _is_race(exc: BaseException) -> bool:
    """Errors that mean "a concurrent transaction interfered": retry the whole write."""
    return isinstance(exc, pgerr.SerializationError | pgerr.DeadlockDetectedError)


# ---------------------------------------------------------------------------------------
# rows <-> models
# ---------------------------------------------------------------------------------------


def _enum_value(member: StrEnum | None) -> str | None:
    return None if member is None else member.value


def _field_params(item: ProfileField) -> tuple[Any, ...]:
    return row_values(
        item,
        sql.FIELD_COLS,
        source=item.source.value,
        source_item_type=_enum_value(item.source_item_type),
        status=item.status.value,
    )


def _asset_params(item: ProfileAsset) -> tuple[Any, ...]:
    return row_values(
        item,
        sql.ASSET_COLS,
        source_item_type=_enum_value(item.source_item_type),
        status=item.status.value,
        analysis_field_ids=list(item.analysis_field_ids),
    )


def _definition_params(item: ProfileFieldDefinition) -> tuple[Any, ...]:
    return row_values(
        item,
        sql.DEFINITION_COLS,
        value_type=item.value_type.value,
        survivorship=item.survivorship.value,
        source_priority=[s.value for s in item.source_priority],
    )


def _requirement_params(item: ScenarioFieldRequirement) -> tuple[Any, ...]:
    return row_values(
        item,
        sql.REQUIREMENT_COLS,
        required_level=item.required_level.value,
        fallback_action=item.fallback_action.value,
    )


_new = object.__new__
# the slots of pydantic's BaseModel, set through their descriptors directly (skipping the
# attribute lookup of object.__setattr__): this runs once per field of every read
_SET_DICT = BaseModel.__dict__["__dict__"].__set__
_SET_FIELDS_SET = BaseModel.__dict__["__pydantic_fields_set__"].__set__
_SET_EXTRA = BaseModel.__dict__["__pydantic_extra__"].__set__
_SET_PRIVATE = BaseModel.__dict__["__pydantic_private__"].__set__


class _EnumLookup(dict[str | None, Any]):
    """value -> member of one column, a dict lookup on the hot path; None maps to None.

    A value no member has (a row written outside the vault) raises StorageError naming the
    row's kind, table and column, never the value: stored text may be personal data. It is
    :func:`~ccvault.storage.corrupt_row`'s, as validation would raise it (``enum``). One
    lookup per column, so the message says which; a hit costs what a plain dict's does.
    """

    def __init__(self, enum: type[StrEnum], row: str, table: str, column: str) -> None:
        super().__init__({member.value: member for member in enum})
        self[None] = None
        self._row, self._where = f"{row} row", f"{table}.{column}"

    def corrupt(self) -> errors.StorageError:
        """The error for a value of this column that no member has."""
        return corrupt_row(self._row, self._where, "enum")

    def __missing__(self, key: object) -> NoReturn:
        raise self.corrupt()


_FIELD_STATUS = _EnumLookup(ItemStatus, "field", "profile_fields", "status")
_ASSET_STATUS = _EnumLookup(ItemStatus, "asset", "profile_assets", "status")
_FIELD_SOURCE = _EnumLookup(ProfileFieldSource, "field", "profile_fields", "source")
_FIELD_SOURCE_TYPE = _EnumLookup(SourceType, "field", "profile_fields", "source_item_type")
_ASSET_SOURCE_TYPE = _EnumLookup(SourceType, "asset", "profile_assets", "source_item_type")
_CHANNEL = _EnumLookup(Channel, "channel identity", "channel_identities", "channel")
_VERIFICATION_LEVEL = _EnumLookup(
    VerificationLevel, "profile", "customer_profiles", "verification_level"
)
# a lineage entry's row kind, table and source type lookup, by the kind of item it is
_LINEAGE = {
    ItemType.PROFILE_FIELD.value: ("field", "profile_fields", _FIELD_SOURCE_TYPE),
    ItemType.PROFILE_ASSET.value: ("asset", "profile_assets", _ASSET_SOURCE_TYPE),
}
_M = TypeVar("_M", bound=BaseModel)


def _trusted(cls: type[_M], values: dict[str, Any]) -> _M:
    """A model instance from values read back from our own tables, without re-validation.

    Every row was validated by the same model when it was written (enumerations are
    mapped back to their members by the caller); validating 50 fields again on every read would cost
    more than the database round trip. This is what ``model_construct`` does, minus its
    per-field default handling (every field is present here); ``test_trusted_rows_equal_
    validated_models`` keeps it honest.
    """
    item = _new(cls)
    _SET_DICT(item, values)
    _SET_FIELDS_SET(item, set(values))
    _SET_EXTRA(item, None)
    _SET_PRIVATE(item, None)
    return item


def _field(row: Mapping[str, Any]) -> ProfileField:
    values = {col: row[col] for col in sql.FIELD_COLS}
    values["source"] = _FIELD_SOURCE[values["source"]]
    values["source_item_type"] = _FIELD_SOURCE_TYPE[values["source_item_type"]]
    values["status"] = _FIELD_STATUS[values["status"]]
    return _trusted(ProfileField, values)


def _asset(row: Mapping[str, Any]) -> ProfileAsset:
    values = {col: row[col] for col in sql.ASSET_COLS}
    values["source_item_type"] = _ASSET_SOURCE_TYPE[values["source_item_type"]]
    values["status"] = _ASSET_STATUS[values["status"]]
    return _trusted(ProfileAsset, values)


def _identity(row: Mapping[str, Any]) -> ChannelIdentity:
    return _trusted(
        ChannelIdentity,
        {
            "channel": _CHANNEL[row["channel"]],
            "channel_user_id": row["channel_user_id"],
            "verified": row["verified"],
            "verified_at": row["verified_at"],
            "primary": row["is_primary"],
            "created_at": row["created_at"],
        },
    )


def _validated(
    row: str, table: str, column: str | None, build: Callable[[Any], _M], data: Any
) -> _M:
    """``build(data)``, the validation of (a column of) a row read back; a row the vault did
    not write raises StorageError naming the row's kind, table and column(s) and the kind
    of error, never the value (:func:`ccvault.storage.corrupt_row`). One try around the
    whole build: nothing is done per attribute unless it fails."""
    try:
        return build(data)
    except pydantic.ValidationError as exc:
        error = corrupt_row(f"{row} row", table if column is None else f"{table}.{column}", exc)
    raise error  # outside the except block: not chained to pydantic's error (it quotes)


def _consent(row: Mapping[str, Any]) -> Consent:
    return _validated(
        "consent",
        "consents",
        None,  # the model's attributes are the table's columns
        Consent.model_validate,
        {
            "consent_type": row["consent_type"],
            "granted": row["granted"],
            "granted_at": row["granted_at"],
            "revoked_at": row["revoked_at"],
            "source_session_id": row["source_session_id"],
            "ip_address": row["ip_address"],
            "ip_address_sealed": row["ip_address_sealed"],
        },
    )


def _merge_record(text: str) -> MergeRecord:
    """A merge log entry from its ``record`` column (JSON text)."""
    return _validated("merge log", "merge_log", "record", MergeRecord.model_validate_json, text)


_DEFINITIONS = "profile_field_definitions"
_VALUE_TYPE = _EnumLookup(FieldValueType, "field definition", _DEFINITIONS, "value_type")
_SURVIVORSHIP = _EnumLookup(SurvivorshipPolicy, "field definition", _DEFINITIONS, "survivorship")
_SOURCE_PRIORITY = _EnumLookup(
    ProfileFieldSource, "field definition", _DEFINITIONS, "source_priority"
)
_REQUIREMENTS = "scenario_field_requirements"
_REQUIRED_LEVEL = _EnumLookup(
    RequiredLevel, "scenario requirement", _REQUIREMENTS, "required_level"
)
_FALLBACK = _EnumLookup(FallbackAction, "scenario requirement", _REQUIREMENTS, "fallback_action")
_DEFINITION_KEYS = tuple(ProfileFieldDefinition.model_fields)
_REQUIREMENT_KEYS = tuple(ScenarioFieldRequirement.model_fields)
# every field of the model: the fields-set of a model read back (every name is present).
# Never handed out itself: each call copies it once and its models share the copy
# (pydantic only ever adds a name to it, which changes nothing here), so a caller editing
# one model's ``model_fields_set`` reaches no other read
_SHARED_FIELDS_SET = {
    ProfileFieldDefinition: set(_DEFINITION_KEYS),
    ScenarioFieldRequirement: set(_REQUIREMENT_KEYS),
}


def _trusted_flat(cls: type[_M], values: dict[str, Any]) -> _M:
    """:func:`_trusted` with a copy of the model's whole fields-set (every field is present)."""
    item = _new(cls)
    _SET_DICT(item, values)
    _SET_FIELDS_SET(item, _SHARED_FIELDS_SET[cls].copy())
    _SET_EXTRA(item, None)
    _SET_PRIVATE(item, None)
    return item


def _positional(rows: Sequence[Any], keys: tuple[str, ...]) -> list[dict[str, Any]]:
    """Each row's values of ``keys`` as a dict in that order: the columns are found by name
    once per result (every row of one result has the same columns), then read by position."""
    if not rows:
        return []
    names = list(rows[0].keys())
    pick = itemgetter(*(names.index(key) for key in keys))
    return [dict(zip(keys, pick(row), strict=True)) for row in rows]


def _map_column(dicts: list[dict[str, Any]], key: str, convert: Callable[[Any], Any]) -> None:
    """``d[key] = convert(d[key])`` for every dict, the loop in C."""
    column = map(convert, map(itemgetter(key), dicts))
    deque(map(dict.__setitem__, dicts, repeat(key), column), maxlen=0)


def _fresh_list(value: list[Any] | None) -> list[Any]:
    # asyncpg builds a new list per row and array: only NULL needs one
    return [] if value is None else value


def _sources(value: list[str] | None) -> list[ProfileFieldSource]:
    return [_SOURCE_PRIORITY[x] for x in value] if value else []


def _trusted_many(cls: type[_M], dicts: list[dict[str, Any]]) -> list[_M]:
    """:func:`_trusted_flat` over many rows, the loops in C; the models of the call share
    one copy of the fields-set."""
    items: list[_M] = list(map(_new, repeat(cls, len(dicts))))
    deque(map(_SET_DICT, items, dicts), maxlen=0)
    deque(map(_SET_FIELDS_SET, items, repeat(_SHARED_FIELDS_SET[cls].copy())), maxlen=0)
    deque(map(_SET_EXTRA, items, repeat(None)), maxlen=0)
    deque(map(_SET_PRIVATE, items, repeat(None)), maxlen=0)
    return items


def _definitions(rows: Sequence[Any]) -> list[ProfileFieldDefinition]:
    """A whole result of definition rows at once, column by column (``_definition_of``
    row by row does the same)."""
    return _definitions_of(_positional(rows, _DEFINITION_KEYS))


def _definitions_of(dicts: list[dict[str, Any]]) -> list[ProfileFieldDefinition]:
    """Definitions from column dicts in the model's order (values as asyncpg decodes them)."""
    _map_column(dicts, "value_type", _VALUE_TYPE.__getitem__)
    _map_column(dicts, "survivorship", _SURVIVORSHIP.__getitem__)
    _map_column(dicts, "source_priority", _sources)
    _map_column(dicts, "verification_methods", _fresh_list)
    _map_column(dicts, "extraction_examples", _fresh_list)
    return _trusted_many(ProfileFieldDefinition, dicts)


def _requirements(rows: Sequence[Any]) -> list[ScenarioFieldRequirement]:
    return _requirements_of(_positional(rows, _REQUIREMENT_KEYS))


def _requirements_of(dicts: list[dict[str, Any]]) -> list[ScenarioFieldRequirement]:
    """Requirements from column dicts in the model's order (values as asyncpg decodes them)."""
    _map_column(dicts, "required_level", _REQUIRED_LEVEL.__getitem__)
    _map_column(dicts, "fallback_action", _FALLBACK.__getitem__)
    _map_column(dicts, "depends_on_fields", _fresh_list)
    return _trusted_many(ScenarioFieldRequirement, dicts)


def _definition(row: Mapping[str, Any]) -> ProfileFieldDefinition:
    return _definition_of({col: row[col] for col in _DEFINITION_KEYS})


def _definition_of(values: dict[str, Any]) -> ProfileFieldDefinition:
    # trusted like profile rows (validated when written; get_missing_fields reads 50 of them
    # per call): enumerations mapped back, arrays copied into lists, in the model's order
    values["value_type"] = _VALUE_TYPE[values["value_type"]]
    values["survivorship"] = _SURVIVORSHIP[values["survivorship"]]
    values["source_priority"] = [_SOURCE_PRIORITY[x] for x in values["source_priority"] or ()]
    values["verification_methods"] = list(values["verification_methods"] or ())
    values["extraction_examples"] = list(values["extraction_examples"] or ())
    return _trusted_flat(ProfileFieldDefinition, values)


def _requirement(row: Mapping[str, Any]) -> ScenarioFieldRequirement:
    return _requirement_of({col: row[col] for col in _REQUIREMENT_KEYS})


def _requirement_of(values: dict[str, Any]) -> ScenarioFieldRequirement:
    values["required_level"] = _REQUIRED_LEVEL[values["required_level"]]
    values["fallback_action"] = _FALLBACK[values["fallback_action"]]
    values["depends_on_fields"] = list(values["depends_on_fields"] or ())
    return _trusted_flat(ScenarioFieldRequirement, values)


def _row_builder(
    keys: tuple[str, ...],
    columns: tuple[str, ...],
    start: int,
    fixed: tuple[str, ...],
    conversions: Mapping[str, str],
) -> Callable[..., dict[str, Any]]:
    """A function ``(row, *fixed values) -> {key: value}`` over ``keys`` (a model's fields,
    in its order): a key of ``columns`` is read from the row by position (``columns`` start
    at ``start``), a key of ``fixed`` is the argument in that place. Generated source: a
    copy of a dict of ``keys`` (in order, all None), then one store per key (about twice
    as cheap as ``dict(zip(keys, row[start:]))`` followed by a pass per converted column,
    and a third cheaper than a dict display of as many keys). ``conversions`` maps a key to
    an expression over ``{0}`` (its column) using the lookups below; the other columns are
    taken as asyncpg decodes them. Only model field names (identifiers, checked, and only
    inside string literals and parameter names ``fixed_<key>``) and these fixed
    expressions go into the source."""
    if set(keys) != {*columns, *fixed} or len(keys) != len(columns) + len(fixed):
        raise ValueError("every key must be one column or one fixed value")
    if not all(key.isidentifier() for key in keys):
        raise ValueError("a key must be an identifier")
    lines = [
        f"def build(row, {''.join(f'fixed_{key}, ' for key in fixed)}):",
        "    values = _TEMPLATE.copy()",
    ]
    for key in keys:
        if key in fixed:
            lines.append(f"    values[{key!r}] = fixed_{key}")
        else:
            column = f"row[{start + columns.index(key)}]"
            lines.append(f"    values[{key!r}] = {conversions.get(key, '{0}').format(column)}")
    lines.append("    return values\n")
    source = "\n".join(lines)
    namespace: dict[str, Any] = {
        "_TEMPLATE": dict.fromkeys(keys),
        "_REQUIRED_LEVEL": _REQUIRED_LEVEL,
        "_FALLBACK": _FALLBACK,
        "_VALUE_TYPE": _VALUE_TYPE,
        "_SURVIVORSHIP": _SURVIVORSHIP,
        "_SOURCE_PRIORITY": _SOURCE_PRIORITY,
    }
    exec(source, namespace)
    build: Callable[..., dict[str, Any]] = namespace["build"]
    return build


def _fixed_ids(
    tenant_id: UUID, scenario_id: UUID, step_id: UUID | None
) -> tuple[UUID, UUID, UUID | None]:
    """The values of the columns the requirement reads' WHERE fixes to their parameters:
    plain UUIDs in the models, whatever UUID subclass a caller handed in."""
    return (
        tenant_id if tenant_id.__class__ is UUID else UUID(int=tenant_id.int),
        scenario_id if scenario_id.__class__ is UUID else UUID(int=scenario_id.int),
        step_id if step_id is None or step_id.__class__ is UUID else UUID(int=step_id.int),
    )


# the rows of sql.GET_REQUIREMENTS_WITH_DEFINITIONS: (the requirement's columns, the
# definition's columns), each side converted as _requirement_of / _definition_of convert it
# (test_missing_fields_reads checks that both agree); the columns the statement's WHERE
# fixes come from its parameters. A side whose id is NULL is absent from the row.
_REQUIREMENT_ID = sql.REQUIREMENT_COLUMNS_READ.index("id")
_DEFINITION_ID = len(sql.REQUIREMENT_COLUMNS_READ) + sql.DEFINITION_COLUMNS_READ.index("id")
# a list of its own for each model, even two built from one row (a record's build, asked twice)
_FRESH_LIST = "([] if {0} is None else list({0}))"
# the rows of sql.GET_REQUIREMENT_CHECKS: the requirement's columns (as above, read by
# _REQUIREMENT_ROW), then the definition's two check columns
_CHECK_AGENT = sql.REQUIREMENT_COLUMNS_READ.index("agent_id")
_CHECK_NAME = sql.REQUIREMENT_COLUMNS_READ.index("field_name")
_CHECK_VERIFICATION = len(sql.REQUIREMENT_COLUMNS_READ)
_CHECK_FRESHNESS = _CHECK_VERIFICATION + 1
# what a requirement's record reads of its row (the rest: _REQUIREMENT_ROW, for a model)
_RECORD_LEVEL, _RECORD_CONDITION, _RECORD_DEPENDS_ON = map(
    sql.REQUIREMENT_COLUMNS_READ.index, ("required_level", "when_condition", "depends_on_fields")
)
_REQUIREMENT_ROW = _row_builder(
    _REQUIREMENT_KEYS,
    sql.REQUIREMENT_COLUMNS_READ,
    0,
    ("tenant_id", "scenario_id", "step_id"),
    {
        "required_level": "_REQUIRED_LEVEL[{0}]",
        "fallback_action": "_FALLBACK[{0}]",
        "depends_on_fields": _FRESH_LIST,
    },
)
_DEFINITION_ROW = _row_builder(
    _DEFINITION_KEYS,
    sql.DEFINITION_COLUMNS_READ,
    len(sql.REQUIREMENT_COLUMNS_READ),
    ("tenant_id",),
    {
        "value_type": "_VALUE_TYPE[{0}]",
        "survivorship": "_SURVIVORSHIP[{0}]",
        "source_priority": "([_SOURCE_PRIORITY[x] for x in {0}] if {0} else [])",
        "verification_methods": _FRESH_LIST,
        "extraction_examples": _FRESH_LIST,
    },
)


def _requirements_of_rows(
    fixed: tuple[UUID, UUID, UUID | None], rows: list[Any]
) -> list[ScenarioFieldRequirement]:
    """The requirement models of ``rows`` of ``sql.GET_REQUIREMENT_CHECKS``, in their order
    (``fixed``: the tenant, scenario and step ids the statement's WHERE fixes). A level or
    fallback no member has (written outside the vault) raises StorageError (its lookup's)."""
    values = [_REQUIREMENT_ROW(row, *fixed) for row in rows]
    return _trusted_many(ScenarioFieldRequirement, values)


# the keys of a ProfileField's __dict__, in the order _profile_fields() lays the values out
_PROFILE_FIELD_KEYS = {
    history: (*cols, "value", "source_metadata")
    if history
    else (*cols, "value", "source_metadata", "status", "superseded_by_id", "superseded_at")
    for history, cols in sql.FIELD_ROW_COLS.items()
}
# a ProfileField's fields-set is every field (copied once per read)
_ALL_FIELDS_SET = {history: set(keys) for history, keys in _PROFILE_FIELD_KEYS.items()}
_FIELD_WIDTH = {history: sql.field_row_width(history) for history in (False, True)}
# what every version of a read starts from: a read without history fetches ACTIVE rows only,
# whose status and superseded_* columns are not sent
_FIELD_TEMPLATE = {
    True: dict.fromkeys(_PROFILE_FIELD_KEYS[True]),
    False: dict.fromkeys(_PROFILE_FIELD_KEYS[False]) | {"status": ItemStatus.ACTIVE},
}
# the field columns of a read, each with its lookup (value -> member) if it holds an
# enumeration value, else None
_FIELD_MEMBERS: dict[str, _EnumLookup] = {
    "source": _FIELD_SOURCE,
    "source_item_type": _FIELD_SOURCE_TYPE,
    "status": _FIELD_STATUS,
}
_FIELD_ROW_MEMBERS = {
    history: tuple((name, _FIELD_MEMBERS.get(name)) for name in cols)
    for history, cols in sql.FIELD_ROW_COLS.items()
}


def _profile_fields(rows: Sequence[Sequence[Any]], include_history: bool) -> list[ProfileField]:
    """The field versions of a whole-profile read, from its field rows.

    With history they come ordered by name, then newest ``collected_at``, then newest write.
    """
    count = len(rows)
    if not count:
        return []
    # the rows turned into columns (in C), keeping only the field's leading columns
    columns: list[Any] = list(islice(zip(*rows, strict=True), _FIELD_WIDTH[include_history]))
    metadata_json = columns.pop()
    value_json = columns.pop()
    seqs = columns.pop() if include_history else None
    # every value and every source_metadata of the profile parsed in one call
    values, metadata = _loads(
        ("[[" + ",".join(value_json) + "],[" + ",".join(metadata_json) + "]]").encode()
    )
    # Each version's values start as a copy of one template holding every column that is
    # the same in every row (most are: NULL columns, flags, often the times), so only the
    # columns that differ are set row by row. The shared values are immutable (ids, times,
    # text, members); the JSON values, which are not, are always set row by row.
    template = _FIELD_TEMPLATE[include_history].copy()
    varying: list[tuple[str, Sequence[Any]]] = [("value", values), ("source_metadata", metadata)]
    for (name, members), column in zip(_FIELD_ROW_MEMBERS[include_history], columns, strict=True):
        first = column[0]
        # (a column of one type: its values compare as the database compares them; a float
        # is always set row by row, as 0.0 == -0.0 and the database keeps the sign)
        if first.__class__ is not float and column[-1] == first and column.count(first) == count:
            template[name] = first if members is None else members[first]
        else:
            varying.append(
                (name, column if members is None else list(map(members.__getitem__, column)))
            )
    dicts = list(map(dict.copy, repeat(template, count)))
    # column by column: a plain item assignment is the cheapest way in
    for name, column in varying:
        for one, value in zip(dicts, column, strict=True):
            one[name] = value
    versions: list[ProfileField] = list(map(_new, repeat(ProfileField, count)))
    # every field is set, so one set serves every version of the read (as in the SQLite
    # provider): pydantic only ever adds a field's name to it (an assignment), which
    # changes nothing here, and copies it for model_copy
    fields_set = _ALL_FIELDS_SET[include_history].copy()
    deque(map(_SET_DICT, versions, dicts), maxlen=0)
    deque(map(_SET_FIELDS_SET, versions, repeat(fields_set, count)), maxlen=0)
    deque(map(_SET_EXTRA, versions, repeat(None, count)), maxlen=0)
    deque(map(_SET_PRIVATE, versions, repeat(None, count)), maxlen=0)
    if include_history:
        assert seqs is not None
        seq = dict(zip(columns[0], seqs, strict=True))  # id -> write order
        versions.sort(key=lambda v: (v.collected_at, seq[v.id]), reverse=True)
        versions.sort(key=lambda v: v.name)  # stable: newest first within each name
    return versions


def _profile(rows: Sequence[Sequence[Any]], include_history: bool) -> CustomerProfile:
    """A whole profile from the rows of one profile read (see ``sql._PROFILE_TEMPLATE``):
    the profile's own row, the one whose field id is NULL, and one row per field version."""
    width = _FIELD_WIDTH[include_history]
    head = rows[0]
    if head[0] is None:  # where UNION ALL puts it: no search, no copy but a slice
        field_rows: Sequence[Sequence[Any]] = rows[1:]
    else:
        head = next(r for r in rows if r[0] is None)
        field_rows = [r for r in rows if r[0] is not None]
    (
        profile_id, tenant_id, customer_id, verification_level, created_at, updated_at,
        last_interaction_at, identities, consents, asset_rows,
    ) = tuple(head)[width:]  # fmt: skip
    versions = _profile_fields(field_rows, include_history)
    assets = [_asset(a) for a in asset_rows]
    history: dict[str, list[ProfileField]] = {}
    if include_history:
        for version in versions:  # ordered by name, newest first
            history.setdefault(version.name, []).append(version)
    return _trusted(
        CustomerProfile,
        {
            "id": profile_id,
            "tenant_id": tenant_id,
            "customer_id": customer_id,
            "channel_identities": [_identity(i) for i in identities],
            "fields": (
                {f.name: f for f in versions if f.status is ItemStatus.ACTIVE}
                if include_history
                else {f.name: f for f in versions}  # only ACTIVE rows were read
            ),
            "field_history": history,
            "assets": [a for a in assets if a.status is ItemStatus.ACTIVE],
            "asset_history": assets if include_history else [],
            "verification_level": _VERIFICATION_LEVEL[verification_level],
            "consents": [_consent(c) for c in consents],
            "created_at": created_at,
            "updated_at": updated_at,
            "last_interaction_at": last_interaction_at,
        },
    )


def _affected(status: str) -> int:
    """The row count of a command tag such as ``UPDATE 42``."""
    return int(status.rsplit(" ", 1)[-1])


class PostgresProfileStore(ProfileStore):
    """The vault on PostgreSQL. Enter it (or call :meth:`setup`) before use.

    ``setup()`` creates the connection pool and checks the schema version: it never
    changes the schema (unless ``migrate_on_start``), so the runtime role needs DML rights
    only. :meth:`migrate` (``ccvault migrate``) applies pending migrations under an
    advisory lock, so many migrators may run at once. ``applied_migrations`` lists the
    versions this instance applied (empty when another process had done it).
    """

    def __init__(
        self, settings: PostgresSettings | None = None, *, rules: StoreRules | None = None
    ) -> None:
        super().__init__(rules=rules)
        self.settings = settings or PostgresSettings()
        #: pages of a table the status estimate reads at most (estimate_items_by_status)
        self.status_sample_pages = 1024
        self._pool: ConnectionPool | None = None
        self._setup_lock = asyncio.Lock()
        self.applied_migrations: list[int] = []

    # =====================================================================================
    # lifecycle and connections
    # =====================================================================================

    async def _connect(self) -> asyncpg.Connection:
        """One new connection with the store's session settings and codecs."""
        options = self.settings
        server_settings = {"application_name": "ccvault"}
        if not options.transaction_pooler:  # a transaction pooler refuses session parameters
            server_settings |= {
                "search_path": options.db_schema,
                "statement_timeout": str(int(options.statement_timeout_seconds * 1000)),
                "plan_cache_mode": options.plan_cache_mode,
            }
        conn = await asyncpg.connect(
            options.dsn.get_secret_value(),
            server_settings=server_settings,
            timeout=options.connect_timeout_seconds,
            command_timeout=options.command_timeout_seconds or None,
            # behind a transaction pooler a named prepared statement may live on another
            # server connection than the next transaction's: none are kept
            statement_cache_size=0 if options.transaction_pooler else 100,
        )
        try:
            await _init_connection(conn)
        except BaseException:
            conn.terminate()
            raise
        return conn

    async def setup(self) -> None:
        """Open the pool and check the schema version (reads only; see the class
        docstring). Idempotent; safe with concurrent starters."""
        async with self._setup_lock:
            if self._pool is not None:
                return
            options = self.settings
            pool = ConnectionPool(
                self._connect,
                min_size=options.min_pool_size,
                max_size=options.max_pool_size,
                max_inactive=options.max_inactive_connection_lifetime_seconds,
            )
            try:
                await pool.start()
            except BaseException as exc:
                raise (_translate(exc) or exc) from _cause(exc)
            try:
                conn = await pool.acquire(options.pool_acquire_timeout_seconds)
                try:
                    if options.transaction_pooler:
                        await _check_role_search_path(conn, options.db_schema)
                    status = await read_status(conn, options.db_schema)
                    if options.migrate_on_start and status.pending and not status.newer:
                        self.applied_migrations = await self._migrate(conn)
                    else:
                        require_ready(status, distribution="ccvault-postgres")
                finally:
                    pool.release(conn)
            except BaseException as exc:
                pool.terminate()
                raise (_translate(exc) or exc) from _cause(exc)
            self._pool = pool

    async def _migrate(self, conn: asyncpg.Connection) -> list[int]:
        schema = self.settings.db_schema
        applied = await apply_migrations(conn, schema, _migration_lock_key(schema))
        # types may have been created after this connection cached its type information
        await conn.reload_schema_state()
        return [m.version for m in applied]

    @contextlib.asynccontextmanager
    async def _schema_connection(self) -> AsyncIterator[asyncpg.Connection]:
        """A connection for the schema calls: the pool's when the store is open, else one
        of its own, closed afterwards. Errors leave as ``ccvault.errors``."""
        if self._pool is not None:
            async with self.connection() as conn:
                yield conn
            return
        try:
            conn = await self._connect()
        except BaseException as exc:
            raise (_translate(exc) or exc) from _cause(exc)
        try:
            yield conn
        except BaseException as exc:
            raise (_translate(exc) or exc) from _cause(exc)
        finally:
            with contextlib.suppress(OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                await asyncio.wait_for(conn.close(), timeout=10)

    async def schema_status(self) -> SchemaStatus:
        async with self._schema_connection() as conn:
            return await read_status(conn, self.settings.db_schema)

    async def migrate(self, *, dry_run: bool = False) -> MigrationReport:
        schema = self.settings.db_schema
        async with self._schema_connection() as conn:
            if dry_run:
                status = await read_status(conn, schema)
                if status.newer:
                    require_ready(status, distribution="ccvault-postgres")
                preamble = await bootstrap_statements(conn, schema) if status.pending else ()
                return MigrationReport(
                    applied=status.pending, status=status, dry_run=True, preamble=preamble
                )
            applied = await apply_migrations(conn, schema, _migration_lock_key(schema))
            self.applied_migrations = [m.version for m in applied]
            if applied and self._pool is not None:
                # pooled connections cached type information from before the migration
                await conn.reload_schema_state()
            status = await read_status(conn, schema)
        return MigrationReport(applied=tuple(m.step() for m in applied), status=status)

    async def aclose(self) -> None:
        """Close the pool (waiting for calls in progress, then terminating). Idempotent."""
        pool, self._pool = self._pool, None
        if pool is None:
            return
        try:
            await asyncio.wait_for(pool.close(), timeout=10)
        except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            pool.terminate()

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection for operational use (and tests); errors leave as
        ``ccvault.errors``.

        Statements run with the store's ``search_path`` and ``statement_timeout``. Session
        state the caller changes (SET, LISTEN, advisory locks...) is reset on release.
        """
        async with self._conn() as conn:
            try:
                yield conn
            finally:
                if not conn.is_closed():
                    try:
                        await conn.reset()
                    except BaseException:
                        conn.terminate()  # session state may be left: never reuse it
                        raise

    def _conn(self) -> _Lease:
        """A pooled connection for the store's own statements; errors leave as
        ``ccvault.errors``. No reset query on release: the store's statements leave no
        session state behind."""
        pool = self._pool
        if pool is None:
            raise errors.ProviderUnavailableError(
                "the PostgreSQL store is not open: use `async with store` or call setup()"
            )
        return _Lease(pool, self.settings.pool_acquire_timeout_seconds)

    async def _write(
        self,
        attempt: Callable[[asyncpg.Connection], Awaitable[_T]],
        *,
        retry_if: Callable[[BaseException], bool] = _is_race,
    ) -> _T:
        """Run ``attempt`` (one atomic write) until it does not lose a race.

        ``attempt`` must be atomic: one statement, or one transaction of its own. A lost
        connection is never retried here: the write may have committed.
        """
        async with self._conn() as conn:
            for number in range(1, self.settings.max_write_attempts + 1):
                try:
                    return await attempt(conn)
                except (asyncpg.PostgresError, errors.VaultError) as exc:
                    if not retry_if(exc):
                        raise
                    if number == self.settings.max_write_attempts:
                        raise errors.ConflictError(
                            f"the write lost {number} races in a row to concurrent writers; "
                            "nothing was written"
                        ) from _cause(exc)
                # back off a little, with jitter, so racing writers spread out
                await asyncio.sleep(random.uniform(0, 0.002 * min(number, 10)))
        raise AssertionError("unreachable")  # pragma: no cover

    # =====================================================================================
    # profiles
    # =====================================================================================

    async def _read_profile(
        self, query: str, include_history: bool, *args: Any
    ) -> CustomerProfile | None:
        async with self._conn() as conn:
            rows = await conn.fetch(query, *args)
        return _profile(rows, include_history) if rows else None

    async def _get_by_customer_id(
        self, tenant_id: UUID, customer_id: UUID, include_history: bool
    ) -> CustomerProfile | None:
        return await self._read_profile(
            sql.PROFILE_BY_CUSTOMER[include_history], include_history, tenant_id, customer_id
        )

    async def _get_by_id(
        self, tenant_id: UUID, profile_id: UUID, include_history: bool
    ) -> CustomerProfile | None:
        return await self._read_profile(
            sql.PROFILE_BY_ID[include_history], include_history, tenant_id, profile_id
        )

    async def _get_by_channel_identity(
        self, tenant_id: UUID, channel: Channel, channel_user_id: str, include_history: bool
    ) -> CustomerProfile | None:
        return await self._read_profile(
            sql.PROFILE_BY_IDENTITY[include_history],
            include_history,
            tenant_id,
            channel.value,
            channel_user_id,
        )

    async def _get_or_create(self, tenant_id: UUID, candidate: CustomerProfile) -> CustomerProfile:
        identity = candidate.channel_identities[0]
        channel, channel_user_id = identity.channel, identity.channel_user_id
        for _ in range(self.settings.max_write_attempts):
            found = await self._get_by_channel_identity(tenant_id, channel, channel_user_id, False)
            if found is not None:
                return found
            try:
                async with self._conn() as conn:
                    # one statement: a lost race inserts neither row, so a retry may reuse ids
                    await conn.execute(
                        sql.CREATE_WITH_IDENTITY,
                        tenant_id,
                        candidate.id,
                        candidate.customer_id,
                        candidate.verification_level.value,
                        candidate.created_at,
                        channel.value,
                        channel_user_id,
                    )
            except errors.IdentityConflictError:
                continue  # another caller created it first: read theirs
            return candidate
        raise errors.ProviderUnavailableError("get_or_create kept losing races; try again")

    async def _save(self, profile: CustomerProfile) -> UUID:
        tenant_id, profile_id = profile.tenant_id, profile.id
        identities = profile.channel_identities
        consents = profile.consents
        channels = [i.channel.value for i in identities]
        user_ids = [i.channel_user_id for i in identities]

        async def attempt(conn: asyncpg.Connection) -> UUID:
            async with conn.transaction():
                # the profile row (if any) is locked first: concurrent field and asset
                # writers of this profile wait until the plan is applied
                live = await conn.fetchval(sql.LOCK_PROFILE_FOR_SAVE, tenant_id, profile_id)
                state = await self._read_save_state(conn, profile, live, channels, user_ids)
                plan = plan_save(state, profile, self.now())
                await conn.execute(
                    sql.UPSERT_PROFILE,
                    tenant_id,
                    profile_id,
                    profile.customer_id,
                    profile.verification_level.value,
                    profile.created_at,
                    profile.updated_at,
                    profile.last_interaction_at,
                )
                await conn.execute(
                    sql.DELETE_UNLISTED_IDENTITIES, tenant_id, profile_id, channels, user_ids
                )
                if identities:
                    await conn.execute(
                        sql.UPSERT_IDENTITIES,
                        tenant_id,
                        profile_id,
                        channels,
                        user_ids,
                        [i.verified for i in identities],
                        [i.verified_at for i in identities],
                        [i.primary for i in identities],
                        [i.created_at for i in identities],
                    )
                await conn.execute(sql.DELETE_CONSENTS, tenant_id, profile_id)
                if consents:
                    await conn.execute(
                        sql.INSERT_CONSENTS,
                        tenant_id,
                        profile_id,
                        [c.consent_type for c in consents],
                        [c.granted for c in consents],
                        [c.granted_at for c in consents],
                        [c.revoked_at for c in consents],
                        [c.source_session_id for c in consents],
                        [None if c.ip_address is None else str(c.ip_address) for c in consents],
                        [c.ip_address_sealed for c in consents],
                    )
                await self._save_items(conn, plan)
            return profile_id

        return await self._write(attempt, retry_if=_is_active_field_race)

    @staticmethod
    async def _read_save_state(
        conn: asyncpg.Connection,
        profile: CustomerProfile,
        live: bool | None,
        channels: list[str],
        user_ids: list[str],
    ) -> SaveState:
        """What :func:`plan_save` needs, read inside the save's transaction."""
        tenant_id = profile.tenant_id
        customer_owner: UUID | None = None
        identity_owners: dict[tuple[Channel, str], UUID] = {}
        for row in await conn.fetch(
            sql.SAVE_STATE_OWNERS, tenant_id, profile.customer_id, channels, user_ids
        ):
            if row["kind"] == "customer":
                customer_owner = row["profile_id"]
            else:
                identity_owners[(_CHANNEL[row["channel"]], row["channel_user_id"])] = row[
                    "profile_id"
                ]
        items: list[dict[UUID, StoredItem]] = []
        for query, ids, statuses in (
            (sql.FIND_FIELD_STATE, [f.id for f in profile.fields.values()], _FIELD_STATUS),
            (sql.FIND_ASSET_STATE, [a.id for a in profile.assets], _ASSET_STATUS),
        ):
            rows = await conn.fetch(query, tenant_id, ids) if ids else []
            items.append(
                {
                    r["id"]: StoredItem(
                        r["profile_id"],
                        r["name"],
                        statuses[r["status"]],
                        r["superseded_by_id"],
                        r["superseded_at"],
                    )
                    for r in rows
                }
            )
        return SaveState(
            exists=live is not None,
            gone=live is False,
            customer_owner=customer_owner,
            identity_owners=identity_owners,
            fields=items[0],
            assets=items[1],
        )

    async def _save_items(self, conn: asyncpg.Connection, plan: SavePlan) -> None:
        """Apply the plan's field and asset writes inside the caller's transaction."""
        tenant_id, profile_id = plan.profile.tenant_id, plan.profile.id
        if plan.updated_fields:
            await conn.executemany(
                sql.UPDATE_FIELD_IN_PLACE,
                [(tenant_id, profile_id, *_field_params(f)) for f in plan.updated_fields],
            )
        if plan.new_fields:
            await conn.executemany(
                sql.UPDATE_FIELD,
                [
                    (tenant_id, profile_id, *_field_params(f), True, plan.now)
                    for f in plan.new_fields
                ],
            )
        if plan.updated_assets:
            await conn.executemany(
                sql.UPDATE_ASSET_IN_PLACE,
                [(tenant_id, profile_id, *_asset_params(a)) for a in plan.updated_assets],
            )
        if plan.new_assets:
            await conn.executemany(
                sql.INSERT_ASSET_PLAIN,
                [(tenant_id, profile_id, *_asset_params(a)) for a in plan.new_assets],
            )

    async def _delete(self, tenant_id: UUID, profile_id: UUID) -> bool:
        async with self._conn() as conn:
            deleted = await conn.fetchval(sql.SOFT_DELETE, tenant_id, profile_id, self.now())
        return bool(deleted)

    # =====================================================================================
    # fields
    # =====================================================================================

    async def _update_field(
        self, tenant_id: UUID, profile_id: UUID, field: ProfileField, supersede_existing: bool
    ) -> UUID:
        now = self.now() if supersede_existing else field.updated_at
        params = (tenant_id, profile_id, *_field_params(field), supersede_existing, now)

        async def insert(conn: asyncpg.Connection) -> UUID:
            try:
                row = await conn.fetchrow(sql.UPDATE_FIELD, *params)
            except pgerr.UniqueViolationError as exc:
                if exc.constraint_name == _ACTIVE_FIELD_INDEX and not supersede_existing:
                    raise errors.ActiveFieldConflictError(
                        f"field {field.name!r} already has an ACTIVE version"
                    ) from _cause(exc)
                raise
            assert row is not None
            if not row["found"]:
                raise errors.NotFoundError(f"profile {profile_id} not found")
            new_id: UUID = row["new_id"]
            return new_id

        async def attempt(conn: asyncpg.Connection) -> UUID:
            if supersede_existing:
                return await insert(conn)  # one statement: its own transaction
            # the profile's overdue versions close in the insert's transaction: a refused
            # insert (an unexpired ACTIVE version, or no live profile) undoes the sweep
            async with conn.transaction():
                await conn.execute(sql.EXPIRE_PROFILE, tenant_id, now, profile_id)
                return await insert(conn)

        return await self._write(attempt, retry_if=_is_active_field_race)

    async def _get_field(
        self, tenant_id: UUID, profile_id: UUID, field_name: str, status: ItemStatus | None
    ) -> ProfileField | None:
        async with self._conn() as conn:
            if status is ItemStatus.ACTIVE:
                row = await conn.fetchrow(sql.GET_FIELD_ACTIVE, tenant_id, profile_id, field_name)
            elif status is None:
                row = await conn.fetchrow(sql.GET_FIELD_ANY, tenant_id, profile_id, field_name)
            else:
                row = await conn.fetchrow(
                    sql.GET_FIELD_WITH_STATUS, tenant_id, profile_id, field_name, status.value
                )
        return None if row is None else _field(row)

    async def _get_field_history(
        self, tenant_id: UUID, profile_id: UUID, field_name: str
    ) -> list[ProfileField]:
        async with self._conn() as conn:
            rows = await conn.fetch(sql.FIELD_HISTORY, tenant_id, profile_id, field_name)
        return [_field(r) for r in rows]

    async def _expire_stale_fields_batch(
        self, tenant_id: UUID, profile_id: UUID | None, now: datetime, limit: int
    ) -> int:
        # one statement (its own transaction) touching at most `limit` rows
        async with self._conn() as conn:
            if profile_id is None:
                status = await conn.execute(sql.EXPIRE_BATCH, tenant_id, now, limit)
            else:
                status = await conn.execute(
                    sql.EXPIRE_PROFILE_BATCH, tenant_id, now, limit, profile_id
                )
        return _affected(status)

    # =====================================================================================
    # assets
    # =====================================================================================

    async def _add_asset(
        self, tenant_id: UUID, profile_id: UUID, asset: ProfileAsset, supersede_existing: bool
    ) -> UUID:
        params = _asset_params(asset)
        if not supersede_existing:
            async with self._conn() as conn:
                row = await conn.fetchrow(sql.INSERT_ASSET, tenant_id, profile_id, *params)
            assert row is not None
            if not row["found"]:
                raise errors.NotFoundError(f"profile {profile_id} not found")
            return asset.id

        async def attempt(conn: asyncpg.Connection) -> UUID:
            async with conn.transaction():
                if not await conn.fetchval(sql.LOCK_PROFILE_FOR_ASSET, tenant_id, profile_id):
                    raise errors.NotFoundError(f"profile {profile_id} not found")
                await conn.execute(
                    sql.SUPERSEDE_ASSETS, tenant_id, profile_id, asset.name, asset.id, self.now()
                )
                await conn.execute(sql.INSERT_ASSET_PLAIN, tenant_id, profile_id, *params)
            return asset.id

        return await self._write(attempt)

    async def _get_asset(
        self, tenant_id: UUID, profile_id: UUID, asset_id: UUID
    ) -> ProfileAsset | None:
        async with self._conn() as conn:
            row = await conn.fetchrow(sql.GET_ASSET, tenant_id, profile_id, asset_id)
        return None if row is None else _asset(row)

    async def _get_asset_by_name(
        self, tenant_id: UUID, profile_id: UUID, asset_name: str, status: ItemStatus | None
    ) -> ProfileAsset | None:
        async with self._conn() as conn:
            if status is None:
                row = await conn.fetchrow(sql.GET_ASSET_ANY, tenant_id, profile_id, asset_name)
            else:
                row = await conn.fetchrow(
                    sql.GET_ASSET_WITH_STATUS, tenant_id, profile_id, asset_name, status.value
                )
        return None if row is None else _asset(row)

    # =====================================================================================
    # lineage
    # =====================================================================================

    async def _get_derivation_chain(
        self, tenant_id: UUID, item_id: UUID, item_type: ItemType, max_depth: int
    ) -> list[LineageEntry]:
        async with self._conn() as conn:
            rows = await conn.fetch(
                sql.DERIVATION_CHAIN, tenant_id, item_id, item_type.value, max_depth
            )
        # a source type no member has is refused by its lookup (StorageError without the
        # value), any other column by _validated (no value either)
        entries = []
        for r in rows:
            row, table, source_types = _LINEAGE[r["type"]]
            data = dict(r, source_item_type=source_types[r["source_item_type"]])
            entries.append(_validated(row, table, None, LineageEntry.model_validate, data))
        return entries

    async def _get_derived_items(
        self, tenant_id: UUID, source_item_id: UUID
    ) -> tuple[list[ProfileField], list[ProfileAsset]]:
        async with self._conn() as conn:
            row = await conn.fetchrow(sql.DERIVED_ITEMS, tenant_id, source_item_id)
        assert row is not None
        return [_field(f) for f in row["fields"]], [_asset(a) for a in row["assets"]]

    async def _check_has_dependents(self, tenant_id: UUID, item_id: UUID) -> bool:
        async with self._conn() as conn:
            return bool(await conn.fetchval(sql.HAS_DEPENDENTS, tenant_id, item_id))

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
        if max_per_channel is not None:
            return await self._link_channel_limited(
                tenant_id, profile_id, identity, max_per_channel
            )

        async def attempt(conn: asyncpg.Connection) -> bool:
            row = await conn.fetchrow(
                sql.LINK_CHANNEL,
                tenant_id,
                profile_id,
                identity.channel.value,
                identity.channel_user_id,
                identity.verified,
                identity.verified_at,
                identity.primary,
                identity.created_at,
            )
            assert row is not None
            if not row["found"]:
                raise errors.NotFoundError(f"profile {profile_id} not found")
            if row["inserted"]:
                return True
            if row["owner"] is None:
                # the owner committed after this statement's snapshot: look again
                raise _LinkRace
            return link_outcome(profile_id, row["owner"], identity.channel)

        return await self._write(attempt, retry_if=lambda exc: isinstance(exc, _LinkRace))

    async def _link_channel_limited(
        self, tenant_id: UUID, profile_id: UUID, identity: ChannelIdentity, limit: int
    ) -> bool:
        channel = identity.channel.value

        async def attempt(conn: asyncpg.Connection) -> bool:
            async with conn.transaction():
                if await conn.fetchval(sql.LINK_LOCK_PROFILE, tenant_id, profile_id) is None:
                    raise errors.NotFoundError(f"profile {profile_id} not found")
                owner = await conn.fetchval(
                    sql.IDENTITY_OWNER, tenant_id, channel, identity.channel_user_id
                )
                if not link_outcome(profile_id, owner, identity.channel):
                    return False
                held = [
                    ChannelIdentity(
                        channel=row["channel"],
                        channel_user_id=row["channel_user_id"],
                        verified=row["verified"],
                        verified_at=row["verified_at"],
                        primary=row["is_primary"],
                        created_at=row["created_at"],
                    )
                    for row in await conn.fetch(
                        sql.PROFILE_CHANNEL_IDENTITIES, tenant_id, profile_id, channel
                    )
                ]
                evicted = channel_eviction(held, identity.channel, limit)
                if evicted is not None:
                    await conn.execute(
                        sql.EVICT_IDENTITY,
                        tenant_id,
                        profile_id,
                        channel,
                        evicted.channel_user_id,
                    )
                inserted = await conn.fetchval(
                    sql.INSERT_IDENTITY,
                    tenant_id,
                    profile_id,
                    channel,
                    identity.channel_user_id,
                    identity.verified,
                    identity.verified_at,
                    identity.primary,
                    identity.created_at,
                )
                if inserted is None:
                    # another profile claimed it after the owner was read: undo, look again
                    raise _LinkRace
                return True

        return await self._write(
            attempt, retry_if=lambda exc: isinstance(exc, _LinkRace) or _is_race(exc)
        )

    async def _merge_profiles(
        self,
        tenant_id: UUID,
        source_profile_id: UUID,
        target_profile_id: UUID,
        choose_winner: MergeWinner,
        log: MergeLogRequest | None = None,
    ) -> None:
        read = sql.PROFILE_BY_ID[False]
        request = log or MergeLogRequest()

        async def attempt(conn: asyncpg.Connection) -> None:
            now = self.now()
            async with conn.transaction():
                locked = await conn.fetch(
                    sql.MERGE_LOCK, tenant_id, [source_profile_id, target_profile_id]
                )
                if len(locked) != 2:
                    found = {r["id"] for r in locked}
                    missing = (
                        source_profile_id if source_profile_id not in found else target_profile_id
                    )
                    raise errors.NotFoundError(f"profile {missing} not found")
                # read both profiles, let core's rule plan the merge, write exactly the plan
                target, source = [
                    MergeSide.from_profile(_profile(await conn.fetch(read, tenant_id, p), False))
                    for p in (target_profile_id, source_profile_id)
                ]
                plan = plan_merge(target, source, now, choose_winner=choose_winner)
                # the log entry: everything of the source, as read in this transaction
                items = await conn.fetch(sql.MERGE_SOURCE_ITEMS, tenant_id, source_profile_id)
                consents = await conn.fetch(sql.MERGE_SOURCE_CONSENTS, tenant_id, source_profile_id)
                record = merge_record(
                    tenant_id,
                    plan,
                    request,
                    moved_field_ids=[r["id"] for r in items if r["kind"] == "field"],
                    moved_asset_ids=[r["id"] for r in items if r["kind"] == "asset"],
                    moved_consents=[_consent(c) for c in consents],
                    source_identities=source.identities,
                    target_identities=target.identities,
                )
                inserted = await conn.execute(
                    sql.INSERT_MERGE_LOG,
                    tenant_id,
                    record.id,
                    source_profile_id,
                    target_profile_id,
                    now,
                    record.model_dump_json(),
                )
                if _affected(inserted) != 1:
                    raise errors.ConflictError(f"merge id {record.id} is already taken")
                if plan.supersede:
                    await conn.execute(
                        sql.MERGE_SUPERSEDE,
                        tenant_id,
                        [e.loser_id for e in plan.supersede],
                        [e.winner_id for e in plan.supersede],
                        now,
                    )
                await conn.execute(
                    sql.MERGE_MOVE,
                    tenant_id,
                    source_profile_id,
                    target_profile_id,
                    now,
                    [i.channel.value for i in plan.identities],
                    [i.channel_user_id for i in plan.identities],
                    [i.primary for i in plan.identities],
                )

        await self._write(attempt)

    async def _unmerge(self, tenant_id: UUID, merge_id: UUID) -> UnmergeResult:
        async def attempt(conn: asyncpg.Connection) -> UnmergeResult:
            async with conn.transaction():
                # the entry first, then both profiles in id order (as merge locks them)
                found = await conn.fetchval(sql.LOCK_MERGE_LOG, tenant_id, merge_id)
                if found is None:
                    raise errors.NotFoundError(f"merge {merge_id} not found")
                record = _merge_record(found)
                source_id, target_id = record.source_profile_id, record.target_profile_id
                live = {
                    r["id"]: r["live"]
                    for r in await conn.fetch(sql.UNMERGE_LOCK, tenant_id, [source_id, target_id])
                }
                if source_id not in live:
                    raise errors.NotFoundError(f"merge {merge_id} not found")
                others = await conn.fetch(
                    sql.OPEN_MERGES, tenant_id, merge_id, [source_id, target_id]
                )
                sides: dict[UUID, CustomerProfile | None] = {}
                for key in (source_id, target_id):
                    rows = await conn.fetch(sql.PROFILE_EXPORT, tenant_id, key)
                    sides[key] = _profile(rows, True) if rows else None
                s_side, t_side = sides[source_id], sides[target_id]
                state = UnmergeState.from_profiles(
                    record,
                    tuple(_merge_record(r[0]) for r in others),
                    target_live=live.get(target_id, False),
                    source_live=live[source_id],
                    target=t_side,
                    source=s_side,
                )
                plan = plan_unmerge(state, self.now())
                await conn.execute(
                    sql.UNMERGE_MOVE,
                    tenant_id,
                    source_id,
                    list(plan.field_ids_to_source),
                    list(plan.asset_ids_to_source),
                    [u.channel.value for u in plan.identities],
                    [u.channel_user_id for u in plan.identities],
                    [u.profile_id for u in plan.identities],
                    [u.primary for u in plan.identities],
                )
                if plan.reactivate_field_ids:
                    await conn.execute(
                        sql.UNMERGE_REACTIVATE,
                        tenant_id,
                        list(plan.reactivate_field_ids),
                        plan.now,
                    )
                for owner, consents in (
                    (target_id, plan.target_consents),
                    (source_id, plan.source_consents),
                ):
                    await conn.execute(sql.DELETE_CONSENTS, tenant_id, owner)
                    if consents:
                        await conn.execute(
                            sql.INSERT_CONSENTS,
                            tenant_id,
                            owner,
                            [c.consent_type for c in consents],
                            [c.granted for c in consents],
                            [c.granted_at for c in consents],
                            [c.revoked_at for c in consents],
                            [c.source_session_id for c in consents],
                            [None if c.ip_address is None else str(c.ip_address) for c in consents],
                            [c.ip_address_sealed for c in consents],
                        )
                await conn.execute(
                    sql.UNMERGE_PROFILES,
                    tenant_id,
                    source_id,
                    target_id,
                    plan.now,
                    merge_id,
                    plan.record.model_dump_json(),
                )
                return plan.result

        return await self._write(attempt)

    async def _get_merge_log(self, tenant_id: UUID, profile_id: UUID) -> list[MergeRecord]:
        async with self._conn() as conn:
            rows = await conn.fetch(sql.GET_MERGE_LOG, tenant_id, profile_id)
        return [_merge_record(r[0]) for r in rows]

    async def _get_tenant_field_definitions(self, tenant_id: UUID) -> list[ProfileFieldDefinition]:
        async with self._conn() as conn:
            rows = await conn.fetch(sql.GET_TENANT_DEFINITIONS, tenant_id)
        return [_definition(r) for r in rows]

    # =====================================================================================
    # definitions and requirements
    # =====================================================================================

    async def _get_field_definitions(
        self, tenant_id: UUID, agent_id: UUID, enabled_only: bool
    ) -> list[ProfileFieldDefinition]:
        async with self._conn() as conn:
            rows = await conn.fetch(sql.GET_DEFINITIONS, tenant_id, agent_id, enabled_only)
        return _definitions(rows)

    async def _get_field_definition(
        self, tenant_id: UUID, agent_id: UUID, field_name: str
    ) -> ProfileFieldDefinition | None:
        async with self._conn() as conn:
            row = await conn.fetchrow(sql.GET_DEFINITION, tenant_id, agent_id, field_name)
        return None if row is None else _definition(row)

    async def _save_field_definition(self, definition: ProfileFieldDefinition) -> UUID:
        def plan(rows: Sequence[Mapping[str, Any]]) -> Sequence[Any]:
            by_id = next((_definition(r) for r in rows if r["by_id"]), None)
            by_key = next((_definition(r) for r in rows if r["by_key"]), None)
            upsert = plan_definition_save(definition, by_id, by_key)
            stored = definition.model_copy(
                update={"id": upsert.id, "created_at": upsert.created_at}
            )
            return _definition_params(stored)

        read = (definition.tenant_id, definition.id, definition.agent_id, definition.name)
        return await self._planned_upsert(
            sql.DEFINITION_BY_ID_OR_KEY, read, plan, sql.UPSERT_DEFINITION
        )

    async def _planned_upsert(
        self,
        read_sql: str,
        read_args: Sequence[Any],
        plan: Callable[[Sequence[Mapping[str, Any]]], Sequence[Any]],
        upsert_sql: str,
    ) -> UUID:
        """Read the rows with the given id or natural key (locked), let core's rule decide
        (a refusal raises and nothing is written), then upsert by the natural key, in one
        transaction. Two first saves racing on one id or key: the loser's insert violates a
        unique key, the transaction rolls back, and the retry reads the winner's row."""

        async def attempt(conn: asyncpg.Connection) -> UUID:
            async with conn.transaction():
                rows = await conn.fetch(read_sql, *read_args)
                stored: UUID = await conn.fetchval(upsert_sql, *plan(rows))
                return stored

        return await self._write(
            attempt,
            retry_if=lambda exc: _is_race(exc) or isinstance(exc, pgerr.UniqueViolationError),
        )

    async def _delete_field_definition(
        self, tenant_id: UUID, agent_id: UUID, field_name: str
    ) -> bool:
        async with self._conn() as conn:
            status = await conn.execute(sql.DELETE_DEFINITION, tenant_id, agent_id, field_name)
        return _affected(status) > 0

    async def _get_scenario_requirements(
        self, tenant_id: UUID, scenario_id: UUID, step_id: UUID | None
    ) -> list[ScenarioFieldRequirement]:
        async with self._conn() as conn:
            rows = await conn.fetch(sql.GET_REQUIREMENTS, tenant_id, scenario_id, step_id)
        return _requirements(rows)

    async def _get_requirements_with_definitions(
        self, tenant_id: UUID, scenario_id: UUID, step_id: UUID | None
    ) -> tuple[list[ScenarioFieldRequirement], dict[UUID, list[ProfileFieldDefinition]]]:
        # one statement on one pooled connection: both lists of one snapshot; its columns:
        # the requirement's, then the definition's (model order, less the fixed ones)
        async with self._conn() as conn:
            rows = await conn.fetch(
                sql.GET_REQUIREMENTS_WITH_DEFINITIONS, tenant_id, scenario_id, step_id
            )
        tenant, scenario, step = _fixed_ids(tenant_id, scenario_id, step_id)
        # every value out of the records first, then the records dropped before the models
        # are built: fewer objects alive at once (a garbage collection pass per call less)
        requirement_values: list[dict[str, Any]] = []
        definition_values: list[dict[str, Any]] = []
        seen: set[UUID] = set()  # a definition comes once per requirement naming it
        for row in rows:
            if row[_REQUIREMENT_ID] is not None:
                requirement_values.append(_REQUIREMENT_ROW(row, tenant, scenario, step))
            definition_id = row[_DEFINITION_ID]
            if definition_id is not None and definition_id not in seen:
                seen.add(definition_id)
                definition_values.append(_DEFINITION_ROW(row, tenant))
        del rows
        requirements = _trusted_many(ScenarioFieldRequirement, requirement_values)
        definitions: dict[UUID, list[ProfileFieldDefinition]] = {}
        for definition in _trusted_many(ProfileFieldDefinition, definition_values):
            own = definitions.get(definition.__dict__["agent_id"])
            if own is None:
                definitions[definition.__dict__["agent_id"]] = [definition]
            else:
                own.append(definition)
        return requirements, definitions

    async def _get_requirement_checks(
        self, tenant_id: UUID, scenario_id: UUID, step_id: UUID | None
    ) -> tuple[list[ScenarioFieldRequirement], dict[UUID, dict[str, FieldCheck]]]:
        # one statement on one pooled connection: each requirement with the two check
        # columns of its own field's enabled definition (NULL: none); no definition model
        async with self._conn() as conn:
            rows = await conn.fetch(sql.GET_REQUIREMENT_CHECKS, tenant_id, scenario_id, step_id)
        requirement_rows: list[Any] = []
        append = requirement_rows.append
        checks: dict[UUID, dict[str, FieldCheck]] = {}
        for row in rows:
            if row[_REQUIREMENT_ID] is None:  # a definition no requirement names
                continue
            append(row)
            verification = row[_CHECK_VERIFICATION]
            if verification is not None:  # NOT NULL in the table: NULL means no definition
                agent = row[_CHECK_AGENT]
                own = checks.get(agent)
                if own is None:
                    own = checks[agent] = {}
                own[row[_CHECK_NAME]] = field_check(verification, row[_CHECK_FRESHNESS])
        fixed = _fixed_ids(tenant_id, scenario_id, step_id)
        return _requirements_of_rows(fixed, requirement_rows), checks

    async def _get_requirement_records(
        self, tenant_id: UUID, scenario_id: UUID, step_id: UUID | None
    ) -> RequirementRecords:
        # the same ONE statement as _get_requirement_checks; a record per requirement (what
        # the evaluation reads: typed columns, as the models hold them) and a model only for
        # the sources get_missing_fields asks for (the missing requirements' rows)
        async with self._conn() as conn:
            rows = await conn.fetch(sql.GET_REQUIREMENT_CHECKS, tenant_id, scenario_id, step_id)
        records: list[RecordValues] = []
        append = records.append
        for row in rows:
            if row[_REQUIREMENT_ID] is None:  # a definition no requirement names
                continue
            verification = row[_CHECK_VERIFICATION]
            level = _REQUIRED_LEVEL.get(row[_RECORD_LEVEL])
            if level is None:  # a value no member has: written outside the vault
                raise _REQUIRED_LEVEL.corrupt()
            append(
                (
                    row[_CHECK_NAME],
                    level,
                    row[_RECORD_CONDITION],
                    row[_RECORD_DEPENDS_ON] or (),
                    # NOT NULL in the table: NULL means no definition
                    None
                    if verification is None
                    else field_check(verification, row[_CHECK_FRESHNESS]),
                    row,
                )
            )
        fixed = _fixed_ids(tenant_id, scenario_id, step_id)
        return RequirementRecords(records, functools.partial(_requirements_of_rows, fixed))

    async def _save_scenario_requirement(self, requirement: ScenarioFieldRequirement) -> UUID:
        def plan(rows: Sequence[Mapping[str, Any]]) -> Sequence[Any]:
            by_id = next((_requirement(r) for r in rows if r["by_id"]), None)
            by_key = next((_requirement(r) for r in rows if r["by_key"]), None)
            upsert = plan_requirement_save(requirement, by_id, by_key)
            stored = requirement.model_copy(
                update={"id": upsert.id, "created_at": upsert.created_at}
            )
            return _requirement_params(stored)

        read = (
            requirement.tenant_id,
            requirement.id,
            requirement.scenario_id,
            requirement.step_id,
            requirement.rule_id,
            requirement.field_name,
        )
        return await self._planned_upsert(
            sql.REQUIREMENT_BY_ID_OR_KEY, read, plan, sql.UPSERT_REQUIREMENT
        )

    async def _delete_scenario_requirements(
        self, tenant_id: UUID, scenario_id: UUID, step_id: UUID | None
    ) -> int:
        async with self._conn() as conn:
            if step_id is None:
                status = await conn.execute(sql.DELETE_REQUIREMENTS_ALL, tenant_id, scenario_id)
            else:
                status = await conn.execute(
                    sql.DELETE_REQUIREMENTS_STEP, tenant_id, scenario_id, step_id
                )
        return _affected(status)

    # =====================================================================================
    # erasure, portability, hard delete, orphans, operations
    # =====================================================================================

    async def _purge_profile(self, tenant_id: UUID, profile_id: UUID) -> bool:
        # the foreign keys cascade to everything the profile owns; the merge log entries
        # naming it go in the same transaction
        async with self._conn() as conn, conn.transaction():
            await conn.execute(sql.PURGE_MERGE_LOG, tenant_id, profile_id)
            status = await conn.execute(sql.PURGE, tenant_id, profile_id)
        return _affected(status) > 0

    async def _export_profile(self, tenant_id: UUID, profile_id: UUID) -> CustomerProfile | None:
        return await self._read_profile(sql.PROFILE_EXPORT, True, tenant_id, profile_id)

    async def _find_subject_profiles(
        self,
        tenant_id: UUID,
        channel: Channel | None,
        channel_user_id: str | None,
        customer_id: UUID | None,
    ) -> list[UUID]:
        async with self._conn() as conn:
            if channel is None:
                rows = await conn.fetch(sql.SUBJECT_BY_CUSTOMER, tenant_id, customer_id)
                return [r["id"] for r in rows]
            rows = await conn.fetch(
                sql.SUBJECT_BY_IDENTITY, tenant_id, channel.value, channel_user_id
            )
        return [r["profile_id"] for r in rows]

    async def _erase_subject(
        self, tenant_id: UUID, profile_ids: list[UUID], merge_ids: list[UUID]
    ) -> int:
        # one transaction: lock the profiles (as a merge does), check the merge log read by
        # the plan is still the log, delete its entries and the profiles (the foreign keys
        # cascade to identities, released ones too, consents, fields and assets)
        async with self._conn() as conn, conn.transaction():
            await conn.fetch(sql.SUBJECT_LOCK, tenant_id, profile_ids)
            stored = {
                r["id"] for r in await conn.fetch(sql.SUBJECT_MERGE_IDS, tenant_id, profile_ids)
            }
            if stored != set(merge_ids):
                raise errors.ConflictError("the merge log of the subject changed")
            await conn.execute(sql.SUBJECT_DELETE_MERGE_LOG, tenant_id, profile_ids)
            status = await conn.execute(sql.SUBJECT_DELETE_PROFILES, tenant_id, profile_ids)
        return _affected(status)

    async def _delete_item(self, tenant_id: UUID, item_id: UUID, item_type: ItemType) -> bool:
        query = (
            sql.DELETE_FIELD_ITEM if item_type is ItemType.PROFILE_FIELD else sql.DELETE_ASSET_ITEM
        )
        async with self._conn() as conn:
            row = await conn.fetchrow(query, tenant_id, item_id)
        assert row is not None
        if row["present"] and row["has_dependents"]:
            raise errors.DependentsError(f"active items still derive from {item_id}")
        return bool(row["deleted"])

    async def _mark_orphans_batch(self, tenant_id: UUID, now: datetime, limit: int) -> int:
        async with self._conn() as conn, conn.transaction():
            marked = _affected(
                await conn.execute(sql.MARK_ORPHAN_FIELDS_BATCH, tenant_id, now, limit)
            )
            if marked < limit:
                marked += _affected(
                    await conn.execute(sql.MARK_ORPHAN_ASSETS_BATCH, tenant_id, limit - marked)
                )
        return marked

    async def _mark_orphans_page(
        self, tenant_id: UUID, now: datetime, limit: int, after: str | None
    ) -> KeysetBatch:
        # keyset pages in (table, id) order: derived fields, then derived assets (a page that
        # runs out of fields goes on with the assets, with what is left of the limit, in the
        # same transaction); the position is "field:<uuid>", "asset:" (assets from the
        # start) or "asset:<uuid>"
        kind, last = parse_orphans_position(after)
        examined = marked = 0
        resume: str | None = None
        async with self._conn() as conn, conn.transaction():
            if kind == "field":
                row = await conn.fetchrow(
                    sql.MARK_ORPHAN_FIELDS_PAGE[last is None], tenant_id, now, last, limit
                )
                assert row is not None
                examined, marked = int(row["examined"]), int(row["marked"])
                if examined == limit:
                    resume = f"field:{row['last_id']}"
                last = None
            if examined < limit:
                row = await conn.fetchrow(
                    sql.MARK_ORPHAN_ASSETS_PAGE[last is None], tenant_id, last, limit - examined
                )
                assert row is not None
                examined += int(row["examined"])
                marked += int(row["marked"])
                if examined == limit:
                    resume = f"asset:{row['last_id']}" if row["last_id"] else "asset:"
        return KeysetBatch(marked=marked, examined=examined, resume_after=resume)

    async def _list_tenant_ids(self) -> list[UUID]:
        async with self._conn() as conn:
            rows = await conn.fetch(sql.LIST_TENANTS)
        return [r["tenant_id"] for r in rows]

    async def _list_profile_ids(self, tenant_id: UUID) -> list[UUID]:
        async with self._conn() as conn:
            rows = await conn.fetch(sql.LIST_PROFILE_IDS, tenant_id)
        return [r["id"] for r in rows]

    async def _rewrite_field_payloads(
        self,
        tenant_id: UUID,
        profile_id: UUID,
        payloads: dict[UUID, tuple[Any, dict[str, Any]]],
    ) -> int:
        if not payloads:
            return 0
        ids = list(payloads)
        async with self._conn() as conn:
            status = await conn.execute(
                sql.REWRITE_PAYLOADS,
                tenant_id,
                profile_id,
                ids,
                [payloads[i][0] for i in ids],
                [payloads[i][1] for i in ids],
            )
        return _affected(status)

    async def _count_items_by_status(self, tenant_id: UUID) -> dict[str, dict[str, int]]:
        async with self._conn() as conn:
            rows = await conn.fetch(sql.COUNT_BY_STATUS, tenant_id)
        counts: dict[str, dict[str, int]] = {"fields": {}, "assets": {}}
        for r in rows:
            counts[r["kind"]][r["status"]] = int(r["n"])
        return counts

    async def _estimate_items_by_status(self, tenant_id: UUID) -> dict[str, dict[str, int]]:
        # per table: exact below status_sample_pages pages; above, a TABLESAMPLE SYSTEM of
        # about status_sample_pages pages scaled up, so the cost is bounded by the sample,
        # never by the table (the worker refreshes its gauge from this every sweep)
        counts: dict[str, dict[str, int]] = {}
        async with self._conn() as conn:
            for kind, table in (("fields", "profile_fields"), ("assets", "profile_assets")):
                pages = int(await conn.fetchval(sql.TABLE_PAGES, table))
                if pages <= self.status_sample_pages:
                    rows = await conn.fetch(sql.COUNT_STATUS_OF[table], tenant_id)
                    counts[kind] = {r["status"]: int(r["n"]) for r in rows}
                    continue
                percent = 100.0 * self.status_sample_pages / pages
                rows = await conn.fetch(sql.SAMPLE_STATUS_OF[table], tenant_id, percent)
                counts[kind] = {r["status"]: round(r["n"] * 100.0 / percent) for r in rows}
        return counts


class _Lease:
    """``async with``: one pooled connection, driver errors translated on the way out.

    A plain class rather than ``contextlib.asynccontextmanager``: this wraps every call, so
    its overhead is part of every read.
    """

    __slots__ = ("_conn", "_pool", "_timeout")

    def __init__(self, pool: ConnectionPool, timeout: float) -> None:
        self._pool = pool
        self._timeout = timeout
        self._conn: asyncpg.Connection | None = None

    async def __aenter__(self) -> asyncpg.Connection:
        try:
            self._conn = await self._pool.acquire(self._timeout)
        except BaseException as exc:
            raise (_translate(exc) or exc) from _cause(exc)
        return self._conn

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        conn, self._conn = self._conn, None
        assert conn is not None
        if exc is not None and _breaks_connection(exc):
            # the protocol may be mid-message (say, the server died before ReadyForQuery):
            # never hand this connection out again; the pool opens a fresh one on demand
            conn.terminate()
        self._pool.release(conn)
        if exc is not None:
            translated = _translate(exc)
            if translated is not None:
                raise translated from _cause(exc)


class _LinkRace(errors.VaultError):
    """Internal: an identity's owner committed after the statement's snapshot; retry."""


def _is_active_field_race(exc: BaseException) -> bool:
    """A concurrent writer stored an ACTIVE version first: retry (supersede it)."""
    if isinstance(exc, pgerr.UniqueViolationError):
        return bool(exc.constraint_name == _ACTIVE_FIELD_INDEX)
    return _is_race(exc)
