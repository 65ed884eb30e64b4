"""Gap fill: finding the values a scenario needs, and what to do when they cannot be found.

:class:`GapFillService` fills one field at a time: from the profile, then from the session's
variables, then by extraction from the last ``max_turns`` turns of the conversation, keeping
an extracted value only at ``min_confidence`` or above and flagging it for confirmation below
``confirm_confidence``. Candidates are checked against the field's definition before they
count as filled. :meth:`GapFillService.persist_extracted_values` validates again and writes
with lineage to the session.

:class:`EnhancedGapFillService` drives this from a scenario's requirements: it finds the
unmet ones, fills what it can (the requirement's ``fallback_action`` decides the order and
what happens to the rest), persists what was found and returns the results in
``collection_order``.

Metrics: ``gap_fill_attempts_total{tenant_id, scenario_id, source}`` counts every source
tried; ``gap_fill_fields_tried_total`` and ``gap_fill_fields_filled_total{tenant_id,
scenario_id}`` count the fields tried and filled (``scenario_id="none"`` outside a
scenario): their ratio is the success rate, across every replica
(``gap_fill_success_rate``, the seed's per-process ratio, is kept for compatibility).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Self
from uuid import UUID

from ccvault import errors, metrics
from ccvault.extraction import (
    Extraction,
    ExtractionError,
    ExtractionRequest,
    Extractor,
    OfflineExtractor,
    extractor_from_settings,
)
from ccvault.models import (
    CustomerProfile,
    FallbackAction,
    FieldValueType,
    GapFillResult,
    GapFillSource,
    JsonValue,
    ProfileField,
    ProfileFieldDefinition,
    ProfileFieldSource,
    RequiredLevel,
    ScenarioFieldRequirement,
    Session,
    SourceType,
    is_valid_field_name,
)
from ccvault.settings import ProfileSettings, VaultSettings
from ccvault.store import ProfileStore, check_optional_uuid, check_uuid
from ccvault.validation import SchemaValidationService

__all__ = [
    "EnhancedGapFillService",
    "GapFillService",
    "default_prompt",
    "scenario_blocked",
]

logger = logging.getLogger(__name__)

_NO_SCENARIO = "none"
SESSION_VARIABLE_METHOD = "session_variable"


def default_prompt(field_name: str, definition: ProfileFieldDefinition | None) -> str:
    """The definition's ``collection_prompt``, else a plain question naming the field."""
    if definition is not None and definition.collection_prompt:
        return definition.collection_prompt
    label = (definition.display_name if definition is not None else "") or field_name.replace(
        "_", " "
    )
    return f"Could you tell me your {label}?"


def scenario_blocked(results: Mapping[str, GapFillResult]) -> bool:
    """True when any requirement with ``fallback_action=block`` is still unmet."""
    return any(result.blocked for result in results.values())


class _SuccessRate:
    """Per (tenant, scenario): fields tried and fields filled, as counters (a success ratio
    is ``filled / tried`` in PromQL, summed over every replica), and the seed's per-process
    ratio gauge."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, str], list[int]] = {}

    def record(self, tenant_id: UUID, scenario_id: UUID | None, filled: bool) -> None:
        labels = {"tenant_id": str(tenant_id), "scenario_id": str(scenario_id or _NO_SCENARIO)}
        metrics.GAP_FILL_FIELDS_TRIED.labels(**labels).inc()
        if filled:
            metrics.GAP_FILL_FIELDS_FILLED.labels(**labels).inc()
        # the scenario's bounded label: a client's scenario ids cannot grow this dict either
        key = (str(tenant_id), metrics.scenario_label(tenant_id, scenario_id or _NO_SCENARIO))
        with self._lock:
            counts = self._counts.setdefault(key, [0, 0])
            counts[0] += 1
            counts[1] += int(filled)
            rate = counts[1] / counts[0]
        metrics.GAP_FILL_SUCCESS_RATE.labels(tenant_id=key[0], scenario_id=key[1]).set(rate)


_SUCCESS = _SuccessRate()


def _attempt(session: Session, scenario_id: UUID | None, source: GapFillSource) -> None:
    metrics.GAP_FILL_ATTEMPTS.labels(
        tenant_id=str(session.tenant_id),
        scenario_id=str(scenario_id) if scenario_id else _NO_SCENARIO,
        source=source.value,
    ).inc()


def _json_type(value: JsonValue) -> str:
    """The value type a value without a definition is recorded with."""
    if isinstance(value, bool):
        return FieldValueType.BOOLEAN.value
    if isinstance(value, (int, float)):
        return FieldValueType.NUMBER.value
    if isinstance(value, (dict, list)):
        return FieldValueType.JSON.value
    return FieldValueType.STRING.value


@dataclass(frozen=True)
class _Provenance:
    """How the service itself obtained a value: what a written version records. Never
    taken from a caller's :class:`GapFillResult`."""

    source: ProfileFieldSource
    confidence: float
    metadata: dict[str, JsonValue] = dataclasses.field(default_factory=dict)

    @property
    def quote(self) -> str | None:
        quote = self.metadata.get("quote")
        return quote if isinstance(quote, str) else None


