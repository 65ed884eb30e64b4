"""The compact records of ``ccvault_inmemory.records``: a model built from a packed version
equals the validated model it was packed from (every field, with its type), and neither
the caller's model nor a model handed out shares a mutable part with the stored record."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from uuid import UUID

import pytest
from pydantic import ValidationError

from ccvault.models import ItemStatus, ProfileAsset, ProfileField, SourceType
from ccvault_inmemory.records import ASSET, FIELD

BASE = datetime(2026, 1, 1, 12, 30, 15, 123456, tzinfo=UTC)

VALUES = [
    "plain",
    "nul \x00 and ünïcödé ✓",
    2**80,
    -0.0,
    1e-300,
    None,
    True,
    [1, [2, [3, {"deep": ["x"]}]]],
    {"nested": {"list": [1.5, None, {"k": "v"}]}, "empty": {}},
]


def _field(value: object) -> ProfileField:
    return ProfileField(
        id=UUID(int=7),
        name="email",
        value=value,
        source_metadata={"quote": "my mail", "spans": [[0, 4]]},
        source_item_id=UUID(int=8),
        source_item_type=SourceType.PROFILE_FIELD,
        collected_at=BASE.astimezone(timezone(timedelta(hours=5, minutes=30))),
        updated_at=BASE,
        expires_at=BASE + timedelta(days=1),
        verified=True,
        confidence=0.25,
    )


@pytest.mark.parametrize("value", VALUES, ids=[f"value{n}" for n in range(len(VALUES))])
def test_a_built_field_equals_the_validated_one(value: object) -> None:
    item = _field(value)
    built = FIELD.unpack(FIELD.pack(item))
    validated = ProfileField.model_validate(item.model_dump())
    assert built == item == validated
    assert built.model_dump() == validated.model_dump()
    assert built.model_dump_json() == validated.model_dump_json()
    for name in ProfileField.model_fields:
        assert type(getattr(built, name)) is type(getattr(validated, name)), name
    assert built.status is ItemStatus.ACTIVE
    assert built.collected_at.tzinfo is UTC


def test_no_mutable_part_is_shared_with_the_record() -> None:
    item = _field({"a": [1, 2]})
    packed = FIELD.pack(item)
    item.value["a"].append(3)
    item.source_metadata["quote"] = "changed"
    first = FIELD.unpack(packed)
    assert first.value == {"a": [1, 2]} and first.source_metadata["quote"] == "my mail"
    first.value["a"].append(4)
    first.source_metadata["spans"][0][0] = 99
    second = FIELD.unpack(packed)
    assert second.value == {"a": [1, 2]}
    assert second.source_metadata == {"quote": "my mail", "spans": [[0, 4]]}


def test_a_built_model_still_validates_assignments() -> None:
    built = FIELD.unpack(FIELD.pack(_field("x")))
    with pytest.raises(ValidationError):
        built.name = "Not A Field Name"
    built.confidence = 0.5
    assert built.confidence == 0.5


def test_a_built_asset_equals_the_validated_one() -> None:
    asset = ProfileAsset(
        id=UUID(int=9),
        name="contract",
        asset_type="pdf",
        storage_provider="s3",
        storage_path="bucket/key.pdf",
        size_bytes=12,
        uploaded_at=BASE,
        verification_result={"ok": True, "checks": ["a", "b"]},
        analysis_field_ids=[UUID(int=1), UUID(int=2)],
    )
    packed = ASSET.pack(asset)
    built = ASSET.unpack(packed)
    assert built == asset == ProfileAsset.model_validate(asset.model_dump())
    assert built.model_dump_json() == asset.model_dump_json()
    built.analysis_field_ids.append(UUID(int=3))
    assert built.verification_result is not None
    built.verification_result["checks"].append("c")
    again = ASSET.unpack(packed)
    assert again.analysis_field_ids == [UUID(int=1), UUID(int=2)]
    assert again.verification_result == {"ok": True, "checks": ["a", "b"]}


def test_versions_of_one_name_share_one_name_string() -> None:
    first = FIELD.pack(_field("a"))
    second = FIELD.pack(_field("b").model_copy(update={"name": "".join(["em", "ail"])}))
    assert first[FIELD.name_at] is second[FIELD.name_at]
