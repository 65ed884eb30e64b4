"""The vault as MCP tools, for an agent to call in the middle of a conversation.

Built with the official MCP Python SDK (``mcp.server.mcpserver.MCPServer``) and served two
ways, with the same tools and the same API keys:

* **streamable HTTP** at ``/mcp`` of ``ccvault serve``: every request carries
  ``Authorization: Bearer ccv_...``; the key decides the tenant and the scopes.
* **stdio** with ``ccvault mcp --api-key ccv_...`` (or ``$CCVAULT_API_KEY``), for an agent
  that starts the vault as a local subprocess; the key is checked against the key file at
  start and again on every call (a revoked key stops working at once).

Errors come back as tool errors whose text never quotes a value.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal
from uuid import UUID, uuid4

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from pydantic import Field

from ccvault import errors
from ccvault.gapfill import EnhancedGapFillService, scenario_blocked
from ccvault.models import (
    Channel,
    ConversationTurn,
    CustomerProfile,
    ProfileField,
    ProfileFieldSource,
    Session,
    SourceType,
)
from ccvault.server.auth import ApiKey, ApiKeyStore
from ccvault.server.deps import Caller
from ccvault.server.pii import Masker
from ccvault.store import ProfileStore

__all__ = ["VaultBinding", "bind_http", "create_mcp_server", "http_app", "run_stdio"]

logger = logging.getLogger("ccvault.server.mcp")

INSTRUCTIONS = """\
The Customer Context Vault remembers facts about each customer across conversations and
channels: who they are, what they told you before, how each fact was learned and whether it
is verified. Use it like this during a conversation:
1. find_customer with the channel and the user's id on it (phone number, email address...)
   to get the profile_id and what is already known. Do not ask for facts the profile holds.
2. missing_fields for the scenario you are running, to learn what you still need to ask.
3. fill_gaps with the conversation so far: the vault extracts what the customer already said
   and stores it with a quote. Then ask only for what is still missing.
4. record_field whenever the customer tells you a fact directly; pass the customer's own
   words as quote.
