"""Identity rules per channel: ``link_channel(..., max_per_channel=N)``.

The rule is core's (:func:`ccvault.rules.identity.channel_eviction`): when a *new* identity
would be one too many on its channel, the oldest (``created_at``, ties by channel user id)
identity of that channel that is neither primary nor verified is evicted and released, in
the same atomic step as the link; none evictable: ``ConflictError``, nothing written.
"""

from __future__ import annotations

import asyncio
from uuid import UUID

import pytest

from ccvault import errors
from ccvault.models import Channel, ChannelIdentity, CustomerProfile
from ccvault.store import ProfileStore
from ccvault_contract_tests.base import ContractBase
from ccvault_contract_tests.helpers import new_profile, snapshot, ts, unique_user

__all__ = ["IdentityLimitsContract"]


def _identity(
    seconds: float, channel: Channel = Channel.EMAIL, user: str | None = None, **extra: object
) -> ChannelIdentity:
    return ChannelIdentity(
        channel=channel,
        channel_user_id=user or unique_user("limit-"),
        created_at=ts(seconds),
        **extra,
    )


async def _users_on(
    store: ProfileStore, tenant: UUID, profile_id: UUID, channel: Channel
) -> set[str]:
    found = await store.get_by_id(tenant, profile_id)
    assert found is not None
    return {i.channel_user_id for i in found.channel_identities if i.channel is channel}


async def _owner(store: ProfileStore, tenant: UUID, identity: ChannelIdentity) -> UUID | None:
    found = await store.get_by_channel_identity(tenant, identity.channel, identity.channel_user_id)
    return None if found is None else found.id


async def _link_all(
    store: ProfileStore, tenant: UUID, profile: CustomerProfile, *identities: ChannelIdentity
) -> None:
    for identity in identities:
        assert await store.link_channel(tenant, profile.id, identity) is True


