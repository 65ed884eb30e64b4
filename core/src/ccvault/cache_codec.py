"""The encoding of cached entries: versioned, checksummed envelopes the vault trusts.

The Redis cache (:mod:`ccvault.cache`) stores what it read from the backend, which the
backend had validated when it was written. Validating a 50-field profile again with pydantic
on every hit costs more than the Redis round trip, so a hit builds the models *without*
validation from bytes the vault itself wrote. What makes those bytes trustworthy:

* **An envelope**: ``b"ccv"``, one format-version byte, five kind bytes (``P`` and a
  fingerprint of the column layout, i.e. of the model fields: a profile body; ``J``: a JSON
  document validated on read), a 16-byte BLAKE2b digest of the body (personalised for this
  format), then the body. An entry of another format version,
  of an older layout (plain pydantic JSON, as written before this module existed), a value
  some other program put under the key, a truncated entry or one with any byte flipped
  fails :func:`open_envelope`, and :class:`CorruptEntry` makes the cache treat it as a miss
  (the entry is then replaced by a lease and refilled from the backend).
* **A decoder that builds every value with the type it must have** (UUIDs, aware UTC
  datetimes, enumeration members) from a fixed column layout, and raises on anything out of
  place (a column of the wrong length, an unknown enumeration value, a malformed UUID or
  timestamp): that too is a :class:`CorruptEntry`.

The digest protects against corruption and foreign values, not against an attacker who can
write to Redis: such an attacker could always plant a well-formed profile of their choosing
(the previous pydantic-validated format accepted any valid profile too). Redis stays inside
the vault's trust boundary (DESIGN.md §5); the decoder never evaluates anything, so a
crafted entry can at worst yield wrong data, never run code.

Profile bodies use a column layout: for each model field a list of its values over the
profile's field versions, or ``null`` when every value is ``None`` (most optional columns),
so decoding runs mostly in C (``map`` over columns) and the body is about a third of the
size of ``model_dump_json()``. ``test_cache_codec.py`` checks that every model built here
equals the one pydantic validates from the same data.
"""

from __future__ import annotations

import copy
import hashlib
import math
from collections import deque
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from enum import Enum, StrEnum
from ipaddress import IPv4Address, IPv6Address
from itertools import islice, repeat
from operator import attrgetter
from types import UnionType
from typing import Annotated, Any, TypeVar, Union, get_args, get_origin
from uuid import UUID, SafeUUID

import orjson
from pydantic import AwareDatetime, BaseModel

from ccvault.models import (
    Channel,
    ChannelIdentity,
    Consent,
    CustomerProfile,
    ItemStatus,
    ProfileAsset,
    ProfileField,
    ProfileFieldSource,
    SourceType,
    VerificationLevel,
)

__all__ = [
    "FORMAT_VERSION",
    "CorruptEntry",
    "ModelListCodec",
    "NearProfile",
    "decode_json",
    "decode_profile",
    "encode_json",
    "encode_profile",
    "open_envelope",
    "seal_envelope",
    "trusted_replace",
]

#: Bumped whenever the layout below changes: entries of another version are misses.
FORMAT_VERSION = 1
_MAGIC = b"ccv" + bytes([FORMAT_VERSION])
KIND_JSON = b"J\0\0\0\0"  # kinds are five bytes: P + the profile layout (below), J + 0s
_KIND = 5
_DIGEST = 16
_PERSON = b"ccvault-cache-v1"
_HEAD = len(_MAGIC) + _KIND + _DIGEST

_M = TypeVar("_M", bound=BaseModel)


class CorruptEntry(ValueError):
    """A cached entry that is not one this vault wrote intact: treated as a miss."""


def _digest(body: bytes) -> bytes:
    return hashlib.blake2b(body, digest_size=_DIGEST, person=_PERSON).digest()


def seal_envelope(kind: bytes, body: bytes) -> bytes:
    """``body`` in an envelope of ``kind``."""
    return _MAGIC + kind + _digest(body) + body


def open_envelope(kind: bytes, payload: bytes) -> bytes:
    """The body of an envelope of ``kind``; :class:`CorruptEntry` unless it is intact."""
    if len(payload) < _HEAD or payload[: len(_MAGIC)] != _MAGIC:
        raise CorruptEntry("not an entry of this cache format")
    if payload[len(_MAGIC) : len(_MAGIC) + _KIND] != kind:
        raise CorruptEntry("an entry of another kind or layout")
    body = payload[_HEAD:]
    if _digest(body) != payload[len(_MAGIC) + _KIND : _HEAD]:
        raise CorruptEntry("checksum mismatch")
    return body


