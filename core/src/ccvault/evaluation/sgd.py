"""Fact tracking on the Schema-Guided Dialogue dataset (SGD, DSTC8; CC BY-SA 4.0).

The dataset maps onto the vault as follows (see ``README.md``, "Measuring on real
conversations"):

* a service's slot -> a field definition named ``<service>__<slot>`` (lower case, so two
  services' ``city`` never collide), a string; a categorical slot's ``possible_values`` plus
  SGD's special value ``dontcare`` -> ``allowed_values``;
* an intent -> a scenario (a UUID derived from the service and intent names) whose
  requirements are the intent's ``required_slots`` (hard) and ``optional_slots`` (soft);
* a dialogue -> one profile; each USER turn -> gap fill over the conversation so far: every
  slot of the turn's service is extracted (:meth:`GapFillService.try_conversation_extraction`)
  and a value that differs from the profile's ACTIVE one is written by
  :meth:`GapFillService.persist_extracted_values` (validated, superseding the old version);
* the turn's ``slot_values`` -> the ACTIVE values the profile must hold after the turn.

Scores, after every USER turn (see :class:`SgdScores`): joint goal accuracy, per-slot
precision and recall, ``get_missing_fields`` accuracy, supersede correctness, user turns/s.
A value counts as correct when, compared case- and space-insensitively, it is one of the
turn's ground-truth surface forms or the dataset's canonical form of one of them (the
``canonical_values`` of the dialogue's actions: ``2019-03-04`` for "March 4th", ``19:00`` for
"7 pm"). The official SGD script matches non-categorical values fuzzily; this one does not.

The ``oracle`` extractor (:class:`OracleExtractor`) answers every slot with the turn's
ground truth: it measures the store and gap fill, not extraction, and must score 1.0.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any, Literal
from uuid import UUID

import pydantic
from pydantic import BaseModel, ConfigDict

from ccvault import errors
from ccvault.extraction import Extraction, ExtractionRequest, Extractor
from ccvault.gapfill import GapFillService
from ccvault.models import (
    FIELD_NAME_PATTERN,
    Channel,
    ConversationTurn,
    CustomerProfile,
    FallbackAction,
    FieldValueType,
    GapFillResult,
    ItemStatus,
    JsonValue,
    ProfileFieldDefinition,
    ProfileFieldSource,
    RequiredLevel,
    ScenarioFieldRequirement,
    Session,
)
from ccvault.settings import VaultSettings
from ccvault.store import ProfileStore

__all__ = [
    "DONTCARE",
    "SGD_TODAY",
    "DatasetError",
    "OracleExtractor",
    "SgdDataset",
    "SgdScores",
    "field_name_for",
    "load_dataset",
    "run_sgd_eval",
]

SGD_TODAY = date(2019, 3, 1)
"""The day the SGD dialogues are set on: the dataset resolves "today" to 2019-03-01."""

DONTCARE = "dontcare"
"""SGD's value for "any value is fine": valid for every slot, categorical or not."""

_NAMESPACE = uuid.UUID("5c2b0f57-93d4-4c1e-9f0b-6a1d2e3f4a5b")
_NAME_RE = re.compile(FIELD_NAME_PATTERN)
_MAX_NAME = 50
# slots whose values identify or locate a person: marked PII so that an encrypting stack
# really seals some of what the eval writes
_PII_SLOT = re.compile(r"phone|address|recipient|therapist_name")


class DatasetError(errors.ValidationError):
    """The SGD data is missing or not in the expected format; the message says where."""


# =========================================================================================
# the dataset's format (only what the eval reads; other keys are ignored)
# =========================================================================================


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class _Slot(_Lenient):
    name: str
    description: str = ""
    is_categorical: bool = False
    possible_values: list[str] = []


class _Intent(_Lenient):
    name: str
    required_slots: list[str] = []
    optional_slots: dict[str, str] = {}


class _Service(_Lenient):
    service_name: str
    description: str = ""
    slots: list[_Slot]
    intents: list[_Intent]


class _State(_Lenient):
    active_intent: str
    slot_values: dict[str, list[str]]


class _Action(_Lenient):
    act: str = ""
    slot: str = ""
    values: list[str] = []
    canonical_values: list[str] = []


class _Frame(_Lenient):
    service: str
    actions: list[_Action] = []
    state: _State | None = None


class _Turn(_Lenient):
    speaker: Literal["USER", "SYSTEM"]
    utterance: str
    frames: list[_Frame]


