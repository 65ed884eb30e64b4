"""Concurrency: invariants that must hold when many coroutines write at once.

The calls are started together with ``asyncio.gather`` on one event loop; a provider with a
connection pool really runs them in parallel against its database.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from uuid import UUID

from ccvault import errors
from ccvault.models import Channel, ChannelIdentity, ItemStatus
from ccvault.store import ProfileStore
from ccvault_contract_tests.base import ContractBase
from ccvault_contract_tests.capabilities import HIGH_CONCURRENCY, requires
from ccvault_contract_tests.helpers import (
    assert_unbroken_chain,
    make_asset,
    make_definition,
    make_field,
    make_requirement,
    new_profile,
    unique_user,
)

__all__ = ["ConcurrencyContract"]


class ConcurrencyContract(ContractBase):
    async def test_50_concurrent_updates_of_one_name_keep_one_active_and_an_unbroken_chain(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        profile = await new_profile(store, tenant)
        ids = await asyncio.gather(
            *(store.update_field(tenant, profile.id, make_field("balance", i)) for i in range(50))
        )
        assert len(set(ids)) == 50
        history = await store.get_field_history(tenant, profile.id, "balance")
        assert {v.id for v in history} == set(ids)
        assert_unbroken_chain(history)
        found = await store.get_by_id(tenant, profile.id)
        assert found is not None
        active = [v for v in history if v.status is ItemStatus.ACTIVE]
        assert found.fields["balance"].id == active[0].id
        counts = await store.count_items_by_status(tenant)
        assert counts["fields"]["active"] == 1 and counts["fields"]["superseded"] == 49

    async def test_20_concurrent_get_or_create_yield_one_profile(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        user = unique_user()
        profiles = await asyncio.gather(
            *(store.get_or_create(tenant, Channel.WHATSAPP, user) for _ in range(20))
        )
        assert len({p.id for p in profiles}) == 1
        assert len({p.customer_id for p in profiles}) == 1
        owner = await store.get_by_channel_identity(tenant, Channel.WHATSAPP, user)
        assert owner is not None and owner.id == profiles[0].id
        assert [i.channel_user_id for i in owner.channel_identities] == [user]

    async def test_concurrent_get_or_create_for_different_identities_yield_distinct_profiles(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        users = [unique_user() for _ in range(20)]
        profiles = await asyncio.gather(
            *(store.get_or_create(tenant, Channel.SMS, user) for user in users)
        )
        assert len({p.id for p in profiles}) == 20

    async def test_concurrent_updates_without_supersede_admit_exactly_one(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        profile = await new_profile(store, tenant)
        results = await asyncio.gather(
            *(
                store.update_field(
                    tenant, profile.id, make_field("ssn", str(i)), supersede_existing=False
                )
                for i in range(20)
            ),
            return_exceptions=True,
        )
        winners = [r for r in results if isinstance(r, UUID)]
        losers = [r for r in results if not isinstance(r, UUID)]
        assert len(winners) == 1
        assert all(isinstance(r, errors.ActiveFieldConflictError) for r in losers), losers
        history = await store.get_field_history(tenant, profile.id, "ssn")
        assert [v.id for v in history] == winners

    async def test_concurrent_updates_of_many_names_lose_nothing(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        profile = await new_profile(store, tenant)
        names = [f"name_{i}" for i in range(10)]
        await asyncio.gather(
            *(
                store.update_field(tenant, profile.id, make_field(name, round_))
                for round_ in range(5)
                for name in names
            )
        )
        found = await store.get_by_id(tenant, profile.id, include_history=True)
        assert found is not None
        assert set(found.fields) == set(names)
        for name in names:
            assert len(found.field_history[name]) == 5
            assert_unbroken_chain(found.field_history[name])

    async def test_concurrent_links_of_one_identity_admit_exactly_one_profile(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        profiles = [await new_profile(store, tenant) for _ in range(10)]
        identity = ChannelIdentity(channel=Channel.EMAIL, channel_user_id=f"{unique_user()}@x.org")
        results = await asyncio.gather(
            *(store.link_channel(tenant, p.id, identity) for p in profiles),
            return_exceptions=True,
        )
        assert results.count(True) == 1
        assert all(isinstance(r, errors.IdentityConflictError) for r in results if r is not True), (
            results
        )
        owner = await store.get_by_channel_identity(
            tenant, identity.channel, identity.channel_user_id
        )
        assert owner is not None and owner.id == profiles[results.index(True)].id

    async def test_concurrent_superseding_asset_uploads_keep_one_active(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        profile = await new_profile(store, tenant)
        await asyncio.gather(
            *(
                store.add_asset(tenant, profile.id, make_asset("selfie"), supersede_existing=True)
                for _ in range(20)
            )
        )
        found = await store.get_by_id(tenant, profile.id, include_history=True)
        assert found is not None
        assert len(found.assets) == 1 and len(found.asset_history) == 20
        statuses = Counter(a.status for a in found.asset_history)
        assert statuses == {ItemStatus.ACTIVE: 1, ItemStatus.SUPERSEDED: 19}
        successors = [a.superseded_by_id for a in found.asset_history if a.superseded_by_id]
        assert len(set(successors)) == 19

    async def test_concurrent_definition_saves_keep_one_definition(
        self, store: ProfileStore, tenant: UUID, agent: UUID
    ) -> None:
        ids = await asyncio.gather(
            *(
                store.save_field_definition(
                    make_definition(tenant, agent, "email", display_name=f"v{i}")
                )
                for i in range(20)
            )
        )
        listed = await store.get_field_definitions(tenant, agent)
        assert len(listed) == 1 and len(set(ids)) == 1 and listed[0].id == ids[0]

    async def test_concurrent_requirement_saves_keep_one_requirement(
        self, store: ProfileStore, tenant: UUID, agent: UUID, scenario: UUID
    ) -> None:
        ids = await asyncio.gather(
            *(
                store.save_scenario_requirement(
                    make_requirement(tenant, agent, scenario, "email", collection_order=i)
                )
                for i in range(20)
            )
        )
        listed = await store.get_scenario_requirements(tenant, scenario)
        assert len(listed) == 1 and len(set(ids)) == 1

    async def test_concurrent_sweeps_expire_each_field_once(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        from ccvault_contract_tests.helpers import ts

        profile = await new_profile(store, tenant)
        for i in range(10):
            await store.update_field(
                tenant,
                profile.id,
                make_field(f"otp_{i}", i, expires_at=ts(-1), collected_at=ts(-10)),
            )
        counts = await asyncio.gather(*(store.expire_stale_fields(tenant) for _ in range(5)))
        assert sum(counts) == 10

    async def test_concurrent_merges_into_one_target_lose_nothing(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        target = await new_profile(store, tenant)
        sources = [await new_profile(store, tenant) for _ in range(5)]
        for i, source in enumerate(sources):
            await store.update_field(tenant, source.id, make_field(f"from_{i}", i))
            await store.update_field(tenant, source.id, make_field("shared", i))
        await asyncio.gather(*(store.merge_profiles(tenant, s.id, target.id) for s in sources))
        merged = await store.get_by_id(tenant, target.id, include_history=True)
        assert merged is not None
        assert {f"from_{i}" for i in range(5)} <= set(merged.fields)
        assert len(merged.channel_identities) == 6
        shared = merged.field_history["shared"]
        assert len(shared) == 5
        assert [v.status for v in shared].count(ItemStatus.ACTIVE) == 1

    @requires(HIGH_CONCURRENCY)
    async def test_200_concurrent_writers_over_10_profiles(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        profiles = [await new_profile(store, tenant) for _ in range(10)]
        await asyncio.gather(
            *(
                store.update_field(tenant, profiles[i % 10].id, make_field(f"n_{(i // 10) % 2}", i))
                for i in range(200)
            )
        )
        for profile in profiles:
            for name in ("n_0", "n_1"):
                history = await store.get_field_history(tenant, profile.id, name)
                assert len(history) == 10
                assert_unbroken_chain(history)
