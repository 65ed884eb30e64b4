"""The vault's data model: pydantic v2 models and string enumerations.

Every timestamp is timezone-aware and normalised to UTC; a naive datetime is refused rather
than guessed at. Every record that stands alone carries its ``tenant_id``. Values stored in
fields are JSON values (``None``, bool, int, finite float, str, lists and string-keyed dicts
of those), so every provider can store them losslessly.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, ClassVar, TypeAlias
from uuid import UUID, uuid4

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    IPvAnyAddress,
    StringConstraints,
    field_validator,
    model_validator,
)

__all__ = [
    "FIELD_NAME_PATTERN",
    "Channel",
    "ChannelIdentity",
    "Consent",
    "ConversationTurn",
    "CustomerProfile",
    "FallbackAction",
    "FieldName",
    "FieldValueType",
    "GapFillResult",
    "GapFillSource",
    "ItemStatus",
    "ItemType",
    "JsonValue",
    "LineageEntry",
    "MergeIdentityMove",
    "MergeRecord",
    "MergeSupersede",
    "ProfileAsset",
    "ProfileField",
    "ProfileFieldDefinition",
    "ProfileFieldSource",
    "RequiredLevel",
    "ScenarioFieldRequirement",
    "Session",
    "SourceType",
    "SurvivorshipPolicy",
    "UnmergeConflict",
    "UnmergeResult",
    "UtcDatetime",
    "VerificationLevel",
    "check_json_value",
    "utcnow",
]


def utcnow() -> datetime:
    """The current time, timezone-aware, in UTC."""
    return datetime.now(UTC)


def _to_utc(value: datetime) -> datetime:
    try:
        return value.astimezone(UTC)
    except OverflowError:  # e.g. datetime.max at a negative offset: past year 9999 in UTC
        raise ValueError("timestamp is out of range once converted to UTC") from None


UtcDatetime = Annotated[AwareDatetime, AfterValidator(_to_utc)]
"""A timezone-aware datetime, normalised to UTC. Naive datetimes are refused."""

JsonValue: TypeAlias = Any
"""Any JSON value; checked by :func:`check_json_value` where it is stored."""

FIELD_NAME_PATTERN = r"^[a-z_][a-z0-9_]*$"
_FIELD_NAME_RE = re.compile(FIELD_NAME_PATTERN)

FieldName = Annotated[
    str, StringConstraints(pattern=FIELD_NAME_PATTERN, min_length=1, max_length=50)
]
"""A field name: lower-case letters, digits and underscores, not starting with a digit, <= 50."""

AssetName = Annotated[
    str, StringConstraints(pattern=FIELD_NAME_PATTERN, min_length=1, max_length=100)
]

ShortText = Annotated[str, StringConstraints(min_length=1, max_length=255)]
#: the longest ``Consent.ip_address_sealed``: an envelope of the longest IPv6 text
#: (45 characters) under a 32-character key id is about 130 characters
CONSENT_IP_SEALED_MAX = 256

_MAX_JSON_DEPTH = 64


def check_json_value(value: Any, *, _depth: int = 0) -> Any:
    """Return ``value`` unchanged if it is a JSON value, else raise ``ValueError`` saying why.

    JSON has no NaN or infinity, no non-string keys, no tuples, sets, bytes or objects.
    """
    if _depth > _MAX_JSON_DEPTH:
        raise ValueError(f"JSON value nested deeper than {_MAX_JSON_DEPTH} levels")
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("JSON has no NaN or infinity")
        return value
    if isinstance(value, list):
        for item in value:
            check_json_value(item, _depth=_depth + 1)
        return value
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError(f"JSON object keys must be strings, not {type(key).__name__}")
            check_json_value(item, _depth=_depth + 1)
        return value
    raise ValueError(f"{type(value).__name__} is not a JSON value")


# ---------------------------------------------------------------------------------------
# Enumerations
# ---------------------------------------------------------------------------------------


class ItemStatus(StrEnum):
    """Lifecycle of a field version or an asset."""

    ACTIVE = "active"
    SUPERSEDED = "superseded"
    EXPIRED = "expired"
    ORPHANED = "orphaned"


class SourceType(StrEnum):
    """What an item was derived from."""

    PROFILE_FIELD = "profile_field"
    PROFILE_ASSET = "profile_asset"
    SESSION = "session"
    TOOL = "tool"
    EXTERNAL = "external"


class ItemType(StrEnum):
    """The two kinds of item a profile owns; lineage links point at one of them."""

    PROFILE_FIELD = "profile_field"
    PROFILE_ASSET = "profile_asset"


class ProfileFieldSource(StrEnum):
    """How a field's value was obtained."""

    USER_PROVIDED = "user_provided"
    LLM_EXTRACTED = "llm_extracted"
    TOOL_RESULT = "tool_result"
    DOCUMENT_EXTRACTED = "document_extracted"
    HUMAN_ENTERED = "human_entered"
    SYSTEM_INFERRED = "system_inferred"


