"""Schema: field definitions and scenario requirements (upsert, ordering, filtering)."""

from __future__ import annotations

from uuid import UUID, uuid4

import pytest

from ccvault import errors
from ccvault.models import FallbackAction, FieldValueType, RequiredLevel
from ccvault.store import ProfileStore
from ccvault_contract_tests.base import ContractBase
from ccvault_contract_tests.helpers import make_definition, make_requirement, snapshot, ts

__all__ = ["SchemaContract"]


class SchemaContract(ContractBase):
    # ---------------------------------------------------------------- definitions

    async def test_definition_round_trips(
        self, store: ProfileStore, tenant: UUID, agent: UUID
    ) -> None:
        definition = make_definition(
            tenant,
            agent,
            "email",
            display_name="E-mail",
            description="Where we write to",
            value_type=FieldValueType.EMAIL,
            validation_regex=r"^[^@]+@[^@]+$",
            allowed_values=None,
            required_verification=True,
            verification_methods=["otp"],
            collection_prompt="What is your e-mail?",
            extraction_examples=["my mail is a@b.c"],
            extraction_prompt_hint="an address",
            is_pii=True,
            encryption_required=True,
            retention_days=30,
            freshness_seconds=86400,
        )
        assert await store.save_field_definition(definition) == definition.id
        found = await store.get_field_definition(tenant, agent, "email")
        assert found is not None
        assert found.model_dump(exclude={"updated_at"}) == definition.model_dump(
            exclude={"updated_at"}
        )

    async def test_saving_an_existing_name_updates_it_and_keeps_its_id(
        self, store: ProfileStore, tenant: UUID, agent: UUID
    ) -> None:
        first = make_definition(tenant, agent, "phone", display_name="Phone", created_at=ts(-99))
        first_id = await store.save_field_definition(first)
        second = make_definition(tenant, agent, "phone", display_name="Mobile phone")
        assert await store.save_field_definition(second) == first_id
        found = await store.get_field_definition(tenant, agent, "phone")
        assert found is not None
        assert found.id == first_id and found.display_name == "Mobile phone"
        assert found.created_at == first.created_at
        assert len(await store.get_field_definitions(tenant, agent, enabled_only=False)) == 1

    async def test_definitions_are_listed_by_name(
        self, store: ProfileStore, tenant: UUID, agent: UUID
    ) -> None:
        for name in ("zip_code", "address", "middle_name", "city"):
            await store.save_field_definition(make_definition(tenant, agent, name))
        listed = await store.get_field_definitions(tenant, agent)
        assert [d.name for d in listed] == ["address", "city", "middle_name", "zip_code"]

    async def test_disabled_definitions_are_listed_only_on_request(
        self, store: ProfileStore, tenant: UUID, agent: UUID
    ) -> None:
        await store.save_field_definition(make_definition(tenant, agent, "on_field"))
        await store.save_field_definition(
            make_definition(tenant, agent, "off_field", enabled=False)
        )
        assert [d.name for d in await store.get_field_definitions(tenant, agent)] == ["on_field"]
        everything = await store.get_field_definitions(tenant, agent, enabled_only=False)
        assert [d.name for d in everything] == ["off_field", "on_field"]
        found = await store.get_field_definition(tenant, agent, "off_field")
        assert found is not None and found.enabled is False

    async def test_definitions_are_scoped_by_agent(
        self, store: ProfileStore, tenant: UUID, agent: UUID
    ) -> None:
        other_agent = uuid4()
        mine = await store.save_field_definition(make_definition(tenant, agent, "email"))
        theirs = await store.save_field_definition(make_definition(tenant, other_agent, "email"))
        assert mine != theirs
        assert [d.id for d in await store.get_field_definitions(tenant, agent)] == [mine]
        assert [d.id for d in await store.get_field_definitions(tenant, other_agent)] == [theirs]

    async def test_unknown_definition_is_none(
        self, store: ProfileStore, tenant: UUID, agent: UUID
    ) -> None:
        assert await store.get_field_definition(tenant, agent, "email") is None
        assert await store.get_field_definitions(tenant, agent) == []

    async def test_delete_field_definition(
        self, store: ProfileStore, tenant: UUID, agent: UUID
    ) -> None:
        await store.save_field_definition(make_definition(tenant, agent, "email"))
        await store.save_field_definition(make_definition(tenant, agent, "phone"))
        assert await store.delete_field_definition(tenant, agent, "email") is True
        assert await store.delete_field_definition(tenant, agent, "email") is False
        assert await store.get_field_definition(tenant, agent, "email") is None
        assert [d.name for d in await store.get_field_definitions(tenant, agent)] == ["phone"]

    async def test_uncompilable_regex_is_refused_and_nothing_saved(
        self, store: ProfileStore, tenant: UUID, agent: UUID
    ) -> None:
        before = await snapshot(store, tenant, agents=(agent,))
        with pytest.raises(errors.ValidationError):
            await store.save_field_definition(
                make_definition(tenant, agent, "code", validation_regex="(unclosed")
            )
        assert await snapshot(store, tenant, agents=(agent,)) == before

    async def test_backtracking_regex_is_refused_and_nothing_saved(
        self, store: ProfileStore, tenant: UUID, agent: UUID
    ) -> None:
        before = await snapshot(store, tenant, agents=(agent,))
        with pytest.raises(errors.ValidationError):
            await store.save_field_definition(
                make_definition(tenant, agent, "code", validation_regex=r"^(a+)+\1$")
            )
        assert await snapshot(store, tenant, agents=(agent,)) == before

    # ---------------------------------------------------------------- requirements

    async def test_requirement_round_trips(
        self, store: ProfileStore, tenant: UUID, agent: UUID, scenario: UUID
    ) -> None:
        requirement = make_requirement(
            tenant,
            agent,
            scenario,
            "passport_number",
            rule_id=uuid4(),
            required_level=RequiredLevel.SOFT,
            fallback_action=FallbackAction.EXTRACT,
            when_condition='country == "FR" and age >= 18',
            depends_on_fields=["country", "age"],
            collection_order=3,
        )
        assert await store.save_scenario_requirement(requirement) == requirement.id
        (found,) = await store.get_scenario_requirements(tenant, scenario)
        assert found.model_dump(exclude={"updated_at"}) == requirement.model_dump(
            exclude={"updated_at"}
        )

    async def test_saving_a_requirement_again_updates_it(
        self, store: ProfileStore, tenant: UUID, agent: UUID, scenario: UUID
    ) -> None:
        rule = uuid4()
        first = make_requirement(tenant, agent, scenario, "email", rule_id=rule)
        first_id = await store.save_scenario_requirement(first)
        again = make_requirement(
            tenant, agent, scenario, "email", rule_id=rule, required_level=RequiredLevel.SOFT
        )
        assert await store.save_scenario_requirement(again) == first_id
        (found,) = await store.get_scenario_requirements(tenant, scenario)
        assert found.id == first_id and found.required_level is RequiredLevel.SOFT

    async def test_requirement_key_includes_rule_and_step(
        self, store: ProfileStore, tenant: UUID, agent: UUID, scenario: UUID
    ) -> None:
        step = uuid4()
        await store.save_scenario_requirement(make_requirement(tenant, agent, scenario, "email"))
        await store.save_scenario_requirement(
            make_requirement(tenant, agent, scenario, "email", rule_id=uuid4())
        )
        await store.save_scenario_requirement(
            make_requirement(tenant, agent, scenario, "email", step_id=step)
        )
        assert len(await store.get_scenario_requirements(tenant, scenario)) == 2
        assert len(await store.get_scenario_requirements(tenant, scenario, step_id=step)) == 1

    async def test_step_filter_separates_scenario_wide_and_step_requirements(
        self, store: ProfileStore, tenant: UUID, agent: UUID, scenario: UUID
    ) -> None:
        step_a, step_b = uuid4(), uuid4()
        await store.save_scenario_requirement(make_requirement(tenant, agent, scenario, "wide"))
        await store.save_scenario_requirement(
            make_requirement(tenant, agent, scenario, "in_a", step_id=step_a)
        )
        await store.save_scenario_requirement(
            make_requirement(tenant, agent, scenario, "in_b", step_id=step_b)
        )
        assert [r.field_name for r in await store.get_scenario_requirements(tenant, scenario)] == [
            "wide"
        ]
        in_a = await store.get_scenario_requirements(tenant, scenario, step_id=step_a)
        assert [r.field_name for r in in_a] == ["in_a"]
        assert await store.get_scenario_requirements(tenant, scenario, step_id=uuid4()) == []

    async def test_requirements_are_ordered_by_collection_order_then_name(
        self, store: ProfileStore, tenant: UUID, agent: UUID, scenario: UUID
    ) -> None:
        for name, order in (("zeta", 1), ("alpha", 2), ("beta", 1), ("gamma", 0), ("delta", -1)):
            await store.save_scenario_requirement(
                make_requirement(tenant, agent, scenario, name, collection_order=order)
            )
        listed = await store.get_scenario_requirements(tenant, scenario)
        assert [r.field_name for r in listed] == ["delta", "gamma", "beta", "zeta", "alpha"]

    async def test_requirements_are_scoped_by_scenario(
        self, store: ProfileStore, tenant: UUID, agent: UUID, scenario: UUID
    ) -> None:
        other = uuid4()
        await store.save_scenario_requirement(make_requirement(tenant, agent, scenario, "mine"))
        await store.save_scenario_requirement(make_requirement(tenant, agent, other, "theirs"))
        listed = await store.get_scenario_requirements(tenant, scenario)
        assert [r.field_name for r in listed] == ["mine"]

    async def test_delete_scenario_requirements_without_step_deletes_all(
        self, store: ProfileStore, tenant: UUID, agent: UUID, scenario: UUID
    ) -> None:
        step = uuid4()
        other = uuid4()
        await store.save_scenario_requirement(make_requirement(tenant, agent, scenario, "wide"))
        await store.save_scenario_requirement(
            make_requirement(tenant, agent, scenario, "stepped", step_id=step)
        )
        await store.save_scenario_requirement(make_requirement(tenant, agent, other, "kept"))
        assert await store.delete_scenario_requirements(tenant, scenario) == 2
        assert await store.get_scenario_requirements(tenant, scenario) == []
        assert await store.get_scenario_requirements(tenant, scenario, step_id=step) == []
        assert len(await store.get_scenario_requirements(tenant, other)) == 1
        assert await store.delete_scenario_requirements(tenant, scenario) == 0

    async def test_delete_scenario_requirements_with_step_deletes_that_step_only(
        self, store: ProfileStore, tenant: UUID, agent: UUID, scenario: UUID
    ) -> None:
        step, other_step = uuid4(), uuid4()
        await store.save_scenario_requirement(make_requirement(tenant, agent, scenario, "wide"))
        for name in ("one", "two"):
            await store.save_scenario_requirement(
                make_requirement(tenant, agent, scenario, name, step_id=step)
            )
        await store.save_scenario_requirement(
            make_requirement(tenant, agent, scenario, "three", step_id=other_step)
        )
        assert await store.delete_scenario_requirements(tenant, scenario, step_id=step) == 2
        assert len(await store.get_scenario_requirements(tenant, scenario)) == 1
        assert len(await store.get_scenario_requirements(tenant, scenario, step_id=other_step)) == 1

    async def test_an_unknown_scenario_has_no_requirements(
        self, store: ProfileStore, tenant: UUID, scenario: UUID
    ) -> None:
        assert await store.get_scenario_requirements(tenant, scenario) == []
        assert await store.delete_scenario_requirements(tenant, scenario) == 0
        assert await store.delete_scenario_requirements(tenant, scenario, step_id=uuid4()) == 0

    @pytest.mark.parametrize(
        "condition",
        [
            "age >=",
            "__import__('os').system('true')",
            "open('/etc/passwd')",
            "profile.email",
            "[x for x in range(10)]",
            "lambda: 1",
            "(y := 1)",
            "names[0]",
        ],
    )
    async def test_unsafe_or_malformed_condition_is_refused_and_nothing_saved(
        self, store: ProfileStore, tenant: UUID, agent: UUID, scenario: UUID, condition: str
    ) -> None:
        before = await snapshot(store, tenant, scenarios=(scenario,))
        with pytest.raises(errors.ValidationError):
            await store.save_scenario_requirement(
                make_requirement(tenant, agent, scenario, "email", when_condition=condition)
            )
        assert await snapshot(store, tenant, scenarios=(scenario,)) == before

    async def test_requirement_depending_on_itself_is_refused(
        self, store: ProfileStore, tenant: UUID, agent: UUID, scenario: UUID
    ) -> None:
        before = await snapshot(store, tenant, scenarios=(scenario,))
        with pytest.raises(errors.ValidationError):
            await store.save_scenario_requirement(
                make_requirement(tenant, agent, scenario, "email", depends_on_fields=["email"])
            )
        assert await snapshot(store, tenant, scenarios=(scenario,)) == before
