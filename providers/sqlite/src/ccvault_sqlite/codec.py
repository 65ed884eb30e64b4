"""Conversions between the vault's models and SQLite rows.

Column tuples below are derived from the models (:func:`ccvault.storage.columns`) and are
the single source of truth for column order: ``*_params`` builds the bound values in that
order (by name, through :func:`ccvault.storage.row_values`), ``*_from_row`` reads a row
selected with ``*_SELECT``.
Timestamps become fixed-width ISO-8601 UTC text, so comparing the text compares the times.
JSON values are stored as JSON text written by orjson; a value orjson cannot write
losslessly (an integer beyond 64 bits, a string with lone surrogates) is refused with
:class:`~ccvault.errors.ValidationError` before any statement runs.

Reading: rows are the vault's own, written from validated models, so ``*s_from_rows`` build
models column by column without pydantic validation (``_trusted_columns``: the conversions
run in C through ``map``), as the PostgreSQL provider does. Trust is checked, not assumed:
every column is checked for exactly the form this module writes (UUID text, fixed-width
UTC timestamps, enumeration values, 0/1, JSON text...). Rows that are not in that form (a
row edited in SQL, or written by something else) take the validating path, so a foreign
row in a valid form still reads correctly; one that does not validate is refused with
:class:`~ccvault.errors.StorageError` naming the table and column, never its value.
Ids and timestamps already checked are served from bounded memos (text -> UUID/datetime,
immutable values, 4,096 entries each), and a column holding one value in every row is
converted once (enumeration members, flags and numbers through a memo too; never text):
a profile read again costs no parsing of its ids and times.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from enum import StrEnum
from functools import partial
from itertools import compress, repeat
from operator import and_, attrgetter, is_, is_not, itemgetter, or_
from typing import Any, TypeVar
from uuid import UUID, SafeUUID

import orjson
from pydantic import BaseModel

from ccvault import errors
from ccvault.models import (
    Channel,
    ChannelIdentity,
    Consent,
    CustomerProfile,
    FallbackAction,
    FieldValueType,
    ItemStatus,
    ProfileAsset,
    ProfileField,
    ProfileFieldDefinition,
    ProfileFieldSource,
    RequiredLevel,
    ScenarioFieldRequirement,
    SourceType,
    SurvivorshipPolicy,
    VerificationLevel,
)
from ccvault.requirements import FieldCheck, field_check
from ccvault.storage import columns, corrupt_row, row_values

Row = Sequence[Any]
_M = TypeVar("_M", bound=BaseModel)


def ts(value: datetime) -> str:
    """Fixed-width, sortable ISO-8601 UTC text (microseconds always present)."""
    v = value.astimezone(UTC)
    return (
        f"{v.year:04d}-{v.month:02d}-{v.day:02d}T{v.hour:02d}:{v.minute:02d}:"
        f"{v.second:02d}.{v.microsecond:06d}+00:00"
    )


def ts_opt(value: datetime | None) -> str | None:
    return None if value is None else ts(value)


def uid(value: UUID | None) -> str | None:
    return None if value is None else str(value)


def dumps(value: Any, what: str) -> str:
    """JSON text of ``value``; ValidationError when it cannot be stored losslessly."""
    try:
        return orjson.dumps(value).decode()
    except (orjson.JSONEncodeError, TypeError) as exc:
        raise errors.ValidationError(f"{what} cannot be stored as JSON: {exc}") from None


def enum_opt(member: StrEnum | None) -> str | None:
    return None if member is None else member.value


def loads(text: str | None) -> Any:
    return None if text is None else orjson.loads(text)


def _stored_bool(value: Any) -> bool:
    """A boolean column's value: 0 or 1, nothing else (not pydantic's lax "yes" or 7)."""
    if type(value) is not int or value not in (0, 1):
        raise ValueError("a boolean column holds something else than 0 or 1")
    return bool(value)


def _zip(columns: Sequence[str], row: Row) -> dict[str, Any]:
    return dict(zip(columns, row, strict=False))


# ---------------------------------------------------------------------------------------
# trusted rows: checked column by column, built without validation
# ---------------------------------------------------------------------------------------


class _NotOurs(Exception):
    """A column is not in the form this module writes: validate the rows instead."""


Column = Sequence[Any]
Convert = Callable[[Column], list[Any]]

_new = object.__new__
# pydantic's BaseModel slots, set through their descriptors (the loop of model_construct,
# minus its per-field default handling: every field is present here)
_SET_DICT = BaseModel.__dict__["__dict__"].__set__
_SET_FIELDS_SET = BaseModel.__dict__["__pydantic_fields_set__"].__set__
_SET_EXTRA = BaseModel.__dict__["__pydantic_extra__"].__set__
_SET_PRIVATE = BaseModel.__dict__["__pydantic_private__"].__set__
# a UUID's slots (what UUID.__init__ sets once it has parsed the text)
_SET_UUID_INT = UUID.__dict__["int"].__set__
_SET_UUID_SAFE = UUID.__dict__["is_safe"].__set__

_FIELD_NAME_LINES = re.compile(r"(?:[a-z_][a-z0-9_]{0,49}\n)*")
_ASSET_NAME_LINES = re.compile(r"(?:[a-z_][a-z0-9_]{0,99}\n)*")
_CHECKSUM_LINES = re.compile(r"(?:[0-9a-f]{64}\n)*")


def _lines(pattern: re.Pattern[str], column: Column) -> None:
    """Every value of ``column`` is text, and each matches ``pattern``'s line form."""
    if not column:  # nothing to check (an empty list of names, as most rows hold)
        return
    try:
        text = "\n".join(column)
    except TypeError:
        raise _NotOurs from None
    # one line per value: a value holding a line break cannot pass for two
    if text.count("\n") != len(column) - 1 or not pattern.fullmatch(text + "\n"):
        raise _NotOurs