class VerificationLevel(StrEnum):
    UNVERIFIED = "unverified"
    EMAIL_VERIFIED = "email_verified"
    PHONE_VERIFIED = "phone_verified"
    DOCUMENT_VERIFIED = "document_verified"
    KYC_COMPLETE = "kyc_complete"


class RequiredLevel(StrEnum):
    HARD = "hard"
    SOFT = "soft"


class FallbackAction(StrEnum):
    """What an agent does about a requirement the profile does not meet."""

    ASK = "ask"
    SKIP = "skip"
    BLOCK = "block"
    EXTRACT = "extract"


class FieldValueType(StrEnum):
    STRING = "string"
    EMAIL = "email"
    PHONE = "phone"
    DATE = "date"
    NUMBER = "number"
    BOOLEAN = "boolean"
    JSON = "json"


class Channel(StrEnum):
    """Messaging channels a customer reaches an agent on."""

    WEB = "web"
    WHATSAPP = "whatsapp"
    SMS = "sms"
    EMAIL = "email"
    VOICE = "voice"
    SLACK = "slack"
    TELEGRAM = "telegram"
    MESSENGER = "messenger"
    INSTAGRAM = "instagram"
    API = "api"


class GapFillSource(StrEnum):
    """Where gap fill found a value."""

    PROFILE = "profile"
    SESSION = "session"
    EXTRACTION = "extraction"


class SurvivorshipPolicy(StrEnum):
    """How a merge settles two ACTIVE versions of one field name (``ccvault.rules.merge``).

    ``verified_first`` (the default): an unexpired version beats an expired one, then the
    verified one wins, then the most recently collected. ``most_recent``: the most recently
    collected. ``source_priority``: the version whose ``source`` comes first in the
    definition's ``source_priority`` list (an unlisted source ranks last), then
    ``verified_first``. ``most_confident``: the higher ``confidence``, then
    ``verified_first``. ``keep_target``: the target's version. Every policy first prefers an
    unexpired version (an expired value is never served) and keeps the target's on a full tie.
    """

    VERIFIED_FIRST = "verified_first"
    MOST_RECENT = "most_recent"
    SOURCE_PRIORITY = "source_priority"
    MOST_CONFIDENT = "most_confident"
    KEEP_TARGET = "keep_target"


# ---------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------


class _Redacted:
    """Stands in for a personal-data value in ``repr``/``str`` of a model."""

    def __repr__(self) -> str:
        return "<redacted>"


_REDACTED = _Redacted()