class _Dialogue(_Lenient):
    dialogue_id: str
    services: list[str] = []
    turns: list[_Turn]


_SCHEMA = pydantic.TypeAdapter(list[_Service])
_DIALOGUES = pydantic.TypeAdapter(list[_Dialogue])


def _describe(exc: pydantic.ValidationError, what: str) -> str:
    first = exc.errors(include_url=False, include_input=False)[0]
    where = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in first["loc"])
    more = exc.error_count() - 1
    suffix = f" (and {more} more problem(s))" if more > 0 else ""
    return f"{what}: {where.lstrip('.') or 'top level'}: {first['msg']}{suffix}"


# =========================================================================================
# the schema as the vault sees it
# =========================================================================================


def field_name_for(service: str, slot: str) -> str:
    """The vault field name of ``slot`` of ``service``: ``<service>__<slot>`` in lower case.

    Characters outside ``[a-z0-9_]`` become ``_``; a name longer than 50 characters is cut
    and ends with 8 hex digits of a hash of the original pair, so names stay distinct.
    """
    raw = f"{service}__{slot}".lower()
    name = re.sub(r"[^a-z0-9_]", "_", raw)
    if not name or name[0].isdigit():
        name = "_" + name
    if len(name) > _MAX_NAME or name != raw:
        digest = hashlib.sha256(f"{service}\x00{slot}".encode()).hexdigest()[:8]
        name = f"{name[: _MAX_NAME - 9]}_{digest}" if len(name) > _MAX_NAME else name
    assert _NAME_RE.match(name) and len(name) <= _MAX_NAME
    return name


@dataclass(frozen=True, slots=True)
class SlotSpec:
    """One slot of one service and the field it becomes."""

    service: str
    name: str
    field_name: str
    description: str
    categorical: bool
    possible_values: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class IntentSpec:
    """One intent of one service and the scenario it becomes."""

    service: str
    name: str
    scenario_id: UUID
    required: tuple[str, ...]
    optional: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ServiceSpec:
    name: str
    slots: dict[str, SlotSpec]
    intents: dict[str, IntentSpec]

    @property
    def collected(self) -> list[SlotSpec]:
        """The slots some intent requires or accepts: what gap fill is asked for (result
        slots such as a restaurant's phone number are the agent's answers, not the
        customer's facts)."""
        names = {s for i in self.intents.values() for s in (*i.required, *i.optional)}
        return [slot for name, slot in self.slots.items() if name in names]


@dataclass(frozen=True, slots=True)
class SgdDataset:
    """A validated SGD split: its services and its dialogues (in file order)."""

    path: Path
    services: dict[str, ServiceSpec]
    dialogues: tuple[_Dialogue, ...]

    @property
    def user_turns(self) -> int:
        return sum(1 for d in self.dialogues for t in d.turns if t.speaker == "USER")

    def definitions(self, tenant_id: UUID, agent_id: UUID) -> list[ProfileFieldDefinition]:
        """One field definition per slot of every service the dialogues use."""
        found: list[ProfileFieldDefinition] = []
        for service in self.used_services():
            for slot in service.slots.values():
                allowed: list[JsonValue] | None = None
                if slot.categorical:
                    allowed = list(dict.fromkeys([*slot.possible_values, DONTCARE]))
                found.append(
                    ProfileFieldDefinition(
                        tenant_id=tenant_id,
                        agent_id=agent_id,
                        name=slot.field_name,
                        display_name=slot.name.replace("_", " "),
                        description=slot.description or None,
                        value_type=FieldValueType.STRING,
                        allowed_values=allowed,
                        is_pii=bool(_PII_SLOT.search(slot.name)),
                    )
                )
        return found

    def requirements(self, tenant_id: UUID, agent_id: UUID) -> list[ScenarioFieldRequirement]:
        """The requirements of every intent of every service the dialogues use."""
        found: list[ScenarioFieldRequirement] = []
        for service in self.used_services():
            for intent in service.intents.values():
                levels = [(s, RequiredLevel.HARD) for s in intent.required] + [
                    (s, RequiredLevel.SOFT) for s in intent.optional
                ]
                for order, (slot, level) in enumerate(levels):
                    found.append(
                        ScenarioFieldRequirement(
                            tenant_id=tenant_id,
                            agent_id=agent_id,
                            scenario_id=intent.scenario_id,
                            field_name=service.slots[slot].field_name,
                            required_level=level,
                            fallback_action=FallbackAction.ASK,
                            collection_order=order,
                        )
                    )
        return found

    def used_services(self) -> list[ServiceSpec]:
        names = dict.fromkeys(
            frame.service for d in self.dialogues for t in d.turns for frame in t.frames
        )
        return [self.services[name] for name in names]


