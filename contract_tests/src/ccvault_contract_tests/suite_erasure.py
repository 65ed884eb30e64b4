"""Erasure by data subject: ``find_subject``, ``erase_subject(dry_run=...)``, ``export_subject``.

The rule is core's (:mod:`ccvault.rules.erasure`): a channel identity or customer id reaches
every profile it ever belonged to (live, soft-deleted with its identities released), and a
merge not undone reaches both its sides (the merged-away profile and its target, whole).
Erasing removes all of them in one step with every field version, asset, identity, consent
and merge log entry naming them; a dry run reports the same and changes nothing; other
subjects are untouched.
"""

from __future__ import annotations

import asyncio
from uuid import UUID

import pytest

from ccvault import errors
from ccvault.models import Channel, ChannelIdentity, Consent, CustomerProfile
from ccvault.rules.erasure import ProfileKind
from ccvault.store import ProfileStore
from ccvault_contract_tests.base import ContractBase
from ccvault_contract_tests.helpers import (
    fresh_id,
    make_asset,
    make_field,
    new_profile,
    snapshot,
    ts,
    unique_user,
)

__all__ = ["ErasureContract"]


class _World:
    """One subject spread over four profiles, and a bystander.

    * ``old``: an earlier profile of the subject's phone, soft-deleted (identity released);
    * ``live``: the current profile of the phone, with an asset, a consent, history;
    * ``away``: a profile with the subject's email, merged into ``live`` (merged away);
    * ``other``: another person, who shares nothing and must survive.
    """

    def __init__(self, phone: str, email: str) -> None:
        self.phone = phone
        self.email = email
        self.old: CustomerProfile
        self.live: CustomerProfile
        self.away: CustomerProfile
        self.other: CustomerProfile


async def _build(store: ProfileStore, tenant: UUID) -> _World:
    world = _World(unique_user("+49"), unique_user("erase-") + "@example.com")
    world.old = await store.get_or_create(tenant, Channel.WHATSAPP, world.phone)
    await store.update_field(tenant, world.old.id, make_field("name", "Old Name"))
    await store.update_field(tenant, world.old.id, make_field("name", "Older Name"))
    assert await store.delete(tenant, world.old.id)
    world.live = await store.get_or_create(tenant, Channel.WHATSAPP, world.phone)
    await store.update_field(tenant, world.live.id, make_field("city", "Berlin"))
    await store.add_asset(tenant, world.live.id, make_asset("passport"))
    live = await store.get_by_id(tenant, world.live.id)
    assert live is not None
    live.consents = [Consent(consent_type="marketing", granted=True, ip_address="192.0.2.7")]
    await store.save(live)
    world.away = await store.get_or_create(tenant, Channel.EMAIL, world.email)
    await store.update_field(tenant, world.away.id, make_field("email", world.email))
    await store.merge_profiles(tenant, world.away.id, world.live.id)
    world.other = await store.get_or_create(tenant, Channel.WHATSAPP, unique_user("+31"))
    await store.update_field(tenant, world.other.id, make_field("city", "Amsterdam"))
    return world


async def _export(store: ProfileStore, tenant: UUID, profile_id: UUID) -> dict[str, object]:
    document = await store.export_profile(tenant, profile_id)
    document.pop("exported_at")
    return document


