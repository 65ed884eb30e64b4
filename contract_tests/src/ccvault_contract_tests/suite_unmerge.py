"""Merge log, unmerge and survivorship policies (issue 16), on every provider and stack.

* every merge is logged in its own atomic step (what moved, what the survivorship rule
  superseded, the primary flags it changed, ``reason`` / ``actor``), listed by
  ``get_merge_log``, exported, and erased by ``purge_profile``;
* ``unmerge`` restores both profiles: the source is live again with its identities, fields,
  assets and consents; superseded versions are ACTIVE again where nothing newer replaced
  them; writes to the target after the merge stay on the target, and a moved item they
  superseded is reported as a conflict (``ccvault.rules.unmerge`` is the rule);
* chained merges are refused with a ConflictError naming the merge to undo first;
* races of unmerge against unmerge and merge across two instances stay consistent;
* a seeded model-based check: random writes, merge, more writes, unmerge, compare both
  customers' data with a model of each alone;
* per-field survivorship policies declared in definitions decide merges.
"""

from __future__ import annotations

import asyncio
import random
from datetime import timedelta
from uuid import UUID, uuid4

import pytest

from ccvault import errors
from ccvault.models import (
    Channel,
    ChannelIdentity,
    Consent,
    CustomerProfile,
    ItemStatus,
    ProfileFieldSource,
    SurvivorshipPolicy,
)
from ccvault.store import ProfileStore
from ccvault_contract_tests.base import ContractBase
from ccvault_contract_tests.helpers import (
    make_asset,
    make_definition,
    make_field,
    new_profile,
    snapshot,
    ts,
    unique_user,
)

__all__ = ["UnmergeContract"]

_SECOND = timedelta(seconds=1)


async def _live(store: ProfileStore, tenant: UUID, profile_id: UUID) -> CustomerProfile:
    found = await store.get_by_id(tenant, profile_id, include_history=True)
    assert found is not None, "profile expected live"
    return found


def _ids(profile: CustomerProfile) -> set[UUID]:
    return {v.id for versions in profile.field_history.values() for v in versions}


def _active(profile: CustomerProfile) -> dict[str, UUID]:
    return {name: f.id for name, f in profile.fields.items()}


def _keys(profile: CustomerProfile) -> set[tuple[Channel, str]]:
    return {(i.channel, i.channel_user_id) for i in profile.channel_identities}


async def _only_merge(store: ProfileStore, tenant: UUID, profile_id: UUID) -> UUID:
    log = await store.get_merge_log(tenant, profile_id)
    assert len(log) == 1
    return log[0].id