# ---------------------------------------------------------------------------------------
# plain JSON documents (definitions, requirements, chains): checksummed, validated on read
# ---------------------------------------------------------------------------------------


def encode_json(data: bytes) -> bytes:
    """A JSON document (already serialised) in an envelope."""
    return seal_envelope(KIND_JSON, data)


def decode_json(payload: bytes, validate: Callable[[bytes], Any]) -> Any:
    """``validate`` (a pydantic ``validate_json``) of an intact envelope's body."""
    body = open_envelope(KIND_JSON, payload)
    try:
        return validate(body)
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        raise CorruptEntry("cached document does not validate") from exc


# ---------------------------------------------------------------------------------------
# trusted construction
# ---------------------------------------------------------------------------------------

_new = object.__new__
_SET_DICT = BaseModel.__dict__["__dict__"].__set__
_SET_FIELDS_SET = BaseModel.__dict__["__pydantic_fields_set__"].__set__
_SET_EXTRA = BaseModel.__dict__["__pydantic_extra__"].__set__
_SET_PRIVATE = BaseModel.__dict__["__pydantic_private__"].__set__
_SET_UUID_INT = UUID.__dict__["int"].__set__
_SET_UUID_SAFE = UUID.__dict__["is_safe"].__set__
_UUID_LIMIT = 1 << 128
_UNKNOWN_SAFETY = SafeUUID.unknown
_tzinfo = attrgetter("tzinfo")
_UTC_ONLY = {UTC}
_fromisoformat = datetime.fromisoformat
_ALL_FIELDS: dict[tuple[str, ...], set[str]] = {}


def _construct_many(cls: type[_M], keys: tuple[str, ...], dicts: list[dict[str, Any]]) -> list[_M]:
    """Instances of ``cls`` with these ``__dict__``s, without validation (see the module
    docstring); the loops run in C."""
    count = len(dicts)
    items: list[_M] = list(map(_new, repeat(cls, count)))
    deque(map(_SET_DICT, items, dicts), maxlen=0)
    # one set of every field name per call, shared by its models: pydantic only ever adds
    # to a model's fields-set (an assignment adds a name already there; model_copy copies
    # the set first). A copy, never the kept set, so a caller editing one model's
    # ``model_fields_set`` reaches no model of another read
    every = _ALL_FIELDS.get(keys)
    if every is None:
        every = _ALL_FIELDS.setdefault(keys, set(keys))
    deque(map(_SET_FIELDS_SET, items, repeat(every.copy(), count)), maxlen=0)
    deque(map(_SET_EXTRA, items, repeat(None, count)), maxlen=0)
    deque(map(_SET_PRIVATE, items, repeat(None, count)), maxlen=0)
    return items


def _construct(cls: type[_M], values: dict[str, Any]) -> _M:
    item = _new(cls)
    _SET_DICT(item, values)
    _SET_FIELDS_SET(item, set(values))
    _SET_EXTRA(item, None)
    _SET_PRIVATE(item, None)
    return item


def trusted_replace(item: _M, update: dict[str, Any]) -> _M:
    """A copy of ``item`` with ``update`` applied, without validation: for values the vault
    itself produced and knows to be of the right type (a decrypted JSON value, a sealed
    envelope). ``model_copy(update=...)`` does the same, slower."""
    values = item.__dict__.copy()
    values.update(update)
    fields_set = item.__pydantic_fields_set__
    if not fields_set.issuperset(update):
        fields_set = fields_set | update.keys()
    copied = _new(type(item))
    _SET_DICT(copied, values)
    # shared with ``item`` when it already names every key: pydantic only ever adds to it
    _SET_FIELDS_SET(copied, fields_set)
    _SET_EXTRA(copied, item.__pydantic_extra__)
    _SET_PRIVATE(copied, item.__pydantic_private__)
    return copied


def _uuid(text: str) -> UUID:
    number = int(text, 16)
    if not 0 <= number < _UUID_LIMIT:
        raise CorruptEntry("malformed UUID")
    item = _new(UUID)
    _SET_UUID_INT(item, number)
    _SET_UUID_SAFE(item, _UNKNOWN_SAFETY)
    return item


