"""get_missing_fields: conditions, dependencies, verification, freshness, levels."""

from __future__ import annotations

from typing import Any
from uuid import UUID, uuid4

import pytest

from ccvault.models import (
    CustomerProfile,
    FallbackAction,
    RequiredLevel,
    ScenarioFieldRequirement,
)
from ccvault.requirements import FieldCheck
from ccvault.store import ProfileStore, StoreRules
from ccvault_contract_tests.base import ContractBase
from ccvault_contract_tests.helpers import (
    make_definition,
    make_field,
    make_requirement,
    new_profile,
    ts,
)

__all__ = ["MissingFieldsContract"]


def _stale_warnings(labels: dict[str, str]) -> float:
    from ccvault import metrics

    value = metrics.REGISTRY.get_sample_value("profile_stale_field_warnings_total", labels)
    return value or 0.0


class MissingFieldsContract(ContractBase):
    async def _profile(self, store: ProfileStore, tenant: UUID, **values: Any) -> CustomerProfile:
        profile = await new_profile(store, tenant)
        for name, value in values.items():
            await store.update_field(tenant, profile.id, make_field(name, value))
        found = await store.get_by_id(tenant, profile.id)
        assert found is not None
        return found

    async def _missing(
        self,
        store: ProfileStore,
        tenant: UUID,
        profile: CustomerProfile,
        scenario: UUID,
        **kwargs: Any,
    ) -> list[str]:
        return [
            r.field_name
            for r in await store.get_missing_fields(tenant, profile, scenario, **kwargs)
        ]

    async def test_absent_field_is_missing_present_one_is_not(
        self, store: ProfileStore, tenant: UUID, agent: UUID, scenario: UUID
    ) -> None:
        for name in ("email", "phone"):
            await store.save_scenario_requirement(make_requirement(tenant, agent, scenario, name))
        profile = await self._profile(store, tenant, email="a@x.org")
        assert await self._missing(store, tenant, profile, scenario) == ["phone"]

    async def test_missing_fields_follow_collection_order(
        self, store: ProfileStore, tenant: UUID, agent: UUID, scenario: UUID
    ) -> None:
        for name, order in (("c_field", 1), ("a_field", 3), ("b_field", 2)):
            await store.save_scenario_requirement(
                make_requirement(tenant, agent, scenario, name, collection_order=order)
            )
        profile = await self._profile(store, tenant)
        assert await self._missing(store, tenant, profile, scenario) == [
            "c_field",
            "b_field",
            "a_field",
        ]

    async def test_when_condition_gates_the_requirement(
        self, store: ProfileStore, tenant: UUID, agent: UUID, scenario: UUID
    ) -> None:
        await store.save_scenario_requirement(
            make_requirement(
                tenant,
                agent,
                scenario,
                "passport_number",
                when_condition='order_type == "international" and age >= 18',
            )
        )
        abroad = await self._profile(store, tenant, order_type="international", age=30)
        home = await self._profile(store, tenant, order_type="domestic", age=30)
        minor = await self._profile(store, tenant, order_type="international", age=12)
        assert await self._missing(store, tenant, abroad, scenario) == ["passport_number"]
        assert await self._missing(store, tenant, home, scenario) == []
        assert await self._missing(store, tenant, minor, scenario) == []

    @pytest.mark.parametrize(
        ("condition", "applies"),
        [
            ('country in ["FR", "DE"]', True),
            ('country not in ["FR", "DE"]', False),
            ("age > 18 or vip", True),
            ("not vip", True),
            ("age >= 21 and vip", False),
            ('plan == "gold" or (age < 30 and country == "FR")', False),
            ("score * 2 > 9", True),
            ("1 < age < 100", True),
            ('"@" in email', True),
        ],
    )
    async def test_condition_expressions(
        self,
        store: ProfileStore,
        tenant: UUID,
        agent: UUID,
        scenario: UUID,
        condition: str,
        applies: bool,
    ) -> None:
        await store.save_scenario_requirement(
            make_requirement(tenant, agent, scenario, "target_field", when_condition=condition)
        )
        profile = await self._profile(
            store,
            tenant,
            country="FR",
            age=40,
            vip=False,
            plan="silver",
            score=5,
            email="a@x.org",
        )
        expected = ["target_field"] if applies else []
        assert await self._missing(store, tenant, profile, scenario) == expected

    async def test_condition_naming_an_absent_field_is_false(
        self, store: ProfileStore, tenant: UUID, agent: UUID, scenario: UUID
    ) -> None:
        await store.save_scenario_requirement(
            make_requirement(tenant, agent, scenario, "vat_number", when_condition="is_business")
        )
        profile = await self._profile(store, tenant)
        assert await self._missing(store, tenant, profile, scenario) == []
        business = await self._profile(store, tenant, is_business=True)
        assert await self._missing(store, tenant, business, scenario) == ["vat_number"]

    async def test_condition_comparing_incompatible_values_is_false(
        self, store: ProfileStore, tenant: UUID, agent: UUID, scenario: UUID
    ) -> None:
        await store.save_scenario_requirement(
            make_requirement(tenant, agent, scenario, "guardian", when_condition="age < 18")
        )
        profile = await self._profile(store, tenant, age="seventeen")
        assert await self._missing(store, tenant, profile, scenario) == []

    async def test_depends_on_fields_must_all_be_present(
        self, store: ProfileStore, tenant: UUID, agent: UUID, scenario: UUID
    ) -> None:
        await store.save_scenario_requirement(
            make_requirement(
                tenant, agent, scenario, "postcode", depends_on_fields=["country", "city"]
            )
        )
        partial = await self._profile(store, tenant, country="FR")
        complete = await self._profile(store, tenant, country="FR", city="Paris")
        assert await self._missing(store, tenant, partial, scenario) == []
        assert await self._missing(store, tenant, complete, scenario) == ["postcode"]

    async def test_unverified_field_is_missing_when_verification_is_required(
        self, store: ProfileStore, tenant: UUID, agent: UUID, scenario: UUID
    ) -> None:
        await store.save_field_definition(
            make_definition(tenant, agent, "email", required_verification=True)
        )
        await store.save_scenario_requirement(make_requirement(tenant, agent, scenario, "email"))
        unverified = await self._profile(store, tenant, email="a@x.org")
        assert await self._missing(store, tenant, unverified, scenario) == ["email"]
        verified = await new_profile(store, tenant)
        await store.update_field(tenant, verified.id, make_field("email", "a@x.org", verified=True))
        found = await store.get_by_id(tenant, verified.id)
        assert found is not None
        assert await self._missing(store, tenant, found, scenario) == []

    async def test_stale_field_blocks_when_the_action_is_block(
        self, store: ProfileStore, tenant: UUID, agent: UUID, scenario: UUID
    ) -> None:
        await store.save_field_definition(
            make_definition(tenant, agent, "address", freshness_seconds=3600)
        )
        await store.save_scenario_requirement(make_requirement(tenant, agent, scenario, "address"))
        profile = await new_profile(store, tenant)
        await store.update_field(
            tenant, profile.id, make_field("address", "old", collected_at=ts(-7200))
        )
        found = await store.get_by_id(tenant, profile.id)
        assert found is not None
        store.rules = StoreRules(stale_field_action="block")
        assert await self._missing(store, tenant, found, scenario) == ["address"]

    async def test_stale_field_is_only_warned_about_when_the_action_is_warn(
        self, store: ProfileStore, tenant: UUID, agent: UUID, scenario: UUID
    ) -> None:
        await store.save_field_definition(
            make_definition(tenant, agent, "address", freshness_seconds=3600)
        )
        await store.save_scenario_requirement(make_requirement(tenant, agent, scenario, "address"))
        profile = await new_profile(store, tenant)
        await store.update_field(
            tenant, profile.id, make_field("address", "old", collected_at=ts(-7200))
        )
        found = await store.get_by_id(tenant, profile.id)
        assert found is not None
        store.rules = StoreRules(stale_field_action="warn")
        labels = {"tenant_id": str(tenant), "field_name": "address"}
        before = _stale_warnings(labels)
        assert await self._missing(store, tenant, found, scenario) == []
        # "warn" counts the stale field (the Prometheus counter) instead of blocking
        assert _stale_warnings(labels) == before + 1

    async def test_staleness_is_not_checked_when_the_action_is_ignore(
        self, store: ProfileStore, tenant: UUID, agent: UUID, scenario: UUID
    ) -> None:
        await store.save_scenario_requirement(make_requirement(tenant, agent, scenario, "address"))
        profile = await new_profile(store, tenant)
        await store.update_field(
            tenant, profile.id, make_field("address", "old", collected_at=ts(-7200))
        )
        found = await store.get_by_id(tenant, profile.id)
        assert found is not None
        store.rules = StoreRules(stale_field_action="ignore", default_freshness_seconds=60)
        assert await self._missing(store, tenant, found, scenario) == []

    async def test_fresh_field_is_not_stale(
        self, store: ProfileStore, tenant: UUID, agent: UUID, scenario: UUID
    ) -> None:
        await store.save_field_definition(
            make_definition(tenant, agent, "address", freshness_seconds=3600)
        )
        await store.save_scenario_requirement(make_requirement(tenant, agent, scenario, "address"))
        profile = await self._profile(store, tenant, address="new")
        store.rules = StoreRules(stale_field_action="block")
        assert await self._missing(store, tenant, profile, scenario) == []

    async def test_default_freshness_applies_without_a_definition(
        self, store: ProfileStore, tenant: UUID, agent: UUID, scenario: UUID
    ) -> None:
        await store.save_scenario_requirement(make_requirement(tenant, agent, scenario, "address"))
        profile = await new_profile(store, tenant)
        await store.update_field(
            tenant, profile.id, make_field("address", "old", collected_at=ts(-7200))
        )
        found = await store.get_by_id(tenant, profile.id)
        assert found is not None
        store.rules = StoreRules(stale_field_action="block", default_freshness_seconds=3600)
        assert await self._missing(store, tenant, found, scenario) == ["address"]
        store.rules = StoreRules(stale_field_action="block", default_freshness_seconds=0)
        assert await self._missing(store, tenant, found, scenario) == []

    async def test_definition_freshness_zero_means_never_stale(
        self, store: ProfileStore, tenant: UUID, agent: UUID, scenario: UUID
    ) -> None:
        await store.save_field_definition(
            make_definition(tenant, agent, "address", freshness_seconds=0)
        )
        await store.save_scenario_requirement(make_requirement(tenant, agent, scenario, "address"))
        profile = await new_profile(store, tenant)
        await store.update_field(
            tenant, profile.id, make_field("address", "old", collected_at=ts(-7200))
        )
        found = await store.get_by_id(tenant, profile.id)
        assert found is not None
        store.rules = StoreRules(stale_field_action="block", default_freshness_seconds=60)
        assert await self._missing(store, tenant, found, scenario) == []

    async def test_required_level_filter(
        self, store: ProfileStore, tenant: UUID, agent: UUID, scenario: UUID
    ) -> None:
        await store.save_scenario_requirement(
            make_requirement(tenant, agent, scenario, "hard_one", required_level=RequiredLevel.HARD)
        )
        await store.save_scenario_requirement(
            make_requirement(tenant, agent, scenario, "soft_one", required_level=RequiredLevel.SOFT)
        )
        profile = await self._profile(store, tenant)
        assert await self._missing(store, tenant, profile, scenario) == ["hard_one"]
        assert await self._missing(store, tenant, profile, scenario, required_level="soft") == [
            "soft_one"
        ]
        assert sorted(
            await self._missing(store, tenant, profile, scenario, required_level=None)
        ) == ["hard_one", "soft_one"]

    async def test_step_requirements_are_evaluated_per_step(
        self, store: ProfileStore, tenant: UUID, agent: UUID, scenario: UUID
    ) -> None:
        step = uuid4()
        await store.save_scenario_requirement(make_requirement(tenant, agent, scenario, "wide"))
        await store.save_scenario_requirement(
            make_requirement(tenant, agent, scenario, "stepped", step_id=step)
        )
        profile = await self._profile(store, tenant)
        assert await self._missing(store, tenant, profile, scenario) == ["wide"]
        assert await self._missing(store, tenant, profile, scenario, step_id=step) == ["stepped"]

    async def test_unknown_scenario_has_nothing_missing(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        profile = await self._profile(store, tenant)
        assert await self._missing(store, tenant, profile, uuid4()) == []

    async def test_missing_fields_are_the_stored_requirements(
        self, store: ProfileStore, tenant: UUID, agent: UUID, scenario: UUID
    ) -> None:
        requirement = make_requirement(tenant, agent, scenario, "email", collection_order=7)
        await store.save_scenario_requirement(requirement)
        profile = await self._profile(store, tenant)
        (missing,) = await store.get_missing_fields(tenant, profile, scenario)
        assert missing.id == requirement.id and missing.collection_order == 7

    async def test_only_enabled_definitions_of_the_requirements_agents_judge(
        self, store: ProfileStore, tenant: UUID, agent: UUID, scenario: UUID
    ) -> None:
        # what get_missing_fields reads (through _get_requirements_with_definitions where a
        # provider reads it in one go): each requirement of that step, judged by its own
        # agent's enabled definition; a disabled one, or another agent's, never judges
        other, idle, step = uuid4(), uuid4(), uuid4()
        await store.save_field_definition(
            make_definition(tenant, agent, "email", required_verification=True)
        )
        await store.save_field_definition(
            make_definition(tenant, other, "email", required_verification=True, enabled=False)
        )
        await store.save_field_definition(
            make_definition(tenant, idle, "phone", required_verification=True)
        )
        for step_id in (None, step):
            for owner in (agent, other):
                await store.save_scenario_requirement(
                    make_requirement(
                        tenant, owner, scenario, "email", step_id=step_id, rule_id=owner
                    )
                )
            await store.save_scenario_requirement(
                make_requirement(tenant, other, scenario, "phone", step_id=step_id)
            )
        profile = await self._profile(store, tenant, email="a@x.org", phone="+33100000000")
        for step_id in (None, step):
            missing = await store.get_missing_fields(tenant, profile, scenario, step_id=step_id)
            assert [(r.agent_id, r.field_name, r.step_id) for r in missing] == [
                (agent, "email", step_id)
            ]

    async def test_requirement_checks_agree_with_requirements_and_definitions(
        self, store: ProfileStore, tenant: UUID, agent: UUID, scenario: UUID
    ) -> None:
        # _get_requirement_checks (what get_missing_fields reads; a provider may override it
        # alone) answers what _get_requirements_with_definitions answers: the same
        # requirements, and for each one the FieldCheck of its own agent's enabled definition
        # of its field (none for a field without one, or with only a disabled one)
        other, step = uuid4(), uuid4()
        definitions = [
            make_definition(tenant, agent, "email", required_verification=True),
            make_definition(tenant, agent, "phone", freshness_seconds=3_600),
            make_definition(tenant, agent, "plan", enabled=False, required_verification=True),
            make_definition(tenant, agent, "unused", freshness_seconds=60),
            make_definition(tenant, other, "email", freshness_seconds=0),
        ]
        for definition in definitions:
            await store.save_field_definition(definition)
        for step_id in (None, step):
            for owner, name in (
                (agent, "email"),
                (agent, "phone"),
                (agent, "plan"),
                (agent, "nickname"),
                (other, "email"),
                (other, "phone"),
            ):
                await store.save_scenario_requirement(
                    make_requirement(tenant, owner, scenario, name, step_id=step_id, rule_id=owner)
                )
        # a neighbour tenant with the same agent ids, scenario and field names, but other
        # definitions: a join that does not pin the definitions to the tenant reads them
        neighbour = uuid4()
        for definition in (
            make_definition(neighbour, agent, "email", freshness_seconds=7),
            make_definition(neighbour, agent, "nickname", required_verification=True),
            make_definition(neighbour, other, "phone", freshness_seconds=9),
        ):
            await store.save_field_definition(definition)
        for owner, name in ((agent, "email"), (agent, "nickname"), (other, "phone")):
            await store.save_scenario_requirement(
                make_requirement(neighbour, owner, scenario, name, rule_id=owner)
            )
        expected_checks = {
            (agent, "email"): FieldCheck(True, None),
            (agent, "phone"): FieldCheck(False, 3_600),
            (other, "email"): FieldCheck(False, 0),
        }
        await self._checks_agree(store, tenant, scenario, step, expected_checks, 6)
        found, checks = await store._get_requirement_checks(neighbour, scenario, None)
        assert sorted((r.agent_id, r.field_name) for r in found) == sorted(
            [(agent, "email"), (agent, "nickname"), (other, "phone")]
        )
        assert checks == {
            agent: {"email": FieldCheck(False, 7), "nickname": FieldCheck(True, None)},
            other: {"phone": FieldCheck(False, 9)},
        }
        # every completed write is read back (no answer kept from before it): email
        # disabled, plan enabled
        await store.save_field_definition(definitions[0].model_copy(update={"enabled": False}))
        await store.save_field_definition(definitions[2].model_copy(update={"enabled": True}))
        expected_checks.pop((agent, "email"))
        expected_checks[(agent, "plan")] = FieldCheck(True, None)
        await self._checks_agree(store, tenant, scenario, step, expected_checks, 6)
        # another tenant sees none of it
        assert await store._get_requirement_checks(uuid4(), scenario, None) == ([], {})
        records, _build = await store._get_requirement_records(uuid4(), scenario, None)
        assert list(records) == []

    async def test_records_agree_with_the_checks_hook_for_varied_requirements(
        self, store: ProfileStore, tenant: UUID, agent: UUID, scenario: UUID
    ) -> None:
        # _get_requirement_records reads each requirement's level, condition and
        # dependencies of its own (a provider may override it alone): requirements of both
        # levels, with and without a condition and dependencies, of two agents, the step's
        # levels the other way round and dependencies in the other order. A records hook
        # that hard-codes the level, or drops the condition or the dependencies, disagrees
        # with the checks hook and with what was saved, and misses other fields.
        other, step = uuid4(), uuid4()
        for definition in (
            make_definition(tenant, agent, "email", required_verification=True),
            make_definition(tenant, agent, "plan", enabled=False, required_verification=True),
            make_definition(tenant, other, "phone", freshness_seconds=3_600),
        ):
            await store.save_field_definition(definition)
        hard, soft = RequiredLevel.HARD, RequiredLevel.SOFT
        # (agent, field, scenario-wide level, condition, depends_on); with email "a@x.org"
        # (unverified) and plan "gold" set, the missing ones are marked
        specs: list[tuple[UUID, str, RequiredLevel, str | None, list[str]]] = [
            (agent, "email", hard, None, []),  # missing: not verified
            (agent, "phone", soft, 'plan == "gold"', ["email"]),  # missing
            (other, "phone", hard, 'plan == "basic"', []),  # condition false
            (other, "nickname", soft, None, ["email", "plan"]),  # missing
            (other, "age", hard, None, ["phone"]),  # a dependency absent
            (agent, "plan", soft, 'email == "a@x.org"', ["email"]),  # set, no enabled rule
        ]
        missing = {(agent, "email"): hard, (agent, "phone"): soft, (other, "nickname"): soft}
        flipped = {hard: soft, soft: hard}
        saved: dict[UUID, ScenarioFieldRequirement] = {}
        for step_id in (None, step):
            for order, (owner, name, level, condition, depends_on) in enumerate(specs):
                requirement = make_requirement(
                    tenant,
                    owner,
                    scenario,
                    name,
                    step_id=step_id,
                    rule_id=owner,
                    required_level=level if step_id is None else flipped[level],
                    when_condition=condition,
                    depends_on_fields=depends_on if step_id is None else depends_on[::-1],
                    fallback_action=list(FallbackAction)[order % len(FallbackAction)],
                    collection_order=order,
                )
                await store.save_scenario_requirement(requirement)
                saved[requirement.id] = requirement
        expected_checks = {
            (agent, "email"): FieldCheck(True, None),
            (other, "phone"): FieldCheck(False, 3_600),
        }
        await self._checks_agree(store, tenant, scenario, step, expected_checks, len(specs))
        for step_id in (None, step):
            # each record holds what its requirement was saved with
            records, build = await store._get_requirement_records(tenant, scenario, step_id)
            records = list(records)
            built = build([record[5] for record in records])
            assert sorted(
                (r.id.int, record[0], record[1], record[2], list(record[3]))
                for record, r in zip(records, built, strict=True)
            ) == sorted(
                (s.id.int, s.field_name, s.required_level, s.when_condition, s.depends_on_fields)
                for s in saved.values()
                if s.step_id == step_id
            )
            assert {record[1] for record in records} == {hard, soft}
        # and get_missing_fields judges each by its own level, condition and dependencies
        profile = await self._profile(store, tenant, email="a@x.org", plan="gold")
        for step_id in (None, step):
            for wanted in (hard, soft, None):
                found = await store.get_missing_fields(
                    tenant, profile, scenario, step_id=step_id, required_level=wanted
                )
                assert sorted((r.agent_id.int, r.field_name) for r in found) == sorted(
                    (owner.int, name)
                    for (owner, name), wide in missing.items()
                    if wanted is None or (wide if step_id is None else flipped[wide]) is wanted
                ), (step_id, wanted)

    @staticmethod
    async def _checks_agree(
        store: ProfileStore,
        tenant: UUID,
        scenario: UUID,
        step: UUID,
        expected_checks: dict[tuple[UUID, str], FieldCheck],
        count: int,
    ) -> None:
        """The narrow hook's answer equals the wide one's and ``expected_checks``, for the
        scenario-wide requirements, the step's and an unknown step's."""
        for step_id in (None, step, uuid4()):
            found, checks = await store._get_requirement_checks(tenant, scenario, step_id)
            wide, by_agent = await store._get_requirements_with_definitions(
                tenant, scenario, step_id
            )
            assert sorted(r.id.int for r in found) == sorted(r.id.int for r in wide)
            by_id = {r.id: r for r in wide}
            assert all(r == by_id[r.id] and r.step_id == step_id for r in found)
            assert len(found) == (0 if step_id not in (None, step) else count)
            for requirement in found:
                key = (requirement.agent_id, requirement.field_name)
                got = checks.get(requirement.agent_id, {}).get(requirement.field_name)
                enabled = [
                    FieldCheck(d.required_verification, d.freshness_seconds)
                    for d in by_agent.get(requirement.agent_id, ())
                    if d.enabled and d.name == requirement.field_name
                ]
                assert got == (enabled[0] if enabled else None) == expected_checks.get(key), key
                assert got is None or isinstance(got, FieldCheck), key
            # _get_requirement_records (what get_missing_fields reads) agrees too: one record
            # per requirement, holding what the requirement holds and its check, and its
            # builder makes the same requirements of the sources, in the order asked
            records, build = await store._get_requirement_records(tenant, scenario, step_id)
            records = list(records)
            assert len(records) == len(found)
            built = build([record[5] for record in reversed(records)])
            built.reverse()
            assert sorted(r.id.int for r in built) == sorted(r.id.int for r in found)
            assert all(r == by_id[r.id] and type(r) is type(by_id[r.id]) for r in built)
            assert build([]) == []
            for record, requirement in zip(records, built, strict=True):
                name, level, condition, depends_on, check, _source = record
                assert (name, level, condition, list(depends_on)) == (
                    requirement.field_name,
                    requirement.required_level,
                    requirement.when_condition,
                    requirement.depends_on_fields,
                )
                assert check == checks.get(requirement.agent_id, {}).get(name), name
                assert check is None or isinstance(check, FieldCheck), name
                # the evaluation compares levels by identity: text "hard" would equal
                # RequiredLevel.HARD above yet never be judged "hard"
                assert type(level) is RequiredLevel, f"{name}: level {type(level).__name__}"
                assert type(name) is str and not isinstance(depends_on, str | bytes), name
                assert len(build([record[5]])) == 1, name
            # the models built are the caller's: another answer's are other objects
            if records:
                more, build_more = await store._get_requirement_records(tenant, scenario, step_id)
                again = build_more([next(iter(more))[5]])[0]
                assert again in built and all(again is not r for r in built)
                assert all(again.depends_on_fields is not r.depends_on_fields for r in built)