def _joined(column: Column, width: int) -> str:
    """The values of ``column``, all text of ``width`` characters, end to end."""
    try:
        text = "".join(column)
    except TypeError:
        raise _NotOurs from None
    if len(text) != width * len(column) or set(map(len, column)) != {width}:
        raise _NotOurs
    return text


def _at(text: str, width: int, marks: dict[int, str], count: int) -> None:
    """Each ``width``-wide value of ``text`` holds ``marks`` (position -> character)."""
    for position, mark in marks.items():
        if text[position::width] != mark * count:
            raise _NotOurs


_UUID_HYPHENS = {8: "-", 13: "-", 18: "-", 23: "-"}


class _Memo:
    """Text in our own form -> its value (a UUID, a datetime: immutable, so one object can
    serve every model that holds it), for the ids and times read again and again (a
    profile read at every turn of a conversation). Bounded: when full, ``entries`` is
    replaced by an empty dict, never emptied in place, so a reader holding the previous
    one (another thread) still finds every text it checked there. Holds only text that
    ``parse`` accepted."""

    __slots__ = ("entries", "parse", "size")

    def __init__(self, parse: Convert, size: int) -> None:
        self.entries: dict[Any, Any] = {}
        self.parse = parse
        self.size = size

    def __call__(self, column: Column) -> list[Any]:
        try:
            values = list(map(self.entries.get, column))
        except TypeError:  # a value that is not hashable: not ours (parse refuses it)
            return self._parsed(column)
        # every value parsed is true (a UUID, a datetime): a false one is a text not seen
        # yet (or NULL), which only ``parse`` may accept
        return values if all(values) else self._parsed(column)

    def _parsed(self, column: Column) -> list[Any]:
        values = self.parse(column)
        if len(values) > self.size and len(set(column)) > self.size:
            return values  # more distinct texts than the memo holds (a long history): not kept
        entries = self.entries
        if len(entries) + len(values) > self.size:
            self.entries = entries = {}
        entries.update(zip(column, values, strict=True))
        return values

    def optional(self, column: Column) -> list[Any]:
        """The same for an optional column: NULL stays None."""
        entries = self.entries
        try:
            texts = set(column)
        except TypeError:
            raise _NotOurs from None
        texts.discard(None)
        if texts <= entries.keys():  # entries.get(None) is None
            return list(map(entries.get, column))
        return _apart_from_nulls(self, column)


def _parsed_uuids(column: Column) -> list[Any]:
    """UUIDs from their text (what ``str(uuid)`` writes): checked and parsed a column at a
    time in C (slices, ``bytes.fromhex``), as a regex or ``UUID()`` per value costs more than
    reading the row."""
    count = len(column)
    if count == 1:
        # one value (a profile's ids, a constant column): parsing it and comparing with
        # the text str() writes back is cheaper than the column machinery below
        only = column[0]
        if type(only) is not str or len(only) != 36:
            raise _NotOurs
        try:
            value = UUID(only)
        except ValueError:
            raise _NotOurs from None
        if str(value) != only:
            raise _NotOurs
        return [value]
    text = _joined(column, 36)
    _at(text, 36, _UUID_HYPHENS, count)
    try:
        raw = bytes.fromhex(text.replace("-", ""))
    except ValueError:
        raise _NotOurs from None
    if len(raw) != 16 * count:  # fromhex skips blanks
        raise _NotOurs
    chunks = map(
        raw.__getitem__, map(slice, range(0, 16 * count, 16), range(16, 16 * count + 16, 16))
    )
    values = list(map(_new, repeat(UUID, count)))
    deque(map(_SET_UUID_INT, values, map(int.from_bytes, chunks)), maxlen=0)
    deque(map(_SET_UUID_SAFE, values, repeat(SafeUUID.unknown, count)), maxlen=0)
    return values


_UUID_MEMO = _Memo(_parsed_uuids, 4096)
_uuids: Convert = _UUID_MEMO

# what ts() writes: 2024-01-31T12:00:00.000000+00:00
_TS_MARKS = {
    4: "-", 7: "-", 10: "T", 13: ":", 16: ":", 19: ".",
    26: "+", 27: "0", 28: "0", 29: ":", 30: "0", 31: "0",
}  # fmt: skip


def _parsed_timestamps(column: Column) -> list[Any]:
    """UTC datetimes from the fixed-width text ``ts()`` writes (``fromisoformat`` checks
    the digits; the marks checked here make its timezone UTC itself)."""
    _at(_joined(column, 32), 32, _TS_MARKS, len(column))
    try:
        return list(map(datetime.fromisoformat, column))
    except ValueError:  # the right form, not a date (month 13...)
        raise _NotOurs from None


_TIMESTAMP_MEMO = _Memo(_parsed_timestamps, 4096)
_timestamps: Convert = _TIMESTAMP_MEMO


def _json(column: Column) -> list[Any]:
    try:
        return list(map(orjson.loads, column))
    except (orjson.JSONDecodeError, TypeError):
        raise _NotOurs from None


def _json_of(kind: type) -> Convert:
    def convert(column: Column) -> list[Any]:
        values = _json(column)
        if not set(map(type, values)) <= {kind}:
            raise _NotOurs
        return values

    return convert


def _text(low: int = 0, high: int | None = None) -> Convert:
    def convert(column: Column) -> list[Any]:
        if column and (
            not set(map(type, column)) <= {str}
            or (low and min(map(len, column)) < low)  # (no pass for low 0)
            or (high is not None and max(map(len, column)) > high)
        ):
            raise _NotOurs
        return list(column)

    return convert


_TEXT_OR_NULL = {str, type(None)}


def _optional_text(high: int | None = None) -> Convert:
    """``_optional(_text(0, high))`` in C: text or NULL, at most ``high`` characters."""

    def convert(column: Column) -> list[Any]:
        if not set(map(type, column)) <= _TEXT_OR_NULL:
            raise _NotOurs
        if high is not None and max(map(len, filter(None, column)), default=0) > high:
            raise _NotOurs
        return list(column)

    return _nullable(convert)


