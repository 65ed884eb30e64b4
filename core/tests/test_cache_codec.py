"""``ccvault.cache_codec``: cached profiles are built without validation, so the models built
must equal the validated ones exactly, and anything but an intact entry of this format must
be refused (:class:`CorruptEntry`, which the cache reads as a miss)."""

from __future__ import annotations

import copy
import pickle
from datetime import UTC, datetime, timedelta
from ipaddress import ip_address
from typing import Any
from uuid import UUID, uuid4

import orjson
import pytest

from ccvault import cache_codec
from ccvault.cache_codec import (
    KIND_JSON,
    KIND_PROFILE,
    CorruptEntry,
    decode_json,
    decode_profile,
    encode_json,
    encode_profile,
    open_envelope,
    seal_envelope,
)
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

T0 = datetime(2026, 3, 1, 12, 30, 15, 123456, tzinfo=UTC)


def full_field(name: str, n: int) -> ProfileField:
    """A field version with every optional attribute set."""
    return ProfileField(
        name=name,
        value={"n": n, "list": [1, 2.5, None, True, "x"], "nested": {"k": -0.0}},
        value_type="json",
        source=ProfileFieldSource.TOOL_RESULT,
        source_session_id=uuid4(),
        source_scenario_id=uuid4(),
        source_step_id=uuid4(),
        source_item_id=uuid4(),
        source_item_type=SourceType.PROFILE_ASSET,
        source_metadata={"quote": f"it is {n}", "depth": {"a": [1]}},
        status=ItemStatus.ACTIVE,
        superseded_by_id=uuid4(),
        superseded_at=T0 + timedelta(seconds=n),
        verified=True,
        verification_method="document",
        verified_at=T0,
        verified_by="agent-7",
        confidence=0.25 * (n % 4),
        requires_confirmation=bool(n % 2),
        collected_at=T0 - timedelta(days=n),
        updated_at=T0 - timedelta(hours=n),
        expires_at=T0 + timedelta(days=365 + n),
        field_definition_id=uuid4(),
    )


def full_profile() -> CustomerProfile:
    fields = [full_field(f"field_{n}", n) for n in range(5)]
    fields.append(ProfileField(name="plain", value="just a string"))  # defaults
    fields.append(ProfileField(name="number", value=12345678901234, confidence=1))
    return CustomerProfile(
        tenant_id=uuid4(),
        channel_identities=[
            ChannelIdentity(
                channel=Channel.WHATSAPP,
                channel_user_id="+4915112345678",
                verified=True,
                verified_at=T0,
                primary=True,
            ),
            ChannelIdentity(channel=Channel.EMAIL, channel_user_id="ana@example.com"),
        ],
        fields={f.name: f for f in fields},
        assets=[
            ProfileAsset(
                name="id_scan",
                asset_type="document",
                storage_provider="s3",
                storage_path="s3://b/x.pdf",
                mime_type="application/pdf",
                size_bytes=1234,
                checksum="a" * 64,
                uploaded_in_session_id=uuid4(),
                uploaded_in_scenario_id=uuid4(),
                source_item_id=uuid4(),
                source_item_type=SourceType.TOOL,
                derived_from_tool="scanner",
                verified=True,
                verification_result={"ok": True, "score": 0.9},
                retention_policy="7y",
                expires_at=T0 + timedelta(days=9),
                analysis_field_ids=[uuid4(), uuid4()],
            ),
            ProfileAsset(
                name="selfie", asset_type="image", storage_provider="s3", storage_path="s3://b/y"
            ),
        ],
        verification_level=VerificationLevel.DOCUMENT_VERIFIED,
        consents=[
            Consent(consent_type="marketing", granted=True, granted_at=T0, ip_address="10.0.0.1"),
            Consent(consent_type="calls", granted=False),
        ],
        last_interaction_at=T0,
    )


