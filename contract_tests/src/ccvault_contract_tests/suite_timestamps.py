"""Timestamps round-trip exactly, to the microsecond and timezone-aware, in every field.

The vault stores every timestamp in ``ccvault.arguments.TIMESTAMP_MIN .. TIMESTAMP_MAX``
(UTC), both ends included, exactly: no rounding to milliseconds (BSON dates), no special
values (PostgreSQL's ``infinity``), no naive datetimes on the way back. Each case writes one
moment into every timestamp a caller sets — the profile's ``created_at``, ``updated_at``,
``last_interaction_at``; an identity's ``created_at`` and ``verified_at``; a consent's
``granted_at`` and ``revoked_at``; a field's ``collected_at``, ``updated_at``,
``expires_at`` and ``verified_at``; an asset's ``uploaded_at`` and ``expires_at`` — through
``save``, ``update_field``, ``add_asset`` and ``link_channel``, and reads it back through
every read that returns it. ``superseded_at`` is the store's own clock: it is checked to be
aware, UTC and stable across reads. (Refusing values outside the range is
``suite_edges``'.)
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import pytest

from ccvault.arguments import TIMESTAMP_MAX, TIMESTAMP_MIN
from ccvault.models import (
    Channel,
    ChannelIdentity,
    Consent,
    CustomerProfile,
    ItemStatus,
    ProfileAsset,
    ProfileField,
)
from ccvault.store import ProfileStore
from ccvault_contract_tests.base import ContractBase
from ccvault_contract_tests.helpers import (
    make_asset,
    make_definition,
    make_field,
    make_requirement,
    ts,
    unique_user,
)

__all__ = ["MOMENTS", "TimestampsContract"]

#: The moments every timestamp field must keep exactly: both edges of the supported range
#: (the latest with all six microsecond digits) and values whose microseconds a
#: millisecond-precision or float-based encoding would change.
MOMENTS: dict[str, datetime] = {
    "min": TIMESTAMP_MIN,
    "min_plus_1us": TIMESTAMP_MIN + timedelta(microseconds=1),
    "max": TIMESTAMP_MAX,
    "max_minus_1us": TIMESTAMP_MAX - timedelta(microseconds=1),
    "microseconds": datetime(2026, 5, 1, 9, 30, 0, 123457, tzinfo=UTC),
    "one_microsecond": datetime(2000, 1, 1, 0, 0, 0, 1, tzinfo=UTC),
    "epoch_minus_1us": datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
    "leap_day": datetime(2024, 2, 29, 23, 59, 59, 999001, tzinfo=UTC),
}


def _exact(found: datetime | None, wanted: datetime, what: str) -> None:
    assert found is not None, f"{what}: missing"
    assert found.tzinfo is not None and found.utcoffset() == timedelta(0), (
        f"{what}: not timezone-aware UTC ({found!r})"
    )
    assert found == wanted, f"{what}: {found.isoformat()} != {wanted.isoformat()}"
    assert found.microsecond == wanted.microsecond, f"{what}: microseconds changed"


def _check_field(item: ProfileField, moment: datetime, where: str) -> None:
    _exact(item.collected_at, moment, f"{where} collected_at")
    _exact(item.verified_at, moment, f"{where} verified_at")


def _check_asset(item: ProfileAsset, moment: datetime, where: str) -> None:
    _exact(item.uploaded_at, moment, f"{where} uploaded_at")
    _exact(item.expires_at, moment, f"{where} expires_at")


def _check_profile(profile: CustomerProfile, moment: datetime, where: str) -> None:
    """Every caller-set timestamp of the profile but ``updated_at`` (which ``link_channel``
    and other writes may move to the store's clock)."""
    _exact(profile.created_at, moment, f"{where} profile created_at")
    _exact(profile.last_interaction_at, moment, f"{where} last_interaction_at")
    for identity in profile.channel_identities:
        _exact(identity.created_at, moment, f"{where} identity created_at")
        _exact(identity.verified_at, moment, f"{where} identity verified_at")
    assert profile.consents, f"{where}: consents missing"
    for consent in profile.consents:
        _exact(consent.granted_at, moment, f"{where} consent granted_at")
        _exact(consent.revoked_at, moment, f"{where} consent revoked_at")


def _aware_utc(value: Any, what: str) -> None:
    assert isinstance(value, datetime) and value.tzinfo is not None, f"{what}: {value!r}"
    assert value.utcoffset() == timedelta(0), f"{what}: not UTC"


class TimestampsContract(ContractBase):
    """Every timestamp a caller writes comes back exactly; the store's own are aware UTC."""

    @pytest.mark.parametrize("which", sorted(MOMENTS))
    async def test_every_timestamp_round_trips_exactly_and_aware(
        self, store: ProfileStore, tenant: UUID, which: str
    ) -> None:
        moment = MOMENTS[which]
        # a field that is never expired, so it is ACTIVE in every read, and one that
        # expires at the moment itself (expired unless the moment is the far future)
        kept = make_field(
            "passport_no",
            "X1",
            collected_at=moment,
            updated_at=moment,
            verified=True,
            verified_at=moment,
            expires_at=TIMESTAMP_MAX,
        )
        due = make_field("otp", "1", collected_at=moment, verified_at=moment, expires_at=moment)
        asset = make_asset("scan", uploaded_at=moment, expires_at=moment)
        identity = ChannelIdentity(
            channel=Channel.WEB,
            channel_user_id=unique_user("web"),
            verified=True,
            verified_at=moment,
            primary=True,
            created_at=moment,
        )
        profile = CustomerProfile(
            tenant_id=tenant,
            channel_identities=[identity],
            consents=[
                Consent(
                    consent_type="marketing", granted=False, granted_at=moment, revoked_at=moment
                )
            ],
            fields={"passport_no": kept},
            assets=[asset],
            created_at=moment,
            updated_at=moment,
            last_interaction_at=moment,
        )
        await store.save(profile)
        saved = await store.get_by_id(tenant, profile.id)
        assert saved is not None
        _exact(saved.updated_at, moment, "profile updated_at")
        _check_profile(saved, moment, "after save")
        await store.update_field(tenant, profile.id, due)
        linked = ChannelIdentity(
            channel=Channel.TELEGRAM,
            channel_user_id=unique_user("tg"),
            verified=True,
            verified_at=moment,
            created_at=moment,
        )
        assert await store.link_channel(tenant, profile.id, linked) is True
        later_asset = make_asset("selfie", uploaded_at=moment, expires_at=moment)
        await store.add_asset(tenant, profile.id, later_asset)

        # whole-profile reads, by every key, with and without history
        reads = {
            "get_by_id": await store.get_by_id(tenant, profile.id),
            "get_by_id+history": await store.get_by_id(tenant, profile.id, include_history=True),
            "get_by_customer_id": await store.get_by_customer_id(tenant, profile.customer_id),
            "get_by_channel_identity": await store.get_by_channel_identity(
                tenant, linked.channel, linked.channel_user_id, include_history=True
            ),
        }
        for where, found in reads.items():
            assert found is not None, where
            _check_profile(found, moment, where)
            _check_field(found.fields["passport_no"], moment, f"{where} fields")
            _exact(found.fields["passport_no"].updated_at, moment, f"{where} updated_at")
            _exact(found.fields["passport_no"].expires_at, TIMESTAMP_MAX, f"{where} expires_at")
            for item in found.assets:
                _check_asset(item, moment, f"{where} assets")
        full = reads["get_by_id+history"]
        assert full is not None
        [otp] = full.field_history["otp"]
        _check_field(otp, moment, "history otp")
        _exact(otp.expires_at, moment, "history otp expires_at")
        assert len(full.asset_history) == 2
        for item in full.asset_history:
            _check_asset(item, moment, "asset_history")

        # single-item reads
        for status in (None, ItemStatus.ACTIVE):
            found_field = await store.get_field(tenant, profile.id, "passport_no", status=status)
            assert found_field is not None
            _check_field(found_field, moment, f"get_field({status})")
        any_otp = await store.get_field(tenant, profile.id, "otp", status=None)
        assert any_otp is not None
        _exact(any_otp.expires_at, moment, "get_field(otp) expires_at")
        [history] = await store.get_field_history(tenant, profile.id, "otp")
        _check_field(history, moment, "get_field_history")
        for item in (asset, later_asset):
            by_id = await store.get_asset(tenant, profile.id, item.id)
            assert by_id is not None
            _check_asset(by_id, moment, "get_asset")
            by_name = await store.get_asset_by_name(tenant, profile.id, item.name, status=None)
            assert by_name is not None
            _check_asset(by_name, moment, "get_asset_by_name")

        # the export holds them too, as aware ISO-8601 text or datetimes
        document = await store.export_profile(tenant, profile.id)
        exported = CustomerProfile.model_validate(document["profile"])
        _check_profile(exported, moment, "export")

    @pytest.mark.parametrize("which", sorted(MOMENTS))
    async def test_definition_and_requirement_timestamps_round_trip_exactly(
        self, store: ProfileStore, tenant: UUID, which: str
    ) -> None:
        """``created_at`` as given (``updated_at`` is the store's clock, stamped by save)."""
        moment = MOMENTS[which]
        agent, scenario = uuid4(), uuid4()
        definition = make_definition(tenant, agent, "email", created_at=moment)
        await store.save_field_definition(definition)
        requirement = make_requirement(tenant, agent, scenario, "email", created_at=moment)
        await store.save_scenario_requirement(requirement)
        found = await store.get_field_definition(tenant, agent, "email")
        assert found is not None
        _exact(found.created_at, moment, "definition created_at")
        _aware_utc(found.updated_at, "definition updated_at")
        [listed] = await store.get_field_definitions(tenant, agent)
        _exact(listed.created_at, moment, "listed definition created_at")
        [req] = await store.get_scenario_requirements(tenant, scenario)
        _exact(req.created_at, moment, "requirement created_at")
        _aware_utc(req.updated_at, "requirement updated_at")

    async def test_timestamps_survive_an_in_place_save_and_a_supersede(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        """Saving a profile back unchanged changes no timestamp; a supersede stamps an aware
        UTC ``superseded_at`` that every read returns identically."""
        moment = MOMENTS["microseconds"]
        profile = await store.get_or_create(tenant, Channel.SMS, unique_user())
        first = make_field("email", "a@example.com", collected_at=moment, verified_at=moment)
        await store.update_field(tenant, profile.id, first)
        scan = make_asset("scan", uploaded_at=moment, expires_at=TIMESTAMP_MAX)
        await store.add_asset(tenant, profile.id, scan)
        held = await store.get_by_id(tenant, profile.id)
        assert held is not None
        before = held.model_dump()
        await store.save(held)
        again = await store.get_by_id(tenant, profile.id)
        assert again is not None
        assert again.model_dump() == before
        second = make_field("email", "b@example.com", collected_at=ts(1))
        await store.update_field(tenant, profile.id, second)
        await store.add_asset(tenant, profile.id, make_asset("scan"), supersede_existing=True)
        old = await store.get_field(tenant, profile.id, "email", status=ItemStatus.SUPERSEDED)
        assert old is not None
        _aware_utc(old.superseded_at, "field superseded_at")
        _exact(old.collected_at, moment, "superseded field collected_at")
        [in_history] = [
            v
            for v in await store.get_field_history(tenant, profile.id, "email")
            if v.id == first.id
        ]
        assert in_history.superseded_at == old.superseded_at
        old_scan = await store.get_asset(tenant, profile.id, scan.id)
        assert old_scan is not None
        _aware_utc(old_scan.superseded_at, "asset superseded_at")
        _exact(old_scan.expires_at, TIMESTAMP_MAX, "superseded asset expires_at")
        full = await store.get_by_id(tenant, profile.id, include_history=True)
        assert full is not None
        [scan_again] = [a for a in full.asset_history if a.id == scan.id]
        assert scan_again.superseded_at == old_scan.superseded_at