class VaultModel(BaseModel):
    """Base of every vault model: unknown keys refused, assignments re-validated.

    ``repr()`` and ``str()`` show the fields named in ``_personal_fields`` as
    ``<redacted>`` (personal data never reaches logs or tracebacks through a model's
    repr); ``model_dump`` and attribute access are unchanged.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    #: fields holding personal data (values, identifiers, free text): masked in repr
    _personal_fields: ClassVar[frozenset[str]] = frozenset()

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        personal = self._personal_fields
        for name, value in super().__repr_args__():
            if name in personal and value is not None:
                yield name, _REDACTED
            else:
                yield name, value


class ChannelIdentity(VaultModel):
    """One identity of a customer on one channel (a WhatsApp number, an email address...)."""

    _personal_fields = frozenset({"channel_user_id"})

    channel: Channel
    channel_user_id: ShortText
    verified: bool = False
    verified_at: UtcDatetime | None = None
    primary: bool = False
    created_at: UtcDatetime = Field(default_factory=utcnow)

    @field_validator("channel_user_id")
    @classmethod
    def _no_control_characters(cls, value: str) -> str:
        if any(ord(ch) < 32 for ch in value) or value != value.strip():
            raise ValueError("channel_user_id must not contain control characters or edge spaces")
        return value


class Consent(VaultModel):
    """One consent of a customer (a type granted or revoked, when, from where).

    ``ip_address_sealed`` holds the sealed form of ``ip_address`` at rest and is set only
    by the encryption wrapper (:class:`ccvault.crypto.EncryptedProfileStore`): with
    encryption on, a write moves ``ip_address`` into it (an AES-GCM envelope bound to the
    tenant, the profile and the consent type) and every read opens it back, so callers
    see ``ip_address`` and ``ip_address_sealed is None``. A caller-supplied value is
    refused by that wrapper (ValidationError); without encryption it is stored as given.
    """

    _personal_fields = frozenset({"ip_address", "ip_address_sealed"})

    consent_type: ShortText
    granted: bool
    granted_at: UtcDatetime | None = None
    revoked_at: UtcDatetime | None = None
    source_session_id: UUID | None = None
    ip_address: IPvAnyAddress | None = None
    ip_address_sealed: str | None = Field(default=None, max_length=CONSENT_IP_SEALED_MAX)


class ProfileField(VaultModel):
    """One version of one named fact about a customer. Versions are never overwritten."""

    _personal_fields = frozenset({"value", "source_metadata"})

    id: UUID = Field(default_factory=uuid4)
    name: FieldName
    value: JsonValue
    value_type: str = "string"
    source: ProfileFieldSource = ProfileFieldSource.USER_PROVIDED
    source_session_id: UUID | None = None
    source_scenario_id: UUID | None = None
    source_step_id: UUID | None = None
    # lineage: the item this value was derived from
    source_item_id: UUID | None = None
    source_item_type: SourceType | None = None
    source_metadata: dict[str, JsonValue] = Field(default_factory=dict)
    status: ItemStatus = ItemStatus.ACTIVE
    superseded_by_id: UUID | None = None
    superseded_at: UtcDatetime | None = None
    verified: bool = False
    verification_method: str | None = None
    verified_at: UtcDatetime | None = None
    verified_by: str | None = None
    confidence: float = Field(default=1.0, ge=0.0, le=1.0)
    requires_confirmation: bool = False
    collected_at: UtcDatetime = Field(default_factory=utcnow)
    updated_at: UtcDatetime = Field(default_factory=utcnow)
    expires_at: UtcDatetime | None = None
    field_definition_id: UUID | None = None

    @field_validator("value", "source_metadata")
    @classmethod
    def _json_only(cls, value: Any) -> Any:
        return check_json_value(value)

    def is_expired(self, now: datetime) -> bool:
        """True when ``expires_at`` has passed at ``now``."""
        return self.expires_at is not None and self.expires_at <= now


class ProfileAsset(VaultModel):
    """A document or file held for a customer (an ID scan, a contract...)."""

    _personal_fields = frozenset({"storage_path", "verification_result"})

    id: UUID = Field(default_factory=uuid4)
    name: AssetName
    asset_type: ShortText
    storage_provider: ShortText
    storage_path: Annotated[str, StringConstraints(min_length=1, max_length=2048)]
    mime_type: str | None = None
    size_bytes: int = Field(default=0, ge=0)
    checksum: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")] | None = None
    uploaded_at: UtcDatetime = Field(default_factory=utcnow)
    uploaded_in_session_id: UUID | None = None
    uploaded_in_scenario_id: UUID | None = None
    source_item_id: UUID | None = None
    source_item_type: SourceType | None = None
    derived_from_tool: str | None = None
    status: ItemStatus = ItemStatus.ACTIVE
    superseded_by_id: UUID | None = None
    superseded_at: UtcDatetime | None = None
    verified: bool = False
    verification_result: dict[str, JsonValue] | None = None
    retention_policy: str | None = None
    expires_at: UtcDatetime | None = None
    analysis_field_ids: list[UUID] = Field(default_factory=list)

    @field_validator("verification_result")
    @classmethod
    def _json_only(cls, value: Any) -> Any:
        return check_json_value(value)


class ProfileFieldDefinition(VaultModel):
    """The agent-scoped schema of one field: type, validation, privacy and freshness rules."""

    id: UUID = Field(default_factory=uuid4)
    tenant_id: UUID
    agent_id: UUID
    name: FieldName
    display_name: str = ""
    description: str | None = None
    value_type: FieldValueType = FieldValueType.STRING
    validation_regex: str | None = None
    validation_tool_id: str | None = None
    allowed_values: list[JsonValue] | None = None
    required_verification: bool = False
    verification_methods: list[str] = Field(default_factory=list)
    collection_prompt: str | None = None
    extraction_examples: list[str] = Field(default_factory=list)
    extraction_prompt_hint: str | None = None
    is_pii: bool = False
    encryption_required: bool = False
    retention_days: int | None = Field(default=None, ge=0)
    freshness_seconds: int | None = Field(default=None, ge=0)
    created_at: UtcDatetime = Field(default_factory=utcnow)
    updated_at: UtcDatetime = Field(default_factory=utcnow)
    enabled: bool = True
    #: how a merge settles two ACTIVE versions of this name (see SurvivorshipPolicy)
    survivorship: SurvivorshipPolicy = SurvivorshipPolicy.VERIFIED_FIRST
    #: for ``source_priority``: the sources in order of preference, best first
    source_priority: list[ProfileFieldSource] = Field(default_factory=list)

    @field_validator("allowed_values")
    @classmethod
    def _json_only(cls, value: Any) -> Any:
        return check_json_value(value)


class ScenarioFieldRequirement(VaultModel):
    """A field a scenario (or one of its steps) needs before it can proceed."""

    id: UUID = Field(default_factory=uuid4)
    tenant_id: UUID
    agent_id: UUID
    scenario_id: UUID
    step_id: UUID | None = None
    rule_id: UUID | None = None
    field_name: FieldName
    required_level: RequiredLevel = RequiredLevel.HARD
    fallback_action: FallbackAction = FallbackAction.ASK
    when_condition: Annotated[str, StringConstraints(max_length=2000)] | None = None
    depends_on_fields: list[FieldName] = Field(default_factory=list)
    collection_order: int = 0
    created_at: UtcDatetime = Field(default_factory=utcnow)
    updated_at: UtcDatetime = Field(default_factory=utcnow)


class CustomerProfile(VaultModel):
    """Everything the vault knows about one customer of one tenant.

    ``fields`` maps each name to its ACTIVE version; ``field_history`` maps each name to every
    version, newest first, and is filled only when history is requested. ``assets`` holds the
    ACTIVE assets; ``asset_history`` every asset, on request.
    """

    id: UUID = Field(default_factory=uuid4)
    tenant_id: UUID
    customer_id: UUID = Field(default_factory=uuid4)
    channel_identities: list[ChannelIdentity] = Field(default_factory=list)
    fields: dict[str, ProfileField] = Field(default_factory=dict)
    field_history: dict[str, list[ProfileField]] = Field(default_factory=dict)
    assets: list[ProfileAsset] = Field(default_factory=list)
    asset_history: list[ProfileAsset] = Field(default_factory=list)
    verification_level: VerificationLevel = VerificationLevel.UNVERIFIED
    consents: list[Consent] = Field(default_factory=list)
    created_at: UtcDatetime = Field(default_factory=utcnow)
    updated_at: UtcDatetime = Field(default_factory=utcnow)
    last_interaction_at: UtcDatetime | None = None

    @model_validator(mode="after")
    def _keys_match_names(self) -> CustomerProfile:
        for key, item in self.fields.items():
            if key != item.name:
                raise ValueError(f"fields holds field {item.name!r} under another key")
        for key, versions in self.field_history.items():
            for version in versions:
                if key != version.name:
                    raise ValueError(
                        f"field_history holds field {version.name!r} under another key"
                    )
        return self

    def active_values(self) -> dict[str, JsonValue]:
        """Name -> value of every ACTIVE field."""
        return {name: item.value for name, item in self.fields.items()}


class LineageEntry(VaultModel):
    """One step of a derivation chain, as ``get_derivation_chain`` returns it (as a dict)."""

    _personal_fields = frozenset({"source_metadata"})

    id: UUID
    type: ItemType
    name: str
    source_metadata: dict[str, JsonValue] = Field(default_factory=dict)
    source_item_id: UUID | None = None
    source_item_type: SourceType | None = None


class ConversationTurn(VaultModel):
    """One message of a conversation, as gap fill reads it."""

    _personal_fields = frozenset({"content"})

    role: str = "user"
    content: str
    at: UtcDatetime = Field(default_factory=utcnow)


class Session(VaultModel):
    """The conversation an agent is in: who, which agent, session variables and the turns."""

    _personal_fields = frozenset({"variables"})

    tenant_id: UUID
    agent_id: UUID
    session_id: UUID = Field(default_factory=uuid4)
    customer_profile_id: UUID
    variables: dict[str, JsonValue] = Field(default_factory=dict)
    turns: list[ConversationTurn] = Field(default_factory=list)


class GapFillResult(VaultModel):
    """The outcome of trying to fill one missing field."""

    _personal_fields = frozenset({"value", "extraction_quote", "source_metadata"})

    field_name: str
    filled: bool = False
    value: JsonValue = None
    source: GapFillSource | None = None
    confidence: float | None = None
    needs_confirmation: bool = False
    extraction_quote: str | None = None
    field_definition: ProfileFieldDefinition | None = None
    validation_errors: list[str] = Field(default_factory=list)
    source_item_id: UUID | None = None
    source_item_type: SourceType | None = None
    source_metadata: dict[str, JsonValue] = Field(default_factory=dict)
    # what the agent should do next when the field was not filled
    next_action: FallbackAction | None = None
    prompt: str | None = None
    blocked: bool = False


class MergeSupersede(VaultModel):
    """One ACTIVE version a merge's survivorship rule superseded."""

    name: FieldName
    loser_id: UUID
    winner_id: UUID
    #: the profile the loser belonged to before the merge (target or source)
    loser_profile_id: UUID
    policy: SurvivorshipPolicy = SurvivorshipPolicy.VERIFIED_FIRST