def assert_same(built: Any, expected: Any) -> None:
    """Equal, with the same types at every level (not just ``==``)."""
    assert type(built) is type(expected)
    if hasattr(expected, "__pydantic_fields__"):
        assert list(built.__dict__) == list(expected.__dict__)
        for key, value in expected.__dict__.items():
            assert_same(built.__dict__[key], value)
    elif isinstance(expected, dict):
        assert list(built) == list(expected)
        for key, value in expected.items():
            assert_same(built[key], value)
    elif isinstance(expected, list):
        assert len(built) == len(expected)
        for a, b in zip(built, expected, strict=True):
            assert_same(a, b)
    else:
        assert built == expected
        if isinstance(expected, datetime):
            assert built.tzinfo is UTC and expected.tzinfo is UTC


@pytest.mark.parametrize(
    "profile",
    [
        full_profile(),
        CustomerProfile(tenant_id=uuid4()),  # nothing at all
        CustomerProfile(
            tenant_id=uuid4(), fields={"email": ProfileField(name="email", value="a@b.example")}
        ),
    ],
)
def test_round_trip_equals_the_validated_model(profile: CustomerProfile) -> None:
    payload = encode_profile(profile)
    assert payload is not None
    built = decode_profile(payload)
    assert built == profile
    assert_same(built, profile)
    assert built.model_dump_json() == profile.model_dump_json()
    # what pydantic makes of the same data is what the trusted construction made
    assert_same(CustomerProfile.model_validate_json(profile.model_dump_json()), built)
    assert built.model_fields_set == set(CustomerProfile.model_fields)


def test_trusted_models_behave_like_validated_ones() -> None:
    built = decode_profile(encode_profile(full_profile()) or b"")
    other = decode_profile(encode_profile(full_profile()) or b"")
    item = built.fields["field_1"]
    # assignment is still validated
    with pytest.raises(ValueError):
        item.confidence = 2.0
    item.value = "changed"
    assert other.fields["field_1"].value != "changed"
    assert item.model_fields_set == set(ProfileField.model_fields)
    # copies, deep copies, pickles
    assert copy.deepcopy(built) == built
    assert pickle.loads(pickle.dumps(built)) == built
    assert built.model_copy(update={"fields": {}}).fields == {}
    assert isinstance(built.id, UUID) and built.id.is_safe is not None
    assert hash(built.id) == hash(UUID(str(built.id)))
    assert built.consents[0].ip_address == ip_address("10.0.0.1")
    # a caller editing one model's fields-set reaches no model of another decode
    item.model_fields_set.discard("source_metadata")
    built.model_fields_set.discard("fields")
    again = decode_profile(encode_profile(full_profile()) or b"")
    assert again.fields["field_1"].model_fields_set == set(ProfileField.model_fields)
    assert again.model_fields_set == set(CustomerProfile.model_fields)
    assert "source_metadata" in again.fields["field_1"].model_dump(exclude_unset=True)


def test_what_cannot_be_cached_is_not_encoded() -> None:
    huge = CustomerProfile(
        tenant_id=uuid4(), fields={"n": ProfileField(name="n", value=2**70)}
    )  # JSON of this cache holds 64-bit integers only
    assert encode_profile(huge) is None
    with_history = CustomerProfile(
        tenant_id=uuid4(), field_history={"n": [ProfileField(name="n", value=1)]}
    )
    assert encode_profile(with_history) is None


# ---------------------------------------------------------------------------------------
# refused entries
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def payload() -> bytes:
    encoded = encode_profile(full_profile())
    assert encoded is not None
    return encoded


def test_every_flipped_byte_is_refused(payload: bytes) -> None:
    for position in range(len(payload)):
        damaged = bytearray(payload)
        damaged[position] ^= 0x01
        with pytest.raises(CorruptEntry):
            decode_profile(bytes(damaged))


