"""``ccvault.storage.corrupt_row``: the StorageError a provider raises for a stored row it
cannot read back names places and kinds of error, never stored text (personal data)."""

from __future__ import annotations

from uuid import uuid4

import pydantic
import pytest

from ccvault import errors
from ccvault.models import CustomerProfile, ProfileField
from ccvault.storage import corrupt_row

SECRET = "ana.lopez@example.com"


def _failure(data: dict[str, object], model: type[pydantic.BaseModel]) -> pydantic.ValidationError:
    with pytest.raises(pydantic.ValidationError) as raised:
        model.model_validate(data)
    return raised.value


def _profile(**parts: object) -> dict[str, object]:
    return {"tenant_id": str(uuid4()), **parts}


def test_values_and_keys_of_stored_text_are_never_named() -> None:
    field = {"name": "email", "value": "x", "status": SECRET, "source_metadata": {SECRET: 1}}
    cases = [
        # a value: named by its attribute and error type
        (
            _profile(consents=[{"consent_type": "m", "granted": True, "ip_address": SECRET}]),
            "profiles.consents.0.ip_address (ip_any_address)",
        ),
        # a dict key of stored data (a field name that is not one): shown as ?, the
        # attributes below it still named
        (_profile(fields={SECRET: field}), "profiles.fields.?.status (enum)"),
        # a key the vault never writes: the row itself
        (_profile(**{SECRET: 1}), "profiles.? (extra_forbidden)"),
    ]
    for data, named in cases:
        error = corrupt_row("profile row", "profiles", _failure(data, CustomerProfile))
        assert isinstance(error, errors.StorageError)
        assert named in str(error), str(error)
        assert SECRET not in str(error) and "ana.lopez" not in str(error), str(error)


def test_an_error_not_from_validation_is_named_by_its_class_only() -> None:
    error = corrupt_row("field row", "fields.value", ValueError(f"{SECRET} is not JSON"))
    assert isinstance(error, errors.CorruptRowError) and isinstance(error, errors.StorageError)
    assert str(error).endswith("fields.value (ValueError)")
    # a problem the provider found itself, by its kind
    assert str(corrupt_row("field row", "fields.status", "enum")).endswith("fields.status (enum)")


def test_a_kind_the_provider_names_is_shown_only_when_it_is_an_identifier() -> None:
    assert "consents.consent_type (enum)" in str(
        corrupt_row("row", "consents.consent_type", "enum")
    )
    # str(exc) by mistake: the caught error's text may quote the value
    mistaken = corrupt_row("row", "consents", f"invalid input {SECRET!r}")
    assert SECRET not in str(mistaken) and "consents (?)" in str(mistaken)


def test_the_provider_keys_it_is_given_are_named_and_places_are_identifiers() -> None:
    failure = _failure({"name": "email", "value": "x", "status": "gone"}, ProfileField)
    assert "fields.status (enum)" in str(corrupt_row("field document", "fields", failure))
    # a place built from stored text is not shown
    shown = str(corrupt_row("field document", f"fields[{SECRET}]", failure))
    assert SECRET not in shown and "?.status (enum)" in shown
    with pytest.raises(TypeError):
        corrupt_row("field document", "fields", failure, names="status")


def test_many_problems_are_counted_not_listed() -> None:
    consents = [{"consent_type": "m", "granted": True, "ip_address": SECRET}] * 8
    failure = _failure(_profile(consents=consents), CustomerProfile)
    shown = str(corrupt_row("profile row", "profiles", failure))
    assert shown.count("ip_any_address") == 5 and shown.endswith("(+3 more)"), shown