class ErasureContract(ContractBase):
    async def test_subject_reaches_deleted_live_and_merged_away_profiles(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        world = await _build(store, tenant)
        report = await store.find_subject(
            tenant, channel=Channel.WHATSAPP, channel_user_id=world.phone
        )
        kinds = {p.profile_id: p.kind for p in report.profiles}
        assert kinds == {
            world.old.id: ProfileKind.DELETED,
            world.live.id: ProfileKind.LIVE,
            world.away.id: ProfileKind.MERGED_AWAY,
        }
        assert report.dry_run is True
        # exact counts: old holds 2 versions + its released identity; live holds its own
        # version, the moved email version, one asset, the phone and the moved email
        # identity, one consent; the merged-away profile holds nothing any more
        by_id = {p.profile_id: p for p in report.profiles}
        old, live, away = by_id[world.old.id], by_id[world.live.id], by_id[world.away.id]
        assert (old.field_versions, old.assets, old.identities, old.consents) == (2, 0, 1, 0)
        assert (live.field_versions, live.assets, live.identities, live.consents) == (2, 1, 2, 1)
        assert (away.field_versions, away.assets, away.identities, away.consents) == (0, 0, 0, 0)
        assert report.merge_log_entries == 1
        assert report.totals()["profiles"] == 3
        # the same subject from any of its keys
        for key in (
            {"channel": Channel.EMAIL, "channel_user_id": world.email},
            {"customer_id": world.old.customer_id},
            {"profile_id": world.away.id},
        ):
            assert await store.find_subject(tenant, **key) == report

    async def test_dry_run_changes_nothing_and_reports_what_erasure_then_erases(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        world = await _build(store, tenant)
        ids = (world.old.id, world.live.id, world.away.id, world.other.id)
        before = await snapshot(store, tenant, profiles=ids)
        dry = await store.erase_subject(
            tenant, channel=Channel.WHATSAPP, channel_user_id=world.phone, dry_run=True
        )
        assert await snapshot(store, tenant, profiles=ids) == before
        done = await store.erase_subject(
            tenant, channel=Channel.WHATSAPP, channel_user_id=world.phone
        )
        assert done.dry_run is False
        assert done.model_copy(update={"dry_run": True}) == dry
        assert set(done.profile_ids) == {world.old.id, world.live.id, world.away.id}

    async def test_erasure_leaves_nothing_of_the_subject_and_spares_others(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        world = await _build(store, tenant)
        other_before = await _export(store, tenant, world.other.id)
        # warm any cache of every lookup key
        assert await store.get_by_channel_identity(tenant, Channel.WHATSAPP, world.phone)
        assert await store.get_by_channel_identity(tenant, Channel.EMAIL, world.email)
        assert await store.get_by_customer_id(tenant, world.live.customer_id)
        await store.erase_subject(tenant, channel=Channel.WHATSAPP, channel_user_id=world.phone)
        for profile in (world.old, world.live, world.away):
            with pytest.raises(errors.NotFoundError):
                await store.export_profile(tenant, profile.id)
            assert await store.get_by_id(tenant, profile.id) is None
            assert await store.get_merge_log(tenant, profile.id) == []
            assert await store.get_by_customer_id(tenant, profile.customer_id) is None
        assert await store.get_by_channel_identity(tenant, Channel.WHATSAPP, world.phone) is None
        assert await store.get_by_channel_identity(tenant, Channel.EMAIL, world.email) is None
        assert set(await store.list_profile_ids(tenant)) == {world.other.id}
        with pytest.raises(errors.NotFoundError):
            await store.find_subject(tenant, channel=Channel.WHATSAPP, channel_user_id=world.phone)
        with pytest.raises(errors.NotFoundError):
            await store.export_subject(tenant, channel=Channel.EMAIL, channel_user_id=world.email)
        assert await _export(store, tenant, world.other.id) == other_before
        # the identities are free: the same person starts afresh
        again = await store.get_or_create(tenant, Channel.WHATSAPP, world.phone)
        assert again.id not in {world.old.id, world.live.id, world.away.id}

    async def test_export_subject_covers_the_erasure_set(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        world = await _build(store, tenant)
        document = await store.export_subject(tenant, customer_id=world.away.customer_id)
        assert document["format"] == "ccvault.subject-export/1"
        exported = {UUID(p["profile"]["id"]): p["kind"] for p in document["profiles"]}
        assert exported == {
            world.old.id: "deleted",
            world.live.id: "live",
            world.away.id: "merged_away",
        }
        old = next(p["profile"] for p in document["profiles"] if p["kind"] == "deleted")
        assert [v["value"] for v in old["field_history"]["name"]] == ["Older Name", "Old Name"]
        assert [i["channel_user_id"] for i in old["channel_identities"]] == [world.phone]
        assert len(document["merge_log"]) == 1

    async def test_unmerged_entry_is_erased_but_not_followed(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        subject = await new_profile(store, tenant)
        stranger = await new_profile(store, tenant)
        await store.update_field(tenant, stranger.id, make_field("city", "Lyon"))
        merge_id = fresh_id()
        await store.merge_profiles(tenant, subject.id, stranger.id, merge_id=merge_id)
        await store.unmerge(tenant, merge_id)
        report = await store.find_subject(tenant, profile_id=subject.id)
        assert report.profile_ids == [subject.id]
        assert report.merge_log_entries == 1
        await store.erase_subject(tenant, profile_id=subject.id)
        assert await store.get_merge_log(tenant, stranger.id) == []
        kept = await store.get_by_id(tenant, stranger.id)
        assert kept is not None and kept.fields["city"].value == "Lyon"

    async def test_subject_by_identity_released_by_an_earlier_soft_delete_only(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        user = unique_user("+44")
        gone = await store.get_or_create(tenant, Channel.SMS, user)
        assert await store.delete(tenant, gone.id)
        report = await store.erase_subject(tenant, channel=Channel.SMS, channel_user_id=user)
        assert report.profile_ids == [gone.id]
        assert report.profiles[0].kind is ProfileKind.DELETED
        assert report.profiles[0].identities == 1
        with pytest.raises(errors.NotFoundError):
            await store.export_profile(tenant, gone.id)

    async def test_subject_key_is_checked_before_anything_is_read(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        profile = await new_profile(store, tenant)
        with pytest.raises(errors.ValidationError):
            await store.erase_subject(tenant)
        with pytest.raises(errors.ValidationError):
            await store.erase_subject(tenant, channel=Channel.SMS)
        with pytest.raises(errors.ValidationError):
            await store.erase_subject(
                tenant, profile_id=profile.id, customer_id=profile.customer_id
            )
        with pytest.raises(errors.NotFoundError):
            await store.erase_subject(tenant, channel=Channel.SMS, channel_user_id="+0000000")
        assert await store.get_by_id(tenant, profile.id) is not None

    async def test_identity_linked_then_kept_reaches_its_profile(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        profile = await new_profile(store, tenant)
        email = ChannelIdentity(
            channel=Channel.EMAIL, channel_user_id=unique_user("x-") + "@e.com", created_at=ts()
        )
        assert await store.link_channel(tenant, profile.id, email)
        report = await store.find_subject(
            tenant, channel=Channel.EMAIL, channel_user_id=email.channel_user_id
        )
        assert report.profile_ids == [profile.id]

    async def test_erase_hook_refuses_a_plan_whose_merge_log_changed(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        """``_erase_subject`` re-checks, in its atomic step, that the merge log entries
        touching the profiles are the plan's: a merge since the plan was read means the
        plan misses the data it moved, so nothing is written (the public layer reads the
        subject again)."""
        subject = await new_profile(store, tenant)
        await store.update_field(tenant, subject.id, make_field("city", "Rome"))
        report = await store.find_subject(tenant, profile_id=subject.id)
        assert report.merge_log_entries == 0
        newcomer = await new_profile(store, tenant)
        await store.update_field(tenant, newcomer.id, make_field("nickname", "Nico"))
        await store.merge_profiles(tenant, newcomer.id, subject.id)
        before = await snapshot(store, tenant, profiles=(subject.id, newcomer.id))
        with pytest.raises(errors.ConflictError):
            await store._erase_subject(tenant, list(report.profile_ids), [])
        assert await snapshot(store, tenant, profiles=(subject.id, newcomer.id)) == before
        # read again, the subject includes the merged-away newcomer, and goes whole
        done = await store.erase_subject(tenant, profile_id=subject.id)
        assert set(done.profile_ids) == {subject.id, newcomer.id}
        assert set(await store.list_profile_ids(tenant)).isdisjoint(done.profile_ids)

    async def test_erasure_racing_a_merge_of_the_subject_leaves_none_of_it(
        self, store: ProfileStore, other_store: ProfileStore, tenant: UUID
    ) -> None:
        """An erasure and a merge of the subject into another profile, on two instances:
        whichever order they take, nothing of the subject survives (the merge came first:
        its target is erased too; the erasure came first: the merge finds no source)."""
        for _ in range(4):
            subject = await new_profile(store, tenant)
            held = subject.channel_identities[0]
            mine = await store.update_field(tenant, subject.id, make_field("city", "Rome"))
            newcomer = await new_profile(store, tenant)
            erased, merged = await asyncio.gather(
                store.erase_subject(tenant, profile_id=subject.id),
                other_store.merge_profiles(tenant, subject.id, newcomer.id),
                return_exceptions=True,
            )
            assert not isinstance(erased, BaseException), erased
            if isinstance(merged, BaseException):
                assert isinstance(merged, errors.NotFoundError), merged
            found = await store.get_by_channel_identity(tenant, held.channel, held.channel_user_id)
            assert found is None
            for profile_id in await store.list_profile_ids(tenant):
                exported = await store.export_profile(tenant, profile_id)
                versions = exported["profile"]["field_history"].values()
                assert str(mine) not in {v["id"] for named in versions for v in named}
