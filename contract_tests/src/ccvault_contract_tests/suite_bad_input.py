# ruff: noqa: E501 - the table of bad calls reads best one call per line
"""Bad input: every malformed argument gets ``ccvault.errors.ValidationError`` and the store
is left exactly as it was.

Models that pydantic would refuse to build are made with ``model_construct`` (no validation),
as a careless caller or a deserialiser could; the store must validate them again.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID, uuid4

import pytest

from ccvault import errors
from ccvault.models import (
    Channel,
    ChannelIdentity,
    CustomerProfile,
    ProfileAsset,
    ProfileField,
    ProfileFieldDefinition,
    ScenarioFieldRequirement,
)
from ccvault.store import ProfileStore
from ccvault_contract_tests.base import ContractBase
from ccvault_contract_tests.helpers import (
    make_asset,
    make_definition,
    make_field,
    make_requirement,
    new_profile,
    snapshot,
)

__all__ = ["BadInputContract"]


@dataclass
class _Ctx:
    tenant: UUID
    profile: CustomerProfile
    asset_id: UUID
    field_id: UUID
    agent: UUID
    scenario: UUID


def _field(**over: Any) -> ProfileField:
    return ProfileField.model_construct(**{**dict(make_field("email", "b@x.org")), **over})


def _asset(**over: Any) -> ProfileAsset:
    return ProfileAsset.model_construct(**{**dict(make_asset("contract")), **over})


def _definition(ctx: _Ctx, **over: Any) -> ProfileFieldDefinition:
    base = dict(make_definition(ctx.tenant, ctx.agent, "email"))
    return ProfileFieldDefinition.model_construct(**{**base, **over})


def _requirement(ctx: _Ctx, **over: Any) -> ScenarioFieldRequirement:
    base = dict(make_requirement(ctx.tenant, ctx.agent, ctx.scenario, "email"))
    return ScenarioFieldRequirement.model_construct(**{**base, **over})


def _update(ctx: _Ctx, store: ProfileStore, item: ProfileField) -> Awaitable[Any]:
    return store.update_field(ctx.tenant, ctx.profile.id, item)


class _Unserialisable:
    pass


Case = Callable[[ProfileStore, _Ctx], Awaitable[Any]]

# fmt: off
BAD_CALLS: dict[str, Case] = {
    # ---- malformed ids and wrong id types
    "tenant_id_int": lambda s, c: s.get_by_id(123, c.profile.id),  # type: ignore[arg-type]
    "tenant_id_garbage_string": lambda s, c: s.get_by_id("tenant-1", c.profile.id),  # type: ignore[arg-type]
    "tenant_id_none": lambda s, c: s.count_items_by_status(None),  # type: ignore[arg-type]
    "profile_id_bytes": lambda s, c: s.delete(c.tenant, c.profile.id.bytes),  # type: ignore[arg-type]
    "profile_id_float_in_update": lambda s, c: s.update_field(c.tenant, 1.5, make_field()),  # type: ignore[arg-type]
    "profile_id_list_in_add_asset": lambda s, c: s.add_asset(c.tenant, [c.profile.id], make_asset()),  # type: ignore[arg-type]
    "customer_id_none": lambda s, c: s.get_by_customer_id(c.tenant, None),  # type: ignore[arg-type]
    "asset_id_int": lambda s, c: s.get_asset(c.tenant, c.profile.id, 7),  # type: ignore[arg-type]
    "item_id_garbage_in_delete_item": lambda s, c: s.delete_item(c.tenant, "x", "profile_field"),  # type: ignore[arg-type]
    "item_id_none_in_dependents": lambda s, c: s.check_has_dependents(c.tenant, None),  # type: ignore[arg-type]
    "source_item_id_garbage": lambda s, c: s.get_derived_items(c.tenant, "nope"),  # type: ignore[arg-type]
    "merge_source_garbage": lambda s, c: s.merge_profiles(c.tenant, "x", c.profile.id),  # type: ignore[arg-type]
    "expire_profile_id_garbage": lambda s, c: s.expire_stale_fields(c.tenant, "x"),  # type: ignore[arg-type]
    "step_id_int": lambda s, c: s.delete_scenario_requirements(c.tenant, c.scenario, step_id=5),  # type: ignore[arg-type]
    "purge_profile_id_zero": lambda s, c: s.purge_profile(c.tenant, 0),  # type: ignore[arg-type]
    "export_profile_id_garbage": lambda s, c: s.export_profile(c.tenant, "x"),  # type: ignore[arg-type]
    "mark_orphans_tenant_garbage": lambda s, c: s.mark_orphans("x"),  # type: ignore[arg-type]
    "agent_id_garbage": lambda s, c: s.get_field_definitions(c.tenant, "agent"),  # type: ignore[arg-type]
    "scenario_id_garbage": lambda s, c: s.get_scenario_requirements(c.tenant, "s"),  # type: ignore[arg-type]
    # ---- channels and identities
    "unknown_channel": lambda s, c: s.get_or_create(c.tenant, "carrier_pigeon", "u1"),  # type: ignore[arg-type]
    "empty_channel_user_id": lambda s, c: s.get_or_create(c.tenant, Channel.SMS, ""),
    "control_char_channel_user_id": lambda s, c: s.get_or_create(c.tenant, Channel.SMS, "a\nb"),
    "padded_channel_user_id": lambda s, c: s.get_or_create(c.tenant, Channel.SMS, " +1555 "),
    "int_channel_user_id": lambda s, c: s.get_or_create(c.tenant, Channel.SMS, 42),  # type: ignore[arg-type]
    "overlong_channel_user_id": lambda s, c: s.get_or_create(c.tenant, Channel.SMS, "x" * 256),
    "lookup_unknown_channel": lambda s, c: s.get_by_channel_identity(c.tenant, "fax", "1"),  # type: ignore[arg-type]
    "link_identity_as_dict": lambda s, c: s.link_channel(c.tenant, c.profile.id, {"channel": "sms", "channel_user_id": "1"}),  # type: ignore[arg-type]
    "link_identity_control_chars": lambda s, c: s.link_channel(c.tenant, c.profile.id, ChannelIdentity.model_construct(channel=Channel.SMS, channel_user_id="a\x00b", verified=False, primary=False, created_at=datetime.now().astimezone(), verified_at=None)),
    # ---- field names
    "field_name_uppercase": lambda s, c: _update(c, s, _field(name="Email")),
    "field_name_leading_digit": lambda s, c: _update(c, s, _field(name="1email")),
    "field_name_too_long": lambda s, c: _update(c, s, _field(name="a" * 51)),
    "field_name_dash": lambda s, c: _update(c, s, _field(name="e-mail")),
    "field_name_empty": lambda s, c: _update(c, s, _field(name="")),
    "get_field_bad_name": lambda s, c: s.get_field(c.tenant, c.profile.id, "Bad Name"),
    "history_name_none": lambda s, c: s.get_field_history(c.tenant, c.profile.id, None),  # type: ignore[arg-type]
    "asset_name_spaces": lambda s, c: s.add_asset(c.tenant, c.profile.id, _asset(name="my asset")),
    "get_asset_by_empty_name": lambda s, c: s.get_asset_by_name(c.tenant, c.profile.id, ""),
    "definition_bad_name": lambda s, c: s.save_field_definition(_definition(c, name="Email")),
    "definition_lookup_bad_name": lambda s, c: s.get_field_definition(c.tenant, c.agent, "e mail"),
    "requirement_bad_field_name": lambda s, c: s.save_scenario_requirement(_requirement(c, field_name="E")),
    "requirement_bad_dependency_name": lambda s, c: s.save_scenario_requirement(_requirement(c, depends_on_fields=["Bad"])),
    # ---- non-JSON values
    "value_nan": lambda s, c: _update(c, s, _field(value=math.nan)),
    "value_infinity": lambda s, c: _update(c, s, _field(value=math.inf)),
    "value_nested_negative_infinity": lambda s, c: _update(c, s, _field(value={"a": [1, -math.inf]})),
    "value_set": lambda s, c: _update(c, s, _field(value={1, 2})),
    "value_bytes": lambda s, c: _update(c, s, _field(value=b"raw")),
    "value_tuple": lambda s, c: _update(c, s, _field(value=(1, 2))),
    "value_object": lambda s, c: _update(c, s, _field(value=_Unserialisable())),
    "value_int_keys": lambda s, c: _update(c, s, _field(value={1: "one"})),
    "value_datetime": lambda s, c: _update(c, s, _field(value=datetime.now().astimezone())),
    "source_metadata_nan": lambda s, c: _update(c, s, _field(source_metadata={"score": math.nan})),
    "verification_result_bytes": lambda s, c: s.add_asset(c.tenant, c.profile.id, _asset(verification_result={"raw": b"x"})),
    "allowed_values_nan": lambda s, c: s.save_field_definition(_definition(c, allowed_values=[math.nan])),
    # ---- out-of-range numbers and negative sizes
    "confidence_above_one": lambda s, c: _update(c, s, _field(confidence=1.5)),
    "confidence_negative": lambda s, c: _update(c, s, _field(confidence=-0.1)),
    "asset_negative_size": lambda s, c: s.add_asset(c.tenant, c.profile.id, _asset(size_bytes=-1)),
    "asset_bad_checksum": lambda s, c: s.add_asset(c.tenant, c.profile.id, _asset(checksum="xyz")),
    "asset_empty_storage_path": lambda s, c: s.add_asset(c.tenant, c.profile.id, _asset(storage_path="")),
    "definition_negative_retention": lambda s, c: s.save_field_definition(_definition(c, retention_days=-1)),
    "definition_negative_freshness": lambda s, c: s.save_field_definition(_definition(c, freshness_seconds=-5)),
    # ---- timestamps
    "naive_collected_at": lambda s, c: _update(c, s, _field(collected_at=datetime(2024, 1, 1))),
    "naive_expires_at": lambda s, c: _update(c, s, _field(expires_at=datetime(2030, 1, 1))),
    "string_collected_at": lambda s, c: _update(c, s, _field(collected_at="yesterday")),
    # ---- bad enums
    "field_source_bogus": lambda s, c: _update(c, s, _field(source="rumour")),
    "field_source_item_type_bogus": lambda s, c: _update(c, s, _field(source_item_type="mind")),
    "get_field_status_bogus": lambda s, c: s.get_field(c.tenant, c.profile.id, "email", status="deleted"),  # type: ignore[arg-type]
    "get_asset_status_bogus": lambda s, c: s.get_asset_by_name(c.tenant, c.profile.id, "contract", status="gone"),  # type: ignore[arg-type]
    "delete_item_type_bogus": lambda s, c: s.delete_item(c.tenant, c.field_id, "field"),
    "requirement_level_bogus": lambda s, c: s.save_scenario_requirement(_requirement(c, required_level="medium")),
    "requirement_fallback_bogus": lambda s, c: s.save_scenario_requirement(_requirement(c, fallback_action="panic")),
    "definition_value_type_bogus": lambda s, c: s.save_field_definition(_definition(c, value_type="colour")),
    "missing_fields_level_bogus": lambda s, c: s.get_missing_fields(c.tenant, c.profile, c.scenario, required_level="medium"),
    # ---- wrong types for models and flags
    "update_field_with_dict": lambda s, c: s.update_field(c.tenant, c.profile.id, {"name": "email", "value": 1}),  # type: ignore[arg-type]
    "update_field_with_asset": lambda s, c: s.update_field(c.tenant, c.profile.id, make_asset()),  # type: ignore[arg-type]
    "add_asset_with_field": lambda s, c: s.add_asset(c.tenant, c.profile.id, make_field()),  # type: ignore[arg-type]
    "save_dict": lambda s, c: s.save({"tenant_id": str(c.tenant)}),  # type: ignore[arg-type]
    "save_definition_dict": lambda s, c: s.save_field_definition({"name": "email"}),  # type: ignore[arg-type]
    "save_requirement_none": lambda s, c: s.save_scenario_requirement(None),  # type: ignore[arg-type]
    "missing_fields_profile_dict": lambda s, c: s.get_missing_fields(c.tenant, {"id": 1}, c.scenario),  # type: ignore[arg-type]
    "supersede_existing_string": lambda s, c: s.update_field(c.tenant, c.profile.id, make_field(), supersede_existing="yes"),  # type: ignore[arg-type]
    "supersede_existing_int_on_asset": lambda s, c: s.add_asset(c.tenant, c.profile.id, make_asset(), supersede_existing=1),  # type: ignore[arg-type]
    "include_history_string": lambda s, c: s.get_by_id(c.tenant, c.profile.id, include_history="yes"),  # type: ignore[arg-type]
    "enabled_only_string": lambda s, c: s.get_field_definitions(c.tenant, c.agent, enabled_only="true"),  # type: ignore[arg-type]
    "requirement_tenant_garbage": lambda s, c: s.save_scenario_requirement(_requirement(c, tenant_id="t")),
    # ---- aggregate rules of save
    "save_non_active_field": lambda s, c: s.save(c.profile.model_copy(update={"fields": {"email": make_field(status="superseded")}})),
    "save_duplicate_identity": lambda s, c: s.save(c.profile.model_copy(update={"channel_identities": [c.profile.channel_identities[0], c.profile.channel_identities[0]]})),
    "save_field_key_mismatch": lambda s, c: s.save(CustomerProfile.model_construct(**{**dict(c.profile), "fields": {"phone": make_field("email")}})),
    # ---- requirement rules
    "requirement_condition_with_call": lambda s, c: s.save_scenario_requirement(_requirement(c, when_condition="len(email) > 3")),
    "requirement_condition_syntax": lambda s, c: s.save_scenario_requirement(_requirement(c, when_condition="a ==")),
    "definition_catastrophic_regex": lambda s, c: s.save_field_definition(_definition(c, validation_regex=r"(a|a)*\1")),
}
# fmt: on


class BadInputContract(ContractBase):
    @pytest.fixture
    async def ctx(self, store: ProfileStore, tenant: UUID, agent: UUID, scenario: UUID) -> _Ctx:
        profile = await new_profile(store, tenant)
        field_id = await store.update_field(tenant, profile.id, make_field("email", "a@x.org"))
        asset_id = await store.add_asset(tenant, profile.id, make_asset("contract"))
        await store.save_field_definition(make_definition(tenant, agent, "email"))
        await store.save_scenario_requirement(make_requirement(tenant, agent, scenario, "email"))
        found = await store.get_by_id(tenant, profile.id)
        assert found is not None
        return _Ctx(tenant, found, asset_id, field_id, agent, scenario)

    @pytest.mark.parametrize("case", sorted(BAD_CALLS))
    async def test_bad_input_is_refused_and_nothing_changes(
        self, store: ProfileStore, ctx: _Ctx, case: str
    ) -> None:
        before = await snapshot(
            store,
            ctx.tenant,
            profiles=(ctx.profile.id,),
            agents=(ctx.agent,),
            scenarios=(ctx.scenario,),
        )
        with pytest.raises(errors.ValidationError):
            await BAD_CALLS[case](store, ctx)
        after = await snapshot(
            store,
            ctx.tenant,
            profiles=(ctx.profile.id,),
            agents=(ctx.agent,),
            scenarios=(ctx.scenario,),
        )
        assert after == before

    async def test_validation_errors_are_value_errors_with_a_message(
        self, store: ProfileStore, ctx: _Ctx
    ) -> None:
        with pytest.raises(ValueError, match=r"\S") as caught:
            await store.get_by_id(ctx.tenant, "nope")  # type: ignore[arg-type]
        assert isinstance(caught.value, errors.VaultError)

    async def test_no_new_profile_for_a_bad_identity(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        with pytest.raises(errors.ValidationError):
            await store.get_or_create(tenant, Channel.SMS, "bad\tid")
        assert tenant not in await store.list_tenant_ids()

    async def test_a_bad_field_among_good_ones_in_save_writes_nothing(
        self, store: ProfileStore, ctx: _Ctx
    ) -> None:
        before = await snapshot(store, ctx.tenant, profiles=(ctx.profile.id,))
        good = make_field("city", "Oslo")
        bad = ProfileField.model_construct(
            **{**dict(make_field("zip_code", "1")), "value": math.nan}
        )
        candidate = CustomerProfile.model_construct(
            **{**dict(ctx.profile), "fields": {"city": good, "zip_code": bad}}
        )
        with pytest.raises(errors.ValidationError):
            await store.save(candidate)
        assert await snapshot(store, ctx.tenant, profiles=(ctx.profile.id,)) == before
        assert uuid4() != good.id