class _Names:
    """Text of ``pattern``'s line form (names): the names a store reads again and again are
    kept in a bounded set (``known``) once checked, so a read of names seen before checks
    none of them. Holds only names that passed; like ``_Memo``, the set is replaced when
    full, never emptied in place."""

    __slots__ = ("known", "pattern", "size")

    def __init__(self, pattern: re.Pattern[str], size: int = 4096) -> None:
        self.known: set[Any] = set()
        self.pattern = pattern
        self.size = size

    def __call__(self, column: Column) -> list[Any]:
        known = self.known
        try:
            distinct = set(column)  # names repeat: each distinct one checked once
        except TypeError:  # a value that is not hashable: not ours
            raise _NotOurs from None
        if not distinct <= known:
            # (only text passes: a name is never None, a number or bytes)
            _lines(self.pattern, list(distinct))
            if len(distinct) > self.size:  # more names than the memo holds: not kept
                return list(column)
            if len(known) + len(distinct) > self.size:
                self.known = known = set()
            known |= distinct
        return list(column)


def _matching(pattern: re.Pattern[str]) -> Convert:
    return _Names(pattern)


#: field names: one check, and one set of accepted names, for every column holding them
FIELD_NAMES = _Names(_FIELD_NAME_LINES)


def _bools(column: Column) -> list[Any]:
    if not set(map(type, column)) <= {int} or not set(column) <= {0, 1}:
        raise _NotOurs
    return list(map(bool, column))


def _ints(low: int | None = None) -> Convert:
    def convert(column: Column) -> list[Any]:
        if column and (
            not set(map(type, column)) <= {int} or (low is not None and min(column) < low)
        ):
            raise _NotOurs
        return list(column)

    return convert


def _unit_floats(column: Column) -> list[Any]:
    if column and (not set(map(type, column)) <= {float} or min(column) < 0 or max(column) > 1):
        raise _NotOurs
    return list(column)


def _members(enum: type[StrEnum]) -> Convert:
    lookup = {member.value: member for member in enum}

    def convert(column: Column) -> list[Any]:
        try:
            return list(map(lookup.__getitem__, column))
        except (KeyError, TypeError):
            raise _NotOurs from None

    return _memoizable(convert)


def _lists_of(convert: Convert) -> Convert:
    """JSON lists whose items ``convert`` checks (and converts). A column repeats a few
    texts (``[]`` mostly): each distinct text is parsed and converted once, and every row
    gets its own copy of the list (lists are mutable)."""

    def lists(column: Column) -> list[Any]:
        try:
            parsed = {text: orjson.loads(text) for text in set(column)}
        except (orjson.JSONDecodeError, TypeError):  # not JSON, not text (NULL...)
            raise _NotOurs from None
        if not set(map(type, parsed.values())) <= {list}:
            raise _NotOurs
        try:
            for text, items in parsed.items():
                if items:
                    parsed[text] = convert(items)
        except TypeError:  # an item that is a list or an object
            raise _NotOurs from None
        return list(map(list, map(parsed.__getitem__, column)))

    return lists


_uuid_lists = _lists_of(_uuids)


# the converters of optional columns (NULL stays None)
_NULLABLE: set[Convert] = set()


def _apart_from_nulls(convert: Convert, column: Column) -> list[Any]:
    """``convert`` for the non-NULL values of ``column``; NULL stays None."""
    nones = column.count(None)
    if not nones:
        return convert(column)
    if nones == len(column):
        return list(column)
    # in C: where the values are, their conversion, put back in place
    where = list(compress(range(len(column)), map(is_not, column, repeat(None))))
    values = list(column)
    deque(map(values.__setitem__, where, convert(list(map(values.__getitem__, where)))), 0)
    return values


def _optional(convert: Convert) -> Convert:
    """``convert`` for the non-NULL values; NULL stays None."""
    return _nullable(partial(_apart_from_nulls, convert))


def _nullable(convert: Convert) -> Convert:
    _NULLABLE.add(convert)
    return convert


# columns whose values are mutable (JSON objects and lists): never shared between models
_MUTABLE_COLUMNS = frozenset(
    {
        "value",
        "source_metadata",
        "verification_result",
        "analysis_field_ids",
        "allowed_values",
        "verification_methods",
        "extraction_examples",
        "source_priority",
        "depends_on_fields",
    }
)


# converters whose values are immutable and not personal (ids, times, enumeration members,
# flags, numbers): a column holding one value in every row converts it through this memo,
# so the constant columns of a read (a status, a timestamp, a tenant's id...) cost a lookup
_MEMOIZABLE: set[Convert] = set()
_CONSTANTS: dict[tuple[Convert, type, Any], Any] = {}
_CONSTANTS_MAX = 4096


def _memoizable(convert: Convert) -> Convert:
    _MEMOIZABLE.add(convert)
    return convert


def _constant(convert: Convert, value: Any) -> Any:
    """``convert((value,))[0]``, memoized for the converters of ``_MEMOIZABLE`` (keyed by
    the value's type too: 1 and 1.0 and True are one dict key)."""
    if convert not in _MEMOIZABLE:
        return convert((value,))[0]
    key = (convert, type(value), value)
    try:
        return _CONSTANTS[key]
    except KeyError:
        pass
    except TypeError:  # unhashable: not a value this module writes
        raise _NotOurs from None
    converted = convert((value,))[0]  # _NotOurs for a value not in our form: not stored
    if len(_CONSTANTS) >= _CONSTANTS_MAX:
        _CONSTANTS.clear()
    _CONSTANTS[key] = converted
    return converted


class _Plan:
    """How rows of one shape become models: ``template`` holds the value of every column
    that is the same in every row and kept converted (NULL, or a memoizable value: ids,
    times, enumeration members, flags, numbers), None elsewhere; ``texts`` are the other
    constant columns (text, never kept: converted once per read) and ``varying`` the
    columns converted column by column. Each is (position in the columns, name, converter).
    """

    __slots__ = ("template", "texts", "varying")

    def __init__(
        self,
        template: dict[str, Any],
        texts: list[tuple[int, str, Convert]],
        varying: list[tuple[int, str, Convert]],
    ) -> None:
        self.template = template
        self.texts = texts
        self.varying = varying