def _uuid_column(texts: list[str | None]) -> list[UUID | None]:
    if None in texts:
        return [None if t is None else _uuid(t) for t in texts]
    numbers = list(map(int, texts, repeat(16)))  # type: ignore[arg-type]
    if numbers and not (0 <= min(numbers) and max(numbers) < _UUID_LIMIT):
        raise CorruptEntry("malformed UUID")
    items: list[UUID | None] = list(map(_new, repeat(UUID, len(numbers))))
    deque(map(_SET_UUID_INT, items, numbers), maxlen=0)
    deque(map(_SET_UUID_SAFE, items, repeat(_UNKNOWN_SAFETY)), maxlen=0)
    return items


def _when(text: str) -> datetime:
    value = _fromisoformat(text)
    if value.tzinfo is not UTC:
        raise CorruptEntry("timestamp not in UTC")
    return value


def _when_or_none(text: str | None) -> datetime | None:
    return None if text is None else _when(text)


def _when_column(texts: list[str | None]) -> list[datetime | None]:
    if None in texts:
        return [None if t is None else _when(t) for t in texts]
    values = list(map(_fromisoformat, texts))  # type: ignore[arg-type]
    if values and set(map(_tzinfo, values)) != _UTC_ONLY:
        raise CorruptEntry("timestamp not in UTC")
    return values  # type: ignore[return-value]


class _Enum(dict[Any, Any]):
    """value -> member; None -> None; anything else is corrupt."""

    def __init__(self, enum: type[StrEnum]) -> None:
        super().__init__({member.value: member for member in enum})
        self[None] = None

    def __missing__(self, key: Any) -> Any:
        raise CorruptEntry("unknown enumeration value")


# how each model field is written (one value to JSON) and read back (a whole column)
_Codec = tuple[Callable[[Any], Any], Callable[[list[Any]], list[Any]] | None]


def _hex(value: UUID | None) -> str | None:
    return None if value is None else value.hex


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _member_value(value: StrEnum | None) -> str | None:
    return None if value is None else value.value


def _identity_fn(value: Any) -> Any:
    return value


_UUID: _Codec = (_hex, _uuid_column)
_DATETIME: _Codec = (_iso, _when_column)
_RAW: _Codec = (_identity_fn, None)
_UUID_LIST: _Codec = (
    lambda us: [u.hex for u in us],
    lambda column: [[_uuid(h) for h in hs] for hs in column],
)


def _enum_codec(enum: type[StrEnum]) -> _Codec:
    lookup = _Enum(enum)
    return (_member_value, lambda column: list(map(lookup.__getitem__, column)))


def _spec(cls: type[BaseModel], special: dict[str, _Codec]) -> tuple[tuple[str, ...], list[_Codec]]:
    keys = tuple(cls.model_fields)
    unknown = set(special) - set(keys)
    assert not unknown, unknown
    return keys, [special.get(key, _RAW) for key in keys]


_FIELD_KEYS, _FIELD_CODECS = _spec(
    ProfileField,
    {
        "id": _UUID,
        "source": _enum_codec(ProfileFieldSource),
        "source_session_id": _UUID,
        "source_scenario_id": _UUID,
        "source_step_id": _UUID,
        "source_item_id": _UUID,
        "source_item_type": _enum_codec(SourceType),
        "status": _enum_codec(ItemStatus),
        "superseded_by_id": _UUID,
        "superseded_at": _DATETIME,
        "verified_at": _DATETIME,
        "collected_at": _DATETIME,
        "updated_at": _DATETIME,
        "expires_at": _DATETIME,
        "field_definition_id": _UUID,
    },
)
_ASSET_KEYS, _ASSET_CODECS = _spec(
    ProfileAsset,
    {
        "id": _UUID,
        "uploaded_at": _DATETIME,
        "uploaded_in_session_id": _UUID,
        "uploaded_in_scenario_id": _UUID,
        "source_item_id": _UUID,
        "source_item_type": _enum_codec(SourceType),
        "status": _enum_codec(ItemStatus),
        "superseded_by_id": _UUID,
        "superseded_at": _DATETIME,
        "expires_at": _DATETIME,
        "analysis_field_ids": _UUID_LIST,
    },
)
_IDENTITY_KEYS, _IDENTITY_CODECS = _spec(
    ChannelIdentity,
    {
        "channel": _enum_codec(Channel),
        "verified_at": _DATETIME,
        "created_at": _DATETIME,
    },
)
_VERIFICATION = _Enum(VerificationLevel)


