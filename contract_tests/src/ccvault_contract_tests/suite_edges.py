"""Edge values and per-agent rules: one behaviour on every provider and stack.

* A string that cannot be encoded as UTF-8 (a lone surrogate such as ``"\\ud800"``),
  anywhere in a written model or argument, is refused with ``ValidationError`` and nothing
  is written.
* Timestamps outside ``ccvault.arguments.TIMESTAMP_MIN .. TIMESTAMP_MAX`` (UTC) are refused
  with ``ValidationError`` and nothing is written; timestamps at the edges of that range are
  stored and read back exactly, timezone-aware (``datetime.max`` in UTC used to come back
  from PostgreSQL as a naive ``infinity``, breaking every later read of the profile).
* ``get_missing_fields`` judges each requirement by the definition of the requirement's own
  agent, whichever agent's definitions are read first.
* ``get_field(status=EXPIRED)`` returns the most recently collected expired version, be it
  marked EXPIRED by a sweep or an ACTIVE version past ``expires_at`` not yet swept.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, TypeVar
from uuid import UUID, uuid4

import pydantic
import pytest

from ccvault import errors
from ccvault.arguments import TIMESTAMP_MAX, TIMESTAMP_MIN
from ccvault.models import (
    Channel,
    ChannelIdentity,
    Consent,
    CustomerProfile,
    ItemStatus,
    RequiredLevel,
)
from ccvault.store import ProfileStore
from ccvault_contract_tests.base import ContractBase
from ccvault_contract_tests.helpers import (
    make_asset,
    make_definition,
    make_field,
    make_requirement,
    new_profile,
    snapshot,
    ts,
    unique_user,
)

__all__ = ["EdgesContract"]

_M = TypeVar("_M", bound=pydantic.BaseModel)

SURROGATE = "\ud800"

#: The supported range's edges at whole milliseconds (what every storage keeps exactly).
EARLIEST = TIMESTAMP_MIN
LATEST = TIMESTAMP_MAX.replace(microsecond=TIMESTAMP_MAX.microsecond // 1000 * 1000)


def _with(model: _M, **update: Any) -> _M:
    """``model`` with ``update`` applied WITHOUT validation: what a caller can hand the store
    whatever the model's own validation would say (it refuses some of these already)."""
    return model.model_copy(update=update)


def _out_of_range() -> list[datetime]:
    return [
        datetime.max.replace(tzinfo=UTC),
        datetime.min.replace(tzinfo=UTC),
        TIMESTAMP_MAX + timedelta(microseconds=1),
        TIMESTAMP_MIN - timedelta(microseconds=1),
        # in range as written, out of range in UTC (and overflowing a naive conversion)
        datetime.max.replace(tzinfo=timezone(timedelta(hours=-5))),
        datetime.min.replace(tzinfo=timezone(timedelta(hours=5))),
        # naive: every timestamp must be timezone-aware
        datetime(2030, 1, 1, 12, 0),
    ]