#: How many values found by one service are remembered for :meth:`persist_extracted_values`.
_MAX_PROVENANCE = 10_000
_PLACEHOLDER = _Provenance(ProfileFieldSource.SYSTEM_INFERRED, 0.0)
NOT_FOUND_BY_SERVICE = (
    "not written: this value was not found in the session by the gap-fill service "
    "(a session variable or an extraction from the customer's turns)"
)


def _value_key(value: JsonValue) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _check_name(field_name: object) -> str:
    if not is_valid_field_name(field_name):
        raise errors.ValidationError(f"not a valid field name: {field_name!r}")
    assert isinstance(field_name, str)
    return field_name


# Argument checks: every public method runs its arguments through these first, so bad
# input is a ccvault ValidationError raised before anything is read or written.


def _check_names(field_names: object) -> list[str]:
    # a str is an Iterable[str] too: "email" would be filled letter by letter
    if isinstance(field_names, (str, bytes)) or not isinstance(field_names, Iterable):
        raise errors.ValidationError(
            f"field_names must be a list (or other iterable) of field names, "
            f"got {type(field_names).__name__}"
        )
    return [_check_name(name) for name in dict.fromkeys(field_names)]


def _check_session(session: object) -> Session:
    if not isinstance(session, Session):
        raise errors.ValidationError(f"session must be a Session, got {type(session).__name__}")
    return session


def _check_definition(value: object) -> ProfileFieldDefinition | None:
    if value is not None and not isinstance(value, ProfileFieldDefinition):
        raise errors.ValidationError(
            f"definition must be a ProfileFieldDefinition or None, got {type(value).__name__}"
        )
    return value


def _check_definitions(
    value: object,
) -> Mapping[str, ProfileFieldDefinition] | None:
    if value is None:
        return None
    if not isinstance(value, Mapping) or not all(
        isinstance(item, ProfileFieldDefinition) for item in value.values()
    ):
        raise errors.ValidationError(
            "definitions must be a mapping of field name to ProfileFieldDefinition"
        )
    return value


def _check_results(results: object) -> list[GapFillResult]:
    if isinstance(results, Mapping):
        items = list(results.values())
    elif isinstance(results, Iterable) and not isinstance(results, (str, bytes)):
        items = list(results)
    else:
        raise errors.ValidationError(
            f"results must be a mapping or list of GapFillResult, got {type(results).__name__}"
        )
    for item in items:
        if not isinstance(item, GapFillResult):
            raise errors.ValidationError(
                f"results must hold GapFillResult objects, got {type(item).__name__}"
            )
    return items


