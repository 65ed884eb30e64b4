"""Provenance: ``explain_field``, as-of reads (``get_profile_as_of``/``get_field_as_of``)
and ``revert_field``, on every provider and stack.

The as-of checks drive the store's clock: every layer of the stack is given one frozen
clock (``ProfileStore.now``, which the store's contract lets tests replace), moved forward by
the test between operations, so every write of an operation happens at one known instant and
the instants probed lie strictly between (or exactly on) writes — no sleeps, no timing. A
seeded random sequence of writes, supersedes, conflicting writes, expiring values, sweeps and
reverts is compared with a small reference model of what the vault served at each instant.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import pytest

from ccvault import errors
from ccvault.models import ItemStatus, ProfileFieldSource, SourceType
from ccvault.store import ProfileStore
from ccvault_contract_tests.base import ContractBase
from ccvault_contract_tests.helpers import make_asset, make_field, new_profile, ts

__all__ = ["ProvenanceContract"]

_TICK = timedelta(milliseconds=10)
SEEDS = range(6)
STEPS = 24
NAMES = ("alpha", "beta")


class _Clock:
    """A frozen clock the test moves: ``now()`` returns the same instant until ``advance``."""

    def __init__(self) -> None:
        base = datetime.now(UTC) - timedelta(days=3)
        self.at = base.replace(microsecond=base.microsecond // 1000 * 1000)

    def __call__(self) -> datetime:
        return self.at

    def advance(self, by: timedelta = _TICK) -> datetime:
        self.at = self.at + by
        return self.at


@contextmanager
def _frozen(store: ProfileStore) -> Iterator[_Clock]:
    """Give every layer of the stack (``store``, its ``inner``, ...) one frozen clock."""
    clock = _Clock()
    layers: list[Any] = []
    layer: Any = store
    while isinstance(layer, ProfileStore) and layer not in layers:
        layers.append(layer)
        layer = getattr(layer, "inner", None)
    for each in layers:
        each.now = clock
    try:
        yield clock
    finally:
        for each in layers:
            del each.now


async def _merge_log(store: ProfileStore, tenant: UUID, profile: UUID) -> list[Any] | None:
    """The profile's merge log, or None when the store keeps none."""
    reader = getattr(store, "get_merge_log", None)
    if reader is None:
        return None
    try:
        return list(await reader(tenant, profile))
    except NotImplementedError:
        return None


def _describe(history: list[Any]) -> str:
    return "; ".join(
        f"{v.id} {v.status.value} collected={v.collected_at.isoformat()}"
        f" updated={v.updated_at.isoformat()}"
        f" superseded={v.superseded_at and v.superseded_at.isoformat()}"
        f" by={v.superseded_by_id} expires={v.expires_at and v.expires_at.isoformat()}"
        for v in history
    )


@dataclass
class _Written:
    id: UUID
    value: Any
    start: datetime
    expires_at: datetime | None
    end: datetime | None = None  # superseded at

    def served(self, at: datetime) -> bool:
        if self.start > at:
            return False
        if self.end is not None and self.end <= at:
            return False
        return self.expires_at is None or at < self.expires_at


@dataclass
class _Model:
    versions: dict[str, list[_Written]] = field(default_factory=dict)

    def served(self, name: str, at: datetime) -> _Written | None:
        live = [v for v in self.versions.get(name, []) if v.served(at)]
        return live[-1] if live else None  # the latest write

    def active(self, name: str) -> _Written | None:
        """The version the store holds ACTIVE (expired or not)."""
        live = [v for v in self.versions.get(name, []) if v.end is None]
        return live[-1] if live else None


