"""Compact stored records of field and asset versions, and the models built from them.

A stored version is a tuple of its model's field values, in the model's field order: no
pydantic object, no per-version dict, no fields-set. Its strings, UUIDs and datetimes are
immutable and shared by the models built on read; its JSON containers (a field's value and
metadata, an asset's verification result and analysis ids) are private copies, copied
again on every read, so a caller can never change stored state through a model it passed in
or got back. The name is interned: every version of ``email`` holds the same string.

Every record is packed from a model pydantic validated (core checks every argument before
a hook runs), so the models built on read skip validation, as the PostgreSQL provider's
trusted rows do; ``test_records.py`` checks that they equal validated models.
"""

from __future__ import annotations

import sys
from operator import itemgetter
from typing import Any, Generic, TypeVar

from pydantic import BaseModel

from ccvault.models import ItemStatus, ProfileAsset, ProfileField

__all__ = ["ASSET", "FIELD", "Codec", "Row", "copy_json"]

M = TypeVar("M", bound=BaseModel)

_new = object.__new__
_SET_DICT: Any = BaseModel.__dict__["__dict__"].__set__
_SET_FIELDS_SET: Any = BaseModel.__dict__["__pydantic_fields_set__"].__set__
_SET_EXTRA: Any = BaseModel.__dict__["__pydantic_extra__"].__set__
_SET_PRIVATE: Any = BaseModel.__dict__["__pydantic_private__"].__set__


def copy_json(value: Any) -> Any:
    """A private copy of a JSON value: containers copied all the way down, scalars shared
    (they are immutable). Depth is bounded by ``check_json_value`` on the way in."""
    if isinstance(value, dict):
        return {key: copy_json(item) for key, item in value.items()}
    if isinstance(value, list):
        return [copy_json(item) for item in value]
    return value


class Codec(Generic[M]):
    """Packs a validated model into a tuple and builds a fresh model from one."""

    def __init__(self, cls: type[M], *, when: str, containers: tuple[str, ...]) -> None:
        self.cls = cls
        self.names: tuple[str, ...] = tuple(cls.model_fields)
        self._get = itemgetter(*self.names)
        self.position: dict[str, int] = {name: at for at, name in enumerate(self.names)}
        self._containers = tuple((self.names.index(name), name) for name in containers)
        self.name_at = self.names.index("name")
        self.status_at = self.names.index("status")
        self.when_at = self.names.index(when)
        self.source_at = self.names.index("source_item_id")
        self.expires_at = self.names.index("expires_at")

    def pack(self, item: M) -> tuple[Any, ...]:
        values = list(self._get(item.__dict__))
        for at, _ in self._containers:
            values[at] = copy_json(values[at])
        values[self.name_at] = sys.intern(values[self.name_at])
        return tuple(values)

    def unpack(self, values: tuple[Any, ...]) -> M:
        data = dict(zip(self.names, values, strict=True))
        for at, name in self._containers:
            data[name] = copy_json(values[at])
        item = _new(self.cls)
        _SET_DICT(item, data)
        _SET_FIELDS_SET(item, set(self.names))
        _SET_EXTRA(item, None)
        _SET_PRIVATE(item, None)
        return item

    def replace(self, values: tuple[Any, ...], changes: dict[str, Any]) -> tuple[Any, ...]:
        """``values`` with some fields changed (values the provider itself produced: a
        status, a supersede link, a timestamp, or a payload it copies first)."""
        changed = list(values)
        for name, value in changes.items():
            changed[self.position[name]] = value
        return tuple(changed)


FIELD: Codec[ProfileField] = Codec(
    ProfileField, when="collected_at", containers=("value", "source_metadata")
)
ASSET: Codec[ProfileAsset] = Codec(
    ProfileAsset, when="uploaded_at", containers=("verification_result", "analysis_field_ids")
)


class Row(Generic[M]):
    """One stored version: its owner, its write number (newest write wins ties of equal
    timestamps) and its packed values, in the table that indexes it (None until added)."""

    __slots__ = ("_profile_id", "codec", "seq", "table", "values")

    def __init__(self, codec: Codec[M], profile_id: Any, seq: int, values: tuple[Any, ...]):
        self.codec = codec
        self._profile_id = profile_id
        self.seq = seq
        self.values = values
        self.table: Any = None

    @property
    def profile_id(self) -> Any:
        return self._profile_id

    @profile_id.setter
    def profile_id(self, profile_id: Any) -> None:
        # through the table, so its per-profile index follows
        if self.table is None:
            self._profile_id = profile_id
        else:
            self.table.move(self, profile_id)

    @property
    def item(self) -> M:
        """A fresh model of this version (the caller may change it freely)."""
        return self.codec.unpack(self.values)

    @item.setter
    def item(self, item: M) -> None:
        # through the table, so its indexes follow a new name or source
        if self.table is None:
            self.values = self.codec.pack(item)
        else:
            self.table.rewrite(self, self.codec.pack(item))

    @property
    def name(self) -> str:
        name: str = self.values[self.codec.name_at]
        return name

    @property
    def status(self) -> ItemStatus:
        status: ItemStatus = self.values[self.codec.status_at]
        return status

    @property
    def source_id(self) -> Any:
        return self.values[self.codec.source_at]

    def newest_key(self) -> tuple[Any, int]:
        """Sort key: collected_at / uploaded_at, then write order."""
        return (self.values[self.codec.when_at], self.seq)

    def __repr__(self) -> str:  # no personal data: ids and status only
        return f"Row(id={self.values[0]}, status={self.status.value}, seq={self.seq})"
