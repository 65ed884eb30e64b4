"""The rules computed once in core (``ccvault.rules``), held on every provider and stack.

* merge: at most one primary identity afterwards (the target's, else the source's), the
  merged profile can be saved back, and every combination of verified / expired /
  collected_at is decided by the conflict rule;
* definitions and requirements never move between agents or scenarios: re-saving a stored
  id under another agent, scenario or name is a ConflictError and nothing is written (and a
  cache in front never serves a stale definition under the old agent);
* get_or_create and link_channel stay correct under races across two instances.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from uuid import UUID, uuid4

import pytest

from ccvault import errors
from ccvault.models import (
    Channel,
    ChannelIdentity,
    CustomerProfile,
    ItemStatus,
    ProfileField,
)
from ccvault.store import ProfileStore
from ccvault_contract_tests.base import ContractBase
from ccvault_contract_tests.helpers import (
    make_definition,
    make_field,
    make_requirement,
    new_profile,
    snapshot,
    ts,
    unique_user,
)

__all__ = ["MergeRulesContract"]

_SECOND = timedelta(seconds=1)
_HOUR = timedelta(hours=1)


def _primaries(profile: CustomerProfile) -> list[tuple[Channel, str]]:
    return [(i.channel, i.channel_user_id) for i in profile.channel_identities if i.primary]


def _key(identity: ChannelIdentity) -> tuple[Channel, str]:
    return (identity.channel, identity.channel_user_id)


async def _without_primary(store: ProfileStore, tenant: UUID) -> CustomerProfile:
    """A live profile whose only identity is secondary."""
    profile = await new_profile(store, tenant)
    loaded = await store.get_by_id(tenant, profile.id)
    assert loaded is not None
    for identity in loaded.channel_identities:
        identity.primary = False
    await store.save(loaded)
    again = await store.get_by_id(tenant, profile.id)
    assert again is not None and _primaries(again) == []
    return again


async def _merged(store: ProfileStore, tenant: UUID, target: UUID) -> CustomerProfile:
    merged = await store.get_by_id(tenant, target)
    assert merged is not None
    return merged


# every combination of (verified, expires_at, collected_at) on one side
_SIDES: list[tuple[bool, str, int]] = [
    (verified, expiry, age)
    for verified in (False, True)
    for expiry in ("none", "future", "past")
    for age in (1, 50)
]


def _expected(target: tuple[bool, str, int], source: tuple[bool, str, int]) -> str:
    """Which side's version the conflict rule keeps: 'target' or 'source'."""
    t_expired, s_expired = target[1] == "past", source[1] == "past"
    if t_expired != s_expired:
        return "source" if t_expired else "target"
    if target[0] != source[0]:
        return "target" if target[0] else "source"
    # smaller age = collected more recently; a full tie keeps the target's version
    return "source" if source[2] < target[2] else "target"


def _version(name: str, side: tuple[bool, str, int], value: str, base: datetime) -> ProfileField:
    verified, expiry, age = side
    expires = {"none": None, "future": base + _HOUR, "past": base - _HOUR}[expiry]
    return make_field(
        name,
        value,
        verified=verified,
        collected_at=base - age * _SECOND,
        expires_at=expires,
    )