def test_truncated_and_extended_entries_are_refused(payload: bytes) -> None:
    for length in (0, 1, 4, 9, 30, len(payload) // 2, len(payload) - 1):
        with pytest.raises(CorruptEntry):
            decode_profile(payload[:length])
    with pytest.raises(CorruptEntry):
        decode_profile(payload + b" ")


@pytest.mark.parametrize(
    "foreign",
    [
        b"",
        b"hello",
        b"null",
        b"{}",
        orjson.dumps({"id": str(uuid4())}),
        # the format written before this module: pydantic JSON of the profile
        full_profile().model_dump_json().encode(),
    ],
    # fixed ids: the values hold random uuids, and pytest-xdist needs the same ids everywhere
    ids=["empty", "text", "null", "empty-object", "foreign-object", "old-format-profile"],
)
def test_foreign_and_old_format_values_are_refused(foreign: bytes) -> None:
    with pytest.raises(CorruptEntry):
        decode_profile(foreign)


def test_other_versions_kinds_and_layouts_are_refused(payload: bytes) -> None:
    body = open_envelope(KIND_PROFILE, payload)
    other_version = b"ccv" + bytes([cache_codec.FORMAT_VERSION + 1]) + payload[4:]
    with pytest.raises(CorruptEntry):
        decode_profile(other_version)
    with pytest.raises(CorruptEntry):
        decode_profile(seal_envelope(KIND_JSON, body))
    other_layout = b"P" + bytes(4)
    assert other_layout != KIND_PROFILE
    with pytest.raises(CorruptEntry):
        decode_profile(seal_envelope(other_layout, body))


def _resealed(payload: bytes, change: Any) -> bytes:
    data = orjson.loads(open_envelope(KIND_PROFILE, payload))
    change(data)
    return seal_envelope(KIND_PROFILE, orjson.dumps(data))


def _set_column(data: list[Any], key: str, value: Any) -> None:
    data[9][1 + cache_codec._FIELD_KEYS.index(key)] = value


@pytest.mark.parametrize(
    "change",
    [
        lambda d: d.pop(),  # a part missing
        lambda d: d.__setitem__(0, "not-a-uuid"),
        lambda d: d.__setitem__(0, "f" * 33),
        lambda d: d.__setitem__(3, "platinum"),  # unknown verification level
        lambda d: d.__setitem__(4, "2026-01-01T00:00:00+02:00"),  # not UTC
        lambda d: d.__setitem__(4, "yesterday"),
        lambda d: d[9].__setitem__(0, d[9][0] + 1),  # count does not match the columns
        lambda d: d[9].pop(),  # a column missing
        lambda d: _set_column(d, "status", {"=": "deleted"}),
        lambda d: _set_column(d, "id", ["0" * 32]),  # a column of the wrong length
        lambda d: _set_column(d, "collected_at", ["2026-01-01T00:00:00"] * d[9][0]),  # naive
        lambda d: d[8].append({"consent_type": "x", "granted": "maybe"}),
    ],
)
def test_well_sealed_but_malformed_entries_are_refused(payload: bytes, change: Any) -> None:
    with pytest.raises(CorruptEntry):
        decode_profile(_resealed(payload, change))


def test_json_documents_are_sealed_and_validated() -> None:
    from pydantic import TypeAdapter

    adapter = TypeAdapter(list[int])
    sealed = encode_json(b"[1,2,3]")
    assert decode_json(sealed, adapter.validate_json) == [1, 2, 3]
    for damaged in (sealed[:-1], sealed[:-1] + b"4", b"[1,2,3]", encode_json(b'["x"]')):
        with pytest.raises(CorruptEntry):
            decode_json(damaged, adapter.validate_json)
    with pytest.raises(CorruptEntry):  # a profile entry is not a JSON document
        decode_json(encode_profile(full_profile()) or b"", adapter.validate_json)


# ---------------------------------------------------------------------------------------
# lists of flat models: definitions, requirements, chain entries
# ---------------------------------------------------------------------------------------


def _models() -> dict[type, list[Any]]:
    from ccvault.models import (
        FallbackAction,
        FieldValueType,
        ItemType,
        LineageEntry,
        ProfileFieldDefinition,
        RequiredLevel,
        ScenarioFieldRequirement,
    )

    tenant, agent = uuid4(), uuid4()
    definitions = [
        ProfileFieldDefinition(
            tenant_id=tenant,
            agent_id=agent,
            name="email",
            display_name="E-mail",
            description="where we write",
            value_type=FieldValueType.EMAIL,
            validation_regex=r"^.+@.+$",
            validation_tool_id="tool-1",
            allowed_values=["a", 1, 2.5, None, {"k": [True]}],
            required_verification=True,
            verification_methods=["link", "code"],
            collection_prompt="Your e-mail?",
            extraction_examples=["ana@example.com"],
            extraction_prompt_hint="an address",
            is_pii=True,
            encryption_required=True,
            retention_days=30,
            freshness_seconds=0,
            created_at=T0,
            updated_at=T0 + timedelta(seconds=1),
            enabled=False,
            source_priority=[ProfileFieldSource.TOOL_RESULT, ProfileFieldSource.USER_PROVIDED],
        ),
        ProfileFieldDefinition(tenant_id=tenant, agent_id=agent, name="plain"),
        ProfileFieldDefinition(tenant_id=tenant, agent_id=agent, name="plain_too"),
    ]
    requirements = [
        ScenarioFieldRequirement(
            tenant_id=tenant,
            agent_id=agent,
            scenario_id=uuid4(),
            step_id=uuid4(),
            rule_id=uuid4(),
            field_name="email",
            required_level=RequiredLevel.SOFT,
            fallback_action=FallbackAction.EXTRACT,
            when_condition='country == "DE"',
            depends_on_fields=["country"],
            collection_order=-3,
        ),
        ScenarioFieldRequirement(
            tenant_id=tenant, agent_id=agent, scenario_id=uuid4(), field_name="x"
        ),
        ScenarioFieldRequirement(
            tenant_id=tenant, agent_id=agent, scenario_id=uuid4(), field_name="y"
        ),
    ]
    chain = [
        LineageEntry(
            id=uuid4(),
            type=ItemType.PROFILE_FIELD,
            name="email",
            source_metadata={"quote": "it is ana@example.com"},
            source_item_id=uuid4(),
            source_item_type=SourceType.PROFILE_ASSET,
        ),
        LineageEntry(id=uuid4(), type=ItemType.PROFILE_ASSET, name="scan"),
    ]
    return {ProfileFieldDefinition: definitions, ScenarioFieldRequirement: requirements,
            type(chain[0]): chain}  # fmt: skip


@pytest.mark.parametrize("index", [0, 1, 2])
def test_model_lists_round_trip_exactly(index: int) -> None:
    from ccvault.cache_codec import ModelListCodec

    cls, items = list(_models().items())[index]
    codec = ModelListCodec(cls)
    assert codec.usable
    for sample in (items, items[:1], []):
        payload = codec.encode(sample)
        assert payload is not None
        built = codec.decode(payload)
        assert built == sample
        assert_same(built, sample)
        assert_same([cls.model_validate_json(i.model_dump_json()) for i in sample], built)
    built = codec.decode(codec.encode(items) or b"")
    # every item has its own lists and dicts
    for key in cls.model_fields:
        values = [item.__dict__[key] for item in built]
        mutable = [id(v) for v in values if isinstance(v, list | dict)]
        assert len(mutable) == len(set(mutable)), key
    for position in range(0, len(payload), 7):
        damaged = bytearray(codec.encode(items) or b"")
        damaged[position] ^= 0x01
        with pytest.raises(CorruptEntry):
            codec.decode(bytes(damaged))
    with pytest.raises(CorruptEntry):  # another model's entry
        other = list(_models())[(index + 1) % 3]
        codec.decode(ModelListCodec(other).encode([]) or b"")
    with pytest.raises(CorruptEntry):  # the validated-JSON envelope is not this format
        codec.decode(encode_json(b"[]"))


def test_a_model_with_a_nested_model_is_not_trusted_this_way() -> None:
    from ccvault.cache_codec import ModelListCodec

    assert not ModelListCodec(CustomerProfile).usable
    assert not ModelListCodec(ProfileAsset).usable or ModelListCodec(ProfileAsset).usable


def test_no_list_or_dict_is_shared_between_decoded_fields() -> None:
    same = CustomerProfile(
        tenant_id=uuid4(),
        fields={
            name: ProfileField(name=name, value=[1], source_metadata={}) for name in ("a", "b", "c")
        },
    )
    built = decode_profile(encode_profile(same) or b"")
    built.fields["a"].source_metadata["k"] = "v"
    built.fields["a"].value.append(2)
    assert built.fields["b"].source_metadata == {} and built.fields["c"].value == [1]
