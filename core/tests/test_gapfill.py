"""GapFillService and EnhancedGapFillService on the in-memory provider: source order,
thresholds, lineage of persisted values, every fallback action, ordering, metrics, and the
end-to-end scenario."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any
from uuid import UUID, uuid4

import pytest

from ccvault import errors, load_settings, metrics, open_store
from ccvault.extraction import Extraction, ExtractionError, ExtractionRequest, OfflineExtractor
from ccvault.gapfill import EnhancedGapFillService, GapFillService, scenario_blocked
from ccvault.models import (
    Channel,
    ConversationTurn,
    CustomerProfile,
    FallbackAction,
    FieldValueType,
    GapFillSource,
    ProfileField,
    ProfileFieldDefinition,
    ProfileFieldSource,
    RequiredLevel,
    ScenarioFieldRequirement,
    Session,
    SourceType,
)
from ccvault.store import ForwardingProfileStore, ProfileStore
from ccvault.validation import SchemaValidationService


class CountingStore(ForwardingProfileStore):
    """Counts definition reads reaching the store underneath."""

    def __init__(self, inner: ProfileStore) -> None:
        super().__init__(inner)
        self.list_calls = 0
        self.one_calls = 0

    async def _get_field_definitions(
        self, tenant_id: UUID, agent_id: UUID, enabled_only: bool
    ) -> list[ProfileFieldDefinition]:
        self.list_calls += 1
        return await super()._get_field_definitions(tenant_id, agent_id, enabled_only)

    async def _get_field_definition(
        self, tenant_id: UUID, agent_id: UUID, field_name: str
    ) -> ProfileFieldDefinition | None:
        self.one_calls += 1
        return await super()._get_field_definition(tenant_id, agent_id, field_name)


class ScriptedExtractor:
    """Answers from a script and records every call."""

    def __init__(self, answers: dict[str, Extraction | Exception | None]) -> None:
        self.answers = answers
        self.calls: list[tuple[str, int]] = []

    async def extract(
        self, request: ExtractionRequest, turns: Sequence[ConversationTurn]
    ) -> Extraction | None:
        self.calls.append((request.field_name, len(turns)))
        answer = self.answers.get(request.field_name)
        if isinstance(answer, Exception):
            raise answer
        return answer


def _found(value: Any, confidence: float, quote: str = "q", method: str = "test:x") -> Extraction:
    return Extraction(value=value, confidence=confidence, quote=quote, method=method)


@pytest.fixture
async def store() -> AsyncIterator[CountingStore]:
    settings = load_settings(store_provider="inmemory", cache_enabled=False, auto_encrypt_pii=False)
    async with open_store(settings) as inner:
        yield CountingStore(inner)


class World:
    def __init__(self, store: CountingStore) -> None:
        self.store = store
        self.tenant = uuid4()
        self.agent = uuid4()
        self.scenario = uuid4()
        self.profile: CustomerProfile

    async def setup(self, *definitions: ProfileFieldDefinition) -> World:
        self.profile = await self.store.get_or_create(self.tenant, Channel.WHATSAPP, "+4930901820")
        for definition in definitions:
            await self.store.save_field_definition(definition)
        return self

    def define(self, name: str, kind: FieldValueType = FieldValueType.STRING, **kw: Any) -> Any:
        return ProfileFieldDefinition(
            tenant_id=self.tenant, agent_id=self.agent, name=name, value_type=kind, **kw
        )

    async def require(
        self,
        name: str,
        action: FallbackAction,
        level: RequiredLevel = RequiredLevel.HARD,
        order: int = 0,
        **kw: Any,
    ) -> None:
        await self.store.save_scenario_requirement(
            ScenarioFieldRequirement(
                tenant_id=self.tenant,
                agent_id=self.agent,
                scenario_id=self.scenario,
                field_name=name,
                fallback_action=action,
                required_level=level,
                collection_order=order,
                **kw,
            )
        )

    def session(self, *turns: tuple[str, str], **variables: Any) -> Session:
        return Session(
            tenant_id=self.tenant,
            agent_id=self.agent,
            customer_profile_id=self.profile.id,
            variables=variables,
            turns=[ConversationTurn(role=r, content=c) for r, c in turns],
        )

    async def write(self, name: str, value: Any, **kw: Any) -> UUID:
        return await self.store.update_field(
            self.tenant, self.profile.id, ProfileField(name=name, value=value, **kw)
        )

    async def reload(self) -> CustomerProfile:
        found = await self.store.get_by_id(self.tenant, self.profile.id)
        assert found is not None
        return found

    async def missing(self) -> list[str]:
        found = await self.store.get_missing_fields(
            self.tenant, await self.reload(), self.scenario, required_level=None
        )
        return [r.field_name for r in found]


@pytest.fixture
def world(store: CountingStore) -> World:
    return World(store)


# ---------------------------------------------------------------------------------------
# GapFillService: sources in order
# ---------------------------------------------------------------------------------------


async def test_fill_gap_prefers_profile_then_session_then_extraction(world: World) -> None:
    await world.setup(world.define("email", FieldValueType.EMAIL))
    extractor = ScriptedExtractor({"email": _found("said@example.org", 0.9)})
    service = GapFillService(world.store, extractor=extractor)
    session = world.session(("user", "x"), email="var@example.org")

    from_session = await service.fill_gap("email", session)
    assert from_session.filled and from_session.source is GapFillSource.SESSION
    assert from_session.value == "var@example.org" and from_session.confidence == 1.0
    assert from_session.source_item_type is SourceType.SESSION
    assert extractor.calls == []

    stored_id = await world.write("email", "stored@example.org", confidence=0.7)
    from_profile = await service.fill_gap("email", session)
    assert from_profile.source is GapFillSource.PROFILE
    assert from_profile.value == "stored@example.org" and from_profile.confidence == 0.7
    assert from_profile.source_item_id == stored_id
    assert from_profile.source_item_type is SourceType.PROFILE_FIELD

    other = World(world.store)
    await other.setup(other.define("email", FieldValueType.EMAIL))
    extracted = await GapFillService(other.store, extractor=extractor).fill_gap(
        "email", other.session(("user", "x"))
    )
    assert extracted.source is GapFillSource.EXTRACTION and extracted.value == "said@example.org"
    assert extractor.calls == [("email", 1)]


async def test_invalid_session_variable_falls_through_with_its_errors(world: World) -> None:
    await world.setup(world.define("age", FieldValueType.NUMBER))
    service = GapFillService(world.store, extractor=ScriptedExtractor({"age": _found(41, 0.9)}))
    result = await service.fill_gap("age", world.session(("user", "41"), age="forty"))
    assert result.filled and result.source is GapFillSource.EXTRACTION and result.value == 41
    nothing = await GapFillService(world.store, extractor=ScriptedExtractor({})).fill_gap(
        "age", world.session(("user", "?"), age="forty")
    )
    assert not nothing.filled and nothing.validation_errors
    assert nothing.next_action is FallbackAction.ASK and nothing.prompt


async def test_unknown_profile_and_bad_names_are_errors(world: World) -> None:
    await world.setup()
    service = GapFillService(world.store)
    session = world.session().model_copy(update={"customer_profile_id": uuid4()})
    with pytest.raises(errors.NotFoundError):
        await service.fill_gap("email", session)
    with pytest.raises(errors.ValidationError):
        await service.fill_gap("Bad Name", world.session())


async def test_extraction_reads_only_the_last_max_turns(world: World) -> None:
    await world.setup(world.define("email", FieldValueType.EMAIL))
    turns = [("user", "me@example.org")] + [("user", f"filler {i}") for i in range(5)]
    service = GapFillService(world.store, max_turns=5)
    assert not (await service.fill_gap("email", world.session(*turns))).filled
    wider = GapFillService(world.store, max_turns=6)
    result = await wider.fill_gap("email", world.session(*turns))
    assert result.filled and result.value == "me@example.org"


# ---------------------------------------------------------------------------------------
# thresholds
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("confidence", "filled", "confirm"),
    [
        (0.49, False, False),
        (0.5, True, True),
        (0.84, True, True),
        (0.85, True, False),
        (1.0, True, False),
    ],
)
async def test_confidence_thresholds(
    world: World, confidence: float, filled: bool, confirm: bool
) -> None:
    await world.setup(world.define("nickname"))
    extractor = ScriptedExtractor({"nickname": _found("JD", confidence, quote="call me JD")})
    service = GapFillService(
        world.store, extractor=extractor, min_confidence=0.5, confirm_confidence=0.85
    )
    result = await service.try_conversation_extraction("nickname", world.session(("user", "hi")))
    assert result.filled is filled
    assert result.needs_confirmation is confirm
    assert result.confidence == confidence and result.extraction_quote == "call me JD"
    assert result.value == ("JD" if filled else None)


async def test_thresholds_come_from_settings(world: World) -> None:
    await world.setup()
    settings = load_settings(
        store_provider="inmemory",
        gap_fill={"min_confidence": 0.7, "confirm_confidence": 0.95, "max_turns": 3},
    )
    service = GapFillService.from_settings(world.store, settings)
    assert (service.min_confidence, service.confirm_confidence, service.max_turns) == (0.7, 0.95, 3)
    assert isinstance(service.extractor, OfflineExtractor)
    with pytest.raises(errors.ConfigurationError):
        GapFillService(world.store, min_confidence=1.5)


async def test_extracted_value_must_pass_the_definition(world: World) -> None:
    await world.setup(
        world.define("country", allowed_values=["Germany", "France"]),
    )
    extractor = ScriptedExtractor({"country": _found("Italy", 0.95)})
    result = await GapFillService(world.store, extractor=extractor).try_conversation_extraction(
        "country", world.session(("user", "Italy"))
    )
    assert not result.filled and result.validation_errors
    assert "allowed values" in result.validation_errors[0]


async def test_extractor_failure_is_not_found(world: World) -> None:
    await world.setup()
    extractor = ScriptedExtractor({"email": ExtractionError("endpoint down")})
    result = await GapFillService(world.store, extractor=extractor).fill_gap(
        "email", world.session(("user", "x"))
    )
    assert not result.filled and result.next_action is FallbackAction.ASK


async def test_fill_multiple_reads_profile_and_definitions_once(world: World) -> None:
    await world.setup(world.define("email", FieldValueType.EMAIL), world.define("nickname"))
    await world.write("nickname", "JD")
    service = GapFillService(world.store)
    before = world.store.list_calls
    results = await service.fill_multiple(
        ["nickname", "email", "nickname"],
        world.session(("user", "write to jd@example.org")),
    )
    assert list(results) == ["nickname", "email"]
    assert results["nickname"].source is GapFillSource.PROFILE
    assert results["email"].source is GapFillSource.EXTRACTION
    assert world.store.list_calls - before == 1 and world.store.one_calls == 0


# ---------------------------------------------------------------------------------------
# persisting, with lineage
# ---------------------------------------------------------------------------------------


async def test_persisted_values_carry_lineage_to_the_session(world: World) -> None:
    definition = world.define("email", FieldValueType.EMAIL)
    await world.setup(definition, world.define("tier"))
    await world.write("email", "old@example.org")
    extractor = ScriptedExtractor(
        {
            "email": Extraction(
                value="new@example.org",
                confidence=0.7,
                quote="it's new@example.org",
                method="llm:m",
                source=ProfileFieldSource.LLM_EXTRACTED,
            )
        }
    )
    service = GapFillService(world.store, extractor=extractor)
    session = world.session(("user", "it's new@example.org"), tier="gold")
    step = uuid4()
    results = {
        "email": await service.try_conversation_extraction("email", session),
        "tier": await service.try_session_fill("tier", session),
    }
    written = await service.persist_extracted_values(
        session, results, scenario_id=world.scenario, step_id=step
    )
    assert set(written) == {"email", "tier"}

    email = await world.store.get_field(world.tenant, world.profile.id, "email")
    assert email is not None and email.id == written["email"]
    assert email.value == "new@example.org" and email.value_type == "email"
    assert email.source is ProfileFieldSource.LLM_EXTRACTED
    assert email.source_item_type is SourceType.SESSION
    assert email.source_item_id == session.session_id
    assert email.source_session_id == session.session_id
    assert (email.source_scenario_id, email.source_step_id) == (world.scenario, step)
    assert email.source_metadata["session_id"] == str(session.session_id)
    assert email.source_metadata["extraction_method"] == "llm:m"
    assert email.source_metadata["quote"] == "it's new@example.org"
    assert email.confidence == 0.7 and email.requires_confirmation is True
    assert email.field_definition_id == definition.id
    history = await world.store.get_field_history(world.tenant, world.profile.id, "email")
    assert [v.status.value for v in history] == ["active", "superseded"]

    tier = await world.store.get_field(world.tenant, world.profile.id, "tier")
    assert tier is not None and tier.value == "gold" and tier.requires_confirmation is False
    assert tier.source_metadata["extraction_method"] == "session_variable"
    assert tier.source is ProfileFieldSource.SYSTEM_INFERRED
    # the lineage chain of a value from a session ends at the value itself
    chain = await world.store.get_derivation_chain(world.tenant, tier.id, "profile_field")
    assert [entry["name"] for entry in chain] == ["tier"]


async def test_persist_validates_first_and_writes_nothing_invalid(world: World) -> None:
    await world.setup(world.define("age", FieldValueType.NUMBER))
    service = GapFillService(
        world.store, validator=SchemaValidationService(world.store, strict=True)
    )
    # a SESSION result is written only when the session really holds the value
    session = world.session(age=41)
    from ccvault.models import GapFillResult

    good = GapFillResult(field_name="age", filled=True, value=41, source=GapFillSource.SESSION)
    undefined = GapFillResult(
        field_name="nickname",
        filled=True,
        value="JD",
        source=GapFillSource.EXTRACTION,
        confidence=0.9,
    )
    wrong = GapFillResult(field_name="age", filled=True, value="x", source=GapFillSource.SESSION)
    profile_value = GapFillResult(
        field_name="age", filled=True, value=40, source=GapFillSource.PROFILE
    )
    written = await service.persist_extracted_values(session, [undefined, wrong, profile_value])
    assert written == {}
    assert not undefined.filled and "no definition" in undefined.validation_errors[0]
    assert not wrong.filled and wrong.validation_errors
    assert await world.store.get_field_history(world.tenant, world.profile.id, "age") == []
    assert await world.store.get_field_history(world.tenant, world.profile.id, "nickname") == []
    assert set(await service.persist_extracted_values(session, [good])) == {"age"}


# ---------------------------------------------------------------------------------------
# EnhancedGapFillService: fallback actions, ordering, one extraction per field
# ---------------------------------------------------------------------------------------


async def test_each_fallback_action(world: World) -> None:
    await world.setup(
        world.define("email", FieldValueType.EMAIL, collection_prompt="Your email, please?"),
        world.define("passport", collection_prompt="Passport number?"),
        world.define("company"),
        world.define("vat_id"),
        world.define("country", allowed_values=["Germany", "France"]),
    )
    await world.require("email", FallbackAction.ASK, order=1)
    await world.require("passport", FallbackAction.BLOCK, order=2)
    await world.require("company", FallbackAction.SKIP, RequiredLevel.SOFT, order=3)
    await world.require("vat_id", FallbackAction.SKIP, RequiredLevel.HARD, order=4)
    await world.require("country", FallbackAction.EXTRACT, order=5)
    service = EnhancedGapFillService(world.store)
    results = await service.fill_scenario_requirements(
        world.session(("user", "Please ship to France.")), world.scenario
    )
    assert list(results) == ["email", "passport", "company", "vat_id", "country"]

    ask = results["email"]
    assert not ask.filled and ask.next_action is FallbackAction.ASK
    assert ask.prompt == "Your email, please?" and not ask.blocked
    block = results["passport"]
    assert block.next_action is FallbackAction.BLOCK and block.blocked
    assert block.prompt == "Passport number?"
    skip = results["company"]
    assert skip.next_action is FallbackAction.SKIP and skip.prompt is None and not skip.blocked
    hard_skip = results["vat_id"]  # a hard requirement is never skipped
    assert hard_skip.next_action is FallbackAction.ASK and hard_skip.prompt
    extract = results["country"]
    assert extract.filled and extract.value == "France" and extract.next_action is None
    assert scenario_blocked(results)
    assert all(r.field_definition is not None for r in results.values())
    assert await world.missing() == ["email", "passport", "company", "vat_id"]


async def test_extract_runs_extraction_first_and_never_twice(world: World) -> None:
    await world.setup(world.define("a"), world.define("b"), world.define("c"))
    await world.require("a", FallbackAction.EXTRACT, order=1)
    await world.require("b", FallbackAction.ASK, order=2)
    await world.require("c", FallbackAction.EXTRACT, order=3)
    extractor = ScriptedExtractor({"a": _found("from-talk", 0.9), "b": _found("from-talk", 0.9)})
    service = EnhancedGapFillService(world.store, extractor=extractor)
    session = world.session(("user", "..."), a="from-var", b="from-var")
    results = await service.fill_scenario_requirements(session, world.scenario, persist=False)
    # EXTRACT: the conversation wins over the session variable; ASK: the variable first
    assert (results["a"].source, results["a"].value) == (GapFillSource.EXTRACTION, "from-talk")
    assert (results["b"].source, results["b"].value) == (GapFillSource.SESSION, "from-var")
    # c found nowhere: extracted exactly once, then asked for
    assert results["c"].next_action is FallbackAction.ASK
    assert sorted(name for name, _ in extractor.calls) == ["a", "c"]


async def test_definitions_read_once_per_call(world: World) -> None:
    definitions = [world.define(f"f{i}") for i in range(6)]
    await world.setup(*definitions)
    for i in range(6):
        await world.require(f"f{i}", FallbackAction.ASK, order=i)
    service = EnhancedGapFillService(world.store, extractor=ScriptedExtractor({}))
    before = world.store.list_calls
    results = await service.fill_scenario_requirements(world.session(("user", "x")), world.scenario)
    assert len(results) == 6
    assert world.store.one_calls == 0
    # once by the service, once inside get_missing_fields (the store's own evaluation)
    assert world.store.list_calls - before <= 2


async def test_results_ordered_by_collection_order(world: World) -> None:
    await world.setup()
    for name, order in (("zeta", 1), ("alpha", 3), ("mid", 2), ("beta", 3)):
        await world.require(name, FallbackAction.ASK, order=order)
    results = await EnhancedGapFillService(world.store).fill_scenario_requirements(
        world.session(), world.scenario
    )
    assert list(results) == ["zeta", "mid", "alpha", "beta"]


async def test_one_field_required_twice_is_filled_once_hard_governs(world: World) -> None:
    await world.setup(world.define("email", FieldValueType.EMAIL))
    await world.require("email", FallbackAction.SKIP, RequiredLevel.SOFT, order=1, rule_id=uuid4())
    await world.require("email", FallbackAction.BLOCK, RequiredLevel.HARD, order=2, rule_id=uuid4())
    extractor = ScriptedExtractor({})
    results = await EnhancedGapFillService(
        world.store, extractor=extractor
    ).fill_scenario_requirements(world.session(("user", "x")), world.scenario)
    assert list(results) == ["email"] and results["email"].blocked
    assert extractor.calls == [("email", 1)]


async def test_verification_required_field_is_not_auto_filled(world: World) -> None:
    await world.setup(world.define("passport", required_verification=True))
    await world.require("passport", FallbackAction.EXTRACT)
    extractor = ScriptedExtractor({"passport": _found("X123", 0.99)})
    results = await EnhancedGapFillService(
        world.store, extractor=extractor
    ).fill_scenario_requirements(world.session(("user", "X123"), passport="X123"), world.scenario)
    assert not results["passport"].filled and results["passport"].next_action is FallbackAction.ASK
    assert "verification" in results["passport"].validation_errors[0]
    assert extractor.calls == []


async def test_when_condition_and_soft_level_filter(world: World) -> None:
    await world.setup()
    await world.write("order_type", "domestic")
    await world.require(
        "customs_id", FallbackAction.BLOCK, when_condition='order_type == "international"'
    )
    await world.require("newsletter", FallbackAction.SKIP, RequiredLevel.SOFT)
    service = EnhancedGapFillService(world.store)
    assert list(await service.fill_scenario_requirements(world.session(), world.scenario)) == [
        "newsletter"
    ]
    hard_only = await service.fill_scenario_requirements(
        world.session(), world.scenario, required_level="hard"
    )
    assert hard_only == {}
    await world.write("order_type", "international")
    results = await service.fill_scenario_requirements(world.session(), world.scenario)
    assert results["customs_id"].blocked


async def test_metrics_from_real_events(world: World) -> None:
    await world.setup(world.define("a"), world.define("b"))
    await world.require("a", FallbackAction.EXTRACT, order=1)
    await world.require("b", FallbackAction.ASK, order=2)
    extractor = ScriptedExtractor({"a": _found("x", 0.9)})
    service = EnhancedGapFillService(world.store, extractor=extractor)
    await service.fill_scenario_requirements(world.session(("user", "x")), world.scenario)

    def attempts(source: str) -> float:
        value = metrics.REGISTRY.get_sample_value(
            "gap_fill_attempts_total",
            {"tenant_id": str(world.tenant), "scenario_id": str(world.scenario), "source": source},
        )
        return value or 0.0

    # a: extraction (filled); b: session, then extraction (neither)
    assert attempts("extraction") == 2 and attempts("session") == 1 and attempts("profile") == 0

    def counted(name: str) -> float:
        labels = {"tenant_id": str(world.tenant), "scenario_id": str(world.scenario)}
        return metrics.REGISTRY.get_sample_value(name, labels) or 0.0

    assert counted("gap_fill_fields_filled_total") / counted("gap_fill_fields_tried_total") == 0.5
    # a is now stored; b still missing: one more try, not filled -> 1 of 3
    await service.fill_scenario_requirements(world.session(("user", "x")), world.scenario)
    assert counted("gap_fill_fields_tried_total") == 3
    assert counted("gap_fill_fields_filled_total") == 1


# ---------------------------------------------------------------------------------------
# end to end, offline extractor, nothing scripted
# ---------------------------------------------------------------------------------------


async def test_end_to_end_scenario_on_the_inmemory_provider(world: World) -> None:
    await world.setup(
        world.define("email", FieldValueType.EMAIL, collection_prompt="Your email?"),
        world.define("shipping_country", allowed_values=["Germany", "France", "Spain"]),
        world.define("delivery_date", FieldValueType.DATE, display_name="delivery date"),
        world.define("order_quantity", FieldValueType.NUMBER, display_name="quantity"),
        world.define("phone", FieldValueType.PHONE),
        world.define("billing_postcode", validation_regex=r"^[0-9]{5}$"),
        world.define("gift_wrap", FieldValueType.BOOLEAN, display_name="gift wrap"),
    )
    await world.write("phone", "+4930901820")
    await world.require("email", FallbackAction.ASK, order=1)
    await world.require("shipping_country", FallbackAction.EXTRACT, order=2)
    await world.require("delivery_date", FallbackAction.EXTRACT, order=3)
    await world.require("order_quantity", FallbackAction.EXTRACT, order=4)
    await world.require("phone", FallbackAction.ASK, order=5)
    await world.require("billing_postcode", FallbackAction.ASK, order=6)
    await world.require("gift_wrap", FallbackAction.SKIP, RequiredLevel.SOFT, order=7)

    before = await world.missing()
    assert before == [
        "email",
        "shipping_country",
        "delivery_date",
        "order_quantity",
        "billing_postcode",
        "gift_wrap",
    ]
    session = world.session(
        ("assistant", "Hello! Where are we shipping, and by when?"),
        ("user", "To Spain. Delivery date 2026-12-18 please. Mail me at ana@example.es"),
        ("assistant", "What quantity?"),
        ("user", "The quantity is 4. My postcode is 2801."),  # 4 digits: fails the regex
    )
    service = EnhancedGapFillService.from_settings(
        world.store, load_settings(store_provider="inmemory")
    )
    results = await service.fill_scenario_requirements(session, world.scenario)

    assert list(results) == before
    filled = {name: r.value for name, r in results.items() if r.filled}
    assert filled == {
        "email": "ana@example.es",
        "shipping_country": "Spain",
        "delivery_date": "2026-12-18",
        "order_quantity": 4,
    }
    assert results["order_quantity"].needs_confirmation  # 0.8 < 0.85
    assert not results["email"].needs_confirmation
    postcode = results["billing_postcode"]
    assert not postcode.filled and postcode.next_action is FallbackAction.ASK
    assert any("pattern" in e for e in postcode.validation_errors)
    assert results["gift_wrap"].next_action is FallbackAction.SKIP

    after = await world.missing()
    assert after == ["billing_postcode", "gift_wrap"]
    profile = await world.reload()
    for name in filled:
        stored = profile.fields[name]
        assert stored.source_item_type is SourceType.SESSION
        assert stored.source_metadata["session_id"] == str(session.session_id)
        assert stored.source_metadata["quote"]
        assert stored.source_metadata["extraction_method"].startswith("offline:")
        await service.validator.validate_and_raise(world.tenant, world.agent, stored)
    assert profile.fields["order_quantity"].requires_confirmation
    assert profile.fields["phone"].source_item_type is None  # untouched


async def test_value_without_definition_is_stored_with_its_json_type(world: World) -> None:
    await world.setup()
    service = GapFillService(world.store)
    session = world.session(kids=2, vip=True, prefs={"lang": "de"}, nickname="JD")
    results = await service.fill_multiple(["kids", "vip", "prefs", "nickname"], session)
    assert all(r.filled and r.source is GapFillSource.SESSION for r in results.values())
    await service.persist_extracted_values(session, results)
    profile = await world.reload()
    assert {name: f.value_type for name, f in profile.fields.items()} == {
        "kids": "number",
        "vip": "boolean",
        "prefs": "json",
        "nickname": "string",
    }