class _Shapes:
    """The plans of the rows selected as ``cols`` and converted by ``converters``, keyed by
    what decides a plan: which columns are constant, which it keeps, and their values with
    their types (1, 1.0 and True are one dict key). So a read like the last costs one lookup
    instead of a decision per column. Holds only what ``_CONSTANTS`` would (never text);
    bounded like ``_Memo``: replaced by an empty dict when full, never emptied in place."""

    __slots__ = ("cols", "converters", "converts", "keepable", "plans", "size")

    def __init__(self, cols: Sequence[str], converters: dict[str, Convert], size: int) -> None:
        self.cols = cols
        self.converters = converters
        self.converts = tuple(converters[name] for name in cols)
        # a constant column whose converted value a plan may keep: immutable, memoizable
        self.keepable = tuple(
            convert in _MEMOIZABLE and name not in _MUTABLE_COLUMNS
            for name, convert in zip(cols, self.converts, strict=True)
        )
        self.plans: dict[Any, _Plan] = {}
        self.size = size

    def plan(self, firsts: tuple[Any, ...], same: Sequence[bool]) -> _Plan:
        """The plan of rows whose first values are ``firsts`` and whose columns ``same``
        hold one value in every row; _NotOurs for a constant column not in our form."""
        # kept: a column NULL in every row (whatever its converter), or constant and keepable
        kept = tuple(map(and_, same, map(or_, self.keepable, map(is_, firsts, repeat(None)))))
        values = tuple(compress(firsts, kept))
        # (``same`` too: a text column constant in one read, varying in the next)
        key = (tuple(same), kept, values, tuple(map(type, values)))
        try:
            return self.plans[key]
        except KeyError:
            pass
        except TypeError:  # unhashable: not a value this module writes
            raise _NotOurs from None
        plan = self._new_plan(firsts, same, kept)  # _NotOurs: nothing stored
        plans = self.plans
        if len(plans) >= self.size:
            self.plans = plans = {}
        plans[key] = plan
        return plan

    def _new_plan(
        self, firsts: tuple[Any, ...], same: Sequence[bool], kept: tuple[bool, ...]
    ) -> _Plan:
        template: dict[str, Any] = dict.fromkeys(self.cols)
        texts: list[tuple[int, str, Convert]] = []
        varying: list[tuple[int, str, Convert]] = []
        for at, (name, convert) in enumerate(zip(self.cols, self.converts, strict=True)):
            first = firsts[at]
            if kept[at] and first is None:
                # NULL in every row: None, mutable column or not (NULL is never refused by
                # an optional column's converter, and always by the others')
                template[name] = convert((None,))[0] if convert not in _NULLABLE else None
            elif kept[at]:
                template[name] = _constant(convert, first)
            elif same[at] and name not in _MUTABLE_COLUMNS:
                texts.append((at, name, convert))
            else:
                varying.append((at, name, convert))
        return _Plan(template, texts, varying)


_SHAPES: dict[tuple[int, int], _Shapes] = {}


def _shapes(cols: Sequence[str], converters: dict[str, Convert]) -> _Shapes:
    """The plans of ``cols`` converted by ``converters`` (module constants: one
    ``_Shapes`` per pair, found by their identities)."""
    shapes = _SHAPES.get((id(cols), id(converters)))
    if shapes is None or shapes.cols is not cols or shapes.converters is not converters:
        shapes = _SHAPES[id(cols), id(converters)] = _Shapes(cols, converters, 1024)
    return shapes


def _same(columns: Sequence[tuple[Any, ...]], firsts: tuple[Any, ...]) -> list[bool]:
    """Which of ``columns`` hold their first value in every row (a column whose last value
    differs, as most varying ones do, is not counted through)."""
    count = len(columns[0])
    return [
        column[-1] == first and column.count(first) == count
        for column, first in zip(columns, firsts, strict=True)
    ]


def _trusted_columns(
    model: type[_M],
    cols: Sequence[str],
    converters: dict[str, Convert],
    all_columns: Sequence[tuple[Any, ...]],
    offset: int = 0,
) -> list[_M] | None:
    """Instances of ``model`` from rows given as their columns (``zip(*rows)``, not empty;
    selected as ``cols`` from position ``offset`` on, maybe followed by more values), None
    when a column is not in our own form."""
    columns = all_columns[offset : offset + len(cols)]
    if len(columns) != len(cols):
        raise ValueError(f"rows of {len(all_columns)} values; {offset + len(cols)} expected")
    count = len(columns[0])
    firsts = tuple(map(itemgetter(0), columns))
    shapes = _shapes(cols, converters)
    if count == 1:
        # one row (a profile's only identity, a single field, asset, definition or
        # requirement): each value through its converter (ids and times from their own
        # memos) costs less than deciding a plan
        try:
            converted = zip(shapes.converts, firsts, strict=True)
            values = [convert((first,))[0] for convert, first in converted]
        except _NotOurs:
            return None
        single = _new(model)
        _SET_DICT(single, dict(zip(cols, values, strict=True)))
        _SET_FIELDS_SET(single, set(cols))
        _SET_EXTRA(single, None)
        _SET_PRIVATE(single, None)
        return [single]
    # the values that are the same in every row are converted once, through the plan of
    # this shape (which keeps the memoizable ones converted), and copied with the others
    # from a template; only the varying columns are converted column by column
    try:
        plan = shapes.plan(firsts, _same(columns, firsts))
        template = plan.template
        if plan.texts:
            template = template.copy()
            for at, name, convert in plan.texts:
                template[name] = convert((firsts[at],))[0]
        # (a UUID column naming rows of this same result, ``superseded_by_id`` in a
        # history, finds the ids of the ``id`` column in the memo: one object each)
        data = [(name, convert(columns[at])) for at, name, convert in plan.varying]
    except _NotOurs:
        return None
    dicts = list(map(dict.copy, repeat(template, count)))
    # column by column: a plain item assignment is the cheapest way in (cheaper than an
    # update() of each row's pairs, or setitem through map)
    for name, values in data:
        for one, value in zip(dicts, values, strict=True):
            one[name] = value
    models: list[_M] = list(map(_new, repeat(model, count)))
    # every field is set, so one set serves every model of the call: pydantic only ever
    # adds a field's name to it (an assignment), which changes nothing here, and copies it
    # for model_copy
    fields_set = set(cols)
    deque(map(_SET_DICT, models, dicts), maxlen=0)
    deque(map(_SET_FIELDS_SET, models, repeat(fields_set, count)), maxlen=0)
    deque(map(_SET_EXTRA, models, repeat(None, count)), maxlen=0)
    deque(map(_SET_PRIVATE, models, repeat(None, count)), maxlen=0)
    return models