def _services(raw: list[_Service], where: str) -> dict[str, ServiceSpec]:
    services: dict[str, ServiceSpec] = {}
    fields: dict[str, tuple[str, str]] = {}
    for item in raw:
        if item.service_name in services:
            raise DatasetError(f"{where}: service {item.service_name!r} appears twice")
        slots: dict[str, SlotSpec] = {}
        for slot in item.slots:
            name = field_name_for(item.service_name, slot.name)
            if name in fields:
                raise DatasetError(
                    f"{where}: slots {fields[name]} and {(item.service_name, slot.name)} "
                    f"map to the same field name {name!r}"
                )
            fields[name] = (item.service_name, slot.name)
            slots[slot.name] = SlotSpec(
                service=item.service_name,
                name=slot.name,
                field_name=name,
                description=slot.description,
                categorical=slot.is_categorical,
                possible_values=tuple(slot.possible_values),
            )
        intents: dict[str, IntentSpec] = {}
        for intent in item.intents:
            for slot_name in [*intent.required_slots, *intent.optional_slots]:
                if slot_name not in slots:
                    raise DatasetError(
                        f"{where}: intent {intent.name!r} of {item.service_name!r} names "
                        f"unknown slot {slot_name!r}"
                    )
            intents[intent.name] = IntentSpec(
                service=item.service_name,
                name=intent.name,
                scenario_id=uuid.uuid5(_NAMESPACE, f"sgd:{item.service_name}:{intent.name}"),
                required=tuple(intent.required_slots),
                optional=tuple(s for s in intent.optional_slots if s not in intent.required_slots),
            )
        services[item.service_name] = ServiceSpec(item.service_name, slots, intents)
    return services


def _check_dialogue(dialogue: _Dialogue, services: Mapping[str, ServiceSpec], where: str) -> None:
    for index, turn in enumerate(dialogue.turns):
        here = f"{where}: dialogue {dialogue.dialogue_id!r} turn {index}"
        for frame in turn.frames:
            service = services.get(frame.service)
            if service is None:
                raise DatasetError(f"{here}: service {frame.service!r} is not in schema.json")
            if turn.speaker != "USER":
                continue
            if frame.state is None:
                raise DatasetError(f"{here}: a USER frame has no 'state'")
            intent = frame.state.active_intent
            if intent != "NONE" and intent not in service.intents:
                raise DatasetError(f"{here}: unknown intent {intent!r} of {frame.service!r}")
            for slot, values in frame.state.slot_values.items():
                if slot not in service.slots:
                    raise DatasetError(f"{here}: unknown slot {slot!r} of {frame.service!r}")
                if not values:
                    raise DatasetError(f"{here}: slot {slot!r} has no value")


def load_dataset(path: str | Path, *, limit: int | None = None) -> SgdDataset:
    """Read and check ``schema.json`` and ``dialogues_*.json`` of one SGD split folder.

    ``limit`` keeps the first N dialogues (files in name order). Anything missing or not in
    the SGD format raises :class:`DatasetError` naming the file and the place.
    """
    folder = Path(path)
    if limit is not None and limit < 1:
        raise DatasetError(f"limit must be at least 1, got {limit}")
    if not folder.is_dir():
        raise DatasetError(f"SGD data folder not found: {folder}")
    schema_file = folder / "schema.json"
    if not schema_file.is_file():
        raise DatasetError(f"{schema_file} not found: an SGD split folder holds schema.json")
    try:
        services = _services(_SCHEMA.validate_json(schema_file.read_bytes()), schema_file.name)
    except pydantic.ValidationError as exc:
        raise DatasetError(_describe(exc, schema_file.name)) from None
    files = sorted(folder.glob("dialogues_*.json"))
    if not files:
        raise DatasetError(f"no dialogues_*.json file in {folder}")
    dialogues: list[_Dialogue] = []
    for file in files:
        try:
            batch = _DIALOGUES.validate_json(file.read_bytes())
        except pydantic.ValidationError as exc:
            raise DatasetError(_describe(exc, file.name)) from None
        for dialogue in batch:
            _check_dialogue(dialogue, services, file.name)
        dialogues.extend(batch)
        if limit is not None and len(dialogues) >= limit:
            dialogues = dialogues[:limit]
            break
    if not dialogues:
        raise DatasetError(f"the dialogues_*.json files of {folder} hold no dialogue")
    return SgdDataset(folder, services, tuple(dialogues))


