"""Model-based checks: random operation sequences against a small reference model.

Each seed drives one reproducible sequence of ``update_field`` (with and without
supersede, timestamps drawn from a tiny set so ties are frequent, some already expired),
``delete_item`` of single versions and ``expire_stale_fields`` sweeps on two profiles. After
every few steps, every read of every name is compared with what the model predicts:
history order (newest ``collected_at`` first, ties newest write first), statuses as served
(expiry applied at read time), supersede links, ``get_field`` per status, the profile's
``fields`` and the status counts.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import datetime
from uuid import UUID

import pytest

from ccvault import errors
from ccvault.models import ItemStatus
from ccvault.store import ProfileStore
from ccvault_contract_tests.base import ContractBase
from ccvault_contract_tests.helpers import make_field, new_profile, ts

__all__ = ["ModelBasedContract"]

NAMES = ("alpha", "beta", "gamma")
SEEDS = range(10)
STEPS = 36


@dataclass
class _Version:
    id: UUID
    seq: int
    collected_at: datetime
    expires_at: datetime | None
    status: ItemStatus = ItemStatus.ACTIVE
    superseded_by_id: UUID | None = None

    def served_status(self, now: datetime) -> ItemStatus:
        if (
            self.status is ItemStatus.ACTIVE
            and self.expires_at is not None
            and self.expires_at <= now
        ):
            return ItemStatus.EXPIRED
        return self.status


@dataclass
class _Model:
    versions: dict[tuple[UUID, str], list[_Version]] = field(default_factory=dict)
    seq: int = 0

    def of(self, profile: UUID, name: str) -> list[_Version]:
        return self.versions.setdefault((profile, name), [])

    def active(self, profile: UUID, name: str) -> _Version | None:
        found = [v for v in self.of(profile, name) if v.status is ItemStatus.ACTIVE]
        assert len(found) <= 1
        return found[0] if found else None

    def newest_first(self, profile: UUID, name: str) -> list[_Version]:
        return sorted(self.of(profile, name), key=lambda v: (v.collected_at, v.seq), reverse=True)


class ModelBasedContract(ContractBase):
    @pytest.mark.parametrize("seed", SEEDS)
    async def test_random_operation_sequences_match_a_reference_model(
        self, store: ProfileStore, tenant: UUID, seed: int
    ) -> None:
        rng = random.Random(seed)
        moments = [ts(-3000), ts(-2000), ts(-1000)]
        profiles = [(await new_profile(store, tenant)).id for _ in range(2)]
        model = _Model()
        for step in range(STEPS):
            profile = rng.choice(profiles)
            name = rng.choice(NAMES)
            roll = rng.random()
            if roll < 0.7:
                await self._update(store, tenant, model, rng, moments, profile, name)
            elif roll < 0.85:
                versions = model.of(profile, name)
                if versions:
                    victim = rng.choice(versions)
                    assert await store.delete_item(tenant, victim.id, "profile_field") is True
                    versions.remove(victim)
            else:
                now = store.now()
                expected = sum(
                    1
                    for versions in model.versions.values()
                    for v in versions
                    if v.served_status(now) is ItemStatus.EXPIRED and v.status is ItemStatus.ACTIVE
                )
                assert await store.expire_stale_fields(tenant) == expected
                for versions in model.versions.values():
                    for v in versions:
                        v.status = v.served_status(now)
            if step % 6 == 5 or step == STEPS - 1:
                await self._check(store, tenant, model, profiles)

    async def _update(
        self,
        store: ProfileStore,
        tenant: UUID,
        model: _Model,
        rng: random.Random,
        moments: list[datetime],
        profile: UUID,
        name: str,
    ) -> None:
        supersede = rng.random() < 0.8
        now = store.now()
        active = model.active(profile, name)
        expires_at = ts(-500) if rng.random() < 0.2 else None
        item = make_field(
            name, rng.randint(0, 999), collected_at=rng.choice(moments), expires_at=expires_at
        )
        if not supersede and active is not None and active.served_status(now) is ItemStatus.ACTIVE:
            # refused, and nothing written (not even the sweep below)
            with pytest.raises(errors.ActiveFieldConflictError):
                await store.update_field(tenant, profile, item, supersede_existing=False)
            return
        if not supersede:
            # a non-superseding write marks the profile's expired versions EXPIRED in the same
            # step, as expire_stale_fields would, so an expired value never blocks it
            for (owner, _name), versions in model.versions.items():
                if owner == profile:
                    for version in versions:
                        version.status = version.served_status(now)
            active = model.active(profile, name)
        await store.update_field(tenant, profile, item, supersede_existing=supersede)
        model.seq += 1
        if active is not None:
            active.status = ItemStatus.SUPERSEDED
            active.superseded_by_id = item.id
        model.of(profile, name).append(
            _Version(item.id, model.seq, item.collected_at, item.expires_at)
        )

    async def _check(
        self, store: ProfileStore, tenant: UUID, model: _Model, profiles: list[UUID]
    ) -> None:
        now = store.now()
        for profile in profiles:
            whole = await store.get_by_id(tenant, profile)
            assert whole is not None
            for name in NAMES:
                expected = model.newest_first(profile, name)
                history = await store.get_field_history(tenant, profile, name)
                assert [(v.id, v.status, v.superseded_by_id) for v in history] == [
                    (v.id, v.served_status(now), v.superseded_by_id) for v in expected
                ]
                newest = expected[0].id if expected else None
                found = await store.get_field(tenant, profile, name, status=None)
                assert (found.id if found else None) == newest
                superseded = [v for v in expected if v.status is ItemStatus.SUPERSEDED]
                found = await store.get_field(tenant, profile, name, status=ItemStatus.SUPERSEDED)
                assert (found.id if found else None) == (superseded[0].id if superseded else None)
                live = [v for v in expected if v.served_status(now) is ItemStatus.ACTIVE]
                found = await store.get_field(tenant, profile, name)
                assert (found.id if found else None) == (live[0].id if live else None)
                assert (whole.fields[name].id if name in whole.fields else None) == (
                    live[0].id if live else None
                )
        counts = await store.count_items_by_status(tenant)
        stored: dict[str, int] = {s.value: 0 for s in ItemStatus}
        for versions in model.versions.values():
            for v in versions:
                stored[v.status.value] += 1
        assert counts["fields"] == stored
