"""The vault rules as pure plans (ccvault.rules: merge, definitions, identity), no store."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from uuid import UUID, uuid4

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ccvault.store
from ccvault import errors
from ccvault.models import (
    Channel,
    ItemStatus,
    ProfileField,
    ProfileFieldDefinition,
    ScenarioFieldRequirement,
)
from ccvault.rules.definitions import plan_definition_save, plan_requirement_save
from ccvault.rules.identity import link_outcome
from ccvault.rules.merge import (
    HeldIdentity,
    MergePlan,
    MergeSide,
    merge_winner,
    plan_merge,
)

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def _field(
    name: str,
    *,
    verified: bool = False,
    age: int = 0,
    expired: bool | None = None,
) -> ProfileField:
    expires = None if expired is None else NOW + timedelta(days=-1 if expired else 1)
    return ProfileField(
        name=name,
        value=name,
        verified=verified,
        collected_at=NOW - timedelta(minutes=age),
        expires_at=expires,
    )


def _ident(primary: bool = False, channel: Channel = Channel.EMAIL) -> HeldIdentity:
    return HeldIdentity(channel, f"user-{uuid4().hex[:8]}", primary)


def _final_fields(plan: MergePlan, target: MergeSide, source: MergeSide) -> dict[str, list[UUID]]:
    """Name -> ids still ACTIVE after applying the plan."""
    losers = {s.loser_id for s in plan.supersede}
    active: dict[str, list[UUID]] = {}
    for item in (*target.active_fields, *source.active_fields):
        if item.id not in losers:
            active.setdefault(item.name, []).append(item.id)
    return active


# ------------------------------------------------------------------ compatibility


def test_merge_winner_is_still_importable_from_store() -> None:
    assert ccvault.store.merge_winner is merge_winner


# ------------------------------------------------------------------ identities


def test_target_without_primary_takes_the_sources_primary() -> None:
    """The proven drift: a source primary into a target without one stays primary."""
    mine, theirs = _ident(False), _ident(True)
    plan = plan_merge(
        MergeSide.of(uuid4(), [mine]), MergeSide.of(uuid4(), [theirs, _ident(False)]), NOW
    )
    assert plan.primary == theirs.key
    assert [i.primary for i in plan.identities] == [False, True, False]
    assert plan.target_flag_changes == ()
    assert [i.changed for i in plan.moved_identities] == [False, False]


def test_both_with_primary_keep_the_targets() -> None:
    mine, theirs = _ident(True), _ident(True)
    plan = plan_merge(MergeSide.of(uuid4(), [mine]), MergeSide.of(uuid4(), [theirs]), NOW)
    assert plan.primary == mine.key
    (moved,) = plan.moved_identities
    assert moved.key == theirs.key and moved.primary is False and moved.changed is True
    assert sum(i.primary for i in plan.identities) == 1


def test_neither_with_primary_leaves_none() -> None:
    plan = plan_merge(MergeSide.of(uuid4(), [_ident()]), MergeSide.of(uuid4(), [_ident()]), NOW)
    assert plan.primary is None
    assert not any(i.primary or i.changed for i in plan.identities)


def test_a_target_read_with_two_primaries_is_repaired() -> None:
    first, second = _ident(True), _ident(True)
    plan = plan_merge(MergeSide.of(uuid4(), [first, second]), MergeSide.of(uuid4()), NOW)
    assert plan.primary == first.key
    (change,) = plan.target_flag_changes
    assert change.key == second.key and change.primary is False


def test_identity_order_is_target_then_source() -> None:
    target = [_ident(), _ident(True)]
    source = [_ident(True), _ident()]
    plan = plan_merge(MergeSide.of(uuid4(), target), MergeSide.of(uuid4(), source), NOW)
    assert [i.key for i in plan.identities] == [i.key for i in (*target, *source)]
    assert [i.from_source for i in plan.identities] == [False, False, True, True]


# ------------------------------------------------------------------ fields


def test_no_conflict_supersedes_nothing() -> None:
    plan = plan_merge(
        MergeSide.of(uuid4(), active_fields=[_field("email")]),
        MergeSide.of(uuid4(), active_fields=[_field("phone")]),
        NOW,
    )
    assert plan.supersede == ()


def test_conflict_supersedes_the_loser_by_the_winner() -> None:
    target_id, source_id = uuid4(), uuid4()
    old, new = _field("email", age=10), _field("email", age=1)
    plan = plan_merge(
        MergeSide.of(target_id, active_fields=[old]),
        MergeSide.of(source_id, active_fields=[new]),
        NOW,
    )
    (entry,) = plan.supersede
    assert (entry.loser_id, entry.winner_id, entry.loser_profile_id) == (old.id, new.id, target_id)
    assert entry.name == "email" and plan.now == NOW


def test_only_active_versions_take_part() -> None:
    stale = _field("email", age=0).model_copy(update={"status": ItemStatus.SUPERSEDED})
    plan = plan_merge(
        MergeSide.of(uuid4(), active_fields=[_field("email", age=5)]),
        MergeSide.of(uuid4(), active_fields=[stale]),
        NOW,
    )
    assert plan.supersede == ()


def test_a_custom_winner_rule_decides() -> None:
    mine, theirs = _field("email", verified=True), _field("email")
    plan = plan_merge(
        MergeSide.of(uuid4(), active_fields=[mine]),
        MergeSide.of(uuid4(), active_fields=[theirs]),
        NOW,
        choose_winner=lambda target, source: source,
    )
    assert plan.supersede[0].winner_id == theirs.id


def test_the_plan_is_frozen() -> None:
    plan = plan_merge(MergeSide.of(uuid4()), MergeSide.of(uuid4()), NOW)
    try:
        plan.now = NOW  # type: ignore[misc]
    except AttributeError:
        return
    raise AssertionError("MergePlan must be frozen")


# every combination of verified / expired / collected_at, one conflict each
_COMBOS = [
    (tv, te, ta, sv, se, sa)
    for tv in (False, True)
    for te in (None, False, True)
    for ta in (0, 5)
    for sv in (False, True)
    for se in (None, False, True)
    for sa in (0, 5)
]


def _expected_winner(t: ProfileField, s: ProfileField) -> ProfileField:
    t_exp, s_exp = t.is_expired(NOW), s.is_expired(NOW)
    if t_exp != s_exp:
        return s if t_exp else t
    if t.verified != s.verified:
        return t if t.verified else s
    return s if s.collected_at > t.collected_at else t


def test_every_combination_of_verified_expired_and_collected_at() -> None:
    for tv, te, ta, sv, se, sa in _COMBOS:
        t = _field("email", verified=tv, expired=te, age=ta)
        s = _field("email", verified=sv, expired=se, age=sa)
        plan = plan_merge(
            MergeSide.of(uuid4(), active_fields=[t]), MergeSide.of(uuid4(), active_fields=[s]), NOW
        )
        winner = _expected_winner(t, s)
        (entry,) = plan.supersede
        assert entry.winner_id == winner.id, (tv, te, ta, sv, se, sa)
        assert entry.loser_id == (s.id if winner is t else t.id)


# ------------------------------------------------------------------ properties

_names = st.sampled_from(["email", "phone", "city", "dob"])
_fields = st.builds(
    _field,
    _names,
    verified=st.booleans(),
    age=st.integers(min_value=0, max_value=3),
    expired=st.sampled_from([None, False, True]),
)
_identities = st.lists(
    st.builds(_ident, primary=st.booleans(), channel=st.sampled_from(list(Channel))),
    max_size=4,
)


def _one_per_name(items: list[ProfileField]) -> list[ProfileField]:
    seen: dict[str, ProfileField] = {}
    for item in items:
        seen.setdefault(item.name, item)
    return list(seen.values())


@settings(max_examples=200, deadline=None)
@given(
    target_ids=_identities,
    source_ids=_identities,
    target_fields=st.lists(_fields, max_size=4).map(_one_per_name),
    source_fields=st.lists(_fields, max_size=4).map(_one_per_name),
)
def test_merge_plan_properties(
    target_ids: list[HeldIdentity],
    source_ids: list[HeldIdentity],
    target_fields: list[ProfileField],
    source_fields: list[ProfileField],
) -> None:
    target = MergeSide.of(uuid4(), target_ids, target_fields)
    source = MergeSide.of(uuid4(), source_ids, source_fields)
    plan = plan_merge(target, source, NOW)

    # at most one primary afterwards, and the right one
    primaries = [i.key for i in plan.identities if i.primary]
    assert len(primaries) <= 1
    target_primary = next((i.key for i in target_ids if i.primary), None)
    source_primary = next((i.key for i in source_ids if i.primary), None)
    assert plan.primary == (target_primary or source_primary)
    # every identity of both sides is placed once; changed flags are truthful
    assert [i.key for i in plan.identities] == [i.key for i in (*target_ids, *source_ids)]
    stored = {i.key: i.primary for i in (*target_ids, *source_ids)}
    assert all(p.changed == (p.primary != stored[p.key]) for p in plan.identities)

    # exactly one ACTIVE per name afterwards
    active = _final_fields(plan, target, source)
    names = {f.name for f in (*target_fields, *source_fields)}
    assert set(active) == names
    assert all(len(ids) == 1 for ids in active.values())

    # winners by the rule; every loser points at the surviving version
    by_name_t = {f.name: f for f in target_fields}
    by_name_s = {f.name: f for f in source_fields}
    for name in names & set(by_name_s) & set(by_name_t):
        winner = _expected_winner(by_name_t[name], by_name_s[name])
        assert active[name] == [winner.id]
    for entry in plan.supersede:
        assert entry.winner_id == active[entry.name][0]
        assert entry.loser_id != entry.winner_id


# ------------------------------------------------------------------ identities: link


def test_link_outcome() -> None:
    me, other = uuid4(), uuid4()
    assert link_outcome(me, None, Channel.SMS) is True
    assert link_outcome(me, me, Channel.SMS) is False
    with pytest.raises(errors.IdentityConflictError, match="sms") as caught:
        link_outcome(me, other, Channel.SMS)
    assert str(other) not in str(caught.value)


# ------------------------------------------------------------------ definitions/requirements


def _definition(agent: UUID, name: str = "email", **extra: object) -> ProfileFieldDefinition:
    return ProfileFieldDefinition(tenant_id=TENANT, agent_id=agent, name=name, **extra)


def _requirement(agent: UUID, scenario: UUID, name: str = "email") -> ScenarioFieldRequirement:
    return ScenarioFieldRequirement(
        tenant_id=TENANT, agent_id=agent, scenario_id=scenario, field_name=name
    )


TENANT = uuid4()


def test_a_new_definition_is_inserted_with_its_own_id() -> None:
    new = _definition(uuid4())
    plan = plan_definition_save(new, None, None)
    assert (plan.id, plan.created_at, plan.insert) == (new.id, new.created_at, True)


def test_a_definition_saved_by_its_key_keeps_the_stored_id() -> None:
    agent = uuid4()
    stored, new = _definition(agent), _definition(agent)
    plan = plan_definition_save(new, None, stored)
    assert (plan.id, plan.created_at, plan.insert) == (stored.id, stored.created_at, False)
    # the same row found both ways
    assert plan_definition_save(stored, stored, stored).id == stored.id


@pytest.mark.parametrize("change", ["agent_id", "name"])
def test_a_stored_definition_id_never_moves(change: str) -> None:
    stored = _definition(uuid4())
    moved = stored.model_copy(update={change: uuid4() if change == "agent_id" else "phone"})
    with pytest.raises(errors.ConflictError):
        plan_definition_save(moved, stored, None)


@pytest.mark.parametrize("change", ["agent_id", "scenario_id", "field_name", "step_id"])
def test_a_stored_requirement_id_never_moves(change: str) -> None:
    stored = _requirement(uuid4(), uuid4())
    value: object = "phone" if change == "field_name" else uuid4()
    with pytest.raises(errors.ConflictError):
        plan_requirement_save(stored.model_copy(update={change: value}), stored, None)


def test_a_requirement_key_of_another_agent_is_a_conflict() -> None:
    scenario = uuid4()
    stored = _requirement(uuid4(), scenario)
    with pytest.raises(errors.ConflictError):
        plan_requirement_save(_requirement(uuid4(), scenario), None, stored)
    same_agent = _requirement(stored.agent_id, scenario)
    plan = plan_requirement_save(same_agent, None, stored)
    assert (plan.id, plan.insert) == (stored.id, False)


def test_a_side_from_a_loaded_profile() -> None:
    from ccvault.models import ChannelIdentity, CustomerProfile

    email = _field("email")
    profile = CustomerProfile(
        tenant_id=TENANT,
        channel_identities=[
            ChannelIdentity(channel=Channel.SMS, channel_user_id="+1", primary=True),
            ChannelIdentity(channel=Channel.EMAIL, channel_user_id="a@x.org"),
        ],
        fields={"email": email},
    )
    side = MergeSide.from_profile(profile)
    assert side.profile_id == profile.id
    assert side.identities == (
        HeldIdentity(Channel.SMS, "+1", True),
        HeldIdentity(Channel.EMAIL, "a@x.org", False),
    )
    assert side.active_fields == (email,)