class ProvenanceContract(ContractBase):
    # -----------------------------------------------------------------------------------
    # explain
    # -----------------------------------------------------------------------------------

    async def test_explain_answers_source_history_lineage_and_dependents_in_one_call(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        profile = await new_profile(store, tenant)
        scan = await store.add_asset(tenant, profile.id, make_asset("passport_scan"))
        session = uuid4()
        first = await store.update_field(
            tenant, profile.id, make_field("full_name", "Ada L", collected_at=ts(-20))
        )
        served = await store.update_field(
            tenant,
            profile.id,
            make_field(
                "full_name",
                "Ada Lovelace",
                source=ProfileFieldSource.DOCUMENT_EXTRACTED,
                source_session_id=session,
                source_item_id=scan,
                source_item_type=SourceType.PROFILE_ASSET,
                source_metadata={"extractor": "ocr-v2", "quote": "Name: Ada Lovelace"},
                confidence=0.93,
                verified=True,
                verification_method="document",
                collected_at=ts(-10),
            ),
        )
        initials = await store.update_field(
            tenant,
            profile.id,
            make_field(
                "initials",
                "AL",
                source=ProfileFieldSource.SYSTEM_INFERRED,
                source_item_id=served,
                source_item_type=SourceType.PROFILE_FIELD,
            ),
        )
        found = await store.explain_field(tenant, profile.id, "full_name")
        assert found.profile_id == profile.id and found.name == "full_name"
        assert found.active is not None and found.active.id == served
        assert found.active.value == "Ada Lovelace"
        assert found.active.source is ProfileFieldSource.DOCUMENT_EXTRACTED
        assert found.active.source_session_id == session
        assert found.active.source_metadata == {
            "extractor": "ocr-v2",
            "quote": "Name: Ada Lovelace",
        }
        assert found.active.confidence == 0.93 and found.active.verified
        assert [(r.version.id, r.reason.value, r.replaced_by_id) for r in found.replaced] == [
            (first, "update", served)
        ]
        assert found.replaced[0].replaced_at is not None
        assert [(e.id, e.type.value) for e in found.derivation_chain] == [
            (scan, "profile_asset"),
            (served, "profile_field"),
        ]
        assert [f.id for f in found.dependent_fields] == [initials]
        assert found.dependent_assets == []
        assert found.restores_version_id is None
        # JSON-ready as one document
        assert found.model_dump(mode="json")["active"]["id"] == str(served)

    async def test_explain_says_why_each_version_is_not_served(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        profile = await new_profile(store, tenant)
        v1 = await store.update_field(tenant, profile.id, make_field("city", "Oslo"))
        v2 = await store.update_field(tenant, profile.id, make_field("city", "Bergen"))
        v3 = await store.revert_field(tenant, profile.id, "city", v1)
        found = await store.explain_field(tenant, profile.id, "city")
        assert found.active is not None and found.active.id == v3
        assert found.restores_version_id == v1
        reasons = {r.version.id: (r.reason.value, r.replaced_by_id) for r in found.replaced}
        assert reasons == {v2: ("revert", v3), v1: ("update", v2)}

        # expiry: nothing served, the version says why
        await store.update_field(
            tenant, profile.id, make_field("otp", "1234", collected_at=ts(-60), expires_at=ts(-1))
        )
        expired = await store.explain_field(tenant, profile.id, "otp")
        assert expired.active is None and expired.derivation_chain == []
        assert [(r.reason.value, r.replaced_at) for r in expired.replaced] == [
            ("expiry", expired.replaced[0].version.expires_at)
        ]

    async def test_explain_names_orphaned_versions(self, store: ProfileStore, tenant: UUID) -> None:
        profile = await new_profile(store, tenant)
        root = await store.update_field(tenant, profile.id, make_field("email", "a@example.com"))
        derived = await store.update_field(
            tenant,
            profile.id,
            make_field(
                "domain",
                "example.com",
                source_item_id=root,
                source_item_type=SourceType.PROFILE_FIELD,
            ),
        )
        await store.update_field(tenant, profile.id, make_field("domain", "example.org"))
        assert await store.delete_item(tenant, root, "profile_field")
        assert await store.mark_orphans(tenant) >= 1
        found = await store.explain_field(tenant, profile.id, "domain")
        assert found.active is not None and found.active.value == "example.org"
        assert [(r.version.id, r.reason.value) for r in found.replaced] == [(derived, "orphaned")]

    async def test_explain_names_the_merge_that_superseded_a_version(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        target = await new_profile(store, tenant)
        source = await new_profile(store, tenant)
        kept = await store.update_field(
            tenant, target.id, make_field("email", "t@example.com", verified=True)
        )
        lost = await store.update_field(tenant, source.id, make_field("email", "s@example.com"))
        await store.merge_profiles(tenant, source.id, target.id)
        found = await store.explain_field(tenant, target.id, "email")
        assert found.active is not None and found.active.id == kept
        [replaced] = found.replaced
        assert replaced.version.id == lost and replaced.replaced_by_id == kept
        log = await _merge_log(store, tenant, target.id)
        if log is not None:  # a store keeping the merge log names the merge
            [record] = log
            assert replaced.reason.value == "merge" and replaced.merge_id == record.id

    async def test_explain_refuses_unknown_profiles_and_names(
        self, store: ProfileStore, tenant: UUID, other_tenant: UUID
    ) -> None:
        profile = await new_profile(store, tenant)
        await store.update_field(tenant, profile.id, make_field("email", "a@example.com"))
        with pytest.raises(errors.NotFoundError):
            await store.explain_field(tenant, uuid4(), "email")
        with pytest.raises(errors.NotFoundError):
            await store.explain_field(other_tenant, profile.id, "email")
        with pytest.raises(errors.NotFoundError):
            await store.explain_field(tenant, profile.id, "phone")
        with pytest.raises(errors.ValidationError):
            await store.explain_field(tenant, profile.id, "Not A Name")

    # -----------------------------------------------------------------------------------
    # revert
    # -----------------------------------------------------------------------------------

    async def test_revert_writes_a_new_version_pointing_at_the_restored_one(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        profile = await new_profile(store, tenant)
        v1 = await store.update_field(
            tenant,
            profile.id,
            make_field(
                "email",
                "ada@example.com",
                source=ProfileFieldSource.LLM_EXTRACTED,
                source_metadata={"quote": "mail me at ada@example.com"},
                confidence=0.8,
                verified=True,
                verification_method="email_link",
            ),
        )
        v2 = await store.update_field(tenant, profile.id, make_field("email", "wrong@example.com"))
        v3 = await store.revert_field(tenant, profile.id, "email", v1)
        assert v3 not in (v1, v2)
        active = await store.get_field(tenant, profile.id, "email")
        assert active is not None and active.id == v3 and active.value == "ada@example.com"
        assert active.source_item_id == v1
        assert active.source_item_type is SourceType.PROFILE_FIELD
        assert active.source is ProfileFieldSource.LLM_EXTRACTED
        assert active.source_metadata == {"quote": "mail me at ada@example.com"}
        assert active.confidence == 0.8 and active.verified
        history = {v.id: v for v in await store.get_field_history(tenant, profile.id, "email")}
        assert set(history) == {v1, v2, v3}
        assert history[v2].status is ItemStatus.SUPERSEDED and history[v2].superseded_by_id == v3
        # history is never rewritten: the restored version stays as it was
        assert history[v1].status is ItemStatus.SUPERSEDED and history[v1].superseded_by_id == v2
        chain = await store.get_derivation_chain(tenant, v3, "profile_field")
        assert [entry["id"] for entry in chain] == [v1, v3]

    async def test_revert_to_the_served_version_writes_nothing(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        profile = await new_profile(store, tenant)
        v1 = await store.update_field(tenant, profile.id, make_field("email", "a@example.com"))
        assert await store.revert_field(tenant, profile.id, "email", v1) == v1
        assert [v.id for v in await store.get_field_history(tenant, profile.id, "email")] == [v1]

    async def test_revert_to_an_expired_value_gives_it_its_lifetime_again(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        profile = await new_profile(store, tenant)
        # one base instant: two ts() calls may straddle a millisecond and skew the lifetime
        collected = ts(-3600)
        old = await store.update_field(
            tenant,
            profile.id,
            make_field(
                "otp",
                "1111",
                collected_at=collected,
                expires_at=collected + timedelta(seconds=1800),
            ),
        )
        await store.update_field(tenant, profile.id, make_field("otp", "2222"))
        new = await store.revert_field(tenant, profile.id, "otp", old)
        served = await store.get_field(tenant, profile.id, "otp")
        assert served is not None and served.id == new and served.value == "1111"
        assert served.expires_at is not None
        lifetime = served.expires_at - served.collected_at
        assert lifetime == timedelta(seconds=1800)

    async def test_revert_refuses_versions_it_cannot_restore(
        self, store: ProfileStore, tenant: UUID, other_tenant: UUID
    ) -> None:
        profile = await new_profile(store, tenant)
        other = await new_profile(store, tenant)
        mine = await store.update_field(tenant, profile.id, make_field("email", "a@example.com"))
        await store.update_field(tenant, profile.id, make_field("email", "b@example.com"))
        phone = await store.update_field(tenant, profile.id, make_field("phone", "+4912345"))
        theirs = await store.update_field(tenant, other.id, make_field("email", "c@example.com"))
        before = await store.get_field_history(tenant, profile.id, "email")
        with pytest.raises(errors.NotFoundError):
            await store.revert_field(tenant, profile.id, "email", uuid4())
        with pytest.raises(errors.NotFoundError):
            await store.revert_field(tenant, profile.id, "email", theirs)
        with pytest.raises(errors.ValidationError):
            await store.revert_field(tenant, profile.id, "email", phone)
        with pytest.raises(errors.NotFoundError):
            await store.revert_field(tenant, uuid4(), "email", mine)
        with pytest.raises(errors.NotFoundError):
            await store.revert_field(other_tenant, profile.id, "email", mine)
        with pytest.raises(errors.ValidationError):
            await store.revert_field(tenant, profile.id, "email", "not-a-uuid")  # type: ignore[arg-type]
        assert await store.get_field_history(tenant, profile.id, "email") == before

    # -----------------------------------------------------------------------------------
    # as-of
    # -----------------------------------------------------------------------------------

    async def test_as_of_serves_what_was_served_between_writes_and_honours_expiry(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        profile = await new_profile(store, tenant)
        with _frozen(store) as clock:
            t0 = clock.advance()
            a = await store.update_field(
                tenant, profile.id, make_field("email", "a@x.io", collected_at=t0)
            )
            t1 = clock.advance()
            b = await store.update_field(
                tenant,
                profile.id,
                make_field("email", "b@x.io", collected_at=t1, expires_at=t1 + 3 * _TICK),
            )
            t2 = clock.advance()
            after_expiry = t1 + 3 * _TICK
            assert await store.get_field_as_of(tenant, profile.id, "email", t0 - _TICK) is None
            at_a = await store.get_field_as_of(tenant, profile.id, "email", t0)
            assert at_a is not None and at_a.id == a and at_a.status is ItemStatus.ACTIVE
            assert at_a.superseded_by_id is None
            at_b = await store.get_field_as_of(tenant, profile.id, "email", t1)
            assert at_b is not None and at_b.id == b
            mid = await store.get_field_as_of(tenant, profile.id, "email", t2)
            assert mid is not None and mid.id == b
            # b expired: nothing is served, and a does not come back
            assert await store.get_field_as_of(tenant, profile.id, "email", after_expiry) is None
            whole = await store.get_profile_as_of(tenant, profile.id, t0 + _TICK / 2)
            assert whole.profile_id == profile.id and set(whole.fields) == {"email"}
            assert whole.fields["email"].value == "a@x.io"

    async def test_as_of_dates_a_version_created_by_save_at_the_save(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        """A version created by ``save`` carries the caller's ``updated_at`` (here one from
        long before); it is served from the save, when it superseded the previous one."""
        created = await new_profile(store, tenant)
        with _frozen(store) as clock:
            t1 = clock.advance()
            first = await store.update_field(
                tenant, created.id, make_field("email", "a@x.io", collected_at=t1)
            )
            profile = await store.get_by_id(tenant, created.id)
            assert profile is not None
            stale = t1 - 50 * _TICK
            second = make_field("email", "b@x.io", collected_at=stale, updated_at=stale)
            profile.fields["email"] = second
            t2 = clock.advance(5 * _TICK)
            await store.save(profile)
            clock.advance()
            before = await store.get_field_as_of(tenant, created.id, "email", t2 - _TICK)
            assert before is not None and before.id == first
            at_save = await store.get_field_as_of(tenant, created.id, "email", t2)
            assert at_save is not None and at_save.id == second.id

    async def test_as_of_refuses_unknown_profiles_and_bad_instants(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        profile = await new_profile(store, tenant)
        with pytest.raises(errors.NotFoundError):
            await store.get_profile_as_of(tenant, uuid4(), ts())
        with pytest.raises(errors.NotFoundError):
            await store.get_field_as_of(tenant, uuid4(), "email", ts())
        with pytest.raises(errors.ValidationError):
            await store.get_profile_as_of(tenant, profile.id, datetime(2024, 1, 1))
        with pytest.raises(errors.ValidationError):
            await store.get_field_as_of(tenant, profile.id, "email", "yesterday")  # type: ignore[arg-type]

    async def test_as_of_across_a_merge_gives_moved_items_to_the_source_before_it(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        target = await new_profile(store, tenant)
        source = await new_profile(store, tenant)
        if await _merge_log(store, tenant, target.id) is None:
            pytest.skip("the store keeps no merge log")
        with _frozen(store) as clock:
            clock.advance()
            kept = await store.update_field(
                tenant,
                target.id,
                make_field("email", "t@x.io", verified=True, collected_at=clock()),
            )
            lost = await store.update_field(
                tenant, source.id, make_field("email", "s@x.io", collected_at=clock())
            )
            phone = await store.update_field(
                tenant, source.id, make_field("phone", "+4900", collected_at=clock())
            )
            before = clock.advance()
            merged = clock.advance()
            await store.merge_profiles(tenant, source.id, target.id)
            after = clock.advance()
            then_target = await store.get_profile_as_of(tenant, target.id, before)
            assert {n: f.id for n, f in then_target.fields.items()} == {"email": kept}
            then_source = await store.get_profile_as_of(tenant, source.id, before)
            assert {n: f.id for n, f in then_source.fields.items()} == {
                "email": lost,
                "phone": phone,
            }
            now_target = await store.get_profile_as_of(tenant, target.id, after)
            assert {n: f.id for n, f in now_target.fields.items()} == {
                "email": kept,
                "phone": phone,
            }
            assert (await store.get_profile_as_of(tenant, source.id, merged)).fields == {}

    async def test_as_of_across_an_unmerge_gives_each_profile_its_own_again(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        target = await new_profile(store, tenant)
        source = await new_profile(store, tenant)
        if await _merge_log(store, tenant, target.id) is None:
            pytest.skip("the store keeps no merge log")
        with _frozen(store) as clock:
            clock.advance()
            kept = await store.update_field(
                tenant,
                target.id,
                make_field("email", "t@x.io", verified=True, collected_at=clock()),
            )
            lost = await store.update_field(
                tenant, source.id, make_field("email", "s@x.io", collected_at=clock())
            )
            phone = await store.update_field(
                tenant, source.id, make_field("phone", "+4900", collected_at=clock())
            )
            before = clock.advance()
            clock.advance()
            await store.merge_profiles(tenant, source.id, target.id)
            during = clock.advance()
            [record] = await store.get_merge_log(tenant, target.id)
            clock.advance()
            await store.unmerge(tenant, record.id)
            after = clock.advance()

            async def served(profile: UUID, at: datetime) -> dict[str, UUID]:
                found = await store.get_profile_as_of(tenant, profile, at)
                return {name: item.id for name, item in found.fields.items()}

            assert await served(target.id, before) == {"email": kept}
            assert await served(source.id, before) == {"email": lost, "phone": phone}
            assert await served(target.id, during) == {"email": kept, "phone": phone}
            assert await served(source.id, during) == {}
            assert await served(target.id, after) == {"email": kept}
            assert await served(source.id, after) == {"email": lost, "phone": phone}
            now = await store.get_field(tenant, source.id, "email")
            assert now is not None and now.id == lost

    @pytest.mark.parametrize("seed", SEEDS)
    async def test_as_of_matches_a_model_between_every_pair_of_writes(
        self, store: ProfileStore, tenant: UUID, seed: int
    ) -> None:
        rng = random.Random(seed)
        profile = await new_profile(store, tenant)
        model = _Model()
        probes: list[datetime] = []
        with _frozen(store) as clock:
            for _ in range(STEPS):
                at = clock.advance()
                probes.append(at - _TICK / 2)  # strictly between the last write and this one
                probes.append(at)
                name = rng.choice(NAMES)
                op = rng.random()
                if op < 0.1:
                    await store.expire_stale_fields(tenant, profile.id)
                    continue
                if op < 0.25 and model.versions.get(name):
                    restored = rng.choice(model.versions[name])
                    current = model.active(name)
                    new_id = await store.revert_field(tenant, profile.id, name, restored.id)
                    if current is not None and current.id == restored.id and restored.served(at):
                        assert new_id == restored.id
                        continue
                    lifetime = None
                    if restored.expires_at is not None:
                        lifetime = restored.expires_at - restored.start
                    self._written(model, name, new_id, restored.value, at, lifetime)
                    continue
                lifetime = rng.choice([None, None, _TICK, 2 * _TICK, 3 * _TICK + _TICK / 2])
                value = f"{name}-{rng.randrange(1000)}"
                supersede = rng.random() < 0.8
                item = make_field(
                    name,
                    value,
                    collected_at=at,
                    expires_at=None if lifetime is None else at + lifetime,
                )
                if rng.random() < 0.15:
                    # a new version through save (built at the moment of saving): it
                    # supersedes the ACTIVE version of its name as update_field does
                    held = await store.get_by_id(tenant, profile.id)
                    assert held is not None
                    held.fields[name] = item.model_copy(update={"updated_at": at})
                    await store.save(held)
                    self._written(model, name, item.id, value, at, lifetime)
                    continue
                current = model.active(name)
                if not supersede and current is not None and current.served(at):
                    with pytest.raises(errors.ActiveFieldConflictError):
                        await store.update_field(tenant, profile.id, item, supersede_existing=False)
                    continue
                new_id = await store.update_field(
                    tenant, profile.id, item, supersede_existing=supersede
                )
                self._written(model, name, new_id, value, at, lifetime, supersede=supersede)
            probes.append(clock.advance())
            probes.append(clock.advance(4 * _TICK))
            for at in probes:
                whole = await store.get_profile_as_of(tenant, profile.id, at)
                for name in NAMES:
                    expected = model.served(name, at)
                    want = None if expected is None else (expected.id, expected.value)
                    one = await store.get_field_as_of(tenant, profile.id, name, at)
                    got = None if one is None else (one.id, one.value)
                    if got != want:
                        stored = await store.get_field_history(tenant, profile.id, name)
                        pytest.fail(
                            f"seed {seed}, {name} at {at.isoformat()}: as-of gave {got},"
                            f" the model {want}; stored: {_describe(stored)}"
                        )
                    listed = whole.fields.get(name)
                    assert (None if listed is None else (listed.id, listed.value)) == want
            # as of now is what the store serves now
            for name in NAMES:
                served_now = await store.get_field(tenant, profile.id, name)
                as_of_now = await store.get_field_as_of(tenant, profile.id, name, clock())
                assert (None if served_now is None else served_now.id) == (
                    None if as_of_now is None else as_of_now.id
                )

    @pytest.mark.parametrize("seed", range(4))
    async def test_as_of_matches_a_model_across_a_merge(
        self, store: ProfileStore, tenant: UUID, seed: int
    ) -> None:
        """Two profiles written at random, the second merged into the first at a random step
        (the merge's default rule: an unexpired version beats an expired one, then the more
        recently collected; nothing is verified here), more writes to the merged profile;
        both profiles' as-of reads against the model at every instant."""
        rng = random.Random(1000 + seed)
        target = await new_profile(store, tenant)
        source = await new_profile(store, tenant)
        if await _merge_log(store, tenant, target.id) is None:
            pytest.skip("the store keeps no merge log")
        models = {target.id: _Model(), source.id: _Model()}
        merged_at: datetime | None = None
        merge_step = rng.randrange(4, STEPS - 4)
        probes: list[datetime] = []
        with _frozen(store) as clock:
            for step in range(STEPS):
                at = clock.advance()
                probes += [at - _TICK / 2, at]
                if step == merge_step:
                    for name in NAMES:
                        mine = models[target.id].active(name)
                        theirs = models[source.id].active(name)
                        if mine is None or theirs is None:
                            continue
                        expired = {v.id: not v.served(at) for v in (mine, theirs)}
                        if expired[mine.id] != expired[theirs.id]:
                            loser = mine if expired[mine.id] else theirs
                        else:
                            loser = mine if theirs.start > mine.start else theirs
                        loser.end = at
                    await store.merge_profiles(tenant, source.id, target.id)
                    merged_at = at
                    continue
                owner = target.id if merged_at is not None or rng.random() < 0.5 else source.id
                name = rng.choice(NAMES)
                lifetime = rng.choice([None, None, _TICK, 3 * _TICK])
                value = f"{name}-{rng.randrange(1000)}"
                item = make_field(
                    name,
                    value,
                    collected_at=at,
                    expires_at=None if lifetime is None else at + lifetime,
                )
                new_id = await store.update_field(tenant, owner, item)
                if merged_at is not None:
                    # after the merge the target holds the source's versions too
                    active = [
                        v
                        for model in models.values()
                        for v in model.versions.get(name, [])
                        if v.end is None
                    ]
                    for version in active:
                        version.end = at
                    models[target.id].versions.setdefault(name, []).append(
                        _Written(new_id, value, at, None if lifetime is None else at + lifetime)
                    )
                else:
                    self._written(models[owner], name, new_id, value, at, lifetime)
            probes.append(clock.advance(4 * _TICK))
            assert merged_at is not None
            for at in probes:
                for profile_id in (target.id, source.id):
                    is_target = profile_id == target.id
                    owners = [profile_id]
                    if is_target and at >= merged_at:
                        owners.append(source.id)  # the moved versions are the target's
                    if not is_target and at >= merged_at:
                        owners = []  # moved away at the merge
                    whole = await store.get_profile_as_of(tenant, profile_id, at)
                    for name in NAMES:
                        live = [
                            v
                            for owner in owners
                            for v in models[owner].versions.get(name, [])
                            if v.served(at)
                        ]
                        expected = max(live, key=lambda v: v.start) if live else None
                        want = None if expected is None else expected.id
                        listed = whole.fields.get(name)
                        got = None if listed is None else listed.id
                        if got != want:
                            pytest.fail(
                                f"seed {seed}, {'target' if is_target else 'source'} {name} at"
                                f" {at.isoformat()} (merge {merged_at.isoformat()}):"
                                f" as-of gave {got}, the model {want}"
                            )

    @staticmethod
    def _written(
        model: _Model,
        name: str,
        new_id: UUID,
        value: Any,
        at: datetime,
        lifetime: timedelta | None,
        *,
        supersede: bool = True,
    ) -> None:
        current = model.active(name)
        if current is not None:
            # superseded (supersede_existing) or marked EXPIRED (it was past expires_at):
            # either way its service had ended by ``at``
            current.end = at if supersede else (current.expires_at or at)
        model.versions.setdefault(name, []).append(
            _Written(new_id, value, at, None if lifetime is None else at + lifetime)
        )
