"""``ccvault demo``: a short end-to-end story, printed with rich.

A customer writes on WhatsApp; the agent's schema is saved; facts are written, one of them
superseded, and its history shown; a passport number is derived from an uploaded scan, with
lineage; the "international order" scenario says what is still missing; gap fill reads the
conversation, validates and persists what it finds, and the missing list shrinks.

It runs on whatever store :func:`ccvault.open_store` gives. Every id is fixed (uuid5), so on
a persistent store a second run reuses the same customer and adds new versions: the previous
order's answers are retired first (a closing version that expires at once, then the expiry
sweep), so gap fill has something to do every time.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import timedelta
from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid4, uuid5

from ccvault import errors
from ccvault.extras import requires_extra
from ccvault.gapfill import EnhancedGapFillService, scenario_blocked
from ccvault.models import (
    Channel,
    ConversationTurn,
    FallbackAction,
    FieldValueType,
    ItemStatus,
    ProfileAsset,
    ProfileField,
    ProfileFieldDefinition,
    ProfileFieldSource,
    RequiredLevel,
    ScenarioFieldRequirement,
    Session,
    SourceType,
)
from ccvault.provenance import explanation_lines
from ccvault.registry import open_store
from ccvault.requirements import condition_holds
from ccvault.settings import VaultSettings
from ccvault.store import ProfileStore
from ccvault.validation import SchemaValidationService

with requires_extra("cli", "ccvault demo"):
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table
    from rich.text import Text

__all__ = ["AGENT_ID", "SCENARIO_ID", "TENANT_ID", "WHATSAPP_NUMBER", "run_demo"]


def _id(name: str) -> UUID:
    return uuid5(NAMESPACE_URL, f"https://ccvault.invalid/demo/{name}")


TENANT_ID = _id("tenant/acme-books")
AGENT_ID = _id("agent/shop-assistant")
SCENARIO_ID = _id("scenario/international-order")
WHATSAPP_NUMBER = "+14155550123"

#: Facts that belong to one order: retired before each new order (each demo run).
ORDER_FIELDS = ("shipping_country", "delivery_date", "order_quantity", "gift_wrap")


def _definitions() -> list[ProfileFieldDefinition]:
    def d(name: str, value_type: FieldValueType, **kw: Any) -> ProfileFieldDefinition:
        return ProfileFieldDefinition(
            tenant_id=TENANT_ID, agent_id=AGENT_ID, name=name, value_type=value_type, **kw
        )

    return [
        d("full_name", FieldValueType.STRING, display_name="full name", is_pii=True),
        d("customer_type", FieldValueType.STRING, allowed_values=["consumer", "business"]),
        d(
            "email",
            FieldValueType.EMAIL,
            display_name="email",
            is_pii=True,
            collection_prompt="What email address should we send the receipt to?",
        ),
        d(
            "passport_number",
            FieldValueType.STRING,
            validation_regex=r"^[A-Z0-9]{6,9}$",
            required_verification=True,
            is_pii=True,
        ),
        d(
            "shipping_country",
            FieldValueType.STRING,
            allowed_values=["Germany", "France", "Spain", "United Kingdom"],
            collection_prompt="Which country should we ship to?",
        ),
        d("delivery_date", FieldValueType.DATE, display_name="delivery date"),
        d("order_quantity", FieldValueType.NUMBER, display_name="quantity"),
        d("gift_wrap", FieldValueType.BOOLEAN, display_name="gift wrap"),
        d(
            "billing_postcode",
            FieldValueType.STRING,
            display_name="billing postcode",
            validation_regex=r"^[A-Z0-9 -]{3,10}$",
            collection_prompt="What is the postcode of your billing address?",
        ),
        d("company_name", FieldValueType.STRING, display_name="company name"),
    ]


def _requirements() -> list[ScenarioFieldRequirement]:
    rows: list[tuple[str, RequiredLevel, FallbackAction, str | None]] = [
        ("email", RequiredLevel.HARD, FallbackAction.ASK, None),
        ("passport_number", RequiredLevel.HARD, FallbackAction.BLOCK, None),
        ("shipping_country", RequiredLevel.HARD, FallbackAction.EXTRACT, None),
        ("delivery_date", RequiredLevel.HARD, FallbackAction.EXTRACT, None),
        ("order_quantity", RequiredLevel.HARD, FallbackAction.EXTRACT, None),
        ("billing_postcode", RequiredLevel.HARD, FallbackAction.ASK, None),
        ("gift_wrap", RequiredLevel.SOFT, FallbackAction.EXTRACT, None),
        ("company_name", RequiredLevel.SOFT, FallbackAction.SKIP, 'customer_type == "business"'),
    ]
    return [
        ScenarioFieldRequirement(
            tenant_id=TENANT_ID,
            agent_id=AGENT_ID,
            scenario_id=SCENARIO_ID,
            field_name=name,
            required_level=level,
            fallback_action=action,
            when_condition=condition,
            collection_order=(order + 1) * 10,
        )
        for order, (name, level, action, condition) in enumerate(rows)
    ]


_CONVERSATION = [
    ("assistant", "Hi Jane! Where should we ship this order, and what is your delivery date?"),
    ("user", "Ship it to Germany please. The delivery date is 2026-12-18 at the latest."),
    ("assistant", "Noted. What quantity would you like?"),
    ("user", "A quantity of 3, thanks. No gift wrap."),
]


def _short(value: object, width: int = 48) -> str:
    text = str(value)
    return escape(text if len(text) <= width else text[: width - 1] + "…")


async def run_demo(settings: VaultSettings, console: Console | None = None) -> None:
    """Tell the story on the store ``settings`` select (see the module docstring)."""
    out = console if console is not None else Console()
    async with open_store(settings) as store:
        await _story(store, settings, out)


async def _story(store: ProfileStore, settings: VaultSettings, out: Console) -> None:
    validator = SchemaValidationService.from_settings(store, settings)
    gap_fill = EnhancedGapFillService.from_settings(store, settings, validator=validator)
    out.rule("[bold]ccvault demo[/bold]: the Customer Context Vault in one story")
    out.print(f"store: [cyan]{settings.profile.store_provider}[/cyan] ({type(store).__name__})")

    # 1 -- a customer writes -----------------------------------------------------------------
    out.rule("1. A customer writes on WhatsApp")
    profile = await store.get_or_create(TENANT_ID, Channel.WHATSAPP, WHATSAPP_NUMBER)
    returning = bool(profile.fields)
    out.print(
        f"get_or_create(whatsapp, {WHATSAPP_NUMBER}) -> profile [cyan]{profile.id}[/cyan] "
        + ("(a returning customer: same profile as last run)" if returning else "(new)")
    )

    # 2 -- the agent's schema -----------------------------------------------------------------
    out.rule("2. The shop assistant's field definitions")
    for definition in _definitions():
        await validator.save_definition(definition)
    table = Table("field", "type", "rules", "pii")
    for definition in (await validator.get_definitions(TENANT_ID, AGENT_ID)).values():
        rules = []
        if definition.validation_regex:
            rules.append(f"regex {definition.validation_regex}")
        if definition.allowed_values:
            rules.append(f"one of {definition.allowed_values}")
        if definition.required_verification:
            rules.append("must be verified")
        table.add_row(
            definition.name,
            definition.value_type.value,
            _short(", ".join(rules), 60),
            "yes" if definition.is_pii else "",
        )
    out.print(table)
    try:
        bad = ProfileFieldDefinition(
            tenant_id=TENANT_ID, agent_id=AGENT_ID, name="nickname", validation_regex=r"(a+)\1"
        )
        await validator.save_definition(bad)
    except errors.ValidationError as exc:
        out.print(f"[yellow]refused at save[/yellow]: {escape(str(exc))}")

    # 3 -- facts, a superseded one, history ------------------------------------------------------
    out.rule("3. Facts with history")

    async def write(name: str, value: object, **kw: Any) -> UUID:
        kw.setdefault("source", ProfileFieldSource.USER_PROVIDED)
        field = ProfileField(name=name, value=value, **kw)
        return await validator.update_field(TENANT_ID, AGENT_ID, profile.id, field)

    await write("full_name", "Jane Doe")
    await write("customer_type", "business")
    await write("email", "jane@oldmail.example.org")
    await write("email", "jane.doe@example.org")  # supersedes the previous version
    try:
        await write("email", "jane.doe@", confidence=0.9)
    except errors.SchemaValidationError as exc:
        out.print(
            f"[yellow]refused[/yellow] {exc.field_name}: {escape(str(exc.errors))} "
            f"(error types {exc.error_types})"
        )
    history = await store.get_field_history(TENANT_ID, profile.id, "email")
    table = Table("version", "value", "status", "collected at", title="email history")
    for version in history[:6]:
        table.add_row(
            str(version.id)[:8],
            _short(version.value),
            version.status.value,
            version.collected_at.strftime("%Y-%m-%d %H:%M:%S"),
        )
    out.print(table)
    if len(history) > 6:
        out.print(f"... and {len(history) - 6} older versions from earlier runs")

    # 4 -- lineage ----------------------------------------------------------------------------
    out.rule("4. Derived from a document, with lineage")
    scan = b"%PDF-1.7 passport scan of Jane Doe (demo bytes)"
    asset = ProfileAsset(
        name="passport_scan",
        asset_type="identity_document",
        storage_provider="s3",
        storage_path="s3://acme-books-vault/jane/passport.pdf",
        mime_type="application/pdf",
        size_bytes=len(scan),
        checksum=hashlib.sha256(scan).hexdigest(),
        verified=True,
    )
    asset_id = await store.add_asset(TENANT_ID, profile.id, asset, supersede_existing=True)
    passport_id = await write(
        "passport_number",
        "X1234567",
        source=ProfileFieldSource.DOCUMENT_EXTRACTED,
        source_item_id=asset_id,
        source_item_type=SourceType.PROFILE_ASSET,
        source_metadata={"tool": "passport_ocr", "page": 1},
        verified=True,
        verification_method="document",
    )
    chain = await store.get_derivation_chain(TENANT_ID, passport_id, "profile_field")
    out.print(
        "derivation chain of passport_number: "
        + "  ->  ".join(f"{entry['type']}:{entry['name']}" for entry in chain)
    )
    # why does the vault believe it? one call: source, verification, history, lineage
    explanation = await store.explain_field(TENANT_ID, profile.id, "passport_number")
    older = len(explanation.replaced)
    shown = explanation.model_copy(update={"replaced": explanation.replaced[:2]})
    out.print("why the vault believes passport_number (explain_field):")
    for line in explanation_lines(shown):
        out.print(Text(f"  {line}"))  # customer strings: plain text, never markup
    if older > 2:
        out.print(f"  ... and {older - 2} older replaced versions from earlier runs")

    # 5 -- what the scenario needs ------------------------------------------------------------
    out.rule("5. The 'international order' scenario: what is missing?")
    retired = await _retire_previous_order(store, profile.id)
    if retired:
        out.print(f"a new order: {retired} answer(s) of the previous order retired (EXPIRED)")
    for requirement in _requirements():
        await store.save_scenario_requirement(requirement)
    profile = await _reload(store, profile.id)
    missing = await store.get_missing_fields(TENANT_ID, profile, SCENARIO_ID, required_level=None)
    missing_names = {r.field_name for r in missing}
    values = profile.active_values()
    table = Table("order", "field", "level", "fallback", "condition", "status")
    for requirement in await store.get_scenario_requirements(TENANT_ID, SCENARIO_ID):
        applies = condition_holds(requirement.when_condition, values)
        status = (
            "[red]missing[/red]"
            if requirement.field_name in missing_names
            else ("[green]known[/green]" if applies else "n/a")
        )
        table.add_row(
            str(requirement.collection_order),
            requirement.field_name,
            requirement.required_level.value,
            requirement.fallback_action.value,
            _short(requirement.when_condition or ""),
            status,
        )
    out.print(table)

    # 6 -- gap fill ---------------------------------------------------------------------------
    out.rule("6. Gap fill from the conversation")
    session = Session(
        tenant_id=TENANT_ID,
        agent_id=AGENT_ID,
        session_id=uuid4(),
        customer_profile_id=profile.id,
        turns=[ConversationTurn(role=role, content=text) for role, text in _CONVERSATION],
    )
    for turn in session.turns:
        out.print(f"  [dim]{turn.role:>9}[/dim]: {turn.content}")
    results = await gap_fill.fill_scenario_requirements(session, SCENARIO_ID, required_level=None)
    table = Table("field", "filled", "value", "confidence", "next", "quote / prompt")
    for name, result in results.items():
        if result.filled:
            confirm = " (confirm)" if result.needs_confirmation else ""
            table.add_row(
                name,
                "[green]yes[/green]",
                _short(result.value),
                f"{result.confidence:.2f}{confirm}",
                "",
                _short(result.extraction_quote or "", 50),
            )
        else:
            table.add_row(
                name,
                "[red]no[/red]",
                "",
                "" if result.confidence is None else f"{result.confidence:.2f}",
                result.next_action.value if result.next_action else "",
                _short(result.prompt or "", 50),
            )
    out.print(table)
    if scenario_blocked(results):
        out.print("[red]the scenario is blocked[/red] until a blocking field is provided")

    profile = await _reload(store, profile.id)
    still = await store.get_missing_fields(TENANT_ID, profile, SCENARIO_ID, required_level=None)
    filled = [name for name, result in results.items() if result.filled]
    out.print(f"persisted with lineage to session {session.session_id}: {', '.join(filled)}")
    sample = next((profile.fields[name] for name in filled if name in profile.fields), None)
    if sample is not None:
        out.print(
            f"  e.g. {sample.name}: source_item_type={_value(sample.source_item_type)}, "
            f"confidence={sample.confidence}, requires_confirmation="
            f"{sample.requires_confirmation}, source_metadata={escape(str(sample.source_metadata))}"
        )
    out.print(
        "still missing: "
        + (", ".join(r.field_name for r in still) or "nothing")
        + f"  (before: {', '.join(sorted(missing_names)) or 'nothing'})"
    )
    out.rule("done")


def _value(item: object) -> str:
    return str(getattr(item, "value", item))


async def _reload(store: ProfileStore, profile_id: UUID) -> Any:
    found = await store.get_by_id(TENANT_ID, profile_id)
    if found is None:
        raise errors.NotFoundError(f"demo profile {profile_id} disappeared")
    return found


async def _retire_previous_order(
    store: ProfileStore, profile_id: UUID, names: Sequence[str] = ORDER_FIELDS
) -> int:
    """Retire the previous order's answers: a closing version of each that expires at
    once, then the expiry sweep marks it EXPIRED. History keeps every version."""
    profile = await _reload(store, profile_id)
    now = store.now()
    closing = 0
    for name in names:
        current = profile.fields.get(name)
        if current is None or current.status is not ItemStatus.ACTIVE:
            continue
        await store.update_field(
            TENANT_ID,
            profile_id,
            ProfileField(
                name=name,
                value=current.value,
                value_type=current.value_type,
                source=ProfileFieldSource.SYSTEM_INFERRED,
                source_metadata={"reason": "order closed"},
                collected_at=now,
                expires_at=now - timedelta(microseconds=1),
            ),
        )
        closing += 1
    if closing:
        await store.expire_stale_fields(TENANT_ID, profile_id)
    return closing