def _validated(what: str, table: str, build: Callable[[], _M]) -> _M:
    """``build()`` (a model_validate of a row of ``table``), its failure as StorageError:
    the row is not one the vault wrote. The message names columns and kinds of error,
    never values (personal data): :func:`ccvault.storage.corrupt_row`."""
    try:
        return build()
    except (orjson.JSONDecodeError, TypeError, ValueError, KeyError, AttributeError) as exc:
        # (pydantic's ValidationError is a ValueError)
        error = corrupt_row(f"{what} row", table, exc)
    raise error  # outside the except block: not chained to the original error (it quotes)


def _from_columns(
    model: type[_M],
    cols: Sequence[str],
    converters: dict[str, Convert],
    one: Callable[[Row], _M],
    columns: Sequence[tuple[Any, ...]],
    offset: int = 0,
) -> list[_M]:
    """The models of rows given as their columns: trusted when every column is in our own
    form, else each row through ``one`` (validation)."""
    if not columns:
        return []
    trusted = _trusted_columns(model, cols, converters, columns, offset)
    if trusted is not None:
        return trusted
    return [one(row[offset:]) for row in zip(*columns, strict=True)]


def _from_rows(
    what: str,
    model: type[_M],
    cols: Sequence[str],
    converters: dict[str, Convert],
    one: Callable[[Row], _M],
    rows: Sequence[Row],
    offset: int = 0,
) -> list[_M]:
    return _from_columns(model, cols, converters, one, list(zip(*rows, strict=True)), offset)


_UUID = _memoizable(_uuids)
_UUID_OPT = _memoizable(_nullable(_UUID_MEMO.optional))
_TS = _memoizable(_timestamps)
_TS_OPT = _memoizable(_nullable(_TIMESTAMP_MEMO.optional))
_TEXT_OPT = _optional_text()
_BOOLS = _memoizable(_bools)
_UNIT_FLOATS = _memoizable(_unit_floats)
_SOURCE_TYPE_OPT = _memoizable(_optional(_members(SourceType)))


# ---------------------------------------------------------------------------------------
# fields
# ---------------------------------------------------------------------------------------

FIELD_COLUMNS = columns(ProfileField)
FIELD_SELECT = ", ".join(FIELD_COLUMNS)


def field_params(item: ProfileField) -> tuple[Any, ...]:
    return row_values(
        item,
        FIELD_COLUMNS,
        id=str(item.id),
        value=dumps(item.value, f"field {item.name!r} value"),
        source=item.source.value,
        source_session_id=uid(item.source_session_id),
        source_scenario_id=uid(item.source_scenario_id),
        source_step_id=uid(item.source_step_id),
        source_item_id=uid(item.source_item_id),
        source_item_type=enum_opt(item.source_item_type),
        source_metadata=dumps(item.source_metadata, f"field {item.name!r} source_metadata"),
        status=item.status.value,
        superseded_by_id=uid(item.superseded_by_id),
        superseded_at=ts_opt(item.superseded_at),
        verified=int(item.verified),
        verified_at=ts_opt(item.verified_at),
        confidence=float(item.confidence),
        requires_confirmation=int(item.requires_confirmation),
        collected_at=ts(item.collected_at),
        updated_at=ts(item.updated_at),
        expires_at=ts_opt(item.expires_at),
        field_definition_id=uid(item.field_definition_id),
    )


_FIELD_CONVERTERS: dict[str, Convert] = {
    "id": _UUID,
    "name": FIELD_NAMES,
    "value": _json,
    "value_type": _text(),
    "source": _members(ProfileFieldSource),
    "source_session_id": _UUID_OPT,
    "source_scenario_id": _UUID_OPT,
    "source_step_id": _UUID_OPT,
    "source_item_id": _UUID_OPT,
    "source_item_type": _SOURCE_TYPE_OPT,
    "source_metadata": _json_of(dict),
    "status": _members(ItemStatus),
    "superseded_by_id": _UUID_OPT,
    "superseded_at": _TS_OPT,
    "verified": _BOOLS,
    "verification_method": _TEXT_OPT,
    "verified_at": _TS_OPT,
    "verified_by": _TEXT_OPT,
    "confidence": _UNIT_FLOATS,
    "requires_confirmation": _BOOLS,
    "collected_at": _TS,
    "updated_at": _TS,
    "expires_at": _TS_OPT,
    "field_definition_id": _UUID_OPT,
}


def fields_from_rows(rows: Sequence[Row], offset: int = 0) -> list[ProfileField]:
    """The field versions of ``rows`` (selected with ``FIELD_SELECT`` from position
    ``offset`` on); StorageError for a row that is not a valid field."""
    return _from_rows(
        "field", ProfileField, FIELD_COLUMNS, _FIELD_CONVERTERS, field_from_row, rows, offset
    )


def fields_from_columns(columns: Sequence[tuple[Any, ...]], offset: int = 0) -> list[ProfileField]:
    """``fields_from_rows`` of rows given as their columns (``list(zip(*rows))``), so that
    the caller can let the rows go before the models are built."""
    return _from_columns(
        ProfileField, FIELD_COLUMNS, _FIELD_CONVERTERS, field_from_row, columns, offset
    )