class GapFillService:
    """Fills one missing field at a time: profile, then session variables, then extraction.

    ``extractor`` defaults to :class:`~ccvault.extraction.OfflineExtractor`; ``validator``
    to a :class:`~ccvault.validation.SchemaValidationService` over the same store (its
    cache is where definitions come from).
    """

    def __init__(
        self,
        store: ProfileStore,
        *,
        extractor: Extractor | None = None,
        validator: SchemaValidationService | None = None,
        min_confidence: float = 0.5,
        confirm_confidence: float = 0.85,
        max_turns: int = 20,
    ) -> None:
        for name, value in (
            ("min_confidence", min_confidence),
            ("confirm_confidence", confirm_confidence),
        ):
            if not 0.0 <= value <= 1.0:
                raise errors.ConfigurationError(f"{name} must be in [0, 1], got {value}")
        if max_turns < 1:
            raise errors.ConfigurationError(f"max_turns must be >= 1, got {max_turns}")
        self.store = store
        self.extractor: Extractor = extractor if extractor is not None else OfflineExtractor()
        self.validator = validator if validator is not None else SchemaValidationService(store)
        self.min_confidence = min_confidence
        self.confirm_confidence = confirm_confidence
        self.max_turns = max_turns
        # values this service found, with how it found them (bounded, oldest dropped)
        self._provenance: OrderedDict[tuple[UUID, UUID, UUID, str, str], _Provenance] = (
            OrderedDict()
        )
        self._provenance_lock = threading.Lock()

    @classmethod
    def from_settings(
        cls,
        store: ProfileStore,
        settings: VaultSettings | ProfileSettings,
        *,
        extractor: Extractor | None = None,
        validator: SchemaValidationService | None = None,
    ) -> Self:
        """A service configured by ``[profile]``, ``[profile.gap_fill]`` and, given the
        whole :class:`VaultSettings`, ``[extraction]`` (the extractor and its size limits on
        customer text) unless ``extractor`` is given."""
        profile = settings.profile if isinstance(settings, VaultSettings) else settings
        if extractor is None and isinstance(settings, VaultSettings):
            extractor = extractor_from_settings(settings)
        return cls(
            store,
            extractor=extractor,
            validator=validator or SchemaValidationService.from_settings(store, profile),
            min_confidence=profile.gap_fill.min_confidence,
            confirm_confidence=profile.gap_fill.confirm_confidence,
            max_turns=profile.gap_fill.max_turns,
        )

    # -- lookups -----------------------------------------------------------------------------

    async def _profile(self, session: Session) -> CustomerProfile:
        profile = await self.store.get_by_id(session.tenant_id, session.customer_profile_id)
        if profile is None:
            raise errors.NotFoundError(
                f"profile {session.customer_profile_id} of session {session.session_id} not found"
            )
        return profile

    async def _definitions(self, session: Session) -> dict[str, ProfileFieldDefinition]:
        return await self.validator.get_definitions(session.tenant_id, session.agent_id)

    async def _definition(
        self,
        session: Session,
        field_name: str,
        definition: ProfileFieldDefinition | None,
        definitions: Mapping[str, ProfileFieldDefinition] | None,
    ) -> tuple[ProfileFieldDefinition | None, Mapping[str, ProfileFieldDefinition]]:
        if definitions is None:
            definitions = await self._definitions(session)
        if definition is None:
            definition = definitions.get(field_name)
        elif field_name not in definitions:
            definitions = {**definitions, field_name: definition}
        return definition, definitions

    async def _problems(
        self,
        session: Session,
        field_name: str,
        value: JsonValue,
        definitions: Mapping[str, ProfileFieldDefinition],
    ) -> list[str]:
        """Why ``value`` could not be stored as ``field_name`` (empty: it could)."""
        candidate = ProfileField(name=field_name, value=value)
        problems = await self.validator.check(
            session.tenant_id, session.agent_id, candidate, definitions=definitions
        )
        return [problem.message for problem in problems]

    # -- the three sources -------------------------------------------------------------------

    async def try_profile_fill(
        self,
        field_name: str,
        session: Session,
        *,
        profile: CustomerProfile | None = None,
        scenario_id: UUID | None = None,
    ) -> GapFillResult:
        """The profile's ACTIVE (unexpired) value of ``field_name``, if it has one."""
        field_name = _check_name(field_name)
        session = _check_session(session)
        scenario_id = check_optional_uuid(scenario_id, "scenario_id")
        if profile is not None and not isinstance(profile, CustomerProfile):
            raise errors.ValidationError(
                f"profile must be a CustomerProfile or None, got {type(profile).__name__}"
            )
        _attempt(session, scenario_id, GapFillSource.PROFILE)
        if profile is None:
            profile = await self._profile(session)
        stored = profile.fields.get(field_name)
        if stored is None:
            return GapFillResult(field_name=field_name)
        return GapFillResult(
            field_name=field_name,
            filled=True,
            value=stored.value,
            source=GapFillSource.PROFILE,
            confidence=stored.confidence,
            needs_confirmation=stored.requires_confirmation,
            source_item_id=stored.id,
            source_item_type=SourceType.PROFILE_FIELD,
        )

    async def try_session_fill(
        self,
        field_name: str,
        session: Session,
        *,
        definition: ProfileFieldDefinition | None = None,
        definitions: Mapping[str, ProfileFieldDefinition] | None = None,
        scenario_id: UUID | None = None,
    ) -> GapFillResult:
        """The session variable named ``field_name``, if set and valid for the definition.

        Session variables are set by the platform (tools, forms), so a valid one is taken at
        confidence 1.0.
        """
        field_name = _check_name(field_name)
        session = _check_session(session)
        definition = _check_definition(definition)
        definitions = _check_definitions(definitions)
        scenario_id = check_optional_uuid(scenario_id, "scenario_id")
        _attempt(session, scenario_id, GapFillSource.SESSION)
        definition, definitions = await self._definition(
            session, field_name, definition, definitions
        )
        value = session.variables.get(field_name)
        result = GapFillResult(field_name=field_name, field_definition=definition)
        if value is None:
            return result
        problems = await self._problems(session, field_name, value, definitions)
        if problems:
            result.validation_errors = problems
            return result
        provenance = self._session_provenance(session, field_name)
        self._remember(session, field_name, value, provenance)
        return GapFillResult(
            field_name=field_name,
            filled=True,
            value=value,
            source=GapFillSource.SESSION,
            confidence=provenance.confidence,
            field_definition=definition,
            source_item_id=session.session_id,
            source_item_type=SourceType.SESSION,
            source_metadata=dict(provenance.metadata),
        )

    async def try_conversation_extraction(
        self,
        field_name: str,
        session: Session,
        *,
        definition: ProfileFieldDefinition | None = None,
        definitions: Mapping[str, ProfileFieldDefinition] | None = None,
        field_type: FieldValueType | str | None = None,
        field_description: str | None = None,
        scenario_id: UUID | None = None,
    ) -> GapFillResult:
        """Extract ``field_name`` from the last ``max_turns`` turns.

        Filled when the extractor's confidence reaches ``min_confidence`` and the value
        passes the definition; ``needs_confirmation`` below ``confirm_confidence``. When
        not filled, ``confidence``, ``extraction_quote`` and ``validation_errors`` say why.
        Without a definition, ``field_type`` and ``field_description`` guide the extractor.
        """
        field_name = _check_name(field_name)
        session = _check_session(session)
        definition = _check_definition(definition)
        definitions = _check_definitions(definitions)
        scenario_id = check_optional_uuid(scenario_id, "scenario_id")
        _attempt(session, scenario_id, GapFillSource.EXTRACTION)
        definition, definitions = await self._definition(
            session, field_name, definition, definitions
        )
        result = GapFillResult(field_name=field_name, field_definition=definition)
        turns = session.turns[-self.max_turns :]
        if not turns:
            return result
        request = ExtractionRequest.for_field(
            field_name, definition, value_type=field_type, description=field_description
        )
        try:
            extraction = await self.extractor.extract(request, turns)
        except ExtractionError as exc:
            logger.warning("extraction of %s failed, treated as not found: %s", field_name, exc)
            return result
        if extraction is None:
            return result
        result.confidence = extraction.confidence
        result.extraction_quote = extraction.quote
        if extraction.confidence < self.min_confidence:
            return result
        problems = await self._problems(session, field_name, extraction.value, definitions)
        if problems:
            result.validation_errors = problems
            return result
        return self._extracted(field_name, session, definition, extraction)

    def _extracted(
        self,
        field_name: str,
        session: Session,
        definition: ProfileFieldDefinition | None,
        extraction: Extraction,
    ) -> GapFillResult:
        self._remember(
            session, field_name, extraction.value, self._extraction_provenance(session, extraction)
        )
        return GapFillResult(
            field_name=field_name,
            filled=True,
            value=extraction.value,
            source=GapFillSource.EXTRACTION,
            confidence=extraction.confidence,
            needs_confirmation=extraction.confidence < self.confirm_confidence,
            extraction_quote=extraction.quote,
            field_definition=definition,
            source_item_id=session.session_id,
            source_item_type=SourceType.SESSION,
            source_metadata={
                "session_id": str(session.session_id),
                "extraction_method": extraction.method,
                "quote": extraction.quote,
                "source": extraction.source.value,
            },
        )

    # -- one field, several fields -----------------------------------------------------------

    async def fill_gap(
        self,
        field_name: str,
        session: Session,
        *,
        definition: ProfileFieldDefinition | None = None,
        field_type: FieldValueType | str | None = None,
        field_description: str | None = None,
        scenario_id: UUID | None = None,
        profile: CustomerProfile | None = None,
        definitions: Mapping[str, ProfileFieldDefinition] | None = None,
    ) -> GapFillResult:
        """Try the profile, then session variables, then extraction; the first fill wins.

        An unknown profile raises :class:`~ccvault.errors.NotFoundError`. When nothing is
        found the result carries the definition and the prompt to ask with. Bad arguments
        raise :class:`~ccvault.errors.ValidationError` before anything is read.
        """
        field_name = _check_name(field_name)
        session = _check_session(session)
        definition = _check_definition(definition)
        definitions = _check_definitions(definitions)
        scenario_id = check_optional_uuid(scenario_id, "scenario_id")
        definition, definitions = await self._definition(
            session, field_name, definition, definitions
        )
        result = await self.try_profile_fill(
            field_name, session, profile=profile, scenario_id=scenario_id
        )
        if not result.filled:
            result = await self.try_session_fill(
                field_name,
                session,
                definition=definition,
                definitions=definitions,
                scenario_id=scenario_id,
            )
        if not result.filled:
            extracted = await self.try_conversation_extraction(
                field_name,
                session,
                definition=definition,
                definitions=definitions,
                field_type=field_type,
                field_description=field_description,
                scenario_id=scenario_id,
            )
            extracted.validation_errors = result.validation_errors + extracted.validation_errors
            result = extracted
        result.field_definition = definition
        if not result.filled:
            result.next_action = FallbackAction.ASK
            result.prompt = default_prompt(field_name, definition)
        _SUCCESS.record(session.tenant_id, scenario_id, result.filled)
        return result

    async def fill_multiple(
        self,
        field_names: Iterable[str],
        session: Session,
        *,
        scenario_id: UUID | None = None,
    ) -> dict[str, GapFillResult]:
        """:meth:`fill_gap` for each name (the profile and definitions are read once).

        ``field_names`` is a list (or other iterable) of names; a single ``str`` is refused
        with :class:`~ccvault.errors.ValidationError` rather than filled letter by letter.
        """
        names = _check_names(field_names)
        session = _check_session(session)
        scenario_id = check_optional_uuid(scenario_id, "scenario_id")
        profile = await self._profile(session)
        definitions = await self._definitions(session)
        return {
            name: await self.fill_gap(
                name, session, scenario_id=scenario_id, profile=profile, definitions=definitions
            )
            for name in names
        }

    # -- persisting --------------------------------------------------------------------------

    async def persist_extracted_values(
        self,
        session: Session,
        results: Mapping[str, GapFillResult] | Iterable[GapFillResult],
        *,
        scenario_id: UUID | None = None,
        step_id: UUID | None = None,
    ) -> dict[str, UUID]:
        """Write the values found in the session (variables or extraction) to the profile.

        Only what the stored definitions allow is written, with what the service itself
        knows about each value: every value is validated against the agent's definition
        *loaded from the store* (a definition inside a result is ignored), and its source,
        confidence, quote and method are the ones this service recorded when it found the
        value in this session (:meth:`try_session_fill`, :meth:`try_conversation_extraction`)
        — a result's own ``confidence``, ``source_metadata`` and ``extraction_quote`` are
        ignored. A value the service did not find (another process found it, or the caller
        made it up) is looked up again: a session variable must hold it, or the extractor
        must find it again in the session's turns at ``min_confidence`` (one extraction per
        field name and call, however many results name it); otherwise it is not written.
        All checks run before the first write; a value that fails one is not written, and
        its result becomes unfilled with the reason in ``validation_errors``.

        Each written version supersedes the ACTIVE one, with ``source_item_type=session``,
        ``source_item_id`` = the session id, ``source_metadata`` holding the session id,
        the extraction method and the quote, the service's confidence, and
        ``requires_confirmation`` when below ``confirm_confidence``. Results from the
        profile are not rewritten. Returns field name -> id of the new version. Bad
        arguments raise :class:`~ccvault.errors.ValidationError` before anything is written.
        """
        session = _check_session(session)
        items = _check_results(results)
        scenario_id = check_optional_uuid(scenario_id, "scenario_id")
        step_id = check_optional_uuid(step_id, "step_id")
        definitions = await self._definitions(session)  # the stored ones, never the caller's
        pending: list[tuple[GapFillResult, ProfileField]] = []
        rerun: set[str] = set()
        for result in items:
            if not result.filled or result.source not in (
                GapFillSource.SESSION,
                GapFillSource.EXTRACTION,
            ):
                continue
            definition = definitions.get(result.field_name)
            try:
                await self.validator.validate_and_raise(
                    session.tenant_id,
                    session.agent_id,
                    self._field_for(
                        session, result, definition, _PLACEHOLDER, scenario_id, step_id
                    ),
                    definitions=definitions,
                )
            except errors.SchemaValidationError as exc:
                result.filled = False
                result.validation_errors = list(exc.errors)
                continue
            provenance = self._recall(session, result.field_name, result.value)
            if provenance is None and (
                result.source is GapFillSource.SESSION or result.field_name not in rerun
            ):
                # at most one extraction per field name per call, however many results
                rerun.add(result.field_name)
                provenance = await self._derive(session, result, definitions)
            if provenance is None:
                result.filled = False
                result.validation_errors = [NOT_FOUND_BY_SERVICE]
                continue
            # the result now tells what will be recorded
            result.confidence = provenance.confidence
            result.needs_confirmation = provenance.confidence < self.confirm_confidence
            result.extraction_quote = provenance.quote
            result.source_metadata = dict(provenance.metadata)
            result.field_definition = definition
            pending.append(
                (
                    result,
                    self._field_for(session, result, definition, provenance, scenario_id, step_id),
                )
            )
        written: dict[str, UUID] = {}
        for result, field in pending:
            written[result.field_name] = await self.store.update_field(
                session.tenant_id, session.customer_profile_id, field, supersede_existing=True
            )
        return written

    # -- where a value came from -------------------------------------------------------------

    @staticmethod
    def _session_provenance(session: Session, field_name: str) -> _Provenance:
        # session variables are set by the platform (tools, forms): confidence 1.0
        return _Provenance(
            ProfileFieldSource.SYSTEM_INFERRED,
            1.0,
            {
                "session_id": str(session.session_id),
                "extraction_method": SESSION_VARIABLE_METHOD,
                "quote": None,
                "variable": field_name,
            },
        )

    @staticmethod
    def _extraction_provenance(session: Session, extraction: Extraction) -> _Provenance:
        return _Provenance(
            extraction.source,
            extraction.confidence,
            {
                "session_id": str(session.session_id),
                "extraction_method": extraction.method,
                "quote": extraction.quote,
                "source": extraction.source.value,
            },
        )

    @staticmethod
    def _provenance_key(
        session: Session, field_name: str, value: JsonValue
    ) -> tuple[UUID, UUID, UUID, str, str]:
        return (
            session.tenant_id,
            session.customer_profile_id,
            session.session_id,
            field_name,
            _value_key(value),
        )

    def _remember(
        self, session: Session, field_name: str, value: JsonValue, provenance: _Provenance
    ) -> None:
        key = self._provenance_key(session, field_name, value)
        with self._provenance_lock:
            self._provenance[key] = provenance
            self._provenance.move_to_end(key)
            while len(self._provenance) > _MAX_PROVENANCE:
                self._provenance.popitem(last=False)

    def _recall(self, session: Session, field_name: str, value: JsonValue) -> _Provenance | None:
        key = self._provenance_key(session, field_name, value)
        with self._provenance_lock:
            return self._provenance.get(key)

    async def _derive(
        self,
        session: Session,
        result: GapFillResult,
        definitions: Mapping[str, ProfileFieldDefinition],
    ) -> _Provenance | None:
        """Find ``result``'s value again in the session, the way the service would."""
        wanted = _value_key(result.value)
        if result.source is GapFillSource.SESSION:
            variable = session.variables.get(result.field_name)
            if variable is None or _value_key(variable) != wanted:
                return None
            return self._session_provenance(session, result.field_name)
        turns = session.turns[-self.max_turns :]
        if not turns:
            return None
        request = ExtractionRequest.for_field(result.field_name, definitions.get(result.field_name))
        try:
            extraction = await self.extractor.extract(request, turns)
        except ExtractionError as exc:
            logger.warning("re-extraction of %s failed: %s", result.field_name, exc)
            return None
        if (
            extraction is None
            or extraction.confidence < self.min_confidence
            or _value_key(extraction.value) != wanted
        ):
            return None
        provenance = self._extraction_provenance(session, extraction)
        self._remember(session, result.field_name, extraction.value, provenance)
        return provenance

    def _field_for(
        self,
        session: Session,
        result: GapFillResult,
        definition: ProfileFieldDefinition | None,
        provenance: _Provenance,
        scenario_id: UUID | None,
        step_id: UUID | None,
    ) -> ProfileField:
        return ProfileField(
            name=result.field_name,
            value=result.value,
            value_type=(
                definition.value_type.value if definition is not None else _json_type(result.value)
            ),
            source=provenance.source,
            source_session_id=session.session_id,
            source_scenario_id=scenario_id,
            source_step_id=step_id,
            source_item_id=session.session_id,
            source_item_type=SourceType.SESSION,
            source_metadata=dict(provenance.metadata),
            confidence=provenance.confidence,
            requires_confirmation=provenance.confidence < self.confirm_confidence,
            field_definition_id=definition.id if definition is not None else None,
        )