5. explain_field when someone asks where a value came from or whether it can be trusted.
Values shown as "[pii:masked]" are personal data your key may not read.
"""


@dataclass
class VaultBinding:
    """What the tools work on: the store, the key file, gap fill; and for stdio, the key."""

    store: ProfileStore | None = None
    keys: ApiKeyStore | None = None
    gap_fill: EnhancedGapFillService | None = None
    stdio_token: str | None = None


_SAFE: list[tuple[type[errors.VaultError], str]] = [
    (errors.SchemaValidationError, "the value does not meet the field's definition"),
    (errors.ValidationError, "an argument was refused as invalid"),
    (errors.NotFoundError, "not found: check the profile_id (it may belong to no customer)"),
    (errors.IdentityConflictError, "that identity belongs to another customer profile"),
    (errors.ConflictError, "the write conflicts with what is stored"),
    (errors.ProviderUnavailableError, "the vault's store is unavailable; try again shortly"),
]


def _safe(exc: errors.VaultError) -> ToolError:
    for cls, message in _SAFE:
        if isinstance(exc, cls):
            if isinstance(exc, errors.SchemaValidationError):
                kinds = ", ".join(exc.error_types) or "invalid"
                message = f"{message} ({exc.field_name}: {kinds})"
            return ToolError(message)
    return ToolError("the vault could not complete the call")


def _uuid(value: str, what: str) -> UUID:
    try:
        return UUID(value)
    except (ValueError, TypeError):
        raise ToolError(f"{what} must be a UUID") from None


def _field_view(item: ProfileField) -> dict[str, Any]:
    return {
        "field_id": str(item.id),
        "value": item.value,
        "status": item.status.value,
        "source": item.source.value,
        "verified": item.verified,
        "confidence": item.confidence,
        "requires_confirmation": item.requires_confirmation,
        "collected_at": item.collected_at.isoformat(),
        "expires_at": item.expires_at.isoformat() if item.expires_at else None,
    }


def _profile_view(profile: CustomerProfile) -> dict[str, Any]:
    return {
        "profile_id": str(profile.id),
        "customer_id": str(profile.customer_id),
        "channels": [
            {"channel": i.channel.value, "id": i.channel_user_id, "verified": i.verified}
            for i in profile.channel_identities
        ],
        "verification_level": profile.verification_level.value,
        "known_fields": {name: _field_view(item) for name, item in sorted(profile.fields.items())},
    }


def create_mcp_server(binding: VaultBinding | None = None) -> MCPServer[Any]:
    """The MCP server with the vault's tools, working on ``binding`` (filled in later by
    the HTTP app's lifespan or by :func:`run_stdio`)."""
    bound = binding or VaultBinding()
    server: MCPServer[Any] = MCPServer(
        name="ccvault",
        title="Customer Context Vault",
        instructions=INSTRUCTIONS,
        version="1.0.0",
    )
    server.ccvault_binding = bound  # type: ignore[attr-defined]

    def caller_of(ctx: Context[Any, Any], scope: str) -> tuple[Caller, ProfileStore]:
        if bound.store is None or bound.keys is None:
            raise ToolError("the vault is not ready yet")
        token = bound.stdio_token
        if token is None:
            headers = ctx.headers or {}
            auth = headers.get("authorization") or headers.get("Authorization") or ""
            scheme, _, token = auth.partition(" ")
            token = token.strip() if scheme.lower() == "bearer" else ""
        key: ApiKey | None = bound.keys.authenticate(token) if token else None
        if key is None:
            raise ToolError("a valid API key is required")
        caller = Caller(key)
        if not caller.can(scope):
            raise ToolError(f"this API key lacks the {scope!r} scope")
        return caller, bound.store

    async def guarded(work: Callable[[], Awaitable[dict[str, Any]]]) -> dict[str, Any]:
        try:
            return await work()
        except errors.VaultError as exc:
            raise _safe(exc) from None

    @server.tool(
        name="find_customer",
        description=(
            "Look up the customer you are talking to by the channel and their id on it "
            "(e.g. channel='whatsapp', channel_user_id='+4915112345678'; channel='email', "
            "channel_user_id='ana@example.com'). Returns profile_id (use it in every other "
            "tool) and every fact already known (known_fields: value, source, verified). "
            "Call this at the start of a conversation. With create_if_missing=true a new, "
            "empty profile is created for a first-time customer (needs write access); "
            "otherwise found=false means the vault has never seen them."
        ),
    )
    async def find_customer(
        channel: Annotated[Channel, Field(description="The channel the customer writes on.")],
        channel_user_id: Annotated[
            str,
            Field(min_length=1, max_length=255, description="The customer's id on that channel."),
        ],
        ctx: Context[Any, Any],
        create_if_missing: Annotated[
            bool, Field(description="Create an empty profile when none exists.")
        ] = False,
    ) -> dict[str, Any]:
        caller, store = caller_of(ctx, "write" if create_if_missing else "read")

        async def work() -> dict[str, Any]:
            if create_if_missing:
                profile: CustomerProfile | None = await store.get_or_create(
                    caller.tenant_id, channel, channel_user_id
                )
            else:
                profile = await store.get_by_channel_identity(
                    caller.tenant_id, channel, channel_user_id
                )
            if profile is None:
                return {"found": False}
            masked = (await Masker.for_caller(store, caller)).profile(profile)
            return {"found": True, **_profile_view(masked)}

        return await guarded(work)

    @server.tool(
        name="missing_fields",
        description=(
            "What the vault still lacks for a scenario (a task or flow you are running, "
            "identified by scenario_id), for the customer with this profile_id: each missing "
            "field with whether it is required (hard) or optional (soft), what to do about it "
            "(fallback_action: ask, extract, skip or block) and why (stale or unverified "
            "values count as missing). Ask the customer only for these fields, in the order "
            "given. Empty list: the scenario can proceed."
        ),
    )
    async def missing_fields(
        profile_id: Annotated[str, Field(description="From find_customer.")],
        scenario_id: Annotated[str, Field(description="The scenario (UUID).")],
        ctx: Context[Any, Any],
        step_id: Annotated[
            str | None, Field(description="Only this step's requirements (UUID).")
        ] = None,
        required_level: Annotated[
            Literal["hard", "soft", "all"], Field(description="Which requirements to check.")
        ] = "all",
    ) -> dict[str, Any]:
        caller, store = caller_of(ctx, "read")
        pid = _uuid(profile_id, "profile_id")
        sid = _uuid(scenario_id, "scenario_id")
        step = _uuid(step_id, "step_id") if step_id else None

        async def work() -> dict[str, Any]:
            profile = await store.get_by_id(caller.tenant_id, pid)
            if profile is None:
                raise errors.NotFoundError("profile")
            level = None if required_level == "all" else required_level
            missing = await store.get_missing_fields(
                caller.tenant_id, profile, sid, step_id=step, required_level=level
            )
            return {
                "missing": [
                    {
                        "field_name": r.field_name,
                        "required_level": r.required_level.value,
                        "fallback_action": r.fallback_action.value,
                        "depends_on_fields": r.depends_on_fields,
                    }
                    for r in missing
                ],
                "complete": not missing,
            }

        return await guarded(work)

    @server.tool(
        name="record_field",
        description=(
            "Store a fact the customer told you (or a tool returned), e.g. field_name="
            "'email', value='ana@example.com'. Always pass quote: the customer's exact words "
            "the value comes from, so a human can check it later. The new value becomes the "
            "current one; the old one is kept in history, never lost. field_name is "
            "lower_snake_case. source says how you got it: user_provided (the customer said "
            "it), llm_extracted (you inferred it from the conversation), tool_result. Lower "
            "confidence (0..1) when unsure; the value is then flagged for confirmation."
        ),
    )
    async def record_field(
        profile_id: Annotated[str, Field(description="From find_customer.")],
        field_name: Annotated[
            str,
            Field(pattern=r"^[a-z_][a-z0-9_]*$", max_length=50, description="e.g. email"),
        ],
        value: Annotated[Any, Field(description="The value (string, number, bool...).")],
        ctx: Context[Any, Any],
        quote: Annotated[
            str | None, Field(max_length=2000, description="The customer's exact words.")
        ] = None,
        source: Annotated[
            ProfileFieldSource, Field(description="How the value was obtained.")
        ] = ProfileFieldSource.USER_PROVIDED,
        confidence: Annotated[float, Field(ge=0.0, le=1.0)] = 1.0,
        session_id: Annotated[
            str | None, Field(description="The conversation's id (UUID), for lineage.")
        ] = None,
    ) -> dict[str, Any]:
        caller, store = caller_of(ctx, "write")
        pid = _uuid(profile_id, "profile_id")
        session = _uuid(session_id, "session_id") if session_id else None

        async def work() -> dict[str, Any]:
            metadata: dict[str, Any] = {"recorded_via": "mcp"}
            if quote:
                metadata["quote"] = quote
            item = ProfileField(
                name=field_name,
                value=value,
                source=source,
                confidence=confidence,
                requires_confirmation=confidence < 0.85,
                source_session_id=session,
                source_item_type=SourceType.SESSION if session else None,
                source_metadata=metadata,
            )
            field_id = await store.update_field(caller.tenant_id, pid, item)
            return {"recorded": True, "field_id": str(field_id), "field_name": field_name}

        return await guarded(work)

    @server.tool(
        name="fill_gaps",
        description=(
            "Fill what a scenario still needs from the conversation so far, without asking "
            "the customer again: the vault reads the session variables and the recent turns, "
            "extracts values the customer already stated, validates them against the field "
            "definitions of agent_id and stores them with the quote they came from "
            "(persist=true). For each field the result says filled (with value and quote) or "
            "what to do next: next_action='ask' with a prompt to use, 'skip', or "
            "blocked=true (the scenario cannot proceed without it)."
        ),
    )
    async def fill_gaps(
        profile_id: Annotated[str, Field(description="From find_customer.")],
        agent_id: Annotated[str, Field(description="Your agent id (UUID).")],
        scenario_id: Annotated[str, Field(description="The scenario (UUID).")],
        conversation: Annotated[
            list[dict[str, str]],
            Field(
                max_length=500,
                description="The turns so far, oldest first: [{'role': 'user', 'content': "
                "'...'}, {'role': 'assistant', 'content': '...'}].",
            ),
        ],
        ctx: Context[Any, Any],
        session_variables: Annotated[
            dict[str, Any] | None, Field(description="Values your session already holds.")
        ] = None,
        step_id: Annotated[str | None, Field(description="Only this step (UUID).")] = None,
        session_id: Annotated[str | None, Field(description="The conversation id (UUID).")] = None,
        persist: Annotated[bool, Field(description="Store what was found.")] = True,
    ) -> dict[str, Any]:
        caller, store = caller_of(ctx, "write" if persist else "read")
        pid = _uuid(profile_id, "profile_id")
        agent = _uuid(agent_id, "agent_id")
        sid = _uuid(scenario_id, "scenario_id")
        step = _uuid(step_id, "step_id") if step_id else None
        session_uuid = _uuid(session_id, "session_id") if session_id else uuid4()
        try:
            turns = [
                ConversationTurn(role=turn.get("role", "user"), content=turn.get("content", ""))
                for turn in conversation
            ]
            session = Session(
                tenant_id=caller.tenant_id,
                agent_id=agent,
                session_id=session_uuid,
                customer_profile_id=pid,
                variables=session_variables or {},
                turns=turns,
            )
        except ValueError:
            raise ToolError("conversation or session_variables are malformed") from None
        service = bound.gap_fill
        assert service is not None

        async def work() -> dict[str, Any]:
            results = await service.fill_scenario_requirements(session, sid, step, persist=persist)
            masker = (await Masker.for_caller(store, caller)).definitions_for(
                r.field_definition for r in results.values() if r.field_definition is not None
            )
            views = []
            for result in results.values():
                shown = masker.gap_fill(result)
                views.append(
                    {
                        "field_name": shown.field_name,
                        "filled": shown.filled,
                        "value": shown.value,
                        "source": shown.source.value if shown.source else None,
                        "confidence": shown.confidence,
                        "quote": shown.extraction_quote,
                        "needs_confirmation": shown.needs_confirmation,
                        "next_action": shown.next_action.value if shown.next_action else None,
                        "prompt": shown.prompt,
                        "blocked": shown.blocked,
                    }
                )
            return {"results": views, "scenario_blocked": scenario_blocked(results)}

        return await guarded(work)

    @server.tool(
        name="explain_field",
        description=(
            "Explain where a customer's value came from and whether to trust it: the current "
            "value, every earlier version (newest first, with status, source, verification "
            "and the quote it came from), and the derivation chain (e.g. date_of_birth <- "
            "extracted from id_card_scan <- uploaded in session X), root first. Use it when "
            "the customer disputes a value or before relying on one for something important."
        ),
    )
    async def explain_field(
        profile_id: Annotated[str, Field(description="From find_customer.")],
        field_name: Annotated[str, Field(pattern=r"^[a-z_][a-z0-9_]*$", max_length=50)],
        ctx: Context[Any, Any],
    ) -> dict[str, Any]:
        caller, store = caller_of(ctx, "read")
        pid = _uuid(profile_id, "profile_id")

        async def work() -> dict[str, Any]:
            history = await store.get_field_history(caller.tenant_id, pid, field_name)
            if not history:
                return {"known": False, "field_name": field_name}
            masker = await Masker.for_caller(store, caller)
            current = next((v for v in history if v.status.value == "active"), None)
            chain_of = current or history[0]
            chain = await store.get_derivation_chain(caller.tenant_id, chain_of.id, "profile_field")
            versions = []
            for version in masker.fields(history):
                view = _field_view(version)
                view["verification_method"] = version.verification_method
                view["source_metadata"] = version.source_metadata
                versions.append(view)
            return {
                "known": True,
                "field_name": field_name,
                "current": _field_view(masker.field(current)) if current else None,
                "history": versions,
                "derivation_chain": json.loads(json.dumps(masker.lineage(chain), default=str)),
            }

        return await guarded(work)

    return server


