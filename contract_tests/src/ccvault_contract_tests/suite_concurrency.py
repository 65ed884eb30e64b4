"""Concurrency: invariants that must hold when many coroutines write at once.

The calls are started together with ``asyncio.gather`` on one event loop; a provider with a
connection pool really runs them in parallel against its database. The racing calls are
split between ``store`` and ``other_store`` (a second instance over the same data where the
provider offers one, see ``ContractBase.other_store``), so races between instances — two
processes, two pools, two cache clients — are exercised, not only the ones a single
instance's internal locks serialise. Results are read back through both instances.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Sequence
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


def _either(stores: Sequence[ProfileStore], i: int) -> ProfileStore:
    """The store that runs the ``i``-th racing call: alternately one instance and the other."""
    return stores[i % len(stores)]


async def _warm(
    stores: Sequence[ProfileStore], tenant_id: UUID, profile_id: UUID, field_name: str
) -> None:
    """Read through every instance first, so a cache that one instance fills and another
    fails to invalidate would serve stale data afterwards."""
    for reader in stores:
        await reader.get_by_id(tenant_id, profile_id, include_history=True)
        await reader.get_field(tenant_id, profile_id, field_name)
        await reader.get_field_history(tenant_id, profile_id, field_name)


class ConcurrencyContract(ContractBase):
    async def test_50_concurrent_updates_of_one_name_keep_one_active_and_an_unbroken_chain(
        self, store: ProfileStore, other_store: ProfileStore, tenant: UUID
    ) -> None:
        stores = (store, other_store)
        profile = await new_profile(store, tenant)
        await _warm(stores, tenant, profile.id, "balance")
        ids = await asyncio.gather(
            *(
                _either(stores, i).update_field(tenant, profile.id, make_field("balance", i))
                for i in range(50)
            )
        )
        assert len(set(ids)) == 50
        for reader in stores:
            history = await reader.get_field_history(tenant, profile.id, "balance")
            assert {v.id for v in history} == set(ids)
            assert_unbroken_chain(history)
            found = await reader.get_by_id(tenant, profile.id)
            assert found is not None
            active = [v for v in history if v.status is ItemStatus.ACTIVE]
            assert found.fields["balance"].id == active[0].id
            counts = await reader.count_items_by_status(tenant)
            assert counts["fields"]["active"] == 1 and counts["fields"]["superseded"] == 49

    async def test_20_concurrent_get_or_create_yield_one_profile(
        self, store: ProfileStore, other_store: ProfileStore, tenant: UUID
    ) -> None:
        stores = (store, other_store)
        user = unique_user()
        for reader in stores:  # a cache that remembers misses must forget them
            assert await reader.get_by_channel_identity(tenant, Channel.WHATSAPP, user) is None
        profiles = await asyncio.gather(
            *(_either(stores, i).get_or_create(tenant, Channel.WHATSAPP, user) for i in range(20))
        )
        assert len({p.id for p in profiles}) == 1
        assert len({p.customer_id for p in profiles}) == 1
        for reader in stores:
            owner = await reader.get_by_channel_identity(tenant, Channel.WHATSAPP, user)
            assert owner is not None and owner.id == profiles[0].id
            assert [i.channel_user_id for i in owner.channel_identities] == [user]

    async def test_concurrent_get_or_create_for_different_identities_yield_distinct_profiles(
        self, store: ProfileStore, other_store: ProfileStore, tenant: UUID
    ) -> None:
        stores = (store, other_store)
        users = [unique_user() for _ in range(20)]
        profiles = await asyncio.gather(
            *(_either(stores, i).get_or_create(tenant, Channel.SMS, u) for i, u in enumerate(users))
        )
        assert len({p.id for p in profiles}) == 20

    async def test_concurrent_updates_without_supersede_admit_exactly_one(
        self, store: ProfileStore, other_store: ProfileStore, tenant: UUID
    ) -> None:
        stores = (store, other_store)
        profile = await new_profile(store, tenant)
        results = await asyncio.gather(
            *(
                _either(stores, i).update_field(
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
        for reader in stores:
            history = await reader.get_field_history(tenant, profile.id, "ssn")
            assert [v.id for v in history] == winners

    async def test_concurrent_updates_of_many_names_lose_nothing(
        self, store: ProfileStore, other_store: ProfileStore, tenant: UUID
    ) -> None:
        stores = (store, other_store)
        profile = await new_profile(store, tenant)
        names = [f"name_{i}" for i in range(10)]
        await asyncio.gather(
            *(
                _either(stores, round_ + n).update_field(
                    tenant, profile.id, make_field(name, round_)
                )
                for round_ in range(5)
                for n, name in enumerate(names)
            )
        )
        for reader in stores:
            found = await reader.get_by_id(tenant, profile.id, include_history=True)
            assert found is not None
            assert set(found.fields) == set(names)
            for name in names:
                assert len(found.field_history[name]) == 5
                assert_unbroken_chain(found.field_history[name])

    async def test_concurrent_links_of_one_identity_admit_exactly_one_profile(
        self, store: ProfileStore, other_store: ProfileStore, tenant: UUID
    ) -> None:
        stores = (store, other_store)
        profiles = [await new_profile(store, tenant) for _ in range(10)]
        identity = ChannelIdentity(channel=Channel.EMAIL, channel_user_id=f"{unique_user()}@x.org")
        for reader in stores:
            for profile in profiles:
                await reader.get_by_id(tenant, profile.id)
            owner = await reader.get_by_channel_identity(
                tenant, identity.channel, identity.channel_user_id
            )
            assert owner is None
        results = await asyncio.gather(
            *(
                _either(stores, i).link_channel(tenant, p.id, identity)
                for i, p in enumerate(profiles)
            ),
            return_exceptions=True,
        )
        assert results.count(True) == 1
        assert all(isinstance(r, errors.IdentityConflictError) for r in results if r is not True), (
            results
        )
        winner = profiles[results.index(True)].id
        for reader in stores:
            owner = await reader.get_by_channel_identity(
                tenant, identity.channel, identity.channel_user_id
            )
            assert owner is not None and owner.id == winner
            for profile in profiles:
                found = await reader.get_by_id(tenant, profile.id)
                assert found is not None
                linked = identity in found.channel_identities
                assert linked is (profile.id == winner)

    async def test_concurrent_links_of_one_identity_to_two_profiles_admit_exactly_one(
        self, store: ProfileStore, other_store: ProfileStore, tenant: UUID
    ) -> None:
        first, second = await new_profile(store, tenant), await new_profile(store, tenant)
        identity = ChannelIdentity(channel=Channel.EMAIL, channel_user_id=f"{unique_user()}@x.org")
        for reader in (store, other_store):
            for profile in (first, second):
                await reader.get_by_id(tenant, profile.id)
            owner = await reader.get_by_channel_identity(
                tenant, identity.channel, identity.channel_user_id
            )
            assert owner is None
        results = await asyncio.gather(
            store.link_channel(tenant, first.id, identity),
            other_store.link_channel(tenant, second.id, identity),
            return_exceptions=True,
        )
        assert results.count(True) == 1, results
        assert all(isinstance(r, errors.IdentityConflictError) for r in results if r is not True), (
            results
        )
        winner = (first, second)[results.index(True)].id
        for reader in (store, other_store):
            owner = await reader.get_by_channel_identity(
                tenant, identity.channel, identity.channel_user_id
            )
            assert owner is not None and owner.id == winner
            for profile in (first, second):
                found = await reader.get_by_id(tenant, profile.id)
                assert found is not None
                assert (identity in found.channel_identities) is (profile.id == winner)

    async def test_concurrent_superseding_asset_uploads_keep_one_active(
        self, store: ProfileStore, other_store: ProfileStore, tenant: UUID
    ) -> None:
        stores = (store, other_store)
        profile = await new_profile(store, tenant)
        await asyncio.gather(
            *(
                _either(stores, i).add_asset(
                    tenant, profile.id, make_asset("selfie"), supersede_existing=True
                )
                for i in range(20)
            )
        )
        for reader in stores:
            found = await reader.get_by_id(tenant, profile.id, include_history=True)
            assert found is not None
            assert len(found.assets) == 1 and len(found.asset_history) == 20
            statuses = Counter(a.status for a in found.asset_history)
            assert statuses == {ItemStatus.ACTIVE: 1, ItemStatus.SUPERSEDED: 19}
            successors = [a.superseded_by_id for a in found.asset_history if a.superseded_by_id]
            assert len(set(successors)) == 19

    async def test_concurrent_definition_saves_keep_one_definition(
        self, store: ProfileStore, other_store: ProfileStore, tenant: UUID, agent: UUID
    ) -> None:
        stores = (store, other_store)
        ids = await asyncio.gather(
            *(
                _either(stores, i).save_field_definition(
                    make_definition(tenant, agent, "email", display_name=f"v{i}")
                )
                for i in range(20)
            )
        )
        for reader in stores:
            listed = await reader.get_field_definitions(tenant, agent)
            assert len(listed) == 1 and len(set(ids)) == 1 and listed[0].id == ids[0]

    async def test_concurrent_requirement_saves_keep_one_requirement(
        self,
        store: ProfileStore,
        other_store: ProfileStore,
        tenant: UUID,
        agent: UUID,
        scenario: UUID,
    ) -> None:
        stores = (store, other_store)
        ids = await asyncio.gather(
            *(
                _either(stores, i).save_scenario_requirement(
                    make_requirement(tenant, agent, scenario, "email", collection_order=i)
                )
                for i in range(20)
            )
        )
        for reader in stores:
            listed = await reader.get_scenario_requirements(tenant, scenario)
            assert len(listed) == 1 and len(set(ids)) == 1

    async def test_concurrent_sweeps_expire_each_field_once(
        self, store: ProfileStore, other_store: ProfileStore, tenant: UUID
    ) -> None:
        from ccvault_contract_tests.helpers import ts

        profile = await new_profile(store, tenant)
        for i in range(10):
            await store.update_field(
                tenant,
                profile.id,
                make_field(f"otp_{i}", i, expires_at=ts(-1), collected_at=ts(-10)),
            )
        stores = (store, other_store)
        counts = await asyncio.gather(
            *(_either(stores, i).expire_stale_fields(tenant) for i in range(5))
        )
        assert sum(counts) == 10

    async def test_concurrent_merges_into_one_target_lose_nothing(
        self, store: ProfileStore, other_store: ProfileStore, tenant: UUID
    ) -> None:
        stores = (store, other_store)
        target = await new_profile(store, tenant)
        sources = [await new_profile(store, tenant) for _ in range(5)]
        for i, source in enumerate(sources):
            await store.update_field(tenant, source.id, make_field(f"from_{i}", i))
            await store.update_field(tenant, source.id, make_field("shared", i))
        await asyncio.gather(
            *(
                _either(stores, i).merge_profiles(tenant, s.id, target.id)
                for i, s in enumerate(sources)
            )
        )
        for reader in stores:
            merged = await reader.get_by_id(tenant, target.id, include_history=True)
            assert merged is not None
            assert {f"from_{i}" for i in range(5)} <= set(merged.fields)
            assert len(merged.channel_identities) == 6
            shared = merged.field_history["shared"]
            assert len(shared) == 5
            assert [v.status for v in shared].count(ItemStatus.ACTIVE) == 1
            for source in sources:
                assert await reader.get_by_id(tenant, source.id) is None

    @requires(HIGH_CONCURRENCY)
    async def test_200_concurrent_writers_over_10_profiles(
        self, store: ProfileStore, other_store: ProfileStore, tenant: UUID
    ) -> None:
        stores = (store, other_store)
        profiles = [await new_profile(store, tenant) for _ in range(10)]
        await asyncio.gather(
            *(
                _either(stores, i // 10).update_field(
                    tenant, profiles[i % 10].id, make_field(f"n_{(i // 10) % 2}", i)
                )
                for i in range(200)
            )
        )
        for profile in profiles:
            for name in ("n_0", "n_1"):
                history = await store.get_field_history(tenant, profile.id, name)
                assert len(history) == 10
                assert_unbroken_chain(history)

    async def test_merge_racing_updates_of_the_source_loses_no_field(
        self, store: ProfileStore, other_store: ProfileStore, tenant: UUID
    ) -> None:
        """Every update that returned an id is on the surviving profile; every one that
        failed did so with a ccvault error and left no version anywhere."""
        stores = (store, other_store)
        source = await new_profile(store, tenant)
        target = await new_profile(store, tenant)
        first = await store.update_field(tenant, source.id, make_field("note", -1))
        await store.update_field(tenant, target.id, make_field("elsewhere", 0))
        await _warm(stores, tenant, source.id, "note")
        await _warm(stores, tenant, target.id, "note")
        updates = [
            _either(stores, i).update_field(tenant, source.id, make_field("note", i))
            for i in range(20)
        ]
        # the merge starts in the middle of the updates
        results = await asyncio.gather(
            *updates[:10],
            other_store.merge_profiles(tenant, source.id, target.id),
            *updates[10:],
            return_exceptions=True,
        )
        merge = results.pop(10)
        assert merge is True or isinstance(merge, errors.VaultError), merge
        written = [r for r in results if isinstance(r, UUID)]
        failed = [r for r in results if not isinstance(r, UUID)]
        assert all(isinstance(r, errors.VaultError) for r in failed), failed
        survivor, gone = (target, source) if merge is True else (source, target)
        for reader in stores:
            history = await reader.get_field_history(tenant, survivor.id, "note")
            assert {v.id for v in history} == {first, *written}, "a written version was lost"
            assert_unbroken_chain(history)
            found = await reader.get_by_id(tenant, survivor.id, include_history=True)
            assert found is not None
            assert {v.id for v in found.field_history["note"]} == {first, *written}
            if merge is True:
                assert "elsewhere" in found.fields
                assert await reader.get_by_id(tenant, source.id) is None
                assert {i.channel_user_id for i in found.channel_identities} == {
                    i.channel_user_id
                    for i in (*source.channel_identities, *target.channel_identities)
                }
            else:
                other = await reader.get_by_id(tenant, gone.id, include_history=True)
                assert other is not None and "note" not in other.field_history
            counts = await reader.count_items_by_status(tenant)
            assert counts["fields"]["active"] == 2
            assert counts["fields"]["superseded"] == len(written)

    async def test_opposite_merges_racing_leave_one_consistent_profile(
        self, store: ProfileStore, other_store: ProfileStore, tenant: UUID
    ) -> None:
        """A->B racing B->A: exactly one succeeds (the other fails with a ccvault error) and
        one live profile owns every identity and field, with one ACTIVE version per name."""
        stores = (store, other_store)
        a = await new_profile(store, tenant)
        b = await new_profile(store, tenant, Channel.SMS)
        for name, profile in (("only_a", a), ("only_b", b), ("shared", a), ("shared", b)):
            await store.update_field(tenant, profile.id, make_field(name, str(profile.id)))
        for profile in (a, b):
            await _warm(stores, tenant, profile.id, "shared")
        results = await asyncio.gather(
            store.merge_profiles(tenant, a.id, b.id),
            other_store.merge_profiles(tenant, b.id, a.id),
            return_exceptions=True,
        )
        assert results.count(True) == 1, results
        loser = results[1 - results.index(True)]
        assert isinstance(loser, errors.VaultError), loser
        survivor, merged = (b, a) if results[0] is True else (a, b)
        identities = [*a.channel_identities, *b.channel_identities]
        for reader in stores:
            assert await reader.get_by_id(tenant, merged.id) is None
            found = await reader.get_by_id(tenant, survivor.id, include_history=True)
            assert found is not None
            assert set(found.fields) == {"only_a", "only_b", "shared"}
            assert len(found.field_history["shared"]) == 2
            for name, history in found.field_history.items():
                active = [v for v in history if v.status is ItemStatus.ACTIVE]
                assert len(active) == 1, (name, history)
            assert {(i.channel, i.channel_user_id) for i in found.channel_identities} == {
                (i.channel, i.channel_user_id) for i in identities
            }
            for identity in identities:
                owner = await reader.get_by_channel_identity(
                    tenant, identity.channel, identity.channel_user_id
                )
                assert owner is not None and owner.id == survivor.id
            counts = await reader.count_items_by_status(tenant)
            assert counts["fields"]["active"] == 3 and counts["fields"]["superseded"] == 1
