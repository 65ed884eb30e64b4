"""``ccvault.rules.save.plan_save``: the save rule, checked without any storage."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from uuid import UUID, uuid4

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ccvault import errors
from ccvault.models import (
    Channel,
    ChannelIdentity,
    Consent,
    CustomerProfile,
    ItemStatus,
    ProfileAsset,
    ProfileField,
)
from ccvault.rules.save import SavePlan, SaveState, StoredItem, identity_key, plan_save

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
TENANT = uuid4()


def _field(name: str = "email", **extra: object) -> ProfileField:
    return ProfileField(name=name, value=f"{name}-value", **extra)


def _asset(name: str = "id_scan", **extra: object) -> ProfileAsset:
    return ProfileAsset(
        name=name,
        asset_type="document",
        storage_provider="s3",
        storage_path=f"s3://bucket/{uuid4()}",
        **extra,
    )


def _profile(**extra: object) -> CustomerProfile:
    return CustomerProfile(tenant_id=TENANT, **extra)


def _stored(owner: UUID, item: ProfileField | ProfileAsset, status: ItemStatus) -> StoredItem:
    by = uuid4() if status is ItemStatus.SUPERSEDED else None
    at = NOW - timedelta(hours=1) if by is not None else None
    return StoredItem(owner, item.name, status, by, at)


def _items(
    fields: tuple[ProfileField, ...], assets: tuple[ProfileAsset, ...]
) -> list[ProfileField | ProfileAsset]:
    return [*fields, *assets]


# ------------------------------------------------------------------------- refusals


def test_a_gone_profile_is_not_found() -> None:
    with pytest.raises(errors.NotFoundError):
        plan_save(SaveState(exists=True, gone=True), _profile(), NOW)


def test_a_customer_id_of_another_live_profile_is_an_identity_conflict() -> None:
    profile = _profile()
    with pytest.raises(errors.IdentityConflictError):
        plan_save(SaveState(customer_owner=uuid4()), profile, NOW)
    # its own customer id is fine
    plan_save(SaveState(exists=True, customer_owner=profile.id), profile, NOW)


def test_an_identity_of_another_live_profile_is_an_identity_conflict() -> None:
    identity = ChannelIdentity(channel=Channel.SMS, channel_user_id="+15550100")
    profile = _profile(channel_identities=[identity])
    state = SaveState(identity_owners={identity_key(identity): uuid4()})
    with pytest.raises(errors.IdentityConflictError) as caught:
        plan_save(state, profile, NOW)
    assert "+15550100" not in str(caught.value)  # no personal data in messages
    own = SaveState(exists=True, identity_owners={identity_key(identity): profile.id})
    assert plan_save(own, profile, NOW).identities == (identity,)


def test_an_identity_listed_twice_or_two_primaries_are_refused() -> None:
    one = ChannelIdentity(channel=Channel.SMS, channel_user_id="a", primary=True)
    two = ChannelIdentity(channel=Channel.EMAIL, channel_user_id="b", primary=True)
    with pytest.raises(errors.ValidationError):
        plan_save(SaveState(), _profile(channel_identities=[one, one]), NOW)
    with pytest.raises(errors.ValidationError):
        plan_save(SaveState(), _profile(channel_identities=[one, two]), NOW)


@pytest.mark.parametrize("kind", ["field", "asset"])
def test_an_item_of_another_profile_is_a_conflict(kind: str) -> None:
    item: ProfileField | ProfileAsset = _field() if kind == "field" else _asset()
    profile = _profile(fields={"email": item}) if kind == "field" else _profile(assets=[item])
    stored = {item.id: _stored(uuid4(), item, ItemStatus.ACTIVE)}
    state = SaveState(fields=stored) if kind == "field" else SaveState(assets=stored)
    with pytest.raises(errors.ConflictError):
        plan_save(state, profile, NOW)


@pytest.mark.parametrize("status", list(ItemStatus))
@pytest.mark.parametrize("kind", ["field", "asset"])
def test_a_rename_is_a_conflict_whatever_the_stored_status(kind: str, status: ItemStatus) -> None:
    profile = _profile()
    item: ProfileField | ProfileAsset = _field("email") if kind == "field" else _asset("scan")
    stored = {item.id: StoredItem(profile.id, "old_name", status)}
    if kind == "field":
        profile.fields = {"email": item}  # type: ignore[dict-item]
        state = SaveState(exists=True, fields=stored)
    else:
        profile.assets = [item]  # type: ignore[list-item]
        state = SaveState(exists=True, assets=stored)
    with pytest.raises(errors.ConflictError):
        plan_save(state, profile, NOW)


def test_an_asset_listed_twice_is_refused() -> None:
    asset = _asset()
    with pytest.raises(errors.ValidationError):
        plan_save(SaveState(), _profile(assets=[asset, asset]), NOW)


# ------------------------------------------------------------------------- the plan


def test_a_new_profile_is_created_with_everything_new() -> None:
    identity = ChannelIdentity(channel=Channel.WEB, channel_user_id="cookie", primary=True)
    consent = Consent(consent_type="marketing", granted=True)
    email = _field("email", status=ItemStatus.SUPERSEDED, superseded_by_id=uuid4())
    scan = _asset(status=ItemStatus.EXPIRED)
    profile = _profile(
        channel_identities=[identity], consents=[consent], fields={"email": email}, assets=[scan]
    )
    plan = plan_save(SaveState(), profile, NOW)
    assert plan.create is True and plan.now == NOW
    assert plan.identities == (identity,) and plan.consents == (consent,)
    assert [f.id for f in plan.new_fields] == [email.id]
    assert [a.id for a in plan.new_assets] == [scan.id]
    # new items are stored ACTIVE, with no supersede links, whatever the caller's copy says
    for item in _items(plan.new_fields, plan.new_assets):
        assert item.status is ItemStatus.ACTIVE
        assert item.superseded_by_id is None and item.superseded_at is None
    assert not plan.updated_fields and not plan.kept_fields
    assert plan.profile.fields == {} and plan.profile.assets == []
    assert plan.profile.id == profile.id and plan.profile.customer_id == profile.customer_id


def test_an_active_stored_item_is_updated_in_place_with_the_stored_lifecycle() -> None:
    profile = _profile()
    email = _field("email", confidence=0.9)
    scan = _asset(verified=True, status=ItemStatus.EXPIRED, superseded_at=NOW)
    profile.fields = {"email": email}
    profile.assets = [scan]
    state = SaveState(
        exists=True,
        fields={email.id: StoredItem(profile.id, "email", ItemStatus.ACTIVE)},
        assets={scan.id: StoredItem(profile.id, "id_scan", ItemStatus.ACTIVE)},
    )
    plan = plan_save(state, profile, NOW)
    assert plan.create is False
    assert [(f.id, f.confidence, f.status) for f in plan.updated_fields] == [
        (email.id, 0.9, ItemStatus.ACTIVE)
    ]
    [updated_scan] = plan.updated_assets
    assert updated_scan.verified is True
    assert updated_scan.status is ItemStatus.ACTIVE and updated_scan.superseded_at is None
    assert not plan.new_fields and not plan.new_assets


@pytest.mark.parametrize("status", [ItemStatus.SUPERSEDED, ItemStatus.EXPIRED, ItemStatus.ORPHANED])
@pytest.mark.parametrize("kind", ["field", "asset"])
def test_a_stale_copy_of_an_item_no_longer_active_is_kept_as_stored(
    kind: str, status: ItemStatus
) -> None:
    """The stale-save rule: no revival, no overwrite, no conflict; the rest goes ahead."""
    profile = _profile()
    held: ProfileField | ProfileAsset = _field("email") if kind == "field" else _asset()
    extra = _field("nickname")
    stored = {held.id: _stored(profile.id, held, status)}
    profile.fields = {"nickname": extra}
    if kind == "field":
        profile.fields["email"] = held  # type: ignore[assignment]
        state = SaveState(exists=True, fields=stored)
    else:
        profile.assets = [held]  # type: ignore[list-item]
        state = SaveState(exists=True, assets=stored)
    plan = plan_save(state, profile, NOW)
    kept = plan.kept_fields if kind == "field" else plan.kept_assets
    assert kept == (held.id,)
    written = _items(plan.new_fields, plan.new_assets) + _items(
        plan.updated_fields, plan.updated_assets
    )
    assert held.id not in {item.id for item in written}
    assert [f.id for f in plan.new_fields] == [extra.id]


# ------------------------------------------------------------------------- properties

_STATUSES = st.sampled_from(list(ItemStatus))


@st.composite
def _scenarios(draw: st.DrawFn) -> tuple[SaveState, CustomerProfile]:
    profile = _profile()
    names = draw(st.lists(st.from_regex(r"[a-z]{1,6}", fullmatch=True), unique=True, max_size=6))
    fields: dict[str, ProfileField] = {}
    stored_fields: dict[UUID, StoredItem] = {}
    for name in names:
        item = _field(name)
        fields[name] = item
        stored = draw(st.one_of(st.none(), _STATUSES))
        if stored is not None:
            stored_fields[item.id] = StoredItem(profile.id, name, stored)
    assets: list[ProfileAsset] = []
    stored_assets: dict[UUID, StoredItem] = {}
    for status in draw(st.lists(st.one_of(st.none(), _STATUSES), max_size=4)):
        asset = _asset(status=draw(_STATUSES))
        assets.append(asset)
        if status is not None:
            stored_assets[asset.id] = StoredItem(profile.id, asset.name, status)
    profile.fields = fields
    profile.assets = assets
    state = SaveState(exists=True, fields=stored_fields, assets=stored_assets)
    return state, profile


def _check_plan(plan: SavePlan, state: SaveState, profile: CustomerProfile) -> None:
    # every listed item lands in exactly one bucket
    field_ids = [f.id for f in profile.fields.values()]
    buckets = [f.id for f in plan.new_fields] + [f.id for f in plan.updated_fields]
    assert sorted(map(str, buckets + list(plan.kept_fields))) == sorted(map(str, field_ids))
    asset_ids = [a.id for a in profile.assets]
    asset_buckets = [a.id for a in (*plan.new_assets, *plan.updated_assets)]
    assert sorted(map(str, asset_buckets + list(plan.kept_assets))) == sorted(map(str, asset_ids))
    # save never changes a stored status: what is overwritten keeps the stored lifecycle,
    # and only ACTIVE stored items are overwritten
    for item in _items(plan.updated_fields, plan.updated_assets):
        stored = {**state.fields, **state.assets}[item.id]
        assert stored.status is ItemStatus.ACTIVE
        assert item.status is stored.status
        assert item.superseded_by_id == stored.superseded_by_id
    for item_id in (*plan.kept_fields, *plan.kept_assets):
        assert {**state.fields, **state.assets}[item_id].status is not ItemStatus.ACTIVE
    # new items are ACTIVE and were not stored
    for item in _items(plan.new_fields, plan.new_assets):
        assert item.status is ItemStatus.ACTIVE and item.superseded_by_id is None
        assert item.id not in state.fields and item.id not in state.assets


@given(_scenarios())
def test_every_plan_keeps_stored_statuses_and_places_each_item_once(
    scenario: tuple[SaveState, CustomerProfile],
) -> None:
    state, profile = scenario
    plan = plan_save(state, profile, NOW)
    _check_plan(plan, state, profile)


@given(_scenarios())
def test_planning_is_pure(scenario: tuple[SaveState, CustomerProfile]) -> None:
    state, profile = scenario
    before = profile.model_dump()
    first = plan_save(state, profile, NOW)
    assert profile.model_dump() == before  # the caller's profile is not touched
    assert plan_save(state, profile, NOW) == first
