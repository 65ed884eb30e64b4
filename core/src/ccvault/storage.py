"""Helpers for provider authors: table columns and row values derived from the models,
and the error for a stored row that cannot be read back.

A table that stores one model as one column per attribute (same names) takes its column
list from the model, so adding an attribute to the model cannot leave a provider's
statements and its parameter builders disagreeing about the columns or their order.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Sequence
from typing import Any

import pydantic
from pydantic import BaseModel

from ccvault import errors, models

__all__ = ["MODEL_ATTRIBUTES", "columns", "corrupt_row", "row_values"]

#: every attribute name of a vault model: the names a message about a stored row may
#: quote from a validation error's location (below them may come a key of stored JSON, or
#: one the vault never writes, which may itself be personal data)
MODEL_ATTRIBUTES = frozenset(
    name
    for model in vars(models).values()
    if isinstance(model, type) and issubclass(model, BaseModel)
    for name in model.model_fields
)


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


#: the form of a place a message may name: identifiers joined by dots (a table, a column,
#: a provider's own key), or ``?`` for one it does not know
_PLACE = re.compile(r"[A-Za-z_?][A-Za-z0-9_?]*(?:\.[A-Za-z_?][A-Za-z0-9_?]*)*")
#: the form of a kind of problem a provider names itself (``enum``), or of an error class:
#: any other text (say a caught error's message, by mistake) is shown as ``?``
_KIND = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
#: how many problems one message lists (then how many more there are)
_MAX_PROBLEMS = 5


def corrupt_row(
    what: str, where: str, exc: BaseException | str, *, names: Collection[str] = ()
) -> errors.CorruptRowError:
    """The :class:`~ccvault.errors.CorruptRowError` (a StorageError) for a stored ``what``
    (a row, a document) read back from ``where`` (``table`` or ``table.column``) that the
    vault did not write, or that was corrupted,
    whose reading raised ``exc`` (or, a string, the kind of problem a provider found itself:
    ``"enum"`` for a value no member has, as pydantic names it; a string that is not one
    identifier, such as ``str(exc)`` by mistake, is shown as ``?``).

    It names places and kinds of error, never a value or a message: pydantic's messages, a
    custom validator's and a decoder's may quote the stored input (personal data). For a
    pydantic ValidationError, each problem (at most five, then how many more) is ``where``
    followed by the error's location, each part that is neither a position, a vault
    model's attribute nor one of ``names`` (the provider's own keys: a collection of names,
    not a string) shown as ``?``, and its error type; for any other error, ``where`` and the
    error's class. ``what`` and ``where`` are the provider's constants, never stored text:
    a ``where`` not of identifiers joined by dots is shown as ``?``.

    Raise it after the ``except`` block that caught ``exc``: ``raise ... from None`` only
    hides ``exc`` from a printed traceback, it stays the error's ``__context__``.
    """
    if isinstance(names, str):
        raise TypeError("names must be a collection of names, not a string")
    known = frozenset(names)
    place = where if _PLACE.fullmatch(where) else "?"
    if isinstance(exc, pydantic.ValidationError):
        found = list(
            dict.fromkeys(
                f"{_location(place, problem['loc'], known)} ({problem['type']})"
                for problem in exc.errors(include_input=False, include_url=False)
            )
        )
        problems = "; ".join(found[:_MAX_PROBLEMS])
        if len(found) > _MAX_PROBLEMS:
            problems += f" (+{len(found) - _MAX_PROBLEMS} more)"
    else:
        kind = type(exc).__name__ if not isinstance(exc, str) else exc
        problems = f"{place} ({kind if _KIND.fullmatch(kind) else '?'})"
    return errors.CorruptRowError(
        f"a stored {what} is corrupt (written outside the vault?): {problems}"
    )


def _location(where: str, loc: Sequence[int | str], names: frozenset[str]) -> str:
    """``where``, then each part of ``loc`` that is a position, a model attribute or one of
    ``names``; any other part (a key of stored data, or one the vault never writes) is
    shown as ``?``, so the attributes below it are still named."""
    parts = [where]
    for part in loc:
        known = isinstance(part, int) or part in MODEL_ATTRIBUTES or part in names
        parts.append(str(part) if known else "?")
    return ".".join(parts)