# ---------------------------------------------------------------------------------------
# streamable HTTP inside `ccvault serve`
# ---------------------------------------------------------------------------------------

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class _RequireKey:
    """401 before the MCP transport sees a request without a valid key."""

    def __init__(self, app: ASGIApp, binding: VaultBinding) -> None:
        self.app = app
        self.binding = binding

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        from ccvault.server.errors import error_response

        if scope["type"] == "http":
            token = ""
            for name, value in scope.get("headers", []):
                if name == b"authorization":
                    scheme, _, rest = value.decode("latin-1").partition(" ")
                    token = rest.strip() if scheme.lower() == "bearer" else ""
            keys = self.binding.keys
            key = keys.authenticate(token) if (keys is not None and token) else None
            if key is None:
                response = error_response(
                    401,
                    "unauthenticated",
                    "a valid API key is required: Authorization: Bearer <key>",
                    headers={"WWW-Authenticate": "Bearer"},
                )
                await response(scope, receive, send)
                return
            scope.setdefault("state", {})["key_id"] = key.key_id
        await self.app(scope, receive, send)


def http_app(server: MCPServer[Any], host: str = "127.0.0.1") -> ASGIApp:
    """The streamable HTTP endpoint (stateless, JSON responses) behind the API-key check;
    mount it at ``/mcp``. ``host``: where the server listens; on a loopback address the
    SDK also refuses requests whose Host/Origin is not loopback (DNS rebinding)."""
    starlette_app = server.streamable_http_app(
        streamable_http_path="/", stateless_http=True, json_response=True, host=host
    )
    binding: VaultBinding = server.ccvault_binding  # type: ignore[attr-defined]
    return _RequireKey(starlette_app, binding)


@contextlib.asynccontextmanager
async def bind_http(server: MCPServer[Any], app: Any) -> AsyncIterator[None]:
    """Point the tools at the app's store and keys, and run the session manager."""
    binding: VaultBinding = server.ccvault_binding  # type: ignore[attr-defined]
    binding.store = app.state.store
    binding.keys = app.state.keys
    binding.gap_fill = app.state.gap_fill
    async with server.session_manager.run():
        yield


# ---------------------------------------------------------------------------------------
# stdio: `ccvault mcp`
# ---------------------------------------------------------------------------------------


async def run_stdio(settings: Any, keys: ApiKeyStore, token: str) -> None:
    """Serve the tools over stdin/stdout with one key (checked now and on every call)."""
    from ccvault.registry import open_store

    if keys.authenticate(token) is None:
        raise errors.ConfigurationError("the API key is not valid (unknown, wrong or revoked)")
    async with open_store(settings) as store:
        binding = VaultBinding(
            store=store,
            keys=keys,
            gap_fill=EnhancedGapFillService.from_settings(store, settings),
            stdio_token=token,
        )
        await create_mcp_server(binding).run_stdio_async()
