"""The erasure rule (:mod:`ccvault.rules.erasure`) as pure functions: the closure, the
kinds, the bound, the key check, and no personal data in any repr."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from uuid import UUID, uuid4

import pytest

from ccvault import errors
from ccvault.models import Channel, MergeRecord
from ccvault.rules.erasure import (
    MAX_SUBJECT_PROFILES,
    ProfileKind,
    SubjectKey,
    SubjectProfile,
    SubjectState,
    erasure_report,
    next_lookups,
    plan_erasure,
)

BASE = datetime(2026, 1, 1, tzinfo=UTC)
TENANT = uuid4()
PHONE = "+4915199999999"


def _profile(
    pid: UUID, *, live: bool = True, keys: frozenset[tuple[Channel, str]] = frozenset()
) -> SubjectProfile:
    return SubjectProfile(
        profile_id=pid,
        customer_id=uuid4(),
        live=live,
        identity_keys=keys,
        field_versions=2,
        assets=1,
        identities=len(keys),
        consents=0,
    )


def _merge(source: UUID, target: UUID, *, undone: bool = False) -> MergeRecord:
    return MergeRecord(
        tenant_id=TENANT,
        source_profile_id=source,
        target_profile_id=target,
        merged_at=BASE,
        unmerged_at=BASE + timedelta(hours=1) if undone else None,
    )


def test_open_merges_are_followed_both_ways_undone_ones_are_not() -> None:
    a, b, c = uuid4(), uuid4(), uuid4()
    state = SubjectState(profiles={a: _profile(a)})
    state.profiles_read.add(a)
    state.merge_logs_read.add(a)
    state.add_merges([_merge(b, a), _merge(a, c, undone=True)])
    lookups = next_lookups(state)
    assert lookups.profile_ids == frozenset({b})  # not c: that merge was undone
    assert lookups.customer_ids == frozenset({state.profiles[a].customer_id})


def test_identities_of_reached_profiles_are_looked_up_once() -> None:
    a = uuid4()
    key = (Channel.WHATSAPP, PHONE)
    state = SubjectState(profiles={a: _profile(a, keys=frozenset({key}))})
    assert next_lookups(state).identities == frozenset({key})
    state.identities_read.add(key)
    state.merge_logs_read.add(a)
    state.customer_ids_read.add(state.profiles[a].customer_id)
    assert not next_lookups(state)


def test_kinds_and_merge_entries_of_the_plan() -> None:
    live, deleted, away, stranger = uuid4(), uuid4(), uuid4(), uuid4()
    profiles = {
        live: _profile(live),
        deleted: _profile(deleted, live=False),
        away: _profile(away, live=False),
    }
    merges = [_merge(away, live), _merge(deleted, stranger, undone=True), _merge(uuid4(), uuid4())]
    plan = plan_erasure(profiles, merges)
    assert {p.profile_id: p.kind for p in plan.profiles} == {
        live: ProfileKind.LIVE,
        deleted: ProfileKind.DELETED,  # its merge was undone: not merged away
        away: ProfileKind.MERGED_AWAY,
    }
    assert set(plan.merge_ids) == {merges[0].id, merges[1].id}  # not the unrelated entry
    assert list(plan.profile_ids) == sorted(profiles, key=lambda u: u.int)


def test_a_subject_past_the_bound_is_refused() -> None:
    state = SubjectState()
    for _ in range(MAX_SUBJECT_PROFILES + 1):
        pid = uuid4()
        state.profiles[pid] = _profile(pid)
    with pytest.raises(errors.ValidationError, match="profile by profile"):
        next_lookups(state)


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"channel": Channel.SMS},
        {"channel_user_id": PHONE},
        {"customer_id": uuid4(), "profile_id": uuid4()},
        {"channel": Channel.SMS, "channel_user_id": PHONE, "customer_id": uuid4()},
    ],
    ids=["nothing", "channel-only", "user-only", "two-ids", "identity-and-id"],
)
def test_subject_key_names_exactly_one_thing(kwargs: dict[str, object]) -> None:
    with pytest.raises(errors.ValidationError):
        SubjectKey(**kwargs)  # type: ignore[arg-type]


def test_no_personal_data_in_any_repr() -> None:
    key = SubjectKey(channel=Channel.WHATSAPP, channel_user_id=PHONE)
    a = uuid4()
    profile = _profile(a, keys=frozenset({(Channel.WHATSAPP, PHONE)}))
    state = SubjectState(profiles={a: profile})
    state.identities_read.add((Channel.WHATSAPP, PHONE))
    report = erasure_report(TENANT, plan_erasure(state.profiles, []), dry_run=True)
    for shown in (key, profile, state, next_lookups(state), report):
        assert PHONE not in repr(shown) and PHONE not in str(shown)
    assert report.totals() == {
        "profiles": 1,
        "field_versions": 2,
        "assets": 1,
        "identities": 1,
        "consents": 0,
        "merge_log_entries": 0,
    }