class IdentityLimitsContract(ContractBase):
    async def test_identity_limit_evicts_the_oldest_evictable_identity(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        profile = await new_profile(store, tenant)
        older, newer = _identity(-30), _identity(-20)
        await _link_all(store, tenant, profile, newer, older)  # linked newest first
        # warm any lookup cache of the identity about to be evicted
        assert await _owner(store, tenant, older) == profile.id
        latest = _identity(-10)
        assert await store.link_channel(tenant, profile.id, latest, max_per_channel=2) is True
        assert await _users_on(store, tenant, profile.id, Channel.EMAIL) == {
            newer.channel_user_id,
            latest.channel_user_id,
        }
        assert await _owner(store, tenant, older) is None
        assert await _owner(store, tenant, latest) == profile.id
        # the other channel (the primary WhatsApp identity) is untouched
        assert await _users_on(store, tenant, profile.id, Channel.WHATSAPP) == {
            profile.channel_identities[0].channel_user_id
        }

    async def test_identity_limit_ties_on_created_at_evict_the_smaller_user_id(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        profile = await new_profile(store, tenant)
        moment = ts(-30)
        base = unique_user("tie-")
        first = ChannelIdentity(
            channel=Channel.EMAIL, channel_user_id=base + "-a", created_at=moment
        )
        second = ChannelIdentity(
            channel=Channel.EMAIL, channel_user_id=base + "-b", created_at=moment
        )
        await _link_all(store, tenant, profile, second, first)
        latest = _identity(-10)
        assert await store.link_channel(tenant, profile.id, latest, max_per_channel=2) is True
        assert await _users_on(store, tenant, profile.id, Channel.EMAIL) == {
            second.channel_user_id,
            latest.channel_user_id,
        }

    async def test_identity_limit_never_evicts_primary_or_verified_identities(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        profile = await new_profile(store, tenant, Channel.WHATSAPP)
        primary = profile.channel_identities[0]
        verified = _identity(-100, Channel.WHATSAPP, verified=True, verified_at=ts(-100))
        plain = _identity(-50, Channel.WHATSAPP)
        await _link_all(store, tenant, profile, verified, plain)
        latest = _identity(-10, Channel.WHATSAPP)
        assert await store.link_channel(tenant, profile.id, latest, max_per_channel=3) is True
        assert await _users_on(store, tenant, profile.id, Channel.WHATSAPP) == {
            primary.channel_user_id,
            verified.channel_user_id,
            latest.channel_user_id,
        }
        assert await _owner(store, tenant, plain) is None

    async def test_identity_limit_with_nothing_evictable_is_a_conflict_and_writes_nothing(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        profile = await new_profile(store, tenant, Channel.WHATSAPP)
        verified = _identity(-100, Channel.WHATSAPP, verified=True, verified_at=ts(-100))
        await _link_all(store, tenant, profile, verified)
        before = await snapshot(store, tenant, profiles=(profile.id,))
        refused = _identity(-10, Channel.WHATSAPP)
        with pytest.raises(errors.ConflictError) as caught:
            await store.link_channel(tenant, profile.id, refused, max_per_channel=2)
        # it may name the channel (a remote client shows the server's generic text), never
        # a channel user id
        message = str(caught.value)
        for identity in (*profile.channel_identities, verified, refused):
            assert identity.channel_user_id not in message
        assert await snapshot(store, tenant, profiles=(profile.id,)) == before
        assert await _owner(store, tenant, refused) is None
        # on another channel the limit has room
        other = _identity(-5)
        assert await store.link_channel(tenant, profile.id, other, max_per_channel=2) is True

    async def test_identity_limit_relinking_a_held_identity_is_false_and_evicts_nothing(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        profile = await new_profile(store, tenant)
        first, second = _identity(-30), _identity(-20)
        await _link_all(store, tenant, profile, first, second)
        before = await snapshot(store, tenant, profiles=(profile.id,))
        for limit in (1, 2):
            for held in (first, second):
                assert (
                    await store.link_channel(tenant, profile.id, held, max_per_channel=limit)
                    is False
                )
        assert await snapshot(store, tenant, profiles=(profile.id,)) == before

    async def test_identity_limit_evicts_one_even_when_already_over_the_limit(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        profile = await new_profile(store, tenant)
        held = [_identity(-40), _identity(-30), _identity(-20)]
        await _link_all(store, tenant, profile, *held)  # no limit: three
        latest = _identity(-10)
        assert await store.link_channel(tenant, profile.id, latest, max_per_channel=2) is True
        assert await _users_on(store, tenant, profile.id, Channel.EMAIL) == {
            held[1].channel_user_id,
            held[2].channel_user_id,
            latest.channel_user_id,
        }

    async def test_identity_limit_evicted_identity_is_free_to_link_elsewhere_or_start_afresh(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        profile = await new_profile(store, tenant)
        other = await new_profile(store, tenant)
        first, second = _identity(-40), _identity(-30)
        await _link_all(store, tenant, profile, first, second)
        # two over the limit of 1 (each link evicts one): the two new ones stay
        latest = (_identity(-20), _identity(-10))
        for identity in latest:
            assert await store.link_channel(tenant, profile.id, identity, max_per_channel=1)
        assert await _owner(store, tenant, first) is None
        assert await _owner(store, tenant, second) is None
        # linked elsewhere
        assert await store.link_channel(tenant, other.id, first) is True
        assert await _owner(store, tenant, first) == other.id
        # or a fresh profile for the same channel user
        fresh = await store.get_or_create(tenant, second.channel, second.channel_user_id)
        assert fresh.id not in (profile.id, other.id)
        assert await _owner(store, tenant, second) == fresh.id
        assert await _users_on(store, tenant, profile.id, Channel.EMAIL) == {
            i.channel_user_id for i in latest
        }

    @pytest.mark.parametrize(
        "limit", [0, -1, 101, True, 2.0, "2"], ids=["0", "-1", "101", "true", "float", "str"]
    )
    async def test_identity_limit_out_of_range_or_not_an_int_is_refused(
        self, store: ProfileStore, tenant: UUID, limit: object
    ) -> None:
        profile = await new_profile(store, tenant)
        await _link_all(store, tenant, profile, _identity(-30))
        before = await snapshot(store, tenant, profiles=(profile.id,))
        refused = _identity(-10)
        with pytest.raises(errors.ValidationError):
            await store.link_channel(
                tenant,
                profile.id,
                refused,
                max_per_channel=limit,  # type: ignore[arg-type]
            )
        assert await snapshot(store, tenant, profiles=(profile.id,)) == before
        assert await _owner(store, tenant, refused) is None

    async def test_identity_limit_holds_under_concurrent_links_from_two_instances(
        self, store: ProfileStore, other_store: ProfileStore, tenant: UUID
    ) -> None:
        stores = (store, other_store)
        profile = await new_profile(store, tenant)
        racing = [_identity(-100 + i) for i in range(12)]
        results = await asyncio.gather(
            *(
                stores[i % 2].link_channel(tenant, profile.id, identity, max_per_channel=2)
                for i, identity in enumerate(racing)
            )
        )
        assert results == [True] * len(racing)
        for reader in stores:
            kept = await _users_on(reader, tenant, profile.id, Channel.EMAIL)
            assert len(kept) == 2
            for identity in racing:
                expected = profile.id if identity.channel_user_id in kept else None
                assert await _owner(reader, tenant, identity) == expected