class UnmergeContract(ContractBase):
    # ---------------------------------------------------------------------------------
    # the merge log
    # ---------------------------------------------------------------------------------

    async def test_merge_is_logged_with_what_moved(self, store: ProfileStore, tenant: UUID) -> None:
        source = await new_profile(store, tenant)
        target = await new_profile(store, tenant, Channel.EMAIL)
        old = await store.update_field(
            tenant, source.id, make_field("email", "a@example.com", collected_at=ts(-20))
        )
        new = await store.update_field(
            tenant, source.id, make_field("email", "b@example.com", collected_at=ts(-10))
        )
        mine = await store.update_field(
            tenant, target.id, make_field("email", "t@example.com", collected_at=ts(-5))
        )
        asset = await store.add_asset(tenant, source.id, make_asset("passport"))
        loaded = await _live(store, tenant, source.id)
        loaded.consents = [Consent(consent_type="marketing", granted=True, granted_at=ts(-1))]
        await store.save(loaded)
        merge_id = uuid4()
        assert await store.merge_profiles(
            tenant, source.id, target.id, reason="same email", actor="agent:7", merge_id=merge_id
        )
        for side in (source.id, target.id):
            log = await store.get_merge_log(tenant, side)
            assert [r.id for r in log] == [merge_id]
        record = (await store.get_merge_log(tenant, target.id))[0]
        assert record.tenant_id == tenant
        assert (record.source_profile_id, record.target_profile_id) == (source.id, target.id)
        assert (record.reason, record.actor, record.unmerged_at) == ("same email", "agent:7", None)
        assert set(record.moved_field_ids) == {old, new}
        assert record.moved_asset_ids == [asset]
        assert [c.consent_type for c in record.moved_consents] == ["marketing"]
        assert [(m.channel, m.from_source) for m in record.identities] == [(Channel.WHATSAPP, True)]
        assert len(record.superseded) == 1
        entry = record.superseded[0]
        assert (entry.name, entry.loser_id, entry.winner_id) == ("email", new, mine)
        assert entry.loser_profile_id == source.id
        assert entry.policy is SurvivorshipPolicy.VERIFIED_FIRST
        # part of the export of both profiles
        for side in (source.id, target.id):
            document = await store.export_profile(tenant, side)
            assert [r["id"] for r in document["merge_log"]] == [str(merge_id)]
        assert await store.get_merge_log(uuid4(), target.id) == []

    async def test_purge_erases_the_merge_log(self, store: ProfileStore, tenant: UUID) -> None:
        source = await new_profile(store, tenant)
        target = await new_profile(store, tenant)
        third = await new_profile(store, tenant)
        await store.merge_profiles(tenant, source.id, target.id)
        await store.merge_profiles(tenant, third.id, target.id)
        assert len(await store.get_merge_log(tenant, target.id)) == 2
        assert await store.purge_profile(tenant, source.id)
        assert [r.source_profile_id for r in await store.get_merge_log(tenant, target.id)] == [
            third.id
        ]
        assert await store.purge_profile(tenant, target.id)
        assert await store.get_merge_log(tenant, third.id) == []
        assert await store.get_merge_log(tenant, target.id) == []

    # ---------------------------------------------------------------------------------
    # unmerge
    # ---------------------------------------------------------------------------------

    async def test_unmerge_restores_both_profiles(self, store: ProfileStore, tenant: UUID) -> None:
        source = await new_profile(store, tenant)
        target = await new_profile(store, tenant, Channel.EMAIL)
        s_email = await store.update_field(
            tenant, source.id, make_field("email", "s@example.com", collected_at=ts(-30))
        )
        s_phone = await store.update_field(
            tenant, source.id, make_field("phone", "+15550001", collected_at=ts(-30))
        )
        t_email = await store.update_field(
            tenant, target.id, make_field("email", "t@example.com", collected_at=ts(-5))
        )
        s_asset = await store.add_asset(tenant, source.id, make_asset("passport"))
        loaded = await _live(store, tenant, source.id)
        loaded.consents = [Consent(consent_type="marketing", granted=True, granted_at=ts(-1))]
        await store.save(loaded)
        before_source = await _live(store, tenant, source.id)
        before_target = await _live(store, tenant, target.id)

        await store.merge_profiles(tenant, source.id, target.id)
        assert await store.get_by_id(tenant, source.id) is None
        merged = await _live(store, tenant, target.id)
        assert merged.fields["email"].id == t_email
        merge_id = await _only_merge(store, tenant, target.id)

        result = await store.unmerge(tenant, merge_id)
        assert result.merge_id == merge_id
        assert (result.source_profile_id, result.target_profile_id) == (source.id, target.id)
        assert set(result.restored_field_ids) == {s_email, s_phone}
        assert result.restored_asset_ids == [s_asset]
        assert result.reactivated_field_ids == [s_email]
        assert result.restored_consents == 1
        assert result.conflicts == []

        again_source = await _live(store, tenant, source.id)
        again_target = await _live(store, tenant, target.id)
        assert _active(again_source) == _active(before_source)
        assert _active(again_target) == _active(before_target)
        assert _ids(again_source) == _ids(before_source)
        assert _ids(again_target) == _ids(before_target)
        assert again_source.fields["email"].status is ItemStatus.ACTIVE
        assert again_source.fields["email"].superseded_by_id is None
        assert [a.id for a in again_source.assets] == [s_asset]
        assert again_target.assets == []
        assert _keys(again_source) == _keys(before_source)
        assert _keys(again_target) == _keys(before_target)
        assert [i.primary for i in again_source.channel_identities] == [True]
        assert [i.primary for i in again_target.channel_identities] == [True]
        assert [c.consent_type for c in again_source.consents] == ["marketing"]
        assert again_target.consents == []
        for identity in before_source.channel_identities:
            owner = await store.get_by_channel_identity(
                tenant, identity.channel, identity.channel_user_id
            )
            assert owner is not None and owner.id == source.id
        log = await store.get_merge_log(tenant, source.id)
        assert [r.id for r in log] == [merge_id] and log[0].unmerged_at is not None
        # the source is a normal live profile again: writes and a new merge work
        await store.update_field(tenant, source.id, make_field("city", "Lyon"))
        await store.merge_profiles(tenant, source.id, target.id)
        assert len(await store.get_merge_log(tenant, target.id)) == 2

    async def test_writes_after_the_merge_stay_on_the_target(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        source = await new_profile(store, tenant)
        target = await new_profile(store, tenant)
        # the source's email wins the merge (verified), its phone has no rival
        s_email = await store.update_field(
            tenant, source.id, make_field("email", "s@example.com", verified=True)
        )
        s_phone = await store.update_field(tenant, source.id, make_field("phone", "+15550002"))
        t_email = await store.update_field(
            tenant, target.id, make_field("email", "t@example.com", collected_at=ts(-9))
        )
        await store.merge_profiles(tenant, source.id, target.id)
        # after the merge: a new email and a new name on the target, a version derived from
        # a moved one
        later = await store.update_field(
            tenant, target.id, make_field("email", "later@example.com", collected_at=ts(5))
        )
        city = await store.update_field(tenant, target.id, make_field("city", "Oslo"))
        derived = await store.update_field(
            tenant,
            target.id,
            make_field(
                "phone_country", "US", source_item_id=s_phone, source_item_type="profile_field"
            ),
        )
        merge_id = await _only_merge(store, tenant, source.id)
        result = await store.unmerge(tenant, merge_id)

        again_source = await _live(store, tenant, source.id)
        again_target = await _live(store, tenant, target.id)
        assert _active(again_target) == {"email": later, "city": city, "phone_country": derived}
        assert _active(again_source) == {"phone": s_phone}
        moved_email = next(v for v in again_source.field_history["email"] if v.id == s_email)
        assert moved_email.status is ItemStatus.SUPERSEDED
        assert moved_email.superseded_by_id == later
        # the target's own loser stays superseded: something newer holds the name
        own = next(v for v in again_target.field_history["email"] if v.id == t_email)
        assert own.status is ItemStatus.SUPERSEDED
        assert [(c.kind, c.item_id, c.other_id, c.name) for c in result.conflicts] == [
            ("superseded_after_merge", s_email, later, "email")
        ]
        assert result.reactivated_field_ids == []
        # lineage across the two customers still resolves
        chain = await store.get_derivation_chain(tenant, derived, "profile_field")
        assert [str(entry["id"]) for entry in chain] == [str(s_phone), str(derived)]

    async def test_unmerge_refusals(self, store: ProfileStore, tenant: UUID) -> None:
        source = await new_profile(store, tenant)
        target = await new_profile(store, tenant)
        await store.merge_profiles(tenant, source.id, target.id)
        merge_id = await _only_merge(store, tenant, target.id)
        with pytest.raises(errors.NotFoundError):
            await store.unmerge(tenant, uuid4())
        with pytest.raises(errors.NotFoundError):
            await store.unmerge(uuid4(), merge_id)
        with pytest.raises(errors.ValidationError):
            await store.unmerge(tenant, "not-a-uuid")  # type: ignore[arg-type]
        with pytest.raises(errors.ValidationError):
            await store.merge_profiles(tenant, source.id, target.id, reason=7)  # type: ignore[arg-type]
        await store.unmerge(tenant, merge_id)
        state = await snapshot(store, tenant, profiles=(source.id, target.id))
        with pytest.raises(errors.ConflictError):
            await store.unmerge(tenant, merge_id)
        assert await snapshot(store, tenant, profiles=(source.id, target.id)) == state
        # a target deleted since: refused, nothing written
        await store.merge_profiles(tenant, source.id, target.id)
        second = [r for r in await store.get_merge_log(tenant, target.id) if r.unmerged_at is None]
        assert await store.delete(tenant, target.id)
        state = await snapshot(store, tenant, profiles=(source.id, target.id))
        with pytest.raises(errors.ConflictError):
            await store.unmerge(tenant, second[0].id)
        assert await snapshot(store, tenant, profiles=(source.id, target.id)) == state

    async def test_chained_merges_are_undone_last_first(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        a = await new_profile(store, tenant)
        b = await new_profile(store, tenant)
        c = await new_profile(store, tenant)
        fa = await store.update_field(tenant, a.id, make_field("email", "a@example.com"))
        fb = await store.update_field(tenant, b.id, make_field("phone", "+15550003"))
        fc = await store.update_field(tenant, c.id, make_field("city", "Rome"))
        await store.merge_profiles(tenant, a.id, b.id, merge_id=(first := uuid4()))
        await store.merge_profiles(tenant, b.id, c.id, merge_id=(second := uuid4()))
        state = await snapshot(store, tenant, profiles=(a.id, b.id, c.id))
        with pytest.raises(errors.ConflictError) as refused:
            await store.unmerge(tenant, first)
        assert str(second) in str(refused.value)
        assert await snapshot(store, tenant, profiles=(a.id, b.id, c.id)) == state
        await store.unmerge(tenant, second)
        await store.unmerge(tenant, first)
        for profile, field_id in ((a, fa), (b, fb), (c, fc)):
            again = await _live(store, tenant, profile.id)
            assert _ids(again) == {field_id}
            assert _keys(again) == {
                (i.channel, i.channel_user_id) for i in profile.channel_identities
            }

    async def test_unrelated_merges_into_one_target_undo_in_any_order(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        a = await new_profile(store, tenant)
        b = await new_profile(store, tenant)
        t = await new_profile(store, tenant)
        fa = await store.update_field(tenant, a.id, make_field("email", "a@example.com"))
        fb = await store.update_field(tenant, b.id, make_field("phone", "+15550004"))
        await store.merge_profiles(tenant, a.id, t.id, merge_id=(first := uuid4()))
        await store.merge_profiles(tenant, b.id, t.id, merge_id=(second := uuid4()))
        await store.unmerge(tenant, first)
        assert _ids(await _live(store, tenant, a.id)) == {fa}
        assert _ids(await _live(store, tenant, t.id)) == {fb}
        await store.unmerge(tenant, second)
        assert _ids(await _live(store, tenant, b.id)) == {fb}
        assert _ids(await _live(store, tenant, t.id)) == set()

    async def test_primary_flags_restored(self, store: ProfileStore, tenant: UUID) -> None:
        source = await new_profile(store, tenant)
        target = await new_profile(store, tenant)
        loaded = await _live(store, tenant, target.id)
        for identity in loaded.channel_identities:
            identity.primary = False
        await store.save(loaded)
        await store.merge_profiles(tenant, source.id, target.id, merge_id=(merge_id := uuid4()))
        merged = await _live(store, tenant, target.id)
        flags = {(i.channel, i.channel_user_id): i.primary for i in merged.channel_identities}
        assert flags == {
            **dict.fromkeys(_keys(target), False),
            **dict.fromkeys(_keys(source), True),
        }
        await store.unmerge(tenant, merge_id)
        assert [i.primary for i in (await _live(store, tenant, source.id)).channel_identities] == [
            True
        ]
        assert [i.primary for i in (await _live(store, tenant, target.id)).channel_identities] == [
            False
        ]

    # ---------------------------------------------------------------------------------
    # races across two instances
    # ---------------------------------------------------------------------------------

    async def test_concurrent_unmerges_of_one_merge(
        self, store: ProfileStore, other_store: ProfileStore, tenant: UUID
    ) -> None:
        source = await new_profile(store, tenant)
        target = await new_profile(store, tenant)
        await store.update_field(tenant, source.id, make_field("email", "s@example.com"))
        await store.merge_profiles(tenant, source.id, target.id, merge_id=(merge_id := uuid4()))
        outcomes = await asyncio.gather(
            *(s.unmerge(tenant, merge_id) for s in (store, other_store, store, other_store)),
            return_exceptions=True,
        )
        done = [o for o in outcomes if not isinstance(o, BaseException)]
        refused = [o for o in outcomes if isinstance(o, errors.ConflictError)]
        assert len(done) == 1 and len(refused) == 3, outcomes
        again = await _live(store, tenant, source.id)
        assert list(again.fields) == ["email"]
        assert (await _live(other_store, tenant, target.id)).fields == {}

    async def test_unmerge_racing_a_merge_of_the_target(
        self, store: ProfileStore, other_store: ProfileStore, tenant: UUID
    ) -> None:
        for _ in range(3):
            a = await new_profile(store, tenant)
            b = await new_profile(store, tenant)
            c = await new_profile(store, tenant)
            fa = await store.update_field(tenant, a.id, make_field("email", "a@example.com"))
            await store.merge_profiles(tenant, a.id, b.id, merge_id=(first := uuid4()))
            unmerged, merged = await asyncio.gather(
                store.unmerge(tenant, first),
                other_store.merge_profiles(tenant, b.id, c.id),
                return_exceptions=True,
            )
            assert merged is True, merged
            holder = await store.get_by_channel_identity(
                tenant, a.channel_identities[0].channel, a.channel_identities[0].channel_user_id
            )
            assert holder is not None
            if isinstance(unmerged, BaseException):
                # the merge of b came first: a's data followed b into c; undo in order
                assert isinstance(unmerged, errors.ConflictError), unmerged
                assert holder.id == c.id
                assert await store.get_by_id(tenant, a.id) is None
            else:
                assert holder.id == a.id
                assert _ids(await _live(store, tenant, a.id)) == {fa}
                assert fa not in _ids(await _live(store, tenant, c.id))

    # ---------------------------------------------------------------------------------
    # model-based: a wrong merge is undone and the two customers are separated again
    # ---------------------------------------------------------------------------------

    @pytest.mark.parametrize("seed", range(6))
    async def test_random_merge_and_unmerge_separates_the_customers(
        self, store: ProfileStore, tenant: UUID, seed: int
    ) -> None:
        rng = random.Random(seed)
        names = ("alpha", "beta", "gamma", "delta")
        a = await new_profile(store, tenant)
        b = await new_profile(store, tenant)
        extra = ChannelIdentity(channel=Channel.SMS, channel_user_id=unique_user())
        await store.link_channel(tenant, a.id, extra)
        # the model: per profile, per name, the ACTIVE version (id, verified, collected_at)
        base = ts()
        active: dict[UUID, dict[str, tuple[UUID, bool, int]]] = {a.id: {}, b.id: {}}
        history: dict[UUID, set[UUID]] = {a.id: set(), b.id: set()}
        for _ in range(rng.randint(2, 10)):
            owner = rng.choice((a.id, b.id))
            name = rng.choice(names)
            verified = rng.random() < 0.3
            age = rng.choice((-50, -40, -30))
            item_id = await store.update_field(
                tenant,
                owner,
                make_field(
                    name, rng.random(), verified=verified, collected_at=base + age * _SECOND
                ),
            )
            active[owner][name] = (item_id, verified, age)
            history[owner].add(item_id)
        # the merge winners (verified, then most recently collected, tie: the target's)
        winners: dict[str, UUID] = {}
        for name in set(active[a.id]) | set(active[b.id]):
            mine, theirs = active[b.id].get(name), active[a.id].get(name)
            if mine is None or theirs is None:
                winners[name] = (mine or theirs)[0]  # type: ignore[index]
            elif mine[1] != theirs[1]:
                winners[name] = (mine if mine[1] else theirs)[0]
            else:
                winners[name] = (theirs if theirs[2] > mine[2] else mine)[0]
        await store.merge_profiles(tenant, a.id, b.id, merge_id=(merge_id := uuid4()))
        merged = await _live(store, tenant, b.id)
        assert _active(merged) == winners
        # more writes to the target, each superseding whatever is ACTIVE there
        rewritten: dict[str, UUID] = {}
        for _ in range(rng.randint(0, 5)):
            name = rng.choice(names)
            item_id = await store.update_field(
                tenant, b.id, make_field(name, rng.random(), collected_at=base - 10 * _SECOND)
            )
            rewritten[name] = item_id
            history[b.id].add(item_id)
        result = await store.unmerge(tenant, merge_id)

        expected_b = {n: v[0] for n, v in active[b.id].items()}
        expected_b.update(rewritten)
        a_won = {n for n, v in active[a.id].items() if winners[n] == v[0]}
        conflicted = {n for n in a_won if n in rewritten}
        expected_a = {n: v[0] for n, v in active[a.id].items() if n not in conflicted}
        again_a = await _live(store, tenant, a.id)
        again_b = await _live(store, tenant, b.id)
        assert _active(again_a) == expected_a
        assert _active(again_b) == expected_b
        assert _ids(again_a) == history[a.id]
        assert _ids(again_b) == history[b.id]
        assert {c.name for c in result.conflicts} == conflicted
        assert {c.kind for c in result.conflicts} <= {"superseded_after_merge"}
        assert _keys(again_a) == _keys(a) | {(extra.channel, extra.channel_user_id)}
        assert _keys(again_b) == _keys(b)
        for profile in (again_a, again_b):
            for versions in profile.field_history.values():
                assert sum(v.status is ItemStatus.ACTIVE for v in versions) <= 1

    # ---------------------------------------------------------------------------------
    # survivorship policies
    # ---------------------------------------------------------------------------------

    @pytest.mark.parametrize(
        ("policy", "expected"),
        [
            (SurvivorshipPolicy.VERIFIED_FIRST, "target_verified"),
            (SurvivorshipPolicy.MOST_RECENT, "source_recent"),
            (SurvivorshipPolicy.KEEP_TARGET, "target_verified"),
            (SurvivorshipPolicy.MOST_CONFIDENT, "source_recent"),
            (SurvivorshipPolicy.SOURCE_PRIORITY, "source_recent"),
        ],
    )
    async def test_merge_honours_the_field_policy(
        self,
        store: ProfileStore,
        tenant: UUID,
        agent: UUID,
        policy: SurvivorshipPolicy,
        expected: str,
    ) -> None:
        await store.save_field_definition(
            make_definition(
                tenant,
                agent,
                "nickname",
                survivorship=policy,
                source_priority=[ProfileFieldSource.TOOL_RESULT, ProfileFieldSource.USER_PROVIDED],
            )
        )
        stored = await store.get_field_definition(tenant, agent, "nickname")
        assert stored is not None and stored.survivorship is policy
        assert stored.source_priority == [
            ProfileFieldSource.TOOL_RESULT,
            ProfileFieldSource.USER_PROVIDED,
        ]
        source = await new_profile(store, tenant)
        target = await new_profile(store, tenant)
        await store.update_field(
            tenant,
            source.id,
            make_field(
                "nickname",
                "source_recent",
                collected_at=ts(-1),
                confidence=0.9,
                source=ProfileFieldSource.TOOL_RESULT,
            ),
        )
        await store.update_field(
            tenant,
            target.id,
            make_field(
                "nickname",
                "target_verified",
                collected_at=ts(-60),
                verified=True,
                confidence=0.5,
                source=ProfileFieldSource.LLM_EXTRACTED,
            ),
        )
        await store.merge_profiles(tenant, source.id, target.id)
        merged = await _live(store, tenant, target.id)
        assert merged.fields["nickname"].value == expected
        record = (await store.get_merge_log(tenant, target.id))[0]
        assert [e.policy for e in record.superseded] == [policy]

    async def test_policy_of_the_first_agent_declaring_one(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        low, high = sorted((uuid4(), uuid4()), key=lambda u: u.int)
        await store.save_field_definition(
            make_definition(tenant, high, "nickname", survivorship=SurvivorshipPolicy.MOST_RECENT)
        )
        await store.save_field_definition(
            make_definition(tenant, low, "nickname", survivorship=SurvivorshipPolicy.KEEP_TARGET)
        )
        # a disabled definition and a default one never decide
        await store.save_field_definition(
            make_definition(
                tenant,
                UUID(int=0),
                "nickname",
                survivorship=SurvivorshipPolicy.MOST_RECENT,
                enabled=False,
            )
        )
        source = await new_profile(store, tenant)
        target = await new_profile(store, tenant)
        await store.update_field(
            tenant, source.id, make_field("nickname", "newer", collected_at=ts(-1))
        )
        await store.update_field(
            tenant, target.id, make_field("nickname", "older", collected_at=ts(-60))
        )
        await store.merge_profiles(tenant, source.id, target.id)
        merged = await _live(store, tenant, target.id)
        assert merged.fields["nickname"].value == "older"
