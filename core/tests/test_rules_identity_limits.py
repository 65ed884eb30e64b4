"""``ccvault.rules.identity.channel_eviction``: the per-channel limit, without storage."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ccvault import errors
from ccvault.arguments import check_max_per_channel
from ccvault.models import Channel, ChannelIdentity
from ccvault.rules.identity import MAX_PER_CHANNEL_LIMIT, channel_eviction

T0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def _identity(
    user: str, minute: int = 0, channel: Channel = Channel.EMAIL, **extra: bool
) -> ChannelIdentity:
    return ChannelIdentity(
        channel=channel, channel_user_id=user, created_at=T0 + timedelta(minutes=minute), **extra
    )


def test_no_limit_evicts_nothing() -> None:
    held = [_identity(f"u{i}", i) for i in range(50)]
    assert channel_eviction(held, Channel.EMAIL, None) is None


def test_room_left_evicts_nothing() -> None:
    held = [_identity("a", 1), _identity("b", 2)]
    assert channel_eviction(held, Channel.EMAIL, 3) is None


def test_only_the_channel_counts() -> None:
    held = [_identity("a", 1), *(_identity(f"w{i}", 0, Channel.WHATSAPP) for i in range(5))]
    assert channel_eviction(held, Channel.EMAIL, 2) is None
    assert channel_eviction(held, Channel.EMAIL, 1) == held[0]


def test_at_the_limit_the_oldest_is_evicted_whatever_the_order() -> None:
    held = [_identity("c", 3), _identity("a", 1), _identity("b", 2)]
    evicted = channel_eviction(held, Channel.EMAIL, 3)
    assert evicted is not None and evicted.channel_user_id == "a"


def test_ties_on_created_at_go_to_the_smaller_user_id() -> None:
    held = [_identity("y", 1), _identity("x", 1), _identity("a", 2)]
    evicted = channel_eviction(held, Channel.EMAIL, 3)
    assert evicted is not None and evicted.channel_user_id == "x"


def test_primary_and_verified_are_never_evicted() -> None:
    held = [
        _identity("p", 0, primary=True),
        _identity("v", 1, verified=True),
        _identity("n", 5),
    ]
    evicted = channel_eviction(held, Channel.EMAIL, 3)
    assert evicted is not None and evicted.channel_user_id == "n"


def test_nothing_evictable_is_a_conflict_naming_only_the_channel() -> None:
    held = [
        _identity("secret-user@example.com", 0, primary=True),
        _identity("other", 1, verified=True),
    ]
    with pytest.raises(errors.ConflictError) as caught:
        channel_eviction(held, Channel.EMAIL, 2)
    assert "email" in str(caught.value)
    assert "secret-user" not in str(caught.value) and "other" not in str(caught.value)
    assert not isinstance(caught.value, errors.IdentityConflictError)


def test_over_the_limit_still_evicts_one() -> None:
    held = [_identity(f"u{i}", i) for i in range(5)]
    evicted = channel_eviction(held, Channel.EMAIL, 2)
    assert evicted is not None and evicted.channel_user_id == "u0"


@pytest.mark.parametrize("bad", [0, -1, MAX_PER_CHANNEL_LIMIT + 1, True, False, 1.0, "3", [2]])
def test_bad_limits_are_refused(bad: object) -> None:
    with pytest.raises(errors.ValidationError):
        check_max_per_channel(bad)


@pytest.mark.parametrize("good", [None, 1, 2, MAX_PER_CHANNEL_LIMIT])
def test_good_limits_are_kept(good: int | None) -> None:
    assert check_max_per_channel(good) == good


_held = st.lists(
    st.builds(
        _identity,
        st.text(alphabet="abcdef", min_size=1, max_size=4),
        st.integers(0, 5),
        st.sampled_from([Channel.EMAIL, Channel.WHATSAPP]),
        primary=st.booleans(),
        verified=st.booleans(),
    ),
    max_size=12,
    unique_by=lambda i: (i.channel, i.channel_user_id),
)


@given(held=_held, limit=st.integers(1, 6))
def test_the_rule_against_a_model(held: list[ChannelIdentity], limit: int) -> None:
    on_channel = [i for i in held if i.channel is Channel.EMAIL]
    evictable = sorted(
        (i for i in on_channel if not (i.primary or i.verified)),
        key=lambda i: (i.created_at, i.channel_user_id),
    )
    if len(on_channel) < limit:
        assert channel_eviction(held, Channel.EMAIL, limit) is None
    elif not evictable:
        with pytest.raises(errors.ConflictError):
            channel_eviction(held, Channel.EMAIL, limit)
    else:
        evicted = channel_eviction(held, Channel.EMAIL, limit)
        assert evicted == evictable[0]