def field_from_row(row: Row) -> ProfileField:
    """One row through validation (the path of rows not in our own form)."""
    return _validated("field", "fields", lambda: _field_validated(row))


def _field_validated(row: Row) -> ProfileField:
    data = _zip(FIELD_COLUMNS, row)
    data["value"] = orjson.loads(data["value"])
    data["source_metadata"] = orjson.loads(data["source_metadata"])
    data["verified"] = _stored_bool(data["verified"])
    data["requires_confirmation"] = _stored_bool(data["requires_confirmation"])
    return ProfileField.model_validate(data)


# ---------------------------------------------------------------------------------------
# assets
# ---------------------------------------------------------------------------------------

ASSET_COLUMNS = columns(ProfileAsset)
ASSET_SELECT = ", ".join(ASSET_COLUMNS)

_MAX_INT64 = 2**63 - 1


def asset_params(item: ProfileAsset) -> tuple[Any, ...]:
    if item.size_bytes > _MAX_INT64:
        raise errors.ValidationError(f"asset {item.name!r} size_bytes is too large")
    return row_values(
        item,
        ASSET_COLUMNS,
        id=str(item.id),
        uploaded_at=ts(item.uploaded_at),
        uploaded_in_session_id=uid(item.uploaded_in_session_id),
        uploaded_in_scenario_id=uid(item.uploaded_in_scenario_id),
        source_item_id=uid(item.source_item_id),
        source_item_type=enum_opt(item.source_item_type),
        status=item.status.value,
        superseded_by_id=uid(item.superseded_by_id),
        superseded_at=ts_opt(item.superseded_at),
        verified=int(item.verified),
        verification_result=None
        if item.verification_result is None
        else dumps(item.verification_result, f"asset {item.name!r} verification_result"),
        expires_at=ts_opt(item.expires_at),
        analysis_field_ids=dumps([str(i) for i in item.analysis_field_ids], "analysis_field_ids"),
    )


_ASSET_CONVERTERS: dict[str, Convert] = {
    "id": _UUID,
    "name": _matching(_ASSET_NAME_LINES),
    "asset_type": _text(1, 255),
    "storage_provider": _text(1, 255),
    "storage_path": _text(1, 2048),
    "mime_type": _TEXT_OPT,
    "size_bytes": _ints(0),
    "checksum": _optional(_matching(_CHECKSUM_LINES)),
    "uploaded_at": _TS,
    "uploaded_in_session_id": _UUID_OPT,
    "uploaded_in_scenario_id": _UUID_OPT,
    "source_item_id": _UUID_OPT,
    "source_item_type": _SOURCE_TYPE_OPT,
    "derived_from_tool": _TEXT_OPT,
    "status": _members(ItemStatus),
    "superseded_by_id": _UUID_OPT,
    "superseded_at": _TS_OPT,
    "verified": _BOOLS,
    "verification_result": _optional(_json_of(dict)),
    "retention_policy": _TEXT_OPT,
    "expires_at": _TS_OPT,
    "analysis_field_ids": _uuid_lists,
}


def assets_from_rows(rows: Sequence[Row], offset: int = 0) -> list[ProfileAsset]:
    """The assets of ``rows`` (selected with ``ASSET_SELECT`` from position ``offset`` on);
    StorageError for a row that is not a valid asset."""
    return _from_rows(
        "asset", ProfileAsset, ASSET_COLUMNS, _ASSET_CONVERTERS, asset_from_row, rows, offset
    )


def asset_from_row(row: Row) -> ProfileAsset:
    """One row through validation (the path of rows not in our own form)."""
    return _validated("asset", "assets", lambda: _asset_validated(row))


def _asset_validated(row: Row) -> ProfileAsset:
    data = _zip(ASSET_COLUMNS, row)
    data["verified"] = _stored_bool(data["verified"])
    data["verification_result"] = loads(data["verification_result"])
    data["analysis_field_ids"] = orjson.loads(data["analysis_field_ids"])
    return ProfileAsset.model_validate(data)


# ---------------------------------------------------------------------------------------
# identities and consents
# ---------------------------------------------------------------------------------------

IDENTITY_SELECT = "channel, channel_user_id, verified, verified_at, is_primary, created_at"


def identity_params(item: ChannelIdentity) -> tuple[Any, ...]:
    return (
        item.channel.value,
        item.channel_user_id,
        int(item.verified),
        ts_opt(item.verified_at),
        int(item.primary),
        ts(item.created_at),
    )


# the model's names of IDENTITY_SELECT's columns, in the same order
IDENTITY_FIELDS = tuple(ChannelIdentity.model_fields)
_CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f]")


_USER_ID_TEXT = _text(1, 255)


def _user_ids(column: Column) -> list[Any]:
    """channel_user_id: 1-255 characters, no control character, no edge blanks."""
    values = _USER_ID_TEXT(column)
    if _CONTROL_CHARACTERS.search("".join(values)) or list(map(str.strip, values)) != values:
        raise _NotOurs
    return values


_IDENTITY_CONVERTERS: dict[str, Convert] = {
    "channel": _members(Channel),
    "channel_user_id": _user_ids,
    "verified": _BOOLS,
    "verified_at": _TS_OPT,
    "primary": _BOOLS,
    "created_at": _TS,
}


def identities_from_rows(rows: Sequence[Row], offset: int = 0) -> list[ChannelIdentity]:
    """The channel identities of ``rows`` (``IDENTITY_SELECT`` from position ``offset``
    on); StorageError for a row that is not a valid identity."""
    return _from_rows(
        "channel identity",
        ChannelIdentity,
        IDENTITY_FIELDS,
        _IDENTITY_CONVERTERS,
        identity_from_row,
        rows,
        offset,
    )


