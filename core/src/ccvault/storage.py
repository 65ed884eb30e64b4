"""Helpers for provider authors: table columns and row values derived from the models.

A table that stores one model as one column per attribute (same names) takes its column
list from the model, so adding an attribute to the model cannot leave a provider's
statements and its parameter builders disagreeing about the columns or their order.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from pydantic import BaseModel

__all__ = ["columns", "row_values"]


def columns(
    model: type[BaseModel], *, first: Sequence[str] = (), exclude: Iterable[str] = ()
) -> tuple[str, ...]:
    """``model``'s attribute names in declaration order, ``first`` moved to the front (in the
    given order) and ``exclude`` left out: the column list of a table storing ``model``."""
    names = tuple(model.model_fields)
    unknown = (set(first) | set(exclude)) - set(names)
    if unknown:
        raise ValueError(f"{model.__name__} has no attribute(s) {sorted(unknown)}")
    skip = set(first) | set(exclude)
    return (*first, *(name for name in names if name not in skip))


def row_values(item: BaseModel, cols: Sequence[str], **encoded: Any) -> tuple[Any, ...]:
    """The bind parameters of ``item`` for ``cols``, in that order: ``encoded[col]`` where
    given (the column's database form), else the attribute's value unchanged."""
    stray = encoded.keys() - set(cols)
    if stray:
        raise ValueError(f"encoded values for no column: {sorted(stray)}")
    data = item.__dict__
    return tuple(encoded[col] if col in encoded else data[col] for col in cols)