# =========================================================================================
# the oracle extractor
# =========================================================================================


class OracleExtractor:
    """Answers each slot with the current turn's ground truth (confidence 1.0).

    Of several equally correct surface forms it keeps the one it gave before while that one is
    still correct, so an unchanged fact is not rewritten. :meth:`start_dialogue` and
    :meth:`set_turn` are called by the replay.
    """

    name = "oracle"

    def __init__(self, slots_by_field: Mapping[str, SlotSpec]) -> None:
        self._slots = dict(slots_by_field)
        self._truth: dict[tuple[str, str], list[str]] = {}
        self._given: dict[str, str] = {}

    def start_dialogue(self) -> None:
        self._truth = {}
        self._given = {}

    def set_turn(self, frames: Sequence[_Frame]) -> None:
        self._truth = {
            (frame.service, slot): values
            for frame in frames
            if frame.state is not None
            for slot, values in frame.state.slot_values.items()
        }

    async def extract(
        self, request: ExtractionRequest, turns: Sequence[ConversationTurn]
    ) -> Extraction | None:
        slot = self._slots.get(request.field_name)
        if slot is None:
            return None
        values = self._truth.get((slot.service, slot.name))
        if not values:
            return None
        previous = self._given.get(request.field_name)
        value = previous if previous in values else values[0]
        self._given[request.field_name] = value
        return Extraction(
            value=value,
            confidence=1.0,
            quote="",
            method="oracle",
            source=ProfileFieldSource.USER_PROVIDED,
        )


# =========================================================================================
# scoring
# =========================================================================================


def _norm(value: object) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return " ".join(text.casefold().split()).strip(" .,!?;:'\"")


@dataclass(slots=True)
class _Counts:
    tp: int = 0
    fp: int = 0
    fn: int = 0

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 1.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 1.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0


@dataclass(slots=True)
class SgdScores:
    """The figures of one run. Accuracies are in [0, 1] (1.0 when nothing was scored)."""

    extractor: str = ""
    provider: str = ""
    dialogues: int = 0
    turns: int = 0
    joint_correct: int = 0
    missing_checked: int = 0
    missing_correct: int = 0
    supersedes: int = 0
    supersede_errors: int = 0
    writes: int = 0
    elapsed_s: float = 0.0
    slots: _Counts = field(default_factory=_Counts)
    categorical: _Counts = field(default_factory=_Counts)
    non_categorical: _Counts = field(default_factory=_Counts)
    error_examples: list[str] = field(default_factory=list)
    #: per (service, slot): the counts behind slot precision and recall
    per_slot: dict[tuple[str, str], _Counts] = field(default_factory=dict)

    @property
    def jga(self) -> float:
        return self.joint_correct / self.turns if self.turns else 1.0

    @property
    def missing_accuracy(self) -> float:
        return self.missing_correct / self.missing_checked if self.missing_checked else 1.0

    @property
    def turns_per_s(self) -> float:
        return self.turns / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        """The figures as one JSON-ready object (the keys of ``ccvault eval sgd --json``)."""
        return {
            "dataset": "sgd",
            "extractor": self.extractor,
            "provider": self.provider,
            "dialogues": self.dialogues,
            "turns": self.turns,
            "jga": round(self.jga, 4),
            "slot_precision": round(self.slots.precision, 4),
            "slot_recall": round(self.slots.recall, 4),
            "slot_f1": round(self.slots.f1, 4),
            "categorical_precision": round(self.categorical.precision, 4),
            "categorical_recall": round(self.categorical.recall, 4),
            "categorical_f1": round(self.categorical.f1, 4),
            "non_categorical_precision": round(self.non_categorical.precision, 4),
            "non_categorical_recall": round(self.non_categorical.recall, 4),
            "non_categorical_f1": round(self.non_categorical.f1, 4),
            "missing_accuracy": round(self.missing_accuracy, 4),
            "missing_checked": self.missing_checked,
            "supersedes": self.supersedes,
            "supersede_errors": self.supersede_errors,
            "writes": self.writes,
            "elapsed_s": round(self.elapsed_s, 3),
            "turns_per_s": round(self.turns_per_s, 1),
        }

    def _error(self, text: str) -> None:
        # ids and field names only: never a value (they may be personal data in a real store)
        if len(self.error_examples) < 10:
            self.error_examples.append(text)