class MergeIdentityMove(VaultModel):
    """One identity a merge moved (``from_source``) or whose primary flag it changed."""

    _personal_fields = frozenset({"channel_user_id"})

    channel: Channel
    channel_user_id: ShortText
    from_source: bool
    primary_before: bool
    primary_after: bool


class MergeRecord(VaultModel):
    """The merge log entry of one merge: exactly what it moved and superseded.

    Stored by the provider in the merge's own transaction; listed by ``get_merge_log``,
    part of ``export_profile``, erased by ``purge_profile`` of either profile, read by
    ``unmerge`` (which sets ``unmerged_at``). Holds ids, names and flags, and the moved
    consents; never a field value.
    """

    id: UUID = Field(default_factory=uuid4)
    tenant_id: UUID
    source_profile_id: UUID
    target_profile_id: UUID
    merged_at: UtcDatetime
    reason: Annotated[str, StringConstraints(max_length=500)] | None = None
    actor: Annotated[str, StringConstraints(max_length=255)] | None = None
    #: every field version of the source (any status), with its id
    moved_field_ids: list[UUID] = Field(default_factory=list)
    #: every asset of the source (any status)
    moved_asset_ids: list[UUID] = Field(default_factory=list)
    #: the source's consents, in their order
    moved_consents: list[Consent] = Field(default_factory=list)
    #: the source's identities (moved) and the target's whose primary flag changed
    identities: list[MergeIdentityMove] = Field(default_factory=list)
    superseded: list[MergeSupersede] = Field(default_factory=list)
    unmerged_at: UtcDatetime | None = None