class EdgesContract(ContractBase):
    async def _refused_without_writing(
        self,
        store: ProfileStore,
        tenant: UUID,
        profile: CustomerProfile,
        call: Callable[[], Awaitable[Any]],
        *,
        agents: tuple[UUID, ...] = (),
        scenarios: tuple[UUID, ...] = (),
    ) -> None:
        before = await snapshot(
            store, tenant, profiles=(profile.id,), agents=agents, scenarios=scenarios
        )
        with pytest.raises(errors.ValidationError) as raised:
            await call()
        assert SURROGATE not in str(raised.value)
        after = await snapshot(
            store, tenant, profiles=(profile.id,), agents=agents, scenarios=scenarios
        )
        assert after == before

    # ------------------------------------------------------------------ lone surrogates

    async def test_lone_surrogates_in_fields_are_refused_before_anything_is_written(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        profile = await new_profile(store, tenant)
        await store.update_field(tenant, profile.id, make_field("note", "kept"))
        fine = make_field("note", "fine")
        bad_fields = [
            _with(fine, value=SURROGATE),
            _with(fine, value=f"ok {SURROGATE} ok"),
            _with(fine, value={"nested": [1, {"deep": SURROGATE}]}),
            _with(fine, value={SURROGATE: "a key"}),
            _with(fine, source_metadata={"quote": SURROGATE}),
            _with(fine, verified_by=SURROGATE),
            _with(fine, verification_method=SURROGATE),
        ]
        for field in bad_fields:
            for supersede in (True, False):
                await self._refused_without_writing(
                    store,
                    tenant,
                    profile,
                    lambda f=field, s=supersede: store.update_field(  # type: ignore[misc]
                        tenant, profile.id, f, supersede_existing=s
                    ),
                )
        kept = await store.get_field(tenant, profile.id, "note")
        assert kept is not None and kept.value == "kept"

    async def test_lone_surrogates_in_profiles_identities_and_assets_are_refused(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        profile = await new_profile(store, tenant)
        calls: list[Callable[[], Awaitable[Any]]] = [
            lambda: store.get_or_create(tenant, Channel.WEB, f"user{SURROGATE}"),
            lambda: store.link_channel(
                tenant,
                profile.id,
                _with(
                    ChannelIdentity(channel=Channel.EMAIL, channel_user_id="a@b.c"),
                    channel_user_id=f"a{SURROGATE}@b.c",
                ),
            ),
            lambda: store.save(
                _with(
                    profile,
                    consents=[
                        _with(Consent(consent_type="mail", granted=True), consent_type=SURROGATE)
                    ],
                )
            ),
            lambda: store.save(
                _with(profile, fields={"note": _with(make_field("note", "x"), value=[SURROGATE])})
            ),
            lambda: store.add_asset(
                tenant, profile.id, _with(make_asset(), storage_path=f"s3://b/{SURROGATE}.pdf")
            ),
            lambda: store.add_asset(
                tenant, profile.id, _with(make_asset(), verification_result={"ocr": SURROGATE})
            ),
        ]
        for call in calls:
            await self._refused_without_writing(store, tenant, profile, call)

    async def test_lone_surrogates_in_definitions_and_requirements_are_refused(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        profile = await new_profile(store, tenant)
        agent, scenario = uuid4(), uuid4()
        calls: list[Callable[[], Awaitable[Any]]] = [
            lambda: store.save_field_definition(
                _with(make_definition(tenant, agent, "email"), description=f"mail {SURROGATE}")
            ),
            lambda: store.save_field_definition(
                _with(make_definition(tenant, agent, "kind"), allowed_values=["a", SURROGATE])
            ),
            lambda: store.save_scenario_requirement(
                _with(
                    make_requirement(tenant, agent, scenario, "email"),
                    when_condition=f"email == '{SURROGATE}'",
                )
            ),
        ]
        for call in calls:
            await self._refused_without_writing(
                store, tenant, profile, call, agents=(agent,), scenarios=(scenario,)
            )
        assert await store.get_field_definitions(tenant, agent, enabled_only=False) == []
        assert await store.get_scenario_requirements(tenant, scenario) == []

    # ------------------------------------------------------------------ timestamps

    async def test_naive_or_out_of_range_timestamps_are_refused(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        profile = await new_profile(store, tenant)
        for moment in _out_of_range():
            otp = make_field("otp", "1")
            for field in (
                _with(otp, expires_at=moment),
                _with(otp, collected_at=moment),
                _with(otp, verified=True, verified_at=moment),
            ):
                await self._refused_without_writing(
                    store,
                    tenant,
                    profile,
                    lambda f=field: store.update_field(tenant, profile.id, f),  # type: ignore[misc]
                )
            await self._refused_without_writing(
                store,
                tenant,
                profile,
                lambda m=moment: store.add_asset(  # type: ignore[misc]
                    tenant, profile.id, _with(make_asset(), expires_at=m)
                ),
            )
            await self._refused_without_writing(
                store,
                tenant,
                profile,
                lambda m=moment: store.save(  # type: ignore[misc]
                    _with(profile, last_interaction_at=m)
                ),
            )
        # the profile is still readable afterwards
        assert await store.get_by_id(tenant, profile.id, include_history=True) is not None

    async def test_timestamps_at_the_edges_of_the_range_round_trip_exactly(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        profile = await new_profile(store, tenant)
        field = make_field("passport_no", "X1", collected_at=ts(-60), expires_at=LATEST)
        await store.update_field(tenant, profile.id, field)
        ancient = make_field("birth_record", "B", collected_at=EARLIEST, verified_at=EARLIEST)
        await store.update_field(tenant, profile.id, ancient)
        asset = make_asset("scan", uploaded_at=EARLIEST, expires_at=LATEST)
        await store.add_asset(tenant, profile.id, asset)
        held = await store.get_by_id(tenant, profile.id)
        assert held is not None
        await store.save(held.model_copy(update={"last_interaction_at": LATEST}))

        again = await store.get_by_id(tenant, profile.id, include_history=True)
        assert again is not None
        assert again.last_interaction_at == LATEST and again.last_interaction_at.tzinfo
        stored = again.fields["passport_no"]
        assert stored.expires_at == LATEST and stored.expires_at.tzinfo is not None
        old = again.fields["birth_record"]
        assert old.collected_at == EARLIEST and old.verified_at == EARLIEST
        assert old.collected_at.tzinfo is not None
        found = await store.get_field(tenant, profile.id, "passport_no")
        assert found is not None and found.expires_at == LATEST
        [scan] = [a for a in again.assets if a.name == "scan"]
        assert scan.uploaded_at == EARLIEST and scan.expires_at == LATEST
        history = await store.get_field_history(tenant, profile.id, "birth_record")
        assert [v.collected_at for v in history] == [EARLIEST]
        assert await store.expire_stale_fields(tenant, profile.id) == 0
        document = await store.export_profile(tenant, profile.id)
        assert document["profile"]["id"] == str(profile.id)

    async def test_lone_surrogates_in_rewritten_payloads_are_refused(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        profile = await new_profile(store, tenant)
        field_id = await store.update_field(tenant, profile.id, make_field("note", "kept"))
        payloads: list[tuple[Any, dict[str, Any]]] = [
            (SURROGATE, {}),
            ("fine", {"quote": SURROGATE}),
            ({SURROGATE: 1}, {}),
        ]
        for payload in payloads:
            await self._refused_without_writing(
                store,
                tenant,
                profile,
                lambda p=payload: store.rewrite_field_payloads(  # type: ignore[misc]
                    tenant, profile.id, {field_id: p}
                ),
            )

    # ------------------------------------------------------------------ per-agent rules

    async def test_missing_fields_judges_each_requirement_by_its_own_agents_definition(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        strict, lenient, scenario = uuid4(), uuid4(), uuid4()
        await store.save_field_definition(
            make_definition(tenant, strict, "email", required_verification=True)
        )
        await store.save_field_definition(
            make_definition(tenant, lenient, "email", required_verification=False)
        )
        rules = {strict: uuid4(), lenient: uuid4()}
        for agent, rule in rules.items():
            await store.save_scenario_requirement(
                make_requirement(tenant, agent, scenario, "email", rule_id=rule)
            )
        profile = await new_profile(store, tenant)
        await store.update_field(tenant, profile.id, make_field("email", "ada@example.com"))
        current = await store.get_by_id(tenant, profile.id)
        assert current is not None
        missing = await store.get_missing_fields(tenant, current, scenario, required_level=None)
        # unverified: unmet for the agent that requires verification, met for the other,
        # whichever agent's definitions are read first
        assert [(req.agent_id, req.rule_id) for req in missing] == [(strict, rules[strict])]

        only_lenient = uuid4()
        await store.save_scenario_requirement(
            make_requirement(
                tenant,
                lenient,
                only_lenient,
                "email",
                required_level=RequiredLevel.HARD,
            )
        )
        assert await store.get_missing_fields(tenant, current, only_lenient) == []

    async def test_a_requirement_without_a_definition_of_its_agent_ignores_other_agents(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        other, mine, scenario = uuid4(), uuid4(), uuid4()
        await store.save_field_definition(
            make_definition(tenant, other, "email", required_verification=True)
        )
        await store.save_scenario_requirement(make_requirement(tenant, mine, scenario, "email"))
        profile = await new_profile(store, tenant)
        await store.update_field(tenant, profile.id, make_field("email", "ada@example.com"))
        current = await store.get_by_id(tenant, profile.id)
        assert current is not None
        assert await store.get_missing_fields(tenant, current, scenario) == []

    # ------------------------------------------------------------------ expired lookups

    async def test_expired_lookup_returns_an_unswept_version_collected_after_a_swept_one(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        profile = await new_profile(store, tenant)
        first = make_field("otp", "1", collected_at=ts(-7200), expires_at=ts(-3600))
        await store.update_field(tenant, profile.id, first)
        assert await store.expire_stale_fields(tenant, profile.id) == 1
        second = make_field("otp", "2", collected_at=ts(-600), expires_at=ts(-60))
        await store.update_field(tenant, profile.id, second)  # ACTIVE, overdue, not swept
        found = await store.get_field(tenant, profile.id, "otp", status=ItemStatus.EXPIRED)
        assert found is not None and found.id == second.id
        assert found.status is ItemStatus.EXPIRED

    async def test_expired_lookup_returns_a_swept_version_collected_after_an_unswept_one(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        profile = await new_profile(store, tenant)
        newer = make_field("otp", "new", collected_at=ts(-600), expires_at=ts(-300))
        await store.update_field(tenant, profile.id, newer)
        assert await store.expire_stale_fields(tenant, profile.id) == 1
        # written later, but collected earlier: ACTIVE and overdue, not swept
        older = make_field("otp", "old", collected_at=ts(-7200), expires_at=ts(-60))
        await store.update_field(tenant, profile.id, older, supersede_existing=False)
        found = await store.get_field(tenant, profile.id, "otp", status=ItemStatus.EXPIRED)
        assert found is not None and found.id == newer.id
        assert found.status is ItemStatus.EXPIRED

    async def test_expired_lookup_returns_the_newest_of_several_swept_versions(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        profile = await new_profile(store, tenant)
        ids = []
        for age in (7200, 3600, 1800):
            item = make_field("otp", str(age), collected_at=ts(-age), expires_at=ts(-age + 60))
            ids.append(await store.update_field(tenant, profile.id, item))
            assert await store.expire_stale_fields(tenant, profile.id) == 1
        found = await store.get_field(tenant, profile.id, "otp", status=ItemStatus.EXPIRED)
        assert found is not None and found.id == ids[-1]

    async def test_a_fresh_identity_still_works_after_refused_edge_values(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        user = unique_user()
        with pytest.raises(errors.ValidationError):
            await store.get_or_create(tenant, Channel.SMS, user + SURROGATE)
        created = await store.get_or_create(tenant, Channel.SMS, user)
        assert created.channel_identities[0].channel_user_id == user