_LEVEL_RANK = {RequiredLevel.HARD: 0, RequiredLevel.SOFT: 1}


class EnhancedGapFillService(GapFillService):
    """Gap fill driven by a scenario's requirements and the agent's field definitions."""

    async def fill_scenario_requirements(
        self,
        session: Session,
        scenario_id: UUID,
        step_id: UUID | None = None,
        *,
        required_level: RequiredLevel | str | None = None,
        persist: bool = True,
    ) -> dict[str, GapFillResult]:
        """Fill the scenario's (or step's) unmet requirements; field name -> result.

        The results are ordered by ``collection_order`` (then field name). Definitions are
        read once per call and no field is extracted twice. Per ``fallback_action``:

        * ``extract``: extraction first, then session variables; if still unfilled, ask.
        * ``ask``: session variables, then extraction; if unfilled, ``next_action=ask`` with
          the definition's ``collection_prompt``.
        * ``block``: as ask, but an unfilled field sets ``blocked`` (the scenario cannot
          proceed; see :func:`scenario_blocked`).
        * ``skip``: as ask, but an unfilled *soft* requirement is skipped. A hard
          requirement cannot be skipped: it is asked for.

        A field whose definition requires verification is not filled automatically (an
        unverified value would not meet it); its fallback applies at once. Where several
        requirements name one field, the first hard one (in collection order) governs.
        With ``persist`` the values found are validated and written with lineage to the
        session (:meth:`persist_extracted_values`); one that fails validation is reported
        unfilled and its fallback applies. An unknown profile raises NotFoundError; bad
        arguments raise :class:`~ccvault.errors.ValidationError` before anything is read.
        """
        session = _check_session(session)
        scenario_id = check_uuid(scenario_id, "scenario_id")
        step_id = check_optional_uuid(step_id, "step_id")
        if not isinstance(persist, bool):
            raise errors.ValidationError(f"persist must be a bool, got {persist!r}")
        profile = await self._profile(session)
        missing = await self.store.get_missing_fields(
            session.tenant_id,
            profile,
            scenario_id,
            step_id=step_id,
            required_level=required_level,
        )
        definitions = await self._definitions(session)
        governing: dict[str, ScenarioFieldRequirement] = {}
        for requirement in sorted(missing, key=lambda r: (r.collection_order, r.field_name)):
            current = governing.get(requirement.field_name)
            if current is None or (
                _LEVEL_RANK[requirement.required_level] < _LEVEL_RANK[current.required_level]
            ):
                governing[requirement.field_name] = requirement
        ordered = sorted(governing.values(), key=lambda r: (r.collection_order, r.field_name))

        results: dict[str, GapFillResult] = {}
        for requirement in ordered:
            results[requirement.field_name] = await self._fill_requirement(
                session,
                requirement,
                definitions.get(requirement.field_name),
                definitions,
                scenario_id,
            )
        if persist:
            await self.persist_extracted_values(
                session, results, scenario_id=scenario_id, step_id=step_id
            )
        for requirement in ordered:
            result = results[requirement.field_name]
            if not result.filled:
                self._apply_fallback(result, requirement)
            _SUCCESS.record(session.tenant_id, scenario_id, result.filled)
        return results

    async def _fill_requirement(
        self,
        session: Session,
        requirement: ScenarioFieldRequirement,
        definition: ProfileFieldDefinition | None,
        definitions: Mapping[str, ProfileFieldDefinition],
        scenario_id: UUID,
    ) -> GapFillResult:
        name = requirement.field_name
        if definition is not None and definition.required_verification:
            return GapFillResult(
                field_name=name,
                field_definition=definition,
                validation_errors=[
                    "the field requires verification; it must be collected "
                    "through a verified channel"
                ],
            )
        # The profile is skipped: the requirement is unmet precisely because the profile
        # has no usable value. Each source is tried at most once.
        order: Sequence[str] = (
            ("extraction", "session")
            if requirement.fallback_action is FallbackAction.EXTRACT
            else ("session", "extraction")
        )
        errors_seen: list[str] = []
        last: GapFillResult | None = None
        for source in order:
            if source == "session":
                result = await self.try_session_fill(
                    name,
                    session,
                    definition=definition,
                    definitions=definitions,
                    scenario_id=scenario_id,
                )
            else:
                result = await self.try_conversation_extraction(
                    name,
                    session,
                    definition=definition,
                    definitions=definitions,
                    scenario_id=scenario_id,
                )
            if result.filled:
                return result
            errors_seen.extend(result.validation_errors)
            if last is None or result.confidence is not None:
                last = result
        assert last is not None
        last.validation_errors = errors_seen
        last.field_definition = definition
        return last

    @staticmethod
    def _apply_fallback(result: GapFillResult, requirement: ScenarioFieldRequirement) -> None:
        definition = result.field_definition
        action = requirement.fallback_action
        result.prompt = default_prompt(requirement.field_name, definition)
        if action is FallbackAction.BLOCK:
            result.next_action = FallbackAction.BLOCK
            result.blocked = True
        elif action is FallbackAction.SKIP and requirement.required_level is RequiredLevel.SOFT:
            result.next_action = FallbackAction.SKIP
            result.prompt = None
        else:
            if action is FallbackAction.SKIP:
                logger.info(
                    "requirement %s of scenario %s is hard: not skipped, asked for",
                    requirement.field_name,
                    requirement.scenario_id,
                )
            result.next_action = FallbackAction.ASK