def identity_from_row(row: Row) -> ChannelIdentity:
    """One row through validation (the path of rows not in our own form)."""
    return _validated("channel identity", "channel_identities", lambda: _identity_validated(row))


def _identity_validated(row: Row) -> ChannelIdentity:
    return ChannelIdentity.model_validate(
        {
            "channel": row[0],
            "channel_user_id": row[1],
            "verified": _stored_bool(row[2]),
            "verified_at": row[3],
            "primary": _stored_bool(row[4]),
            "created_at": row[5],
        }
    )


CONSENT_COLUMNS = columns(Consent)
CONSENT_SELECT = ", ".join(CONSENT_COLUMNS)


def consent_params(item: Consent) -> tuple[Any, ...]:
    return row_values(
        item,
        CONSENT_COLUMNS,
        granted=int(item.granted),
        granted_at=ts_opt(item.granted_at),
        revoked_at=ts_opt(item.revoked_at),
        source_session_id=uid(item.source_session_id),
        ip_address=None if item.ip_address is None else str(item.ip_address),
    )


def consent_from_row(row: Row) -> Consent:
    return _validated("consent", "consents", lambda: _consent_validated(row))


def _consent_validated(row: Row) -> Consent:
    data = _zip(CONSENT_COLUMNS, row)
    data["granted"] = _stored_bool(data["granted"])
    return Consent.model_validate(data)


# ---------------------------------------------------------------------------------------
# field definitions and scenario requirements
# ---------------------------------------------------------------------------------------

DEFINITION_COLUMNS = columns(ProfileFieldDefinition)
DEFINITION_SELECT = ", ".join(DEFINITION_COLUMNS)
_DEFINITION_BOOLS = ("required_verification", "is_pii", "encryption_required", "enabled")


def definition_params(item: ProfileFieldDefinition) -> tuple[Any, ...]:
    return row_values(
        item,
        DEFINITION_COLUMNS,
        id=str(item.id),
        tenant_id=str(item.tenant_id),
        agent_id=str(item.agent_id),
        value_type=item.value_type.value,
        allowed_values=None
        if item.allowed_values is None
        else dumps(item.allowed_values, "allowed_values"),
        required_verification=int(item.required_verification),
        verification_methods=dumps(item.verification_methods, "verification_methods"),
        extraction_examples=dumps(item.extraction_examples, "extraction_examples"),
        is_pii=int(item.is_pii),
        encryption_required=int(item.encryption_required),
        created_at=ts(item.created_at),
        updated_at=ts(item.updated_at),
        enabled=int(item.enabled),
        survivorship=item.survivorship.value,
        source_priority=dumps([s.value for s in item.source_priority], "source_priority"),
    )


# built once: a lookup per row cost as much as the rest of the row (issue 13)
_SOURCES = _members(ProfileFieldSource)

_DEFINITION_CONVERTERS: dict[str, Convert] = {
    "id": _UUID,
    "tenant_id": _UUID,
    "agent_id": _UUID,
    "name": FIELD_NAMES,
    "display_name": _text(),
    "description": _TEXT_OPT,
    "value_type": _members(FieldValueType),
    "validation_regex": _TEXT_OPT,
    "validation_tool_id": _TEXT_OPT,
    "allowed_values": _optional(_json_of(list)),
    "required_verification": _BOOLS,
    "verification_methods": _lists_of(_text()),
    "collection_prompt": _TEXT_OPT,
    "extraction_examples": _lists_of(_text()),
    "extraction_prompt_hint": _TEXT_OPT,
    "is_pii": _BOOLS,
    "encryption_required": _BOOLS,
    "retention_days": _optional(_ints(0)),
    "freshness_seconds": _optional(_ints(0)),
    "created_at": _TS,
    "updated_at": _TS,
    "enabled": _BOOLS,
    "survivorship": _members(SurvivorshipPolicy),
    "source_priority": _lists_of(_SOURCES),
}


def definitions_from_rows(rows: Sequence[Row], offset: int = 0) -> list[ProfileFieldDefinition]:
    """The field definitions of ``rows`` (``DEFINITION_SELECT`` from position ``offset``
    on); StorageError for a row that is not a valid definition."""
    return _from_rows(
        "field definition",
        ProfileFieldDefinition,
        DEFINITION_COLUMNS,
        _DEFINITION_CONVERTERS,
        definition_from_row,
        rows,
        offset,
    )


def definition_from_row(row: Row) -> ProfileFieldDefinition:
    """One row through validation (the path of rows not in our own form)."""
    return _validated("field definition", "field_definitions", lambda: _definition_validated(row))


def _definition_validated(row: Row) -> ProfileFieldDefinition:
    data = _zip(DEFINITION_COLUMNS, row)
    for key in _DEFINITION_BOOLS:
        data[key] = _stored_bool(data[key])
    data["allowed_values"] = loads(data["allowed_values"])
    data["verification_methods"] = orjson.loads(data["verification_methods"])
    data["extraction_examples"] = orjson.loads(data["extraction_examples"])
    data["source_priority"] = orjson.loads(data["source_priority"])
    return ProfileFieldDefinition.model_validate(data)


REQUIREMENT_COLUMNS = columns(ScenarioFieldRequirement)
REQUIREMENT_SELECT = ", ".join(REQUIREMENT_COLUMNS)


def requirement_params(item: ScenarioFieldRequirement) -> tuple[Any, ...]:
    if abs(item.collection_order) > _MAX_INT64:
        raise errors.ValidationError("collection_order is out of the 64-bit range")
    return row_values(
        item,
        REQUIREMENT_COLUMNS,
        id=str(item.id),
        tenant_id=str(item.tenant_id),
        agent_id=str(item.agent_id),
        scenario_id=str(item.scenario_id),
        step_id=uid(item.step_id),
        rule_id=uid(item.rule_id),
        required_level=item.required_level.value,
        fallback_action=item.fallback_action.value,
        depends_on_fields=dumps(item.depends_on_fields, "depends_on_fields"),
        created_at=ts(item.created_at),
        updated_at=ts(item.updated_at),
    )