def _canonical_forms(dialogue: _Dialogue) -> dict[tuple[str, str, str], set[str]]:
    """(service, slot, normalised surface form) -> normalised canonical forms, from every
    action of the dialogue."""
    found: dict[tuple[str, str, str], set[str]] = {}
    for turn in dialogue.turns:
        for frame in turn.frames:
            for action in frame.actions:
                if not action.slot or len(action.values) != len(action.canonical_values):
                    continue
                for value, canonical in zip(action.values, action.canonical_values, strict=True):
                    key = (frame.service, action.slot, _norm(value))
                    found.setdefault(key, set()).add(_norm(canonical))
    return found


# =========================================================================================
# the replay
# =========================================================================================


@dataclass(slots=True)
class _Run:
    store: ProfileStore
    gapfill: GapFillService
    dataset: SgdDataset
    tenant_id: UUID
    agent_id: UUID
    definitions: dict[str, ProfileFieldDefinition]
    scores: SgdScores
    oracle: OracleExtractor | None


async def _replay_dialogue(run: _Run, dialogue: _Dialogue) -> None:
    store, tenant = run.store, run.tenant_id
    scores = run.scores
    canonical = _canonical_forms(dialogue)
    profile = await store.get_or_create(tenant, Channel.API, f"sgd-{dialogue.dialogue_id}"[:255])
    session = Session(tenant_id=tenant, agent_id=run.agent_id, customer_profile_id=profile.id)
    if run.oracle is not None:
        run.oracle.start_dialogue()
    try:
        for index, turn in enumerate(dialogue.turns):
            role = "user" if turn.speaker == "USER" else "assistant"
            session.turns.append(ConversationTurn(role=role, content=turn.utterance))
            if turn.speaker != "USER":
                continue
            if run.oracle is not None:
                run.oracle.set_turn(turn.frames)
            active = profile.fields
            pending: list[GapFillResult] = []
            for frame in turn.frames:
                for slot in run.dataset.services[frame.service].collected:
                    result = await run.gapfill.try_conversation_extraction(
                        slot.field_name, session, definitions=run.definitions
                    )
                    current = active.get(slot.field_name)
                    if result.filled and (
                        current is None or _norm(current.value) != _norm(result.value)
                    ):
                        pending.append(result)
            previous = {r.field_name: active.get(r.field_name) for r in pending}
            written = await run.gapfill.persist_extracted_values(session, pending)
            scores.writes += len(written)
            fresh = await store.get_by_id(tenant, profile.id, include_history=True)
            if fresh is None:
                raise errors.NotFoundError(f"profile {profile.id} vanished during the eval")
            profile = fresh
            here = f"dialogue {dialogue.dialogue_id} turn {index}"
            _score_supersedes(scores, profile, written, previous, here)
            for frame in turn.frames:
                await _score_frame(run, profile, frame, canonical, here)
            scores.turns += 1
    finally:
        await store.purge_profile(tenant, profile.id)
    scores.dialogues += 1


def _score_supersedes(
    scores: SgdScores,
    profile: CustomerProfile,
    written: Mapping[str, UUID],
    previous: Mapping[str, Any],
    here: str,
) -> None:
    for name, versions in profile.field_history.items():
        active = [v for v in versions if v.status is ItemStatus.ACTIVE]
        if len(active) != 1:
            scores.supersede_errors += 1
            scores._error(f"{here}: {name} has {len(active)} ACTIVE versions")
    for name, new_id in written.items():
        by_id = {v.id: v for v in profile.field_history.get(name, [])}
        new = by_id.get(new_id)
        if new is None or new.status is not ItemStatus.ACTIVE:
            scores.supersede_errors += 1
            scores._error(f"{here}: the value written to {name} is not ACTIVE")
        old = previous.get(name)
        if old is None:
            continue
        scores.supersedes += 1
        kept = by_id.get(old.id)
        if (
            kept is None
            or kept.status is not ItemStatus.SUPERSEDED
            or kept.superseded_by_id != new_id
        ):
            scores.supersede_errors += 1
            scores._error(f"{here}: the previous value of {name} is not superseded by the new one")
        elif _norm(kept.value) != _norm(old.value):
            scores.supersede_errors += 1
            scores._error(f"{here}: the previous value of {name} changed in history")