class UnmergeConflict(VaultModel):
    """Something ``unmerge`` did not restore because it changed after the merge.

    ``kind``: ``superseded_after_merge`` (an item going back to the source was superseded
    by ``other_id``, written to the target after the merge: it goes back SUPERSEDED),
    ``item_gone`` (a moved item or a superseded version was deleted since),
    ``loser_changed`` (a version the merge superseded no longer has the merge's winner as
    successor: left as it is), ``identity_gone`` (a moved identity is no longer on the
    target), ``consent_gone`` (a moved consent is no longer on the target).
    """

    kind: str
    item_type: str | None = None
    item_id: UUID | None = None
    name: str | None = None
    other_id: UUID | None = None
    channel: Channel | None = None


class UnmergeResult(VaultModel):
    """What ``unmerge`` restored, and the conflicts it reported instead of guessing."""

    merge_id: UUID
    source_profile_id: UUID
    target_profile_id: UUID
    unmerged_at: UtcDatetime
    restored_field_ids: list[UUID] = Field(default_factory=list)
    restored_asset_ids: list[UUID] = Field(default_factory=list)
    reactivated_field_ids: list[UUID] = Field(default_factory=list)
    restored_identities: list[ChannelIdentity] = Field(default_factory=list)
    restored_consents: int = 0
    conflicts: list[UnmergeConflict] = Field(default_factory=list)


def is_valid_field_name(name: object) -> bool:
    """True when ``name`` is a string matching the field-name pattern and length."""
    return isinstance(name, str) and 0 < len(name) <= 50 and bool(_FIELD_NAME_RE.match(name))