_field_names = _lists_of(FIELD_NAMES)


_REQUIREMENT_CONVERTERS: dict[str, Convert] = {
    "id": _UUID,
    "tenant_id": _UUID,
    "agent_id": _UUID,
    "scenario_id": _UUID,
    "step_id": _UUID_OPT,
    "rule_id": _UUID_OPT,
    "field_name": FIELD_NAMES,
    "required_level": _members(RequiredLevel),
    "fallback_action": _members(FallbackAction),
    "when_condition": _optional_text(2000),
    "depends_on_fields": _field_names,
    "collection_order": _ints(),
    "created_at": _TS,
    "updated_at": _TS,
}


def requirements_from_rows(rows: Sequence[Row], offset: int = 0) -> list[ScenarioFieldRequirement]:
    """The scenario requirements of ``rows`` (``REQUIREMENT_SELECT`` from position
    ``offset`` on); StorageError for a row that is not a valid requirement."""
    return _from_rows(
        "scenario requirement",
        ScenarioFieldRequirement,
        REQUIREMENT_COLUMNS,
        _REQUIREMENT_CONVERTERS,
        requirement_from_row,
        rows,
        offset,
    )


_CHECKS_AT = len(REQUIREMENT_COLUMNS)


def requirement_checks(
    requirements: Sequence[ScenarioFieldRequirement], rows: Sequence[Row]
) -> dict[UUID, dict[str, FieldCheck]]:
    """``{agent_id: {field_name: FieldCheck}}`` of ``requirements`` (built from ``rows``,
    in their order) from the two columns following each row's requirement:
    ``required_verification`` and ``freshness_seconds`` of the requirement's own field's
    enabled definition, both NULL without one. StorageError for values not in our form.
    Column by column, in C: the distinct (flag, freshness) pairs are checked once."""
    pairs = list(map(itemgetter(_CHECKS_AT, _CHECKS_AT + 1), rows))
    checks_of_pair: dict[tuple[Any, Any], FieldCheck] = {}
    for pair in set(pairs):
        check = field_check_of(*pair)
        if check is not None:
            checks_of_pair[pair] = check
    present = list(map(checks_of_pair.__contains__, pairs))
    found = list(map(checks_of_pair.__getitem__, compress(pairs, present)))
    names = list(map(_FIELD_NAME_OF, compress(requirements, present)))
    agents = list(map(_AGENT_OF, compress(requirements, present)))
    if not agents:
        return {}
    if agents.count(agents[0]) == len(agents):  # one agent (its UUID shared): no loop
        return {agents[0]: dict(zip(names, found, strict=True))}
    checks: dict[UUID, dict[str, FieldCheck]] = {}
    for agent, name, check in zip(agents, names, found, strict=True):
        checks.setdefault(agent, {})[name] = check
    return checks


def field_check_of(verification: Any, freshness: Any) -> FieldCheck | None:
    """The FieldCheck of a definition's stored ``required_verification`` and
    ``freshness_seconds`` (None: both NULL, no enabled definition); StorageError for
    values not in our form."""
    if verification is None:  # NOT NULL in the table: no enabled definition
        return None
    if (
        type(verification) is not int
        or verification not in (0, 1)
        or (freshness is not None and (type(freshness) is not int or freshness < 0))
    ):
        raise errors.StorageError(
            "a stored field definition row is corrupt (required_verification or freshness_seconds)"
        )
    return field_check(verification == 1, freshness)


_FIELD_NAME_OF = attrgetter("field_name")
_AGENT_OF = attrgetter("agent_id")


def requirement_from_row(row: Row) -> ScenarioFieldRequirement:
    """One row through validation (the path of rows not in our own form)."""
    return _validated(
        "scenario requirement", "scenario_requirements", lambda: _requirement_validated(row)
    )


def _requirement_validated(row: Row) -> ScenarioFieldRequirement:
    data = _zip(REQUIREMENT_COLUMNS, row)
    data["depends_on_fields"] = orjson.loads(data["depends_on_fields"])
    return ScenarioFieldRequirement.model_validate(data)


# ---------------------------------------------------------------------------------------
# the profile itself
# ---------------------------------------------------------------------------------------

PROFILE_COLUMNS = (
    "id",
    "customer_id",
    "verification_level",
    "created_at",
    "updated_at",
    "last_interaction_at",
)
_PROFILE_CONVERTERS: dict[str, Convert] = {
    "id": _UUID,
    "customer_id": _UUID,
    "verification_level": _members(VerificationLevel),
    "created_at": _TS,
    "updated_at": _TS,
    "last_interaction_at": _TS_OPT,
}


_PROFILE_FIELDS = tuple(CustomerProfile.model_fields)


def profile_from_parts(tenant_id: UUID, head: Row, **parts: Any) -> CustomerProfile:
    """The profile of the row ``head`` (``PROFILE_COLUMNS``) holding ``parts`` (its
    identities, consents, fields, field_history, assets, asset_history: models built
    here, keyed by their names)."""
    try:
        # each value converted on its own (ids and times memoized: a profile read again)
        values = dict(
            zip(PROFILE_COLUMNS, map(_constant, _PROFILE_CONVERTERS.values(), head), strict=False)
        )
    except _NotOurs:
        values = None
    if values is None:  # validated outside the except block: its error is not chained to it
        return _validated(
            "profile",
            "profiles",
            lambda: CustomerProfile.model_validate(
                {"tenant_id": tenant_id, **_zip(PROFILE_COLUMNS, head), **parts}
            ),
        )
    values["tenant_id"] = tenant_id
    values.update(parts)
    profile = _new(CustomerProfile)
    # declaration order, as validation would leave it
    _SET_DICT(profile, {name: values[name] for name in _PROFILE_FIELDS})
    _SET_FIELDS_SET(profile, set(_PROFILE_FIELDS))
    _SET_EXTRA(profile, None)
    _SET_PRIVATE(profile, None)
    return profile