async def _score_frame(
    run: _Run,
    profile: CustomerProfile,
    frame: _Frame,
    canonical: Mapping[tuple[str, str, str], set[str]],
    here: str,
) -> None:
    scores = run.scores
    assert frame.state is not None
    service = run.dataset.services[frame.service]
    truth = frame.state.slot_values
    joint = True
    for slot in service.slots.values():
        counts = scores.categorical if slot.categorical else scores.non_categorical
        own = scores.per_slot.setdefault((slot.service, slot.name), _Counts())
        stored = profile.fields.get(slot.field_name)
        values = truth.get(slot.name)
        if values is None:
            if stored is not None:
                joint = False
                counts.fp += 1
                own.fp += 1
                scores.slots.fp += 1
            continue
        accepted = {_norm(v) for v in values}
        for value in values:
            accepted |= canonical.get((frame.service, slot.name, _norm(value)), set())
        if stored is not None and _norm(stored.value) in accepted:
            counts.tp += 1
            own.tp += 1
            scores.slots.tp += 1
            continue
        joint = False
        counts.fn += 1
        own.fn += 1
        scores.slots.fn += 1
        if stored is not None:
            counts.fp += 1
            own.fp += 1
            scores.slots.fp += 1
    if joint:
        scores.joint_correct += 1
    intent = service.intents.get(frame.state.active_intent)
    if intent is None:
        return
    expected = {service.slots[s].field_name for s in intent.required if s not in truth}
    missing = await run.store.get_missing_fields(
        run.tenant_id, profile, intent.scenario_id, required_level="hard"
    )
    reported = {requirement.field_name for requirement in missing}
    scores.missing_checked += 1
    if reported == expected:
        scores.missing_correct += 1
    else:
        scores._error(
            f"{here}: get_missing_fields reported {sorted(reported)}, expected {sorted(expected)}"
        )


ExtractorName = Literal["oracle", "offline", "openai"]


async def run_sgd_eval(
    store: ProfileStore,
    dataset: SgdDataset,
    *,
    extractor: Extractor | None = None,
    settings: VaultSettings | None = None,
    extractor_name: str | None = None,
    on_dialogue: Callable[[SgdScores], None] | None = None,
) -> SgdScores:
    """Replay ``dataset`` through gap fill into ``store`` and score it.

    ``extractor=None`` is the oracle. Everything is written under a fresh random tenant and
    removed at the end (profiles purged, definitions and requirements deleted), so a run
    leaves nothing behind in the store it was given. ``settings`` supplies the gap-fill
    thresholds (defaults when None). ``on_dialogue`` is called after each dialogue.
    """
    tenant_id, agent_id = uuid.uuid4(), uuid.uuid4()
    slots_by_field = {
        slot.field_name: slot
        for service in dataset.services.values()
        for slot in service.slots.values()
    }
    oracle = OracleExtractor(slots_by_field) if extractor is None else None
    chosen: Extractor
    if extractor is None:
        assert oracle is not None
        chosen = oracle
    else:
        chosen = extractor
    settings = settings or VaultSettings()
    gapfill = GapFillService.from_settings(store, settings, extractor=chosen)
    definitions = dataset.definitions(tenant_id, agent_id)
    requirements = dataset.requirements(tenant_id, agent_id)
    scores = SgdScores(
        extractor=extractor_name or str(getattr(chosen, "name", type(chosen).__name__)),
        provider=settings.profile.store_provider,
    )
    try:
        for definition in definitions:
            await store.save_field_definition(definition)
        for requirement in requirements:
            await store.save_scenario_requirement(requirement)
        run = _Run(
            store=store,
            gapfill=gapfill,
            dataset=dataset,
            tenant_id=tenant_id,
            agent_id=agent_id,
            definitions={d.name: d for d in definitions},
            scores=scores,
            oracle=oracle,
        )
        started = time.perf_counter()
        for dialogue in dataset.dialogues:
            await _replay_dialogue(run, dialogue)
            scores.elapsed_s = time.perf_counter() - started
            if on_dialogue is not None:
                on_dialogue(scores)
    finally:
        for scenario_id in dict.fromkeys(r.scenario_id for r in requirements):
            await store.delete_scenario_requirements(tenant_id, scenario_id)
        for definition in definitions:
            await store.delete_field_definition(tenant_id, agent_id, definition.name)
    return scores
