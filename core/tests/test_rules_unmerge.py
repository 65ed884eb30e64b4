"""Issue 16a rules: survivorship policies, the merge log entry, plan_unmerge.

The pure rules are tested directly; the property (a wrong merge can be undone and the two
customers' data is exactly separated again) runs hypothesis-generated operation sequences
against the in-memory reference provider and compares with a model of each customer alone.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from uuid import UUID, uuid4

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ccvault import errors
from ccvault.models import (
    Channel,
    ChannelIdentity,
    Consent,
    ItemStatus,
    MergeRecord,
    MergeSupersede,
    ProfileAsset,
    ProfileField,
    ProfileFieldDefinition,
    ProfileFieldSource,
    SurvivorshipPolicy,
)
from ccvault.rules.merge import (
    FieldPolicy,
    MergeLogRequest,
    MergeSide,
    merge_record,
    plan_merge,
    policies_from_definitions,
    should_replace,
    survivorship_chooser,
    survivorship_winner,
)
from ccvault.rules.unmerge import UnmergeState, blocking_merge, plan_unmerge
from ccvault_inmemory import InMemoryProfileStore

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
TENANT = uuid4()


def _field(name: str = "email", **extra: object) -> ProfileField:
    extra.setdefault("collected_at", NOW)
    return ProfileField(name=name, value=name, **extra)


# ---------------------------------------------------------------------------------------
# survivorship
# ---------------------------------------------------------------------------------------


def test_each_policy_picks_its_winner() -> None:
    target = _field(
        verified=True,
        confidence=0.4,
        source=ProfileFieldSource.LLM_EXTRACTED,
        collected_at=NOW - timedelta(hours=1),
    )
    source = _field(confidence=0.9, source=ProfileFieldSource.TOOL_RESULT, collected_at=NOW)
    pick = {
        policy: survivorship_winner(
            target, source, FieldPolicy(policy, (ProfileFieldSource.TOOL_RESULT,)), now=NOW
        )
        for policy in SurvivorshipPolicy
    }
    assert pick[SurvivorshipPolicy.VERIFIED_FIRST] is target
    assert pick[SurvivorshipPolicy.KEEP_TARGET] is target
    assert pick[SurvivorshipPolicy.MOST_RECENT] is source
    assert pick[SurvivorshipPolicy.MOST_CONFIDENT] is source
    assert pick[SurvivorshipPolicy.SOURCE_PRIORITY] is source


def test_every_policy_prefers_an_unexpired_version() -> None:
    expired = _field(verified=True, confidence=1.0, expires_at=NOW - timedelta(seconds=1))
    fresh = _field(collected_at=NOW - timedelta(days=1), confidence=0.1)
    for policy in SurvivorshipPolicy:
        assert survivorship_winner(expired, fresh, FieldPolicy(policy), now=NOW) is fresh


def test_ties_fall_back_to_verified_first_then_keep_the_target() -> None:
    target, source = _field(confidence=0.5), _field(confidence=0.5, verified=True)
    policy = FieldPolicy(SurvivorshipPolicy.MOST_CONFIDENT)
    assert survivorship_winner(target, source, policy) is source
    unlisted = FieldPolicy(SurvivorshipPolicy.SOURCE_PRIORITY, (ProfileFieldSource.TOOL_RESULT,))
    a, b = _field(), _field()
    assert survivorship_winner(a, b, unlisted) is a


def test_policies_come_from_the_first_agent_declaring_one() -> None:
    low, high = UUID(int=1), UUID(int=2)

    def definition(
        agent: UUID, policy: SurvivorshipPolicy, enabled: bool = True
    ) -> ProfileFieldDefinition:
        return ProfileFieldDefinition(
            tenant_id=TENANT, agent_id=agent, name="email", survivorship=policy, enabled=enabled
        )

    chosen = policies_from_definitions(
        [
            definition(high, SurvivorshipPolicy.MOST_RECENT),
            definition(low, SurvivorshipPolicy.KEEP_TARGET),
            definition(UUID(int=0), SurvivorshipPolicy.MOST_CONFIDENT, enabled=False),
        ]
    )
    assert chosen == {"email": FieldPolicy(SurvivorshipPolicy.KEEP_TARGET)}
    only_default = policies_from_definitions([definition(low, SurvivorshipPolicy.VERIFIED_FIRST)])
    assert only_default == {}


def test_should_replace_never_overwrites_verified_with_unverified() -> None:
    verified = _field(verified=True, collected_at=NOW - timedelta(days=3))
    assert not should_replace(verified, _field(collected_at=NOW))
    assert should_replace(verified, _field(verified=True, collected_at=NOW))
    assert should_replace(None, _field())
    plain = _field(collected_at=NOW - timedelta(days=1))
    assert should_replace(plain, _field(collected_at=NOW))
    assert should_replace(plain, _field(collected_at=plain.collected_at))  # newer write wins
    assert not should_replace(plain, _field(), FieldPolicy(SurvivorshipPolicy.KEEP_TARGET))
    expired = _field(verified=True, expires_at=NOW - timedelta(seconds=1))
    assert should_replace(expired, _field(), now=NOW)


def test_chooser_applies_each_names_policy() -> None:
    choose = survivorship_chooser({"nick": FieldPolicy(SurvivorshipPolicy.MOST_RECENT)}, NOW)
    old_verified = _field("nick", verified=True, collected_at=NOW - timedelta(hours=1))
    new_plain = _field("nick")
    assert choose(old_verified, new_plain) is new_plain
    email_verified = _field("email", verified=True, collected_at=NOW - timedelta(hours=1))
    assert choose(email_verified, _field("email")) is email_verified


# ---------------------------------------------------------------------------------------
# the log entry and plan_unmerge
# ---------------------------------------------------------------------------------------


def _identity(user: str, primary: bool) -> ChannelIdentity:
    return ChannelIdentity(channel=Channel.SMS, channel_user_id=user, primary=primary)


def test_merge_record_lists_moves_flags_and_policies() -> None:
    loser, winner = _field(collected_at=NOW - timedelta(hours=1)), _field()
    target_id, source_id = uuid4(), uuid4()
    target = MergeSide.of(target_id, [_identity("t", False)], [loser])
    source = MergeSide.of(source_id, [_identity("s", True)], [winner])
    plan = plan_merge(target, source, NOW)
    request = MergeLogRequest(
        reason="dup", actor="ops", policies={"email": FieldPolicy(SurvivorshipPolicy.MOST_RECENT)}
    )
    consent = Consent(consent_type="marketing", granted=True)
    record = merge_record(
        TENANT,
        plan,
        request,
        moved_field_ids=[winner.id, winner.id],
        moved_asset_ids=[],
        moved_consents=[consent],
        source_identities=source.identities,
        target_identities=target.identities,
    )
    assert record.id == request.merge_id
    assert (record.reason, record.actor, record.merged_at) == ("dup", "ops", NOW)
    assert record.moved_field_ids == [winner.id]
    assert record.moved_consents == [consent]
    assert [
        (m.channel_user_id, m.from_source, m.primary_before, m.primary_after)
        for m in record.identities
    ] == [("s", True, True, True)]
    assert record.superseded == [
        MergeSupersede(
            name="email",
            loser_id=loser.id,
            winner_id=winner.id,
            loser_profile_id=target_id,
            policy=SurvivorshipPolicy.MOST_RECENT,
        )
    ]


def _record(source: UUID, target: UUID, **extra: object) -> MergeRecord:
    extra.setdefault("merged_at", NOW)
    return MergeRecord(
        tenant_id=TENANT,
        source_profile_id=source,
        target_profile_id=target,
        **extra,
    )


def test_plan_unmerge_refusals_name_the_merge_to_undo_first() -> None:
    a, b, c = uuid4(), uuid4(), uuid4()
    first = _record(a, b)
    second = _record(b, c, merged_at=NOW + timedelta(seconds=1))
    state = UnmergeState(record=first, open_merges=(second,), target_live=False, source_live=False)
    with pytest.raises(errors.ConflictError, match=str(second.id)):
        plan_unmerge(state, NOW)
    assert blocking_merge(first, (second,)) == second
    done = first.model_copy(update={"unmerged_at": NOW})
    with pytest.raises(errors.ConflictError, match="already undone"):
        plan_unmerge(UnmergeState(done, (), True, False), NOW)
    with pytest.raises(errors.ConflictError, match="no longer live"):
        plan_unmerge(UnmergeState(first, (), False, False), NOW)
    with pytest.raises(errors.ConflictError, match="live again"):
        plan_unmerge(UnmergeState(first, (), True, True), NOW)


def test_a_later_merge_into_the_same_target_blocks_only_when_it_touched_our_items() -> None:
    a, b, t = uuid4(), uuid4(), uuid4()
    moved = uuid4()
    first = _record(a, t, moved_field_ids=[moved])
    unrelated = _record(b, t)
    touching = _record(
        b,
        t,
        superseded=[
            MergeSupersede(name="email", loser_id=moved, winner_id=uuid4(), loser_profile_id=t)
        ],
    )
    assert blocking_merge(first, (unrelated,)) is None
    assert blocking_merge(first, (touching,)) == touching


def test_moved_items_missing_and_superseded_are_reported() -> None:
    a, t = uuid4(), uuid4()
    moved = _field("email")
    gone = uuid4()
    later = _field("email", collected_at=NOW + timedelta(minutes=1))
    superseded = moved.model_copy(
        update={"status": ItemStatus.SUPERSEDED, "superseded_by_id": later.id}
    )
    asset = ProfileAsset(
        name="passport", asset_type="document", storage_provider="s3", storage_path="s3://x"
    )
    record = _record(
        a,
        t,
        moved_field_ids=[moved.id, gone],
        moved_asset_ids=[asset.id],
        moved_consents=[Consent(consent_type="x", granted=True)],
    )
    state = UnmergeState(
        record,
        (),
        target_live=True,
        source_live=False,
        target_fields=(superseded, later),
        target_assets=(asset,),
    )
    plan = plan_unmerge(state, NOW)
    assert plan.field_ids_to_source == (moved.id,)
    assert plan.asset_ids_to_source == (asset.id,)
    kinds = sorted((c.kind, c.item_id) for c in plan.result.conflicts)
    assert ("item_gone", gone) in kinds
    assert ("superseded_after_merge", moved.id) in kinds
    assert ("consent_gone", None) in kinds
    assert plan.record.unmerged_at == NOW


# ---------------------------------------------------------------------------------------
# the property: merge, more writes, unmerge == each customer alone (hypothesis)
# ---------------------------------------------------------------------------------------

_NAMES = ("alpha", "beta", "gamma")
_WRITE = st.tuples(
    st.sampled_from(("a", "b")),
    st.sampled_from(_NAMES),
    st.booleans(),  # verified
    st.integers(min_value=0, max_value=3),  # age bucket (ties are frequent)
)
_AFTER = st.tuples(
    st.sampled_from(("field", "asset")),
    st.sampled_from(_NAMES),
)


async def _scenario(
    before: list[tuple[str, str, bool, int]], after: list[tuple[str, str]], assets: int
) -> None:
    base = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    async with InMemoryProfileStore() as store:
        tenant = uuid4()
        a = await store.get_or_create(tenant, Channel.WHATSAPP, f"+1{uuid4().int % 10**9}")
        b = await store.get_or_create(tenant, Channel.EMAIL, f"{uuid4().hex}@example.com")
        loaded = await store.get_by_id(tenant, a.id)
        assert loaded is not None
        loaded.consents = [Consent(consent_type="marketing", granted=True)]
        await store.save(loaded)
        ids = {"a": a.id, "b": b.id}
        active: dict[str, dict[str, tuple[UUID, bool, int]]] = {"a": {}, "b": {}}
        history: dict[str, set[UUID]] = {"a": set(), "b": set()}
        for owner, name, verified, age in before:
            field = ProfileField(
                name=name,
                value=age,
                verified=verified,
                collected_at=base + timedelta(minutes=age),
            )
            item_id = await store.update_field(tenant, ids[owner], field)
            active[owner][name] = (item_id, verified, age)
            history[owner].add(item_id)
        own_assets: dict[str, set[UUID]] = {"a": set(), "b": set()}
        for n in range(assets):
            owner = "a" if n % 2 == 0 else "b"
            asset = ProfileAsset(
                name=f"doc{n}", asset_type="document", storage_provider="s3", storage_path="s3://x"
            )
            own_assets[owner].add(await store.add_asset(tenant, ids[owner], asset))
        winners: dict[str, UUID] = {}
        for name in set(active["a"]) | set(active["b"]):
            mine, theirs = active["b"].get(name), active["a"].get(name)
            if mine is None or theirs is None:
                winners[name] = (mine or theirs)[0]  # type: ignore[index]
            elif mine[1] != theirs[1]:
                winners[name] = (mine if mine[1] else theirs)[0]
            else:
                winners[name] = (theirs if theirs[2] > mine[2] else mine)[0]
        merge_id = uuid4()
        await store.merge_profiles(tenant, a.id, b.id, merge_id=merge_id, reason="test")
        merged = await store.get_by_id(tenant, b.id)
        assert merged is not None
        assert {n: f.id for n, f in merged.fields.items()} == winners
        rewritten: dict[str, UUID] = {}
        for kind, name in after:
            if kind == "field":
                field = ProfileField(
                    name=name, value="later", collected_at=base + timedelta(hours=2)
                )
                rewritten[name] = await store.update_field(tenant, b.id, field)
                history["b"].add(rewritten[name])
            else:
                asset = ProfileAsset(
                    name=f"late_{name}",
                    asset_type="document",
                    storage_provider="s3",
                    storage_path="s3://y",
                )
                own_assets["b"].add(await store.add_asset(tenant, b.id, asset))
        result = await store.unmerge(tenant, merge_id)

        a_won = {n for n, v in active["a"].items() if winners[n] == v[0]}
        conflicted = a_won & set(rewritten)
        expected_a = {n: v[0] for n, v in active["a"].items() if n not in conflicted}
        expected_b = {n: v[0] for n, v in active["b"].items()} | rewritten
        again_a = await store.get_by_id(tenant, a.id, include_history=True)
        again_b = await store.get_by_id(tenant, b.id, include_history=True)
        assert again_a is not None and again_b is not None
        assert {n: f.id for n, f in again_a.fields.items()} == expected_a
        assert {n: f.id for n, f in again_b.fields.items()} == expected_b
        for profile, key in ((again_a, "a"), (again_b, "b")):
            versions = {v.id for vs in profile.field_history.values() for v in vs}
            assert versions == history[key]
            assert {x.id for x in profile.asset_history} == own_assets[key]
        assert [c.consent_type for c in again_a.consents] == ["marketing"]
        assert again_b.consents == []
        assert {(i.channel, i.channel_user_id) for i in again_a.channel_identities} == {
            (i.channel, i.channel_user_id) for i in a.channel_identities
        }
        assert {c.name for c in result.conflicts} == conflicted
        log = await store.get_merge_log(tenant, a.id)
        assert [(r.id, r.reason, r.unmerged_at is not None) for r in log] == [
            (merge_id, "test", True)
        ]


@settings(max_examples=60, deadline=None)
@given(
    before=st.lists(_WRITE, max_size=10),
    after=st.lists(_AFTER, max_size=5),
    assets=st.integers(min_value=0, max_value=3),
)
def test_unmerge_separates_the_two_customers_exactly(
    before: list[tuple[str, str, bool, int]], after: list[tuple[str, str]], assets: int
) -> None:
    asyncio.run(_scenario(before, after, assets))