def _encode_columns(
    items: Sequence[BaseModel], keys: tuple[str, ...], codecs: list[_Codec]
) -> list[Any]:
    """``[count, column per key]``. A column is ``null`` when every value is None, ``{"=":
    value}`` when every item has that same immutable value, else the list of the values."""
    columns: list[Any] = [len(items)]
    dicts = [item.__dict__ for item in items]
    for key, (encode, _) in zip(keys, codecs, strict=True):
        values = [encode(d[key]) for d in dicts]
        if all(v is None for v in values):
            columns.append(None)
        elif type(values[0]) in _IMMUTABLE and all(_same(v, values[0]) for v in values):
            # only immutable values are shared: every item gets its own list or dict
            columns.append({"=": values[0]})
        else:
            columns.append(values)
    return columns


_set_item = dict.__setitem__
_IMMUTABLE = (str, int, float, bool)


def _same(value: Any, first: Any) -> bool:
    """Identical as JSON: same type and value (and, for floats, the same sign: -0.0)."""
    if type(value) is not type(first) or value != first:
        return False
    return type(value) is not float or math.copysign(1.0, value) == math.copysign(1.0, first)


def _decode_columns(
    cls: type[_M], data: list[Any], keys: tuple[str, ...], codecs: list[_Codec]
) -> list[_M]:
    count = data[0]
    if type(count) is not int or count < 0 or len(data) != len(keys) + 1:
        raise CorruptEntry("malformed column layout")
    if not count:
        return []
    # the values shared by every item go into one template, copied per item; the others
    # are set column by column
    template: dict[str, Any] = dict.fromkeys(keys)  # None, in the model's order
    varying: list[tuple[str, list[Any]]] = []
    for key, column, (_, decode) in zip(keys, islice(data, 1, None), codecs, strict=True):
        if column is None:
            continue
        kind = column.__class__
        if kind is list and len(column) == count:
            varying.append((key, column if decode is None else decode(column)))
        elif kind is dict and len(column) == 1:
            (constant,) = column.values()
            template[key] = constant if decode is None else decode([constant])[0]
        else:
            raise CorruptEntry("malformed column")
    dicts = list(map(dict.copy, repeat(template, count)))
    for key, values in varying:
        deque(map(_set_item, dicts, repeat(key), values), maxlen=0)
    return _construct_many(cls, keys, dicts)


# ---------------------------------------------------------------------------------------
# lists of flat models (definitions, requirements, chain entries): codecs derived from the
# annotations, trusted like profile bodies
# ---------------------------------------------------------------------------------------

_SCALARS = (str, int, float, bool)