class MergeRulesContract(ContractBase):
    # ---------------------------------------------------------------- primary identity

    async def test_merge_into_a_target_without_primary_keeps_the_sources_primary(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        target = await _without_primary(store, tenant)
        source = await new_profile(store, tenant)
        await store.merge_profiles(tenant, source.id, target.id)
        merged = await _merged(store, tenant, target.id)
        assert _primaries(merged) == [_key(source.channel_identities[0])]

    async def test_merge_of_two_primaries_keeps_only_the_targets(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        target = await new_profile(store, tenant)
        source = await new_profile(store, tenant)
        await store.link_channel(
            tenant,
            source.id,
            ChannelIdentity(channel=Channel.EMAIL, channel_user_id=unique_user("m-")),
        )
        await store.merge_profiles(tenant, source.id, target.id)
        merged = await _merged(store, tenant, target.id)
        assert _primaries(merged) == [_key(target.channel_identities[0])]
        assert len(merged.channel_identities) == 3

    async def test_merge_where_neither_has_a_primary_leaves_none(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        target = await _without_primary(store, tenant)
        source = await _without_primary(store, tenant)
        await store.merge_profiles(tenant, source.id, target.id)
        merged = await _merged(store, tenant, target.id)
        assert _primaries(merged) == []
        assert len(merged.channel_identities) == 2

    @pytest.mark.parametrize("target_has_primary", [True, False])
    async def test_the_merged_profile_can_be_saved_back(
        self, store: ProfileStore, tenant: UUID, target_has_primary: bool
    ) -> None:
        if target_has_primary:
            target = await new_profile(store, tenant)
        else:
            target = await _without_primary(store, tenant)
        source = await new_profile(store, tenant)
        await store.update_field(tenant, source.id, make_field("email", "a@x.org"))
        await store.merge_profiles(tenant, source.id, target.id)
        merged = await _merged(store, tenant, target.id)
        assert len(_primaries(merged)) == 1
        assert await store.save(merged) == target.id
        again = await _merged(store, tenant, target.id)
        assert [(_key(i), i.primary) for i in again.channel_identities] == [
            (_key(i), i.primary) for i in merged.channel_identities
        ]
        assert again.fields["email"].id == merged.fields["email"].id

    async def test_chained_merges_keep_one_primary(self, store: ProfileStore, tenant: UUID) -> None:
        target = await _without_primary(store, tenant)
        first, second = await new_profile(store, tenant), await new_profile(store, tenant)
        await store.merge_profiles(tenant, first.id, target.id)
        await store.merge_profiles(tenant, second.id, target.id)
        merged = await _merged(store, tenant, target.id)
        assert _primaries(merged) == [_key(first.channel_identities[0])]
        await store.save(merged)

    async def test_racing_merges_into_a_target_without_primary_leave_one_primary(
        self, store: ProfileStore, other_store: ProfileStore, tenant: UUID
    ) -> None:
        target = await _without_primary(store, tenant)
        sources = [await new_profile(store, tenant) for _ in range(4)]
        stores = (store, other_store)
        await asyncio.gather(
            *(
                stores[i % 2].merge_profiles(tenant, source.id, target.id)
                for i, source in enumerate(sources)
            )
        )
        for reader in stores:
            merged = await _merged(reader, tenant, target.id)
            assert len(merged.channel_identities) == 5
            primaries = _primaries(merged)
            assert len(primaries) == 1
            assert primaries[0] in {_key(s.channel_identities[0]) for s in sources}

    # ---------------------------------------------------------------- conflict rule

    async def test_merge_decides_every_combination_of_verified_expiry_and_recency(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        target = await new_profile(store, tenant)
        source = await new_profile(store, tenant)
        cases: dict[str, tuple[UUID, UUID, str]] = {}
        base = ts()  # one instant: equal ages are a true tie
        for t_index, t_side in enumerate(_SIDES):
            for s_index, s_side in enumerate(_SIDES):
                name = f"c_{t_index}_{s_index}"
                mine = await store.update_field(
                    tenant, target.id, _version(name, t_side, "t", base)
                )
                theirs = await store.update_field(
                    tenant, source.id, _version(name, s_side, "s", base)
                )
                cases[name] = (mine, theirs, _expected(t_side, s_side))
        await store.merge_profiles(tenant, source.id, target.id)
        merged = await store.get_by_id(tenant, target.id, include_history=True)
        assert merged is not None
        wrong = []
        for name, (mine, theirs, side) in cases.items():
            winner, loser = (mine, theirs) if side == "target" else (theirs, mine)
            versions = {v.id: v for v in merged.field_history[name]}
            # an overdue winner is presented as EXPIRED: "not superseded" is what counts
            kept = [v.id for v in versions.values() if v.status is not ItemStatus.SUPERSEDED]
            lost = versions[loser]
            if kept != [winner] or lost.superseded_by_id != winner:
                wrong.append(name)
        assert wrong == [], f"{len(wrong)} of {len(cases)} conflicts decided against the rule"

    # ---------------------------------------------------------------- definitions

    async def test_a_definition_id_saved_under_another_agent_is_a_conflict(
        self, store: ProfileStore, tenant: UUID, agent: UUID
    ) -> None:
        other_agent = uuid4()
        definition = make_definition(tenant, agent, "email", display_name="Mine")
        stored = await store.save_field_definition(definition)
        # read both agents first: a cache in front now holds both lists
        assert [d.id for d in await store.get_field_definitions(tenant, agent)] == [stored]
        assert await store.get_field_definitions(tenant, other_agent) == []
        before = await snapshot(store, tenant, agents=(agent, other_agent))
        moved = definition.model_copy(update={"agent_id": other_agent, "display_name": "Moved"})
        with pytest.raises(errors.ConflictError):
            await store.save_field_definition(moved)
        assert await snapshot(store, tenant, agents=(agent, other_agent)) == before
        mine = await store.get_field_definition(tenant, agent, "email")
        assert mine is not None and mine.id == stored and mine.display_name == "Mine"
        assert await store.get_field_definition(tenant, other_agent, "email") is None

    async def test_a_definition_id_saved_under_another_name_is_a_conflict(
        self, store: ProfileStore, tenant: UUID, agent: UUID
    ) -> None:
        definition = make_definition(tenant, agent, "email")
        await store.save_field_definition(definition)
        before = await snapshot(store, tenant, agents=(agent,))
        with pytest.raises(errors.ConflictError):
            await store.save_field_definition(definition.model_copy(update={"name": "phone"}))
        assert await snapshot(store, tenant, agents=(agent,)) == before

    async def test_a_definition_saved_by_its_key_keeps_the_stored_id_whatever_id_is_given(
        self, store: ProfileStore, tenant: UUID, agent: UUID
    ) -> None:
        stored = await store.save_field_definition(make_definition(tenant, agent, "email"))
        again = make_definition(tenant, agent, "email", display_name="Again")
        assert await store.save_field_definition(again) == stored
        (found,) = await store.get_field_definitions(tenant, agent)
        assert found.id == stored and found.display_name == "Again"

    async def test_the_same_name_under_two_agents_is_two_definitions(
        self, store: ProfileStore, tenant: UUID, agent: UUID
    ) -> None:
        other_agent = uuid4()
        mine = await store.save_field_definition(make_definition(tenant, agent, "email"))
        theirs = await store.save_field_definition(make_definition(tenant, other_agent, "email"))
        assert mine != theirs
        # saving each again by its key touches only its own agent's row
        await store.save_field_definition(make_definition(tenant, other_agent, "email"))
        assert [d.id for d in await store.get_field_definitions(tenant, agent)] == [mine]
        assert [d.id for d in await store.get_field_definitions(tenant, other_agent)] == [theirs]

    # ---------------------------------------------------------------- requirements

    async def test_a_requirement_id_saved_under_another_agent_is_a_conflict(
        self, store: ProfileStore, tenant: UUID, agent: UUID, scenario: UUID
    ) -> None:
        requirement = make_requirement(tenant, agent, scenario, "email")
        stored = await store.save_scenario_requirement(requirement)
        assert [r.id for r in await store.get_scenario_requirements(tenant, scenario)] == [stored]
        before = await snapshot(store, tenant, scenarios=(scenario,))
        with pytest.raises(errors.ConflictError):
            await store.save_scenario_requirement(
                requirement.model_copy(update={"agent_id": uuid4()})
            )
        assert await snapshot(store, tenant, scenarios=(scenario,)) == before
        (found,) = await store.get_scenario_requirements(tenant, scenario)
        assert found.agent_id == agent

    async def test_a_requirement_key_saved_by_another_agent_is_a_conflict(
        self, store: ProfileStore, tenant: UUID, agent: UUID, scenario: UUID
    ) -> None:
        await store.save_scenario_requirement(make_requirement(tenant, agent, scenario, "email"))
        before = await snapshot(store, tenant, scenarios=(scenario,))
        with pytest.raises(errors.ConflictError):
            await store.save_scenario_requirement(
                make_requirement(tenant, uuid4(), scenario, "email")
            )
        assert await snapshot(store, tenant, scenarios=(scenario,)) == before

    async def test_a_requirement_id_saved_under_another_scenario_is_a_conflict(
        self, store: ProfileStore, tenant: UUID, agent: UUID, scenario: UUID
    ) -> None:
        other_scenario = uuid4()
        requirement = make_requirement(tenant, agent, scenario, "email")
        await store.save_scenario_requirement(requirement)
        assert await store.get_scenario_requirements(tenant, other_scenario) == []
        before = await snapshot(store, tenant, scenarios=(scenario, other_scenario))
        with pytest.raises(errors.ConflictError):
            await store.save_scenario_requirement(
                requirement.model_copy(update={"scenario_id": other_scenario})
            )
        assert await snapshot(store, tenant, scenarios=(scenario, other_scenario)) == before
        assert await store.get_scenario_requirements(tenant, other_scenario) == []

    async def test_a_requirement_id_saved_under_another_field_is_a_conflict(
        self, store: ProfileStore, tenant: UUID, agent: UUID, scenario: UUID
    ) -> None:
        requirement = make_requirement(tenant, agent, scenario, "email")
        await store.save_scenario_requirement(requirement)
        before = await snapshot(store, tenant, scenarios=(scenario,))
        with pytest.raises(errors.ConflictError):
            await store.save_scenario_requirement(
                requirement.model_copy(update={"field_name": "phone"})
            )
        assert await snapshot(store, tenant, scenarios=(scenario,)) == before

    async def test_racing_cross_agent_saves_of_one_definition_id_leave_it_on_one_agent(
        self, store: ProfileStore, other_store: ProfileStore, tenant: UUID
    ) -> None:
        agents = [uuid4() for _ in range(4)]
        shared = uuid4()
        stores = (store, other_store)
        results = await asyncio.gather(
            *(
                stores[i % 2].save_field_definition(
                    make_definition(tenant, agent, "email", id=shared)
                )
                for i, agent in enumerate(agents)
            ),
            return_exceptions=True,
        )
        assert [r for r in results if not isinstance(r, errors.ConflictError)] == [shared]
        holders = [a for a in agents if await store.get_field_definitions(tenant, a)]
        assert len(holders) == 1

    # ---------------------------------------------------------------- get_or_create / link

    async def test_racing_get_or_create_yields_one_profile_with_one_primary(
        self, store: ProfileStore, other_store: ProfileStore, tenant: UUID
    ) -> None:
        user = unique_user()
        stores = (store, other_store)
        found = await asyncio.gather(
            *(stores[i % 2].get_or_create(tenant, Channel.SMS, user) for i in range(10))
        )
        assert len({p.id for p in found}) == 1
        for reader in stores:
            owner = await reader.get_by_channel_identity(tenant, Channel.SMS, user)
            assert owner is not None and owner.id == found[0].id
            assert _primaries(owner) == [(Channel.SMS, user)]
            assert len(owner.channel_identities) == 1

    async def test_racing_links_of_one_identity_give_it_to_exactly_one_profile(
        self, store: ProfileStore, other_store: ProfileStore, tenant: UUID
    ) -> None:
        profiles = [await new_profile(store, tenant) for _ in range(4)]
        identity = ChannelIdentity(channel=Channel.EMAIL, channel_user_id=unique_user("l-"))
        stores = (store, other_store)
        results = await asyncio.gather(
            *(stores[i % 2].link_channel(tenant, p.id, identity) for i, p in enumerate(profiles)),
            return_exceptions=True,
        )
        assert results.count(True) == 1
        assert all(r is True or isinstance(r, errors.IdentityConflictError) for r in results)
        winner = profiles[results.index(True)]
        for reader in stores:
            owner = await reader.get_by_channel_identity(
                tenant, identity.channel, identity.channel_user_id
            )
            assert owner is not None and owner.id == winner.id
            assert len(_primaries(owner)) == 1
            for loser in profiles:
                if loser.id != winner.id:
                    other = await _merged(reader, tenant, loser.id)
                    assert len(other.channel_identities) == 1

    async def test_racing_links_to_one_profile_link_it_once_as_secondary(
        self, store: ProfileStore, other_store: ProfileStore, tenant: UUID
    ) -> None:
        profile = await new_profile(store, tenant)
        identity = ChannelIdentity(
            channel=Channel.EMAIL, channel_user_id=unique_user("l-"), primary=True
        )
        stores = (store, other_store)
        results = await asyncio.gather(
            *(stores[i % 2].link_channel(tenant, profile.id, identity) for i in range(6))
        )
        assert sorted(results) == [False] * 5 + [True]
        for reader in stores:
            found = await _merged(reader, tenant, profile.id)
            assert len(found.channel_identities) == 2
            assert _primaries(found) == [_key(profile.channel_identities[0])]

    # ---------------------------------------------------------------- delete cascade

    async def test_export_of_a_deleted_profile_lists_the_identities_it_held(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        profile = await new_profile(store, tenant)
        extra = ChannelIdentity(channel=Channel.EMAIL, channel_user_id=unique_user("d-"))
        await store.link_channel(tenant, profile.id, extra)
        held = await _merged(store, tenant, profile.id)
        assert await store.delete(tenant, profile.id) is True
        # released: the same channel user starts afresh on a new profile
        fresh = await store.get_or_create(tenant, extra.channel, extra.channel_user_id)
        assert fresh.id != profile.id
        document = await store.export_profile(tenant, profile.id)
        exported = document["profile"]["channel_identities"]
        assert [(i["channel"], i["channel_user_id"], i["primary"]) for i in exported] == [
            (i.channel.value, i.channel_user_id, i.primary) for i in held.channel_identities
        ]

    async def test_export_of_a_merged_away_source_lists_no_identities(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        source = await new_profile(store, tenant)
        target = await new_profile(store, tenant)
        await store.merge_profiles(tenant, source.id, target.id)
        document = await store.export_profile(tenant, source.id)
        assert document["profile"]["channel_identities"] == []
