"""``assert_not_quoted``: the check a provider's own tests use on a refused row's error."""

from __future__ import annotations

import pytest

from ccvault import errors
from ccvault_contract_tests import assert_not_quoted

SECRET = "ana.lopez@example.com"


def _raised(build: type[BaseException], *, hide: bool) -> BaseException:
    """A StorageError raised while handling an error that quotes SECRET: ``from None``
    (hidden from a printed traceback) or plainly (printed)."""
    try:
        try:
            raise ValueError(f"bad value {SECRET!r}")
        except ValueError:
            if hide:
                raise build("a stored row is corrupt") from None
            raise build("a stored row is corrupt")  # noqa: B904 - the case under test
    except build as exc:
        return exc


def test_a_quoting_error_anywhere_along_the_chain_fails_it() -> None:
    with pytest.raises(AssertionError):
        assert_not_quoted(_raised(errors.StorageError, hide=False), SECRET)
    # a hidden context still holds it: found unless only the printed chain is asked for
    hidden = _raised(errors.StorageError, hide=True)
    with pytest.raises(AssertionError):
        assert_not_quoted(hidden, SECRET)
    assert_not_quoted(hidden, SECRET, printed_only=True)
    with pytest.raises(AssertionError):
        assert_not_quoted(errors.StorageError("x", {"ip": SECRET}), SECRET)


def test_a_context_beside_a_cause_is_checked_too() -> None:
    # ``raise X from clean`` while handling an error that quotes it: the cause is clean,
    # the context (hidden from a printed traceback) is not
    try:
        try:
            raise ValueError(f"bad value {SECRET!r}")
        except ValueError:
            raise errors.StorageError("a stored row is corrupt") from KeyError("column")
    except errors.StorageError as exc:
        raised = exc
    with pytest.raises(AssertionError):
        assert_not_quoted(raised, SECRET)
    assert_not_quoted(raised, SECRET, printed_only=True)


def test_group_members_and_notes_are_checked() -> None:
    group = ExceptionGroup("two writes failed", [errors.StorageError(f"bad {SECRET}")])
    with pytest.raises(AssertionError):
        assert_not_quoted(group, SECRET)
    noted = errors.StorageError("a stored row is corrupt")
    noted.add_note(f"while reading {SECRET}")
    with pytest.raises(AssertionError):
        assert_not_quoted(noted, SECRET)


def test_an_error_that_quotes_nothing_passes() -> None:
    assert_not_quoted(errors.StorageError("a stored consent row is corrupt"), SECRET)