def _derived_codec(annotation: Any) -> _Codec | None:
    """The column codec of a model field's annotation, or None when this module does not
    know how to restore its type exactly (the model is then cached validated instead)."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Annotated:
        return _derived_codec(args[0])
    if origin in (Union, UnionType):
        others = [arg for arg in args if arg is not type(None)]
        return _derived_codec(others[0]) if len(others) == 1 else None
    if annotation is UUID:
        return _UUID
    if annotation is datetime or annotation is AwareDatetime:
        return _DATETIME
    if isinstance(annotation, type) and issubclass(annotation, StrEnum):
        return _enum_codec(annotation)
    if annotation is Any or annotation in _SCALARS:
        return _RAW
    if origin is list and len(args) == 1:
        item = args[0]
        while get_origin(item) is Annotated:
            item = get_args(item)[0]
        if item is UUID:
            return _UUID_LIST
        if isinstance(item, type) and issubclass(item, StrEnum):
            lookup = _Enum(item)
            return (
                lambda members: [m.value for m in members],
                lambda column: [[lookup[v] for v in values] for values in column],
            )
        if item is Any or item in _SCALARS:
            return _RAW
        return None
    if origin is dict and args and args[0] is str and args[1] is Any:
        return _RAW
    return None


class ModelListCodec:
    """Lists of one flat model (no nested models) in the column layout, trusted on read.

    ``usable`` is False when a field's type is not one the derived codecs restore exactly;
    the cache then stores that model validated (:func:`encode_json`).
    """

    def __init__(self, cls: type[BaseModel]) -> None:
        self.cls = cls
        self.keys = tuple(cls.model_fields)
        codecs = [_derived_codec(f.annotation) for f in cls.model_fields.values()]
        self.usable = all(codec is not None for codec in codecs)
        self.codecs: list[_Codec] = [codec or _RAW for codec in codecs]
        layout = hashlib.blake2b(repr((cls.__name__, self.keys)).encode(), digest_size=4)
        self.kind = b"M" + layout.digest()

    def encode(self, items: Sequence[BaseModel]) -> bytes | None:
        try:
            body = orjson.dumps(_encode_columns(items, self.keys, self.codecs))
        except (TypeError, orjson.JSONEncodeError):
            return None
        return seal_envelope(self.kind, body)

    def decode(self, payload: bytes) -> list[Any]:
        body = open_envelope(self.kind, payload)
        try:
            data = orjson.loads(body)
            if data.__class__ is not list:
                raise CorruptEntry("malformed model list")
            return _decode_columns(self.cls, data, self.keys, self.codecs)
        except CorruptEntry:
            raise
        except (ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
            raise CorruptEntry("malformed model list") from exc


# the column layout itself (model field names in order) is part of the profile envelope's
# kind: an entry written by a process whose models differ (a rolling upgrade) is a miss
_LAYOUT = hashlib.blake2b(
    repr((_FIELD_KEYS, _ASSET_KEYS, _IDENTITY_KEYS, tuple(CustomerProfile.model_fields))).encode(),
    digest_size=4,
).digest()
KIND_PROFILE = b"P" + _LAYOUT


def encode_profile(profile: CustomerProfile) -> bytes | None:
    """``profile`` (read without history) as a cache entry; None when it cannot be cached
    (history attached, or a value JSON cannot hold losslessly, such as a 65-bit integer)."""
    if profile.field_history or profile.asset_history:
        return None
    data = [
        profile.id.hex,
        profile.tenant_id.hex,
        profile.customer_id.hex,
        profile.verification_level.value,
        profile.created_at.isoformat(),
        profile.updated_at.isoformat(),
        None if profile.last_interaction_at is None else profile.last_interaction_at.isoformat(),
        _encode_columns(profile.channel_identities, _IDENTITY_KEYS, _IDENTITY_CODECS),
        [consent.model_dump(mode="json") for consent in profile.consents],
        _encode_columns(list(profile.fields.values()), _FIELD_KEYS, _FIELD_CODECS),
        _encode_columns(profile.assets, _ASSET_KEYS, _ASSET_CODECS),
    ]
    try:
        body = orjson.dumps(data)
    except (TypeError, orjson.JSONEncodeError):
        return None
    return seal_envelope(KIND_PROFILE, body)


def decode_profile(payload: bytes) -> CustomerProfile:
    """The profile of a cache entry; :class:`CorruptEntry` unless intact and well formed."""
    body = open_envelope(KIND_PROFILE, payload)
    try:
        (
            profile_id, tenant_id, customer_id, level, created_at, updated_at, last_at,
            identities, consents, fields, assets,
        ) = orjson.loads(body)  # fmt: skip
        versions = _decode_columns(ProfileField, fields, _FIELD_KEYS, _FIELD_CODECS)
        return _construct(
            CustomerProfile,
            {
                "id": _uuid(profile_id),
                "tenant_id": _uuid(tenant_id),
                "customer_id": _uuid(customer_id),
                "channel_identities": _decode_columns(
                    ChannelIdentity, identities, _IDENTITY_KEYS, _IDENTITY_CODECS
                ),
                "fields": {item.name: item for item in versions},
                "field_history": {},
                "assets": _decode_columns(ProfileAsset, assets, _ASSET_KEYS, _ASSET_CODECS),
                "asset_history": [],
                "verification_level": _VERIFICATION[level],
                "consents": [Consent.model_validate(c) for c in consents],
                "created_at": _when(created_at),
                "updated_at": _when(updated_at),
                "last_interaction_at": _when_or_none(last_at),
            },
        )
    except CorruptEntry:
        raise
    except (ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
        raise CorruptEntry("malformed profile entry") from exc


# ---------------------------------------------------------------------------------------
# near cache: a decoded profile kept in process memory, handed out as fresh copies
# ---------------------------------------------------------------------------------------

#: values of these types are immutable: every copy may share them
_SHARED_TYPES = frozenset(
    {str, int, float, bool, type(None), UUID, datetime, IPv4Address, IPv6Address}
)


def _shared(value: Any) -> bool:
    return type(value) in _SHARED_TYPES or isinstance(value, Enum)


def _json_native(value: Any) -> bool:
    """Whether an orjson round trip gives back an equal value of the same types."""
    try:
        return bool(orjson.loads(orjson.dumps(value)) == value) and _plain(value)
    except (TypeError, orjson.JSONEncodeError):
        return False


def _plain(value: Any) -> bool:
    kind = type(value)
    if kind is list:
        return all(map(_plain, value))
    if kind is dict:
        return all(type(k) is str for k in value) and all(map(_plain, value.values()))
    return kind in (str, int, float, bool, type(None))


class _FrozenItems:
    """Models of one class, kept as templates: the immutable values shared, the mutable
    ones (lists, dicts) re-created for every copy, so a caller changing what it was given
    never changes the template.

    A list or dict of immutable values only (a flat ``source_metadata``, a list of UUIDs)
    is copied shallowly (``.copy()``, in C); nested JSON goes through one ``orjson`` round
    trip for all items; anything else is deep-copied."""

    __slots__ = ("bases", "cls", "count", "deep", "keys", "nested", "shallow")

    def __init__(self, cls: type[BaseModel], items: Sequence[BaseModel]) -> None:
        self.cls = cls
        self.keys = tuple(cls.model_fields)
        self.count = len(items)
        self.bases: list[dict[str, Any]] = []
        nested: list[dict[str, Any] | None] = []
        shallow: dict[str, list[int]] = {}
        self.deep: list[tuple[int, str, Any]] = []
        for index, item in enumerate(items):
            values = item.__dict__.copy()
            native: dict[str, Any] = {}
            for key, value in values.items():
                if _shared(value):
                    continue
                kind = type(value)
                if (kind is list and all(map(_shared, value))) or (
                    kind is dict and all(map(_shared, value.values()))
                ):
                    values[key] = value.copy()
                    shallow.setdefault(key, []).append(index)
                elif _json_native(value):
                    native[key] = value
                else:
                    self.deep.append((index, key, copy.deepcopy(value)))
            self.bases.append(values)
            nested.append(native or None)
        self.shallow = [(key, indexes) for key, indexes in shallow.items()]
        self.nested = orjson.dumps(nested) if any(nested) else None

    def copies(self) -> list[Any]:
        if not self.count:
            return []
        dicts = list(map(dict.copy, self.bases))
        for key, indexes in self.shallow:
            for values in map(dicts.__getitem__, indexes):
                values[key] = values[key].copy()
        if self.nested is not None:
            for values, native in zip(dicts, orjson.loads(self.nested), strict=True):
                if native:
                    values.update(native)
        for index, key, value in self.deep:
            dicts[index][key] = copy.deepcopy(value)
        return _construct_many(self.cls, self.keys, dicts)


_PROFILE_KEYS = tuple(CustomerProfile.model_fields)


class NearProfile:
    """A profile (read without history) kept in process memory by the cache's near tier.

    :meth:`copy` returns a new :class:`CustomerProfile` equal to the one frozen, sharing
    only immutable values with the template (UUIDs, timestamps, strings, numbers,
    enumeration members): whatever a caller does to a copy, the template and every other
    copy stay as they were. Cheaper than decoding the Redis entry again, as nothing is
    parsed but the JSON of the mutable values.
    """

    __slots__ = ("assets", "consents", "fields", "identities", "top")

    def __init__(self, profile: CustomerProfile) -> None:
        if profile.field_history or profile.asset_history:
            raise ValueError("only profiles read without history are kept")
        top = profile.__dict__.copy()
        for key in ("channel_identities", "consents", "fields", "assets"):
            del top[key]
        if not all(_shared(value) for key, value in top.items() if "history" not in key):
            raise ValueError("unexpected mutable profile attribute")
        self.top = top
        self.identities = _FrozenItems(ChannelIdentity, profile.channel_identities)
        self.consents = _FrozenItems(Consent, profile.consents)
        self.fields = _FrozenItems(ProfileField, list(profile.fields.values()))
        self.assets = _FrozenItems(ProfileAsset, profile.assets)

    def copy(self) -> CustomerProfile:
        values = self.top.copy()
        values["field_history"] = {}
        values["asset_history"] = []
        values["channel_identities"] = self.identities.copies()
        values["consents"] = self.consents.copies()
        values["fields"] = {item.name: item for item in self.fields.copies()}
        values["assets"] = self.assets.copies()
        # the model's own attribute order, as a decoded or validated profile has it
        ordered = {key: values[key] for key in _PROFILE_KEYS}
        return _construct_many(CustomerProfile, _PROFILE_KEYS, [ordered])[0]
