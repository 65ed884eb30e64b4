"""The ``ProfileStore`` contract, shared by every provider and every wrapper.

A store has two faces:

* **The public methods** (the seed's interface plus the extensions of DESIGN.md §4) are
  implemented here, once, and are *final*: marked :func:`typing.final`, and a subclass that
  defines one fails at class creation with a :class:`TypeError` naming the hook to override
  instead. Each one checks its arguments (:mod:`ccvault.arguments`) and raises
  :class:`~ccvault.errors.ValidationError` before anything is written, then applies the rules
  that belong to the vault rather than to a database: a field whose ``expires_at`` has passed
  is never served as ACTIVE, definitions are listed by name, requirements by
  ``collection_order``, merge conflicts are decided by :func:`merge_winner`, missing fields are
  evaluated by :mod:`ccvault.requirements`. Only the outermost store of a stack runs this
  layer: checks, rules and presentation happen exactly once per call.
* **The hooks** (the ``_``-prefixed methods below) are the one declared interface between the
  public layer and storage, for providers and wrappers alike. They receive arguments already
  checked and typed, and only store and fetch. A provider implements every abstract hook; a
  wrapper (cache, encryption) subclasses :class:`ForwardingProfileStore`, which implements
  every hook by calling the *same hook* of the wrapped store, and overrides the few it
  changes. A wrapper relies on nothing of the wrapped store but its hooks, ``setup``,
  ``aclose``, ``schema_status``, ``migrate``, ``now``, ``rules`` and ``capabilities``. The
  shared suite in ``ccvault-contract-tests`` checks every hook through the public methods.

The hooks and their contract (each hook's docstring says more). *Atomic* means: all of the
hook's writes happen or none does, and a hook that raises has written nothing. Orders are
those of the returned lists; "newest" means greatest ``collected_at`` (assets:
``uploaded_at``), ties broken by write order, newest write first.

===================================  =====================================================
hook                                 contract
===================================  =====================================================
``_get_by_customer_id``              live profile or None; ``fields`` = ACTIVE versions
``_get_by_id``                       (expired or not: the public layer presents them),
``_get_by_channel_identity``         ``assets`` = ACTIVE; history newest first on request
``_get_or_create``                   atomic, race-free: one profile per identity
``_save``                            atomic upsert of the aggregate; conflicts write nothing
``_delete``                          atomic soft delete, releases identities
``_update_field``                    atomic insert (+ supersede); one ACTIVE per name always
``_get_field``                       newest version with the *stored* status
``_get_field_history``               every version, newest first
``_expire_stale_fields_batch``       atomic: at most ``limit`` ACTIVE with ``expires_at <=
                                     now`` -> EXPIRED; the count (core loops the batches)
``_expire_stale_fields``             the former single-step form (either one is enough)
``_add_asset``                       atomic insert (+ supersede); one ACTIVE per name
``_get_asset``                       by id, any status
``_get_asset_by_name``               newest asset of that name and stored status
``_get_derivation_chain``            root first, at most ``max_depth``, cycle-safe
``_get_lineage_node``                one item as a lineage entry (for the default chain walk)
``_get_derived_items``               direct dependents, any status, oldest first
``_check_has_dependents``            any ACTIVE item derives from the id
``_link_channel``                    atomic, race-free against concurrent links;
                                     ``max_per_channel``: ``channel_eviction``, same step
``_merge_profiles``                  one atomic step; ``choose_winner`` decides conflicts;
                                     stores the merge log entry in the same step
``_unmerge``                         one atomic step: read, ``plan_unmerge``, apply
``_get_merge_log``                   entries whose source or target is the profile
``_get_tenant_field_definitions``    every definition of the tenant, any agent, any order
``_get_field_definitions``           the agent's definitions, any order
``_get_field_definition``            one definition by name, enabled or not
``_save_field_definition``           atomic upsert by (tenant, agent, name), keeps id
``_delete_field_definition``         True if one was deleted
``_get_scenario_requirements``       exactly that ``step_id``'s, any order
``_get_requirements_with_definitions``  optional: those requirements and their agents'
                                     enabled definitions, read together (one round trip)
``_get_requirement_checks``          optional: those requirements and, per agent and field
                                     name, the FieldCheck of its enabled definition
                                     (default derived from the above)
``_get_requirement_records``         optional: what get_missing_fields reads, one record
                                     per requirement (what it judges, its FieldCheck, a
                                     source) and a builder of the models of some sources
                                     (default derived from the above)
``_save_scenario_requirement``       atomic upsert by (tenant, scenario, step, rule, name)
``_delete_scenario_requirements``    the count
``_purge_profile``                   atomic hard delete of the profile and all it owns
``_export_profile``                  live or soft-deleted, full history, or None
``_find_subject_profiles``           every profile, live or soft-deleted, holding the
                                     identity (released too) or the customer id
``_erase_subject``                   atomic hard delete of several profiles, refused
                                     (ConflictError) when their merge log changed
``_delete_item``                     atomic check-and-delete (DependentsError)
``_mark_orphans_page``               atomic: examines at most ``limit`` derived items
                                     after a resume position, marks the orphans among
                                     them; a KeysetBatch (core loops the pages)
``_mark_orphans_batch``              atomic: at most ``limit`` items whose source is gone
                                     -> ORPHANED; the count (the pre-keyset form)
``_mark_orphans``                    the former single-step form (either one is enough)
``_list_tenant_ids``                 any order
``_count_items_by_status``           ``{"fields": {...}, "assets": {...}}``
``_estimate_items_by_status``        the same, possibly estimated at a bounded cost
``_list_profile_ids``                live and soft-deleted, any order
``_rewrite_field_payloads``          atomic in-place rewrite of value and metadata
===================================  =====================================================
"""

from __future__ import annotations

import abc
import functools
import inspect
import logging
import operator
from abc import ABC, abstractmethod
from collections.abc import Callable
from datetime import datetime
from itertools import chain, repeat
from types import TracebackType
from typing import Any, Self, final
from uuid import UUID, uuid4

from ccvault import errors, metrics, provenance, tracing
from ccvault.arguments import (
    check_asset_name,
    check_bool,
    check_channel,
    check_channel_user_id,
    check_field_name,
    check_item_type,
    check_json_payload,
    check_max_per_channel,
    check_model,
    check_optional_uuid,
    check_read_fields,
    check_read_profile,
    check_required_level,
    check_status,
    check_timestamp,
    check_uuid,
)
from ccvault.batches import (
    DEFAULT_BATCH_SIZE,
    MAX_BATCH_SIZE,
    MAX_CURSOR_LENGTH,
    KeysetBatch,
    ProgressCallback,
    run_batches,
    run_keyset_batches,
)
from ccvault.migration import MigrationReport, SchemaStatus
from ccvault.models import (
    Channel,
    ChannelIdentity,
    CustomerProfile,
    ItemStatus,
    ItemType,
    LineageEntry,
    MergeRecord,
    ProfileAsset,
    ProfileField,
    ProfileFieldDefinition,
    ScenarioFieldRequirement,
    SourceType,
    UnmergeResult,
    utcnow,
)
from ccvault.requirements import (
    FieldCheck,
    RequirementRecords,
    checks_of,
    find_missing_records,
    records_of,
)
from ccvault.rules.erasure import (
    ErasurePlan,
    ErasureReport,
    SubjectKey,
    SubjectState,
    erasure_report,
    next_lookups,
    plan_erasure,
    subject_profile,
)
from ccvault.rules.merge import (
    MergeLogRequest,
    MergeWinner,
    merge_winner,
    policies_from_definitions,
    survivorship_chooser,
)
from ccvault.store_rules import StaleFieldAction, StoreRules
from ccvault.value_checks import check_definition, check_value_size

__all__ = [
    "ForwardingProfileStore",
    "MergeWinner",
    "ProfileStore",
    "StaleFieldAction",
    "StoreRules",
    "check_optional_uuid",
    "check_uuid",
    "final_methods",
    "lineage_target",
    "merge_winner",
    "present_field",
    "present_profile",
]

logger = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------
# argument checks: every public method runs its arguments through these first. They live in
# the leaf module ccvault.arguments; the short names below keep this module readable.
# ---------------------------------------------------------------------------------------

_field_name = check_field_name
_asset_name = check_asset_name
_channel = check_channel
_channel_user_id = check_channel_user_id
_status = check_status
_item_type = check_item_type
_required_level = check_required_level
_model = check_model
_bool = check_bool


def _instant(value: object, what: str) -> datetime:
    if not isinstance(value, datetime):
        raise errors.ValidationError(f"{what} must be a timezone-aware datetime")
    return check_timestamp(value, what)


def _optional_text(value: object, name: str, max_length: int) -> str | None:
    """A short free-text argument (a merge's reason or actor): None or a str within bounds."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise errors.ValidationError(f"{name} must be a string or None")
    if len(value) > max_length:
        raise errors.ValidationError(f"{name} is longer than {max_length} characters")
    if any(0xD800 <= ord(ch) <= 0xDFFF or ch == "\x00" for ch in value):
        raise errors.ValidationError(f"{name} holds a lone surrogate or a NUL character")
    return value


# ---------------------------------------------------------------------------------------
# presentation: expiry is decided at read time, so a stale cache or an unswept row can
# never serve an expired value as ACTIVE
# ---------------------------------------------------------------------------------------


def present_field(item: ProfileField, now: datetime) -> ProfileField:
    """``item`` as it must be served at ``now``: ACTIVE past ``expires_at`` reads as EXPIRED."""
    if item.status is ItemStatus.ACTIVE and item.is_expired(now):
        return item.model_copy(update={"status": ItemStatus.EXPIRED})
    return item


_EXPIRES_AT = operator.attrgetter("expires_at")


def present_profile(profile: CustomerProfile, now: datetime) -> CustomerProfile:
    """``profile`` as it must be served at ``now``: expired fields leave ``fields``."""
    if not any(map(operator.is_not, map(_EXPIRES_AT, profile.fields.values()), repeat(None))):
        if not any(
            map(
                operator.is_not,
                map(_EXPIRES_AT, chain.from_iterable(profile.field_history.values())),
                repeat(None),
            )
        ):
            # no expiry anywhere (most profiles): one scan in C, nothing to change
            return profile
    expired = [name for name, item in profile.fields.items() if item.is_expired(now)]
    active = ItemStatus.ACTIVE
    if not expired and not any(
        version.expires_at is not None and version.status is active and version.expires_at <= now
        for versions in profile.field_history.values()
        for version in versions
    ):
        # nothing to change: the provider's own fresh object, not a copy of it (a read of
        # 1,000 versions spent more on the copy than on this check)
        return profile
    fields = {n: f for n, f in profile.fields.items() if not f.is_expired(now)}
    history = {
        name: [present_field(version, now) for version in versions]
        for name, versions in profile.field_history.items()
    }
    return profile.model_copy(update={"fields": fields, "field_history": history})


# provenance: state read through hooks for ccvault.provenance (module functions, not
# hooks: a wrapper must not forward them, they run over the outermost store's hooks)


async def _merge_log_if_kept(store: ProfileStore, tenant_id: UUID, profile_id: UUID) -> list[Any]:
    """The profile's merge log entries through the ``_get_merge_log`` hook; ``[]`` from a
    store that keeps none (no such hook, or one that raises NotImplementedError)."""
    reader = getattr(store, "_get_merge_log", None)
    if reader is None:
        return []
    try:
        return list(await reader(tenant_id, profile_id))
    except NotImplementedError:
        return []


async def _provenance_log(
    store: ProfileStore, tenant_id: UUID, profile_id: UUID
) -> tuple[list[Any], dict[UUID, CustomerProfile]]:
    """The merge log entries reachable from the profile (both directions, chained merges
    too, at most 16 profiles) and every profile they touch, exported (full history).

    """
    exported = await store._export_profile(tenant_id, profile_id)
    if exported is None:
        raise errors.NotFoundError(f"profile {profile_id} not found")
    profiles = {profile_id: exported}
    records: dict[UUID, Any] = {}
    queue = [profile_id]
    while queue:
        current = queue.pop(0)
        for record in await _merge_log_if_kept(store, tenant_id, current):
            records[record.id] = record
            for other in (record.source_profile_id, record.target_profile_id):
                if other not in profiles and len(profiles) < 16:
                    found = await store._export_profile(tenant_id, other)
                    if found is not None:
                        profiles[other] = found
                        queue.append(other)
    return sorted(records.values(), key=lambda r: r.merged_at), profiles


# erasure by data subject: the closure of ccvault.rules.erasure, driven over hooks (module
# functions, not hooks: they run over the outermost store's hooks)


async def _resolve_subject(
    store: ProfileStore, tenant_id: UUID, key: SubjectKey
) -> tuple[ErasurePlan, dict[UUID, CustomerProfile], list[MergeRecord]]:
    """Read the subject's closure (:func:`~ccvault.rules.erasure.next_lookups`) and plan its
    erasure; also the profiles read (full history) and the merge log entries."""
    state = SubjectState()
    exported: dict[UUID, CustomerProfile] = {}

    async def reach(profile_ids: list[UUID]) -> None:
        for profile_id in profile_ids:
            state.profiles_read.add(profile_id)
            if profile_id in state.profiles:
                continue
            found = await store._export_profile(tenant_id, profile_id)
            if found is None:
                continue
            live = await store._get_by_id(tenant_id, profile_id, False) is not None
            exported[profile_id] = found
            state.profiles[profile_id] = subject_profile(found, live=live)

    async def by_customer(customer_id: UUID) -> None:
        state.customer_ids_read.add(customer_id)
        await reach(await store._find_subject_profiles(tenant_id, None, None, customer_id))

    async def by_identity(channel: Channel, channel_user_id: str) -> None:
        state.identities_read.add((channel, channel_user_id))
        await reach(await store._find_subject_profiles(tenant_id, channel, channel_user_id, None))

    if key.profile_id is not None:
        await reach([key.profile_id])
    elif key.customer_id is not None:
        await by_customer(key.customer_id)
    else:
        assert key.channel is not None and key.channel_user_id is not None
        await by_identity(key.channel, key.channel_user_id)
    # every round reads something not read before, and next_lookups refuses a closure past
    # MAX_SUBJECT_PROFILES: the loop is bounded
    while lookups := next_lookups(state):
        for profile_id in sorted(lookups.merge_logs_of, key=lambda u: u.int):
            state.merge_logs_read.add(profile_id)
            state.add_merges(await _merge_log_if_kept(store, tenant_id, profile_id))
        await reach(sorted(lookups.profile_ids, key=lambda u: u.int))
        for customer_id in sorted(lookups.customer_ids, key=lambda u: u.int):
            await by_customer(customer_id)
        for channel, channel_user_id in sorted(lookups.identities):
            await by_identity(channel, channel_user_id)
    plan = plan_erasure(state.profiles, state.merges.values())
    merges = sorted(
        (state.merges[merge_id] for merge_id in plan.merge_ids),
        key=lambda r: (r.merged_at, r.id.int),
    )
    return plan, exported, merges


async def _erase_subject(
    store: ProfileStore, tenant_id: UUID, key: SubjectKey, *, dry_run: bool
) -> ErasureReport:
    """Plan the subject's erasure and, unless ``dry_run``, apply it; the report. A plan
    refused because a merge changed the subject since it was read is read again (three
    attempts, then ConflictError)."""
    for _attempt in range(3):
        plan, _, _ = await _resolve_subject(store, tenant_id, key)
        if not plan.profiles:
            raise errors.NotFoundError(f"no profile of this subject in tenant {tenant_id}")
        if dry_run:
            return erasure_report(tenant_id, plan, dry_run=True)
        try:
            await store._erase_subject(tenant_id, list(plan.profile_ids), list(plan.merge_ids))
        except errors.ConflictError:
            continue  # a merge changed the subject since the read: read it again
        return erasure_report(tenant_id, plan, dry_run=False)
    raise errors.ConflictError("the subject kept changing during erasure; retry")


def _subject_key(
    channel: object, channel_user_id: object, customer_id: object, profile_id: object
) -> SubjectKey:
    return SubjectKey(
        channel=None if channel is None else _channel(channel),
        channel_user_id=None if channel_user_id is None else _channel_user_id(channel_user_id),
        customer_id=check_optional_uuid(customer_id, "customer_id"),
        profile_id=check_optional_uuid(profile_id, "profile_id"),
    )


async def _versions_as_of(
    store: ProfileStore, tenant_id: UUID, profile_id: UUID, at: datetime
) -> tuple[CustomerProfile, dict[str, ProfileField]]:
    records, profiles = await _provenance_log(store, tenant_id, profile_id)
    moves, losers = provenance.moves_from_log(records)
    holder: dict[UUID, UUID] = {}
    history: dict[str, list[ProfileField]] = {}
    for owner_id, found in profiles.items():
        for name, versions in found.field_history.items():
            for version in versions:
                holder[version.id] = owner_id
                history.setdefault(name, []).append(version)
    for versions in history.values():
        versions.sort(key=lambda v: v.collected_at, reverse=True)  # stable: write order

    def owned(version_id: UUID) -> bool:
        where = provenance.owner_at(version_id, holder[version_id], moves, at)
        return where == profile_id

    served = provenance.fields_as_of(
        history,
        at,
        owned=owned,
        merge_losers=losers.keys(),
        reactivated=provenance.reactivations_from_log(records),
    )
    return profiles[profile_id], served


def final_methods() -> frozenset[str]:
    """The public methods of :class:`ProfileStore` no subclass may override."""
    return frozenset(
        name
        for name, member in vars(ProfileStore).items()
        if getattr(member, "__final__", False) and not name.startswith("_")
    )


def _owner(cls: type, name: str) -> type:
    """The class of ``cls``' MRO whose body defines ``name`` (ProfileStore's subclasses)."""
    return next((klass for klass in cls.__mro__ if name in vars(klass)), ProfileStore)


# get_missing_fields' reads of a field version's attributes (its __dict__, as
# check_read_fields reads them)
_VARS = operator.attrgetter("__dict__")
_VALUE_OF = operator.methodcaller("get", "value")
_EXPIRES_AT_OF = operator.methodcaller("get", "expires_at")
#: get_missing_fields' order of requirements (a C key function: 50 requirements per call)
_COLLECTION_ORDER = operator.attrgetter("collection_order", "field_name")


#: get_missing_fields' optional requirement hooks, widest first, each with the hooks its
#: default derives from (ProfileStore.__init_subclass__ keeps them in step)
_DERIVED_REQUIREMENT_HOOKS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "_get_requirements_with_definitions",
        ("_get_scenario_requirements", "_get_field_definitions"),
    ),
    ("_get_requirement_checks", ("_get_requirements_with_definitions",)),
    ("_get_requirement_records", ("_get_requirement_checks",)),
)


def _wider_requirement_hooks() -> dict[str, frozenset[str]]:
    """Each derived requirement hook -> every hook it derives from, directly or not."""
    wider: dict[str, frozenset[str]] = {}
    for derived, sources in _DERIVED_REQUIREMENT_HOOKS:
        wider[derived] = frozenset(sources).union(*(wider.get(s, ()) for s in sources))
    return wider


_WIDER_REQUIREMENT_HOOKS = _wider_requirement_hooks()
_SOURCES_OF = dict(_DERIVED_REQUIREMENT_HOOKS)


def _derive_requirement_hooks(cls: type[ProfileStore]) -> None:
    """get_missing_fields reads the narrowest requirement hook, each derived from wider
    ones: a derived hook defined above an override of one it derives from, directly or
    through defaults between (which it would go around), gives way, on ``cls``, to its
    default, derived from that override.

    Widest first, so a reset carries on to the narrower hooks. A hook that is its default
    (never overridden, or reset) stands where the nearest of its sources stands, so a
    narrower hook defined between the two is kept. A source the derived hook's class saw
    abstract, itself or all it derives from (a base class writing the one-statement hooks,
    its subclasses the primitives they agree with), is not one it goes around."""
    mro = cls.__mro__
    standing: dict[str, int] = {}  # a default -> the position of its nearest source

    def position(name: str) -> int:
        return standing.get(name, mro.index(_owner(cls, name)))

    for derived, sources in _DERIVED_REQUIREMENT_HOOKS:
        at = position(derived)
        if mro[at] is ProfileStore:
            standing[derived] = min(map(position, sources))
            continue
        seen_from = mro[at]
        nearer = [
            position(source)
            for source in sources
            if position(source) < at and _concrete_in(seen_from, source)
        ]
        if nearer:
            setattr(cls, derived, vars(ProfileStore)[derived])
            standing[derived] = min(nearer)


def _concrete_in(klass: type, name: str) -> bool:
    """Whether ``klass`` has a working ``name``: not abstract, and if it is a requirement
    hook's default, derived from at least one hook that works there."""
    found = getattr(klass, name, None)
    if getattr(found, "__isabstractmethod__", False):
        return False
    sources = _SOURCES_OF.get(name)
    if sources is not None and found is vars(ProfileStore).get(name):
        return any(_concrete_in(klass, source) for source in sources)
    return True


class ProfileStore(ABC):
    """Abstract, async, multi-tenant storage of customer profiles. See the module docstring.

    Every store is an async context manager: entering runs :meth:`setup`, leaving runs
    :meth:`aclose`. All reads and writes are scoped by ``tenant_id``; an id of another tenant
    behaves exactly like an unknown id.
    """

    #: Optional capabilities this store has (see ``ccvault_contract_tests.capabilities``).
    capabilities: frozenset[str] = frozenset()

    def __init__(self, *, rules: StoreRules | None = None) -> None:
        self.rules = rules or StoreRules()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Refuse a subclass that overrides a final public method (see the module docstring):
        the checks, rules and presentation of the public layer must run exactly once."""
        super().__init_subclass__(**kwargs)
        for name in sorted(final_methods()):
            # whoever defines it first in the MRO: a mixin listed before ProfileStore counts
            owner = next((klass for klass in cls.__mro__ if name in vars(klass)), ProfileStore)
            if owner is not ProfileStore:
                hook = f"_{name}"
                instead = (
                    f"override the hook {hook}() instead"
                    if hook in vars(ProfileStore)
                    else "override the hooks it uses instead"
                )
                where = "" if owner is cls else f" (through {owner.__qualname__})"
                raise TypeError(
                    f"{cls.__qualname__} overrides ProfileStore.{name}(){where}, which is "
                    f"final (it checks arguments, applies the vault's rules and presents the "
                    f"result once for the whole stack); {instead}"
                )
        _derive_requirement_hooks(cls)

    def now(self) -> datetime:
        """The store's clock (UTC). Tests may replace it."""
        return utcnow()

    # =====================================================================================
    # lifecycle
    # =====================================================================================

    async def setup(self) -> None:  # noqa: B027 - optional hook, a no-op by default
        """Connect and check that the storage is ready. Idempotent, safe with concurrent
        starters. Never changes the schema (unless a provider setting such as
        ``migrate_on_start`` says so): a missing or older schema raises
        :class:`~ccvault.errors.SchemaNotReadyError`, a newer one
        :class:`~ccvault.errors.SchemaVersionError` (see :mod:`ccvault.migration`)."""

    async def schema_status(self) -> SchemaStatus:
        """Where the storage schema stands (current, latest, pending steps). Reads only.

        Callable on an unopened store (it then connects for the call and disconnects), so
        ``ccvault migrate --status`` and ``config check`` work against a schema ``setup()``
        refuses. The default, for a provider without a schema: version 0 of 0, up to date.
        """
        return SchemaStatus(current=0, latest=0)

    async def migrate(self, *, dry_run: bool = False) -> MigrationReport:
        """Apply every pending schema step, in order; return what was applied.

        The ONLY path that changes the schema. Callable on an unopened store (it connects
        for the call). Idempotent, and safe when several migrators run at once (a provider
        serializes them, e.g. under a lock: the second finds nothing left and reports no
        step applied). Each run is atomic where the storage allows it: a failure leaves the
        schema at its previous version. A schema newer than this code:
        :class:`~ccvault.errors.SchemaVersionError`, nothing changed. ``dry_run``: nothing
        is changed; the report lists the steps (with their statements) that would run.
        The default, for a provider without a schema: nothing to do.
        """
        status = await self.schema_status()
        return MigrationReport(applied=(), status=status, dry_run=dry_run)

    async def aclose(self) -> None:  # noqa: B027 - optional hook, a no-op by default
        """Release pools and connections. Idempotent."""

    async def __aenter__(self) -> Self:
        await self.setup()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # =====================================================================================
    # profiles
    # =====================================================================================

    @final
    async def get_by_customer_id(
        self, tenant_id: UUID, customer_id: UUID, *, include_history: bool = False
    ) -> CustomerProfile | None:
        """The live profile with this customer id, or None (unknown, deleted, other tenant).

        Without history ``fields`` holds exactly the ACTIVE, unexpired fields and ``assets``
        the ACTIVE assets; with ``include_history`` every version is in ``field_history``
        (newest ``collected_at`` first, ties by write order) and every asset in
        ``asset_history``.
        """
        tenant_id = check_uuid(tenant_id, "tenant_id")
        customer_id = check_uuid(customer_id, "customer_id")
        include_history = _bool(include_history, "include_history")
        found = await self._get_by_customer_id(tenant_id, customer_id, include_history)
        return None if found is None else present_profile(found, self.now())

    @final
    async def get_by_id(
        self, tenant_id: UUID, profile_id: UUID, *, include_history: bool = False
    ) -> CustomerProfile | None:
        """The live profile with this id, or None. As :meth:`get_by_customer_id`."""
        tenant_id = check_uuid(tenant_id, "tenant_id")
        profile_id = check_uuid(profile_id, "profile_id")
        include_history = _bool(include_history, "include_history")
        found = await self._get_by_id(tenant_id, profile_id, include_history)
        return None if found is None else present_profile(found, self.now())

    @final
    async def get_by_channel_identity(
        self,
        tenant_id: UUID,
        channel: Channel,
        channel_user_id: str,
        *,
        include_history: bool = False,
    ) -> CustomerProfile | None:
        """The live profile owning this channel identity, or None."""
        tenant_id = check_uuid(tenant_id, "tenant_id")
        channel = _channel(channel)
        channel_user_id = _channel_user_id(channel_user_id)
        include_history = _bool(include_history, "include_history")
        found = await self._get_by_channel_identity(
            tenant_id, channel, channel_user_id, include_history
        )
        return None if found is None else present_profile(found, self.now())

    @final
    async def get_or_create(
        self, tenant_id: UUID, channel: Channel, channel_user_id: str
    ) -> CustomerProfile:
        """The profile owning the identity, else a new one with it as primary identity.

        Concurrent calls for one identity yield exactly one profile.
        """
        tenant_id = check_uuid(tenant_id, "tenant_id")
        channel = _channel(channel)
        channel_user_id = _channel_user_id(channel_user_id)
        now = self.now()
        candidate = CustomerProfile(
            tenant_id=tenant_id,
            channel_identities=[
                ChannelIdentity(
                    channel=channel, channel_user_id=channel_user_id, primary=True, created_at=now
                )
            ],
            created_at=now,
            updated_at=now,
        )
        found = await self._get_or_create(tenant_id, candidate)
        return present_profile(found, self.now())

    @final
    async def save(self, profile: CustomerProfile) -> UUID:
        """Create or update the profile aggregate; return its id.

        The rule is :func:`ccvault.rules.save.plan_save`, the same for every provider:

        * Profile attributes, channel identities and consents are replaced by the given
          ones (an identity no longer listed is released; at most one may be primary).
        * Fields and assets are upserted by id. A field id not yet stored is a new ACTIVE
          version superseding the ACTIVE one of its name; an asset id not yet stored is a
          new ACTIVE asset (superseding nothing, as :meth:`add_asset` by default). A stored
          id is updated in place and keeps its name (a rename is a
          :class:`~ccvault.errors.ConflictError`). Nothing is ever deleted by save.
        * **Save never changes a stored status it did not read as current.** A stored
          item's ``status``, ``superseded_by_id`` and ``superseded_at`` are the store's:
          the caller's copy of them is ignored. An item stored ACTIVE is updated in place
          and stays ACTIVE; an item no longer ACTIVE (superseded, expired or orphaned
          since the caller read it) is left exactly as stored, content included, and the
          rest of the save goes ahead. A stale copy therefore neither revives an old
          version nor conflicts with the newer one.
        * A soft-deleted profile is not found (:class:`~ccvault.errors.NotFoundError`). An
          identity or customer id owned by another live profile raises
          :class:`~ccvault.errors.IdentityConflictError`; a field or asset id of another
          profile a :class:`~ccvault.errors.ConflictError`.

        Every refusal leaves the store exactly as it was: nothing of the save is written.
        """
        profile = _model(CustomerProfile, profile, "profile")
        seen: set[tuple[Channel, str]] = set()
        for identity in profile.channel_identities:
            key = (identity.channel, identity.channel_user_id)
            if key in seen:
                raise errors.ValidationError(f"a {identity.channel.value} identity is listed twice")
            seen.add(key)
        if sum(identity.primary for identity in profile.channel_identities) > 1:
            raise errors.ValidationError("at most one channel identity may be primary")
        for item in profile.fields.values():
            if item.status is not ItemStatus.ACTIVE:
                raise errors.ValidationError(
                    f"profile.fields[{item.name!r}] must be ACTIVE, is {item.status.value}"
                )
            check_value_size(item, self.rules.max_field_value_bytes, "profile field")
        profile.field_history = {}
        profile.asset_history = []
        return await self._save(profile)

    @final
    async def delete(self, tenant_id: UUID, profile_id: UUID) -> bool:
        """Soft-delete; True if a live profile was deleted. Its identities are released."""
        tenant_id = check_uuid(tenant_id, "tenant_id")
        profile_id = check_uuid(profile_id, "profile_id")
        return await self._delete(tenant_id, profile_id)

    # =====================================================================================
    # fields
    # =====================================================================================

    @final
    async def update_field(
        self,
        tenant_id: UUID,
        profile_id: UUID,
        field: ProfileField,
        *,
        supersede_existing: bool = True,
    ) -> UUID:
        """Store ``field`` as the new ACTIVE version of its name; return its id.

        With ``supersede_existing`` the previous ACTIVE version becomes SUPERSEDED, with
        ``superseded_by_id`` and ``superseded_at``, in the same atomic step. Without it, an
        unexpired ACTIVE version present raises
        :class:`~ccvault.errors.ActiveFieldConflictError` and nothing is written; otherwise,
        in the same atomic step as the insert, the profile's versions past ``expires_at``
        are marked EXPIRED (as :meth:`expire_stale_fields` would), so an expired value never
        blocks the write. Unknown or deleted profile: :class:`~ccvault.errors.NotFoundError`.
        """
        tenant_id = check_uuid(tenant_id, "tenant_id")
        profile_id = check_uuid(profile_id, "profile_id")
        supersede_existing = _bool(supersede_existing, "supersede_existing")
        field = _model(ProfileField, field, "field")
        check_value_size(field, self.rules.max_field_value_bytes)
        field.status = ItemStatus.ACTIVE
        field.superseded_by_id = None
        field.superseded_at = None
        field.updated_at = self.now()
        return await self._update_field(tenant_id, profile_id, field, supersede_existing)

    @final
    async def get_field(
        self,
        tenant_id: UUID,
        profile_id: UUID,
        field_name: str,
        *,
        status: ItemStatus | None = ItemStatus.ACTIVE,
    ) -> ProfileField | None:
        """The most recent version of ``field_name`` with ``status`` (None: any status).

        A version past ``expires_at`` counts as EXPIRED even before it is marked so:
        ``status=EXPIRED`` gives the most recently collected of the versions marked EXPIRED
        and an overdue ACTIVE version not yet swept.
        """
        tenant_id = check_uuid(tenant_id, "tenant_id")
        profile_id = check_uuid(profile_id, "profile_id")
        field_name = _field_name(field_name)
        status = _status(status)
        now = self.now()
        if status is ItemStatus.EXPIRED:
            # the newest expired version: the newest one marked EXPIRED, or an unswept ACTIVE
            # version past expires_at, whichever was collected last (a tie goes to the ACTIVE
            # one, the latest write of its name)
            swept = await self._get_field(tenant_id, profile_id, field_name, ItemStatus.EXPIRED)
            active = await self._get_field(tenant_id, profile_id, field_name, ItemStatus.ACTIVE)
            if active is not None and active.is_expired(now):
                if swept is None or swept.collected_at <= active.collected_at:
                    return present_field(active, now)
            return swept
        found = await self._get_field(tenant_id, profile_id, field_name, status)
        if found is None:
            return None
        found = present_field(found, now)
        if status is not None and found.status is not status:
            return None
        return found

    @final
    async def get_field_history(
        self, tenant_id: UUID, profile_id: UUID, field_name: str
    ) -> list[ProfileField]:
        """Every version of ``field_name``, newest ``collected_at`` first (ties: write order)."""
        tenant_id = check_uuid(tenant_id, "tenant_id")
        profile_id = check_uuid(profile_id, "profile_id")
        field_name = _field_name(field_name)
        now = self.now()
        versions = await self._get_field_history(tenant_id, profile_id, field_name)
        return [present_field(version, now) for version in versions]

    @final
    async def expire_stale_fields(
        self,
        tenant_id: UUID,
        profile_id: UUID | None = None,
        *,
        batch_size: int | None = None,
        progress: ProgressCallback | None = None,
        estimated_total: int | None = None,
        max_batches: int | None = None,
    ) -> int:
        """Mark every ACTIVE field past ``expires_at`` EXPIRED; return how many were marked.

        ``profile_id=None`` sweeps the whole tenant. A second call returns 0. The work is
        done in batches of at most ``batch_size`` rows (default
        :data:`~ccvault.batches.DEFAULT_BATCH_SIZE`), each its own transaction
        (:mod:`ccvault.batches`): however large the tenant, no statement grows with it, and
        a run cut short (crash, timeout) leaves every finished batch done; running it again
        continues. ``progress`` is called after every batch with a
        :class:`~ccvault.batches.BatchProgress` (``estimated_total``, when given, yields an
        ETA). Every field due at the call's instant is covered, unless ``max_batches``
        (None: no limit but the bound of :mod:`ccvault.batches`) stops the job earlier: then
        the rest stays due for the next call.
        """
        tenant_id = check_uuid(tenant_id, "tenant_id")
        profile_id = check_optional_uuid(profile_id, "profile_id")
        limit = _batch_size(batch_size)
        total = _estimated_total(estimated_total)
        now = self.now()

        async def batch(size: int) -> int:
            return await self._expire_stale_fields_batch(tenant_id, profile_id, now, size)

        return await run_batches(
            "expire",
            tenant_id,
            batch,
            batch_size=limit,
            progress=progress,
            estimated_total=total,
            max_batches=_max_batches(max_batches),
        )

    # =====================================================================================
    # assets
    # =====================================================================================

    @final
    async def add_asset(
        self,
        tenant_id: UUID,
        profile_id: UUID,
        asset: ProfileAsset,
        *,
        supersede_existing: bool = False,
    ) -> UUID:
        """Store ``asset`` ACTIVE; ``supersede_existing`` supersedes the ACTIVE one of its name."""
        tenant_id = check_uuid(tenant_id, "tenant_id")
        profile_id = check_uuid(profile_id, "profile_id")
        supersede_existing = _bool(supersede_existing, "supersede_existing")
        asset = _model(ProfileAsset, asset, "asset")
        asset.status = ItemStatus.ACTIVE
        asset.superseded_by_id = None
        asset.superseded_at = None
        return await self._add_asset(tenant_id, profile_id, asset, supersede_existing)

    @final
    async def get_asset(
        self, tenant_id: UUID, profile_id: UUID, asset_id: UUID
    ) -> ProfileAsset | None:
        """The asset with this id on this profile, whatever its status, or None."""
        tenant_id = check_uuid(tenant_id, "tenant_id")
        profile_id = check_uuid(profile_id, "profile_id")
        asset_id = check_uuid(asset_id, "asset_id")
        return await self._get_asset(tenant_id, profile_id, asset_id)

    @final
    async def get_asset_by_name(
        self,
        tenant_id: UUID,
        profile_id: UUID,
        asset_name: str,
        *,
        status: ItemStatus | None = ItemStatus.ACTIVE,
    ) -> ProfileAsset | None:
        """The most recent asset named ``asset_name`` with ``status`` (None: any status)."""
        tenant_id = check_uuid(tenant_id, "tenant_id")
        profile_id = check_uuid(profile_id, "profile_id")
        asset_name = _asset_name(asset_name)
        status = _status(status)
        return await self._get_asset_by_name(tenant_id, profile_id, asset_name, status)

    # =====================================================================================
    # lineage
    # =====================================================================================

    @final
    async def get_derivation_chain(
        self, tenant_id: UUID, item_id: UUID, item_type: str
    ) -> list[dict[str, Any]]:
        """The chain of items ``item_id`` derives from: root first, the item itself last.

        Each entry is ``{"id", "type", "name", "source_metadata"}``. The walk follows
        ``source_item_id`` through fields and assets and stops at a session, tool or external
        source, at a missing item, or before an item already seen (a cycle). At most
        ``max_derivation_chain_depth`` entries are returned: the item and its nearest
        ancestors. An unknown item gives ``[]``.
        """
        from ccvault import metrics

        tenant_id = check_uuid(tenant_id, "tenant_id")
        item_id = check_uuid(item_id, "item_id")
        kind = _item_type(item_type)
        depth = max(1, self.rules.max_derivation_chain_depth)
        chain = (await self._get_derivation_chain(tenant_id, item_id, kind, depth))[-depth:]
        if chain:
            # only the outermost store runs this method: one observation per traversal
            metrics.DERIVATION_CHAIN_DEPTH.labels(tenant_id=str(tenant_id)).observe(len(chain))
        return [
            {
                "id": entry.id,
                "type": entry.type.value,
                "name": entry.name,
                "source_metadata": entry.source_metadata,
            }
            for entry in chain
        ]

    @final
    async def get_derived_items(
        self, tenant_id: UUID, source_item_id: UUID
    ) -> dict[str, list[Any]]:
        """``{"fields": [...], "assets": [...]}``: every item (any status) derived directly
        from ``source_item_id``, oldest first."""
        tenant_id = check_uuid(tenant_id, "tenant_id")
        source_item_id = check_uuid(source_item_id, "source_item_id")
        now = self.now()
        fields, assets = await self._get_derived_items(tenant_id, source_item_id)
        return {"fields": [present_field(f, now) for f in fields], "assets": list(assets)}

    @final
    async def check_has_dependents(self, tenant_id: UUID, item_id: UUID) -> bool:
        """True while any ACTIVE field or asset derives directly from ``item_id``."""
        tenant_id = check_uuid(tenant_id, "tenant_id")
        item_id = check_uuid(item_id, "item_id")
        return await self._check_has_dependents(tenant_id, item_id)

    # =====================================================================================
    # channels and merge
    # =====================================================================================

    @final
    async def link_channel(
        self,
        tenant_id: UUID,
        profile_id: UUID,
        identity: ChannelIdentity,
        *,
        max_per_channel: int | None = None,
    ) -> bool:
        """Link ``identity`` to the profile: True when newly linked, False when already there.

        A linked identity is always secondary (``primary=False``), so a profile never ends
        up with two primaries; to change which identity is primary, :meth:`save` the
        profile. Owned by another live profile:
        :class:`~ccvault.errors.IdentityConflictError`. Unknown or deleted profile:
        :class:`~ccvault.errors.NotFoundError`.

        ``max_per_channel`` (None: no limit; else 1..100): when the new identity would be
        one too many on its channel, the oldest (``created_at``, ties by channel user id)
        that is neither primary nor verified is evicted and released in the same atomic
        step; none evictable: :class:`~ccvault.errors.ConflictError`, nothing written
        (:func:`ccvault.rules.identity.channel_eviction`).
        """
        tenant_id = check_uuid(tenant_id, "tenant_id")
        profile_id = check_uuid(profile_id, "profile_id")
        identity = _model(ChannelIdentity, identity, "identity")
        max_per_channel = check_max_per_channel(max_per_channel)
        identity.primary = False
        if max_per_channel is None:
            # no limit: the hook is called as before the limit existed
            return await self._link_channel(tenant_id, profile_id, identity)
        return await self._link_channel(
            tenant_id, profile_id, identity, max_per_channel=max_per_channel
        )

    @final
    async def merge_profiles(
        self,
        tenant_id: UUID,
        source_profile_id: UUID,
        target_profile_id: UUID,
        *,
        reason: str | None = None,
        actor: str | None = None,
        merge_id: UUID | None = None,
    ) -> bool:
        """Merge the source profile into the target in one atomic step; return True.

        Identities, fields (every version), assets and consents move to the target with
        their ids unchanged, so lineage stays intact. Where both hold an ACTIVE field of one
        name, the name's survivorship policy decides (its definition's ``survivorship``,
        chosen as :func:`ccvault.rules.merge.policies_from_definitions` says; by default
        :func:`merge_winner`: an unexpired version beats an expired one, then the verified
        one wins, then the most recently collected) and the loser becomes SUPERSEDED by the
        winner. The merge is recorded in the merge log in the same atomic step
        (:class:`~ccvault.models.MergeRecord`, id ``merge_id`` or a new one, with ``reason``
        and ``actor``; see :meth:`get_merge_log` and :meth:`unmerge`). At most one identity
        is primary afterwards: the target's primary stays primary; if the target has none,
        the source's primary becomes the merged profile's primary; every other identity is
        secondary, so the merged profile can be saved back as it is read. The rule is
        :func:`ccvault.rules.merge.plan_merge`. The source is soft-deleted. Unknown or
        deleted profile: NotFoundError.
        """
        tenant_id = check_uuid(tenant_id, "tenant_id")
        source_profile_id = check_uuid(source_profile_id, "source_profile_id")
        target_profile_id = check_uuid(target_profile_id, "target_profile_id")
        if source_profile_id == target_profile_id:
            raise errors.ValidationError("cannot merge a profile into itself")
        merge_id = uuid4() if merge_id is None else check_uuid(merge_id, "merge_id")
        reason = _optional_text(reason, "reason", 500)
        actor = _optional_text(actor, "actor", 255)
        # the policies are read before the merge: a definition saved concurrently may or may
        # not apply to it (the log entry records the policy each decision used)
        policies = policies_from_definitions(await self._get_tenant_field_definitions(tenant_id))
        now = self.now()
        choose = (
            survivorship_chooser(policies, now)
            if policies
            else functools.partial(merge_winner, now=now)
        )
        await self._merge_profiles(
            tenant_id,
            source_profile_id,
            target_profile_id,
            choose,
            MergeLogRequest(merge_id=merge_id, reason=reason, actor=actor, policies=policies),
        )
        return True

    @final
    async def get_merge_log(self, tenant_id: UUID, profile_id: UUID) -> list[MergeRecord]:
        """The merge log entries whose source or target is the profile, oldest first.

        Undone merges stay listed, with ``unmerged_at`` set. Unknown profile: an empty list.
        """
        tenant_id = check_uuid(tenant_id, "tenant_id")
        profile_id = check_uuid(profile_id, "profile_id")
        found = await self._get_merge_log(tenant_id, profile_id)
        return sorted(found, key=lambda r: (r.merged_at, r.id.int))

    @final
    async def unmerge(self, tenant_id: UUID, merge_id: UUID) -> UnmergeResult:
        """Undo one merge in one atomic step: both profiles as they would be without it.

        The rule is :func:`ccvault.rules.unmerge.plan_unmerge` (its module docstring is the
        reference): everything the merge moved goes back to the source, which is live
        again; versions the merge superseded are ACTIVE again where nothing newer replaced
        them; everything written to the target after the merge stays on the target; what
        changed since the merge is reported in :attr:`UnmergeResult.conflicts`, not guessed.
        Unknown merge id: NotFoundError. Already undone, a chained merge to undo first (named
        in the message), a target no longer live: ConflictError, nothing written.
        """
        tenant_id = check_uuid(tenant_id, "tenant_id")
        merge_id = check_uuid(merge_id, "merge_id")
        return await self._unmerge(tenant_id, merge_id)

    # =====================================================================================
    # schema: field definitions
    # =====================================================================================

    @final
    async def get_field_definitions(
        self, tenant_id: UUID, agent_id: UUID, *, enabled_only: bool = True
    ) -> list[ProfileFieldDefinition]:
        """The agent's field definitions ordered by name; only enabled ones by default."""
        tenant_id = check_uuid(tenant_id, "tenant_id")
        agent_id = check_uuid(agent_id, "agent_id")
        enabled_only = _bool(enabled_only, "enabled_only")
        found = await self._get_field_definitions(tenant_id, agent_id, enabled_only)
        return sorted(found, key=lambda definition: definition.name)

    @final
    async def get_field_definition(
        self, tenant_id: UUID, agent_id: UUID, field_name: str
    ) -> ProfileFieldDefinition | None:
        """The agent's definition of ``field_name`` (enabled or not), or None."""
        tenant_id = check_uuid(tenant_id, "tenant_id")
        agent_id = check_uuid(agent_id, "agent_id")
        field_name = _field_name(field_name)
        return await self._get_field_definition(tenant_id, agent_id, field_name)

    @final
    async def save_field_definition(self, definition: ProfileFieldDefinition) -> UUID:
        """Create or update (by tenant, agent, name) a definition; return its id.

        Updating keeps the stored id and ``created_at``. A definition's id is bound to its
        agent and name: saving a stored id under another agent or another name is a
        :class:`~ccvault.errors.ConflictError` and nothing is written (a definition never
        moves between agents; see :mod:`ccvault.rules.definitions`). A
        ``validation_regex`` the safe engine cannot compile is refused with
        :class:`~ccvault.errors.ValidationError`.
        """
        definition = _model(ProfileFieldDefinition, definition, "definition")
        check_definition(definition)
        definition.updated_at = self.now()
        return await self._save_field_definition(definition)

    @final
    async def delete_field_definition(
        self, tenant_id: UUID, agent_id: UUID, field_name: str
    ) -> bool:
        """Delete the agent's definition of ``field_name``; True if one was deleted."""
        tenant_id = check_uuid(tenant_id, "tenant_id")
        agent_id = check_uuid(agent_id, "agent_id")
        field_name = _field_name(field_name)
        return await self._delete_field_definition(tenant_id, agent_id, field_name)

    # =====================================================================================
    # scenario requirements
    # =====================================================================================

    @final
    async def get_scenario_requirements(
        self, tenant_id: UUID, scenario_id: UUID, *, step_id: UUID | None = None
    ) -> list[ScenarioFieldRequirement]:
        """``step_id=None``: the scenario-wide requirements only; else that step's only.

        Ordered by ``collection_order``, then field name.
        """
        tenant_id = check_uuid(tenant_id, "tenant_id")
        scenario_id = check_uuid(scenario_id, "scenario_id")
        step_id = check_optional_uuid(step_id, "step_id")
        found = await self._get_scenario_requirements(tenant_id, scenario_id, step_id)
        return sorted(found, key=lambda req: (req.collection_order, req.field_name))

    @final
    async def save_scenario_requirement(self, requirement: ScenarioFieldRequirement) -> UUID:
        """Create or update by (tenant, scenario, step, rule, field name); return its id.

        Updating keeps the stored id. A requirement's id is bound to its agent, scenario,
        step, rule and field name, and a stored requirement belongs to its agent: saving a
        stored id under another agent, scenario or key, or an existing key under another
        agent, is a :class:`~ccvault.errors.ConflictError` and nothing is written (see
        :mod:`ccvault.rules.definitions`). A ``when_condition`` that does not parse is refused.
        """
        from ccvault.requirements import check_requirement

        requirement = _model(ScenarioFieldRequirement, requirement, "requirement")
        check_requirement(requirement)
        requirement.updated_at = self.now()
        return await self._save_scenario_requirement(requirement)

    @final
    async def delete_scenario_requirements(
        self, tenant_id: UUID, scenario_id: UUID, *, step_id: UUID | None = None
    ) -> int:
        """``step_id=None``: delete all the scenario's requirements; else that step's only."""
        tenant_id = check_uuid(tenant_id, "tenant_id")
        scenario_id = check_uuid(scenario_id, "scenario_id")
        step_id = check_optional_uuid(step_id, "step_id")
        return await self._delete_scenario_requirements(tenant_id, scenario_id, step_id)

    @final
    async def get_missing_fields(
        self,
        tenant_id: UUID,
        profile: CustomerProfile,
        scenario_id: UUID,
        *,
        step_id: UUID | None = None,
        required_level: str | None = "hard",
    ) -> list[ScenarioFieldRequirement]:
        """The requirements of the scenario (or step) that ``profile`` does not meet.

        Evaluated once, in :mod:`ccvault.requirements`, for every provider. Each
        requirement is judged by the definition of its own agent (``requirement.agent_id``),
        enabled definitions only. ``required_level=None`` means every level.
        """
        tenant_id = check_uuid(tenant_id, "tenant_id")
        # only the ACTIVE fields are read: checked below, neither copied nor validated whole
        # (a profile handed in with its history costs no more than one without)
        profile = check_read_profile(profile, "profile")
        scenario_id = check_uuid(scenario_id, "scenario_id")
        step_id = check_optional_uuid(step_id, "step_id")
        level = _required_level(required_level)
        if profile.__dict__["tenant_id"] != tenant_id:
            return []
        now = self.now()
        records, build = await self._get_requirement_records(tenant_id, scenario_id, step_id)
        # no await from here on: the caller's fields are checked and read in one step; the
        # unexpired ones and their values gathered in one pass
        live = check_read_fields(profile, "profile")
        # as check_read_fields read them: each version's own attributes (in C, a pass each)
        attributes = list(map(_VARS, live.values()))
        values: dict[str, Any] = dict(zip(live, map(_VALUE_OF, attributes), strict=True))
        expiries = list(map(_EXPIRES_AT_OF, attributes))
        if expiries.count(None) != len(expiries):
            # some version expires: only the unexpired ones are read
            for name, expires in zip(list(live), expiries, strict=True):
                if expires is not None and expires <= now:  # ProfileField.is_expired(now)
                    del live[name], values[name]
        profile_id = profile.__dict__.get("id")
        # each requirement judged by its record's check (its own agent's enabled definition
        # of its field), in the records' order; a model is built for the missing ones only
        sources = find_missing_records(
            live,
            values,
            records,
            tenant_id=tenant_id,
            profile_id=profile_id if isinstance(profile_id, UUID) else None,
            rules=self.rules,
            required_level=level,
            now=now,
        )
        if not sources:
            return []
        missing = build(sources)
        if len(missing) != len(sources):
            raise errors.StorageError(
                f"the store's requirement builder made {len(missing)} requirement(s) of "
                f"{len(sources)} missing"
            )
        # the requirements' order (collection_order, field_name); a stable sort of the
        # missing ones keeps ties as sorting all of them first would
        if len(missing) > 1:
            missing.sort(key=_COLLECTION_ORDER)
        return missing

    # =====================================================================================
    # beyond the seed: erasure, portability, hard delete, orphans, operations
    # =====================================================================================

    @final
    async def purge_profile(self, tenant_id: UUID, profile_id: UUID) -> bool:
        """Hard-delete the profile (live or soft-deleted) and everything it owns.

        Afterwards no read, history or lineage query returns any of it, and the merge log
        holds no entry naming it (as source or target). True if it existed.
        """
        tenant_id = check_uuid(tenant_id, "tenant_id")
        profile_id = check_uuid(profile_id, "profile_id")
        return await self._purge_profile(tenant_id, profile_id)

    @final
    async def export_profile(self, tenant_id: UUID, profile_id: UUID) -> dict[str, Any]:
        """Everything held about the customer, history included, as one JSON-ready dict.

        Soft-deleted profiles are exported too (they are still held). Unknown: NotFoundError.
        """
        tenant_id = check_uuid(tenant_id, "tenant_id")
        profile_id = check_uuid(profile_id, "profile_id")
        found = await self._export_profile(tenant_id, profile_id)
        if found is None:
            raise errors.NotFoundError(f"profile {profile_id} not found")
        merges = sorted(
            await self._get_merge_log(tenant_id, profile_id), key=lambda r: (r.merged_at, r.id.int)
        )
        now = self.now()
        return {
            "format": "ccvault.export/1",
            "exported_at": now.isoformat(),
            "profile": present_profile(found, now).model_dump(mode="json"),
            # the merge log entries touching the profile (source or target), oldest first
            "merge_log": [record.model_dump(mode="json") for record in merges],
        }

    @final
    async def find_subject(
        self,
        tenant_id: UUID,
        *,
        channel: Channel | None = None,
        channel_user_id: str | None = None,
        customer_id: UUID | None = None,
        profile_id: UUID | None = None,
    ) -> ErasureReport:
        """What :meth:`erase_subject` would erase for this data subject; erases nothing.

        The same report as ``erase_subject(..., dry_run=True)``. The subject is named by
        exactly one of ``channel`` + ``channel_user_id``, ``customer_id``, ``profile_id``;
        who it reaches is the rule of :mod:`ccvault.rules.erasure`. Nobody:
        :class:`~ccvault.errors.NotFoundError`.
        """
        tenant_id = check_uuid(tenant_id, "tenant_id")
        key = _subject_key(channel, channel_user_id, customer_id, profile_id)
        return await _erase_subject(self, tenant_id, key, dry_run=True)

    @final
    async def erase_subject(
        self,
        tenant_id: UUID,
        *,
        channel: Channel | None = None,
        channel_user_id: str | None = None,
        customer_id: UUID | None = None,
        profile_id: UUID | None = None,
        dry_run: bool = False,
    ) -> ErasureReport:
        """Erase everything held about one data subject (right to erasure); the report.

        The subject (exactly one of ``channel`` + ``channel_user_id``, ``customer_id``,
        ``profile_id``) reaches every profile that identity or customer id ever belonged
        to: live, soft-deleted (released identities too), merged away, and the targets of
        its merges, whole (:mod:`ccvault.rules.erasure` states the rule and why). All of
        them are hard-deleted in one atomic step with their field versions, assets,
        identities, consents and the merge log entries naming them; the cache drops every
        entry of them. The plan is checked in that step: if a merge touching them happened
        since it was read, nothing is written and the subject is read again (at most three
        times, then :class:`~ccvault.errors.ConflictError`).

        ``dry_run``: the same report, nothing erased. The report holds ids and counts,
        never personal data. Nobody found: :class:`~ccvault.errors.NotFoundError`.
        """
        tenant_id = check_uuid(tenant_id, "tenant_id")
        key = _subject_key(channel, channel_user_id, customer_id, profile_id)
        dry_run = _bool(dry_run, "dry_run")
        return await _erase_subject(self, tenant_id, key, dry_run=dry_run)

    @final
    async def export_subject(
        self,
        tenant_id: UUID,
        *,
        channel: Channel | None = None,
        channel_user_id: str | None = None,
        customer_id: UUID | None = None,
        profile_id: UUID | None = None,
    ) -> dict[str, Any]:
        """Everything held about one data subject, as one JSON-ready dict (portability).

        Covers exactly the profiles :meth:`erase_subject` would erase (live, soft-deleted,
        merged away, merge targets), each with its full history, and the merge log entries
        touching them. Nobody found: :class:`~ccvault.errors.NotFoundError`.
        """
        tenant_id = check_uuid(tenant_id, "tenant_id")
        key = _subject_key(channel, channel_user_id, customer_id, profile_id)
        plan, exported, merges = await _resolve_subject(self, tenant_id, key)
        if not plan.profiles:
            raise errors.NotFoundError(f"no profile of this subject in tenant {tenant_id}")
        now = self.now()
        return {
            "format": "ccvault.subject-export/1",
            "exported_at": now.isoformat(),
            "profiles": [
                {
                    "kind": planned.kind.value,
                    "profile": present_profile(exported[planned.profile_id], now).model_dump(
                        mode="json"
                    ),
                }
                for planned in plan.profiles
            ],
            "merge_log": [record.model_dump(mode="json") for record in merges],
        }

    @final
    async def delete_item(self, tenant_id: UUID, item_id: UUID, item_type: str) -> bool:
        """Hard-delete one field version or asset; True if it existed.

        Refused with :class:`~ccvault.errors.DependentsError` while an ACTIVE item derives
        from it.
        """
        tenant_id = check_uuid(tenant_id, "tenant_id")
        item_id = check_uuid(item_id, "item_id")
        kind = _item_type(item_type)
        return await self._delete_item(tenant_id, item_id, kind)

    @final
    async def mark_orphans(
        self,
        tenant_id: UUID,
        *,
        batch_size: int | None = None,
        progress: ProgressCallback | None = None,
        estimated_total: int | None = None,
        max_batches: int | None = None,
        start_after: str | None = None,
    ) -> int:
        """Mark ORPHANED every non-orphaned item whose field/asset source no longer exists;
        return how many were marked. In batches, each its own transaction, with
        ``progress`` after every batch: each batch *examines* at most ``batch_size`` derived
        items in a stable order, starting after where the previous one stopped (keyset
        pagination, see :meth:`_mark_orphans_page`), so the work is linear in the tenant's
        size. Resumable: rerun from the beginning, or pass the last reported
        :attr:`~ccvault.batches.BatchProgress.resume_after` as ``start_after``."""
        tenant_id = check_uuid(tenant_id, "tenant_id")
        limit = _batch_size(batch_size)
        total = _estimated_total(estimated_total)
        batches = _max_batches(max_batches)
        if start_after is not None and (
            not isinstance(start_after, str) or not 0 < len(start_after) <= MAX_CURSOR_LENGTH
        ):
            raise errors.ValidationError(
                f"start_after must be None or a resume position of 1 to {MAX_CURSOR_LENGTH} "
                "characters"
            )
        now = self.now()

        async def batch(size: int, after: str | None) -> KeysetBatch:
            return await self._mark_orphans_page(tenant_id, now, size, after)

        return await run_keyset_batches(
            "mark_orphans",
            tenant_id,
            batch,
            batch_size=limit,
            start_after=start_after,
            progress=progress,
            estimated_total=total,
            max_batches=batches,
        )

    @final
    async def list_tenant_ids(self) -> list[UUID]:
        """Every tenant that has at least one profile, sorted."""
        return sorted(await self._list_tenant_ids())

    @final
    async def count_items_by_status(self, tenant_id: UUID) -> dict[str, dict[str, int]]:
        """``{"fields": {status: n}, "assets": {status: n}}`` with every status present."""
        tenant_id = check_uuid(tenant_id, "tenant_id")
        counted = await self._count_items_by_status(tenant_id)
        return {
            kind: {
                status.value: int(counted.get(kind, {}).get(status.value, 0))
                for status in ItemStatus
            }
            for kind in ("fields", "assets")
        }

    @final
    async def estimate_items_by_status(self, tenant_id: UUID) -> dict[str, dict[str, int]]:
        """As :meth:`count_items_by_status`, but allowed to be an *estimate* whose cost does
        not grow with the tenant: for gauges refreshed every few seconds (the worker's
        ``profile_fields_by_status``), never for decisions. Exact on a provider that counts
        cheaply; the PostgreSQL provider samples a bounded number of pages of a large table
        (exact on a small one)."""
        tenant_id = check_uuid(tenant_id, "tenant_id")
        counted = await self._estimate_items_by_status(tenant_id)
        return {
            kind: {
                status.value: max(int(counted.get(kind, {}).get(status.value, 0)), 0)
                for status in ItemStatus
            }
            for kind in ("fields", "assets")
        }

    @final
    async def list_profile_ids(self, tenant_id: UUID) -> list[UUID]:
        """Every profile of the tenant, live or soft-deleted, sorted. For operator sweeps
        (key rotation, exports); not meant for request paths."""
        tenant_id = check_uuid(tenant_id, "tenant_id")
        return sorted(await self._list_profile_ids(tenant_id))

    @final
    async def rewrite_field_payloads(
        self,
        tenant_id: UUID,
        profile_id: UUID,
        payloads: dict[UUID, tuple[Any, dict[str, Any]]],
    ) -> int:
        """Overwrite in place ``value`` and ``source_metadata`` of existing field versions
        (any status) of the profile, ``{field_id: (value, source_metadata)}``, atomically,
        and nothing else (no status, timestamp or id changes). Returns how many versions
        were found and rewritten; ids not on the profile are ignored. Used to re-encrypt
        PII under a new key (``ccvault rotate-keys``)."""
        tenant_id = check_uuid(tenant_id, "tenant_id")
        profile_id = check_uuid(profile_id, "profile_id")
        if not isinstance(payloads, dict):
            raise errors.ValidationError("payloads must be a dict {field_id: (value, metadata)}")
        checked: dict[UUID, tuple[Any, dict[str, Any]]] = {}
        for field_id, payload in payloads.items():
            if not (isinstance(payload, tuple) and len(payload) == 2):
                raise errors.ValidationError("each payload must be (value, source_metadata)")
            value, metadata = payload
            if not isinstance(metadata, dict):
                raise errors.ValidationError("source_metadata must be a dict")
            field_id = check_uuid(field_id, "field_id")
            check_json_payload(value, f"payload of field {field_id}")
            check_json_payload(metadata, f"payload of field {field_id}")
            checked[field_id] = (value, metadata)
        if not checked:
            return 0
        return await self._rewrite_field_payloads(tenant_id, profile_id, checked)

    # =====================================================================================
    # provenance: explain, as-of reads, revert (rules in ccvault.provenance)
    # =====================================================================================

    @final
    async def explain_field(
        self, tenant_id: UUID, profile_id: UUID, field_name: str
    ) -> provenance.FieldExplanation:
        """Why the vault serves the value of ``field_name``, from one call.

        The served (ACTIVE, unexpired) version with its source, extractor
        (``source_metadata``), confidence and verification; every other version of the name,
        newest first, each with why it is not served (``update``, ``revert``, ``merge`` per
        the merge log, ``expiry``, ``orphaned``), what replaced it and when; the served
        version's derivation chain (root first, as :meth:`get_derivation_chain`) and the
        fields and assets derived directly from it. When the served version restores an
        earlier one (:meth:`revert_field`), ``restores_version_id`` names it. Nothing
        served: ``active`` is None. Unknown or deleted profile, or a name with no version:
        NotFoundError. See :mod:`ccvault.provenance`.
        """
        tenant_id = check_uuid(tenant_id, "tenant_id")
        profile_id = check_uuid(profile_id, "profile_id")
        field_name = _field_name(field_name)
        if await self._get_by_id(tenant_id, profile_id, False) is None:
            raise errors.NotFoundError(f"profile {profile_id} not found")
        now = self.now()
        versions = [
            present_field(v, now)
            for v in await self._get_field_history(tenant_id, profile_id, field_name)
        ]
        if not versions:
            raise errors.NotFoundError(f"field {field_name!r} has no version on this profile")
        records = await _merge_log_if_kept(self, tenant_id, profile_id)
        _, losers = provenance.moves_from_log(records)
        active = next(
            (v for v in versions if v.status is ItemStatus.ACTIVE and not v.is_expired(now)),
            None,
        )
        chain: list[LineageEntry] = []
        fields: list[ProfileField] = []
        assets: list[ProfileAsset] = []
        if active is not None:
            depth = max(1, self.rules.max_derivation_chain_depth)
            chain = (
                await self._get_derivation_chain(
                    tenant_id, active.id, ItemType.PROFILE_FIELD, depth
                )
            )[-depth:]
            derived_fields, assets = await self._get_derived_items(tenant_id, active.id)
            fields = [present_field(f, now) for f in derived_fields]
        return provenance.explain(
            profile_id,
            field_name,
            versions,
            now,
            chain=chain,
            dependent_fields=fields,
            dependent_assets=assets,
            merge_superseded=losers,
        )

    @final
    async def get_field_as_of(
        self, tenant_id: UUID, profile_id: UUID, field_name: str, at: datetime
    ) -> ProfileField | None:
        """The version of ``field_name`` the vault would have served at ``at``, or None.

        Transaction time, from the stored history: the version written last before ``at``
        and neither superseded, orphaned nor past its ``expires_at`` at ``at``, as it was
        served then (ACTIVE, no supersede link, ``updated_at`` = its write). Across merges,
        a version belongs at ``at`` to the profile the merge log placed it on (items moved
        by a merge belonged to the source before it). The rules, and what the stored history
        cannot tell, are in :mod:`ccvault.provenance`. Unknown profile: NotFoundError; a
        soft-deleted one is answered from its stored history.
        """
        tenant_id = check_uuid(tenant_id, "tenant_id")
        profile_id = check_uuid(profile_id, "profile_id")
        field_name = _field_name(field_name)
        at = _instant(at, "at")
        _, served = await _versions_as_of(self, tenant_id, profile_id, at)
        return served.get(field_name)

    @final
    async def get_profile_as_of(
        self, tenant_id: UUID, profile_id: UUID, at: datetime
    ) -> provenance.ProfileAsOf:
        """Every field the vault would have served of the profile at ``at``.

        As :meth:`get_field_as_of`, for every name at once. Unknown profile: NotFoundError.
        """
        tenant_id = check_uuid(tenant_id, "tenant_id")
        profile_id = check_uuid(profile_id, "profile_id")
        at = _instant(at, "at")
        found, served = await _versions_as_of(self, tenant_id, profile_id, at)
        return provenance.ProfileAsOf(
            profile_id=found.id,
            tenant_id=found.tenant_id,
            customer_id=found.customer_id,
            at=at,
            fields=served,
        )

    @final
    async def revert_field(
        self, tenant_id: UUID, profile_id: UUID, field_name: str, version_id: UUID
    ) -> UUID:
        """Make the value of an earlier version the served one again; return the new id.

        Writes a NEW version (as :meth:`update_field`, superseding the ACTIVE one) built by
        :func:`ccvault.provenance.plan_revert`: the restored version's value, source,
        extractor metadata, confidence and verification, collected now, with lineage
        ``source_item_id`` = ``version_id``, ``source_item_type`` = ``profile_field``. History
        is never rewritten: the restored version keeps its status. Reverting to the version
        served now writes nothing and returns its id. ``version_id`` not a version of this
        name on this profile: NotFoundError (a version of another name of the profile:
        ValidationError); unknown or deleted profile: NotFoundError.

        The write supersedes whatever is ACTIVE when it happens (a concurrent write of the
        name may land just before it). The restored value is not validated again against
        today's field definitions (it was stored once; a caller that wants that check
        validates ``get_field_history``'s copy first, as ``SchemaValidationService`` does
        for new values).
        """
        tenant_id = check_uuid(tenant_id, "tenant_id")
        profile_id = check_uuid(profile_id, "profile_id")
        field_name = _field_name(field_name)
        version_id = check_uuid(version_id, "version_id")
        if await self._get_by_id(tenant_id, profile_id, False) is None:
            raise errors.NotFoundError(f"profile {profile_id} not found")
        now = self.now()
        versions = await self._get_field_history(tenant_id, profile_id, field_name)
        restored = next((v for v in versions if v.id == version_id), None)
        if restored is None:
            exported = await self._export_profile(tenant_id, profile_id)
            others = [] if exported is None else exported.field_history.values()
            if any(v.id == version_id for named in others for v in named):
                raise errors.ValidationError(
                    f"version {version_id} is not a version of field {field_name!r}"
                )
            raise errors.NotFoundError(
                f"version {version_id} of field {field_name!r} not found on profile {profile_id}"
            )
        if restored.status is ItemStatus.ACTIVE and not restored.is_expired(now):
            return restored.id
        return await self.update_field(tenant_id, profile_id, provenance.plan_revert(restored, now))

    # =====================================================================================
    # provider hooks: arguments arrive checked; implementations only store and fetch
    # =====================================================================================

    @abstractmethod
    async def _get_by_customer_id(
        self, tenant_id: UUID, customer_id: UUID, include_history: bool
    ) -> CustomerProfile | None:
        """The live profile, fields = ACTIVE versions (expired or not), assets = ACTIVE.

        With ``include_history`` also ``field_history`` (every version, newest
        ``collected_at`` first, ties newest write first) and ``asset_history``.
        """

    @abstractmethod
    async def _get_by_id(
        self, tenant_id: UUID, profile_id: UUID, include_history: bool
    ) -> CustomerProfile | None:
        """As :meth:`_get_by_customer_id`, by profile id."""

    @abstractmethod
    async def _get_by_channel_identity(
        self, tenant_id: UUID, channel: Channel, channel_user_id: str, include_history: bool
    ) -> CustomerProfile | None:
        """As :meth:`_get_by_customer_id`, by an identity the live profile owns."""

    @abstractmethod
    async def _get_or_create(self, tenant_id: UUID, candidate: CustomerProfile) -> CustomerProfile:
        """The live owner of ``candidate.channel_identities[0]``, else ``candidate`` stored.

        ``candidate`` is a new profile of ``tenant_id`` built by :meth:`get_or_create`: its
        only identity is primary and it has no fields, assets or consents. Store it as is
        (ids and timestamps included) and return it only if no live profile owns that
        identity. Race-free: concurrent calls for one identity yield exactly one profile,
        whichever candidate wins (a retry after a lost race may reuse the same candidate).
        """

    @abstractmethod
    async def _save(self, profile: CustomerProfile) -> UUID:
        """Upsert the aggregate atomically, as :meth:`save` describes.

        Read :class:`~ccvault.rules.save.SaveState` inside the write transaction (the
        profile row, the live owners of its customer id and listed identities, the stored
        field/asset ids it lists), call :func:`~ccvault.rules.save.plan_save` (which raises
        every refusal before anything is written) and apply the plan in the same
        transaction. An in-place update writes only to an item still ACTIVE. A backend
        that cannot undo a failure after its first write raises
        :class:`~ccvault.errors.PartialWriteError`, never a ConflictError."""

    @abstractmethod
    async def _delete(self, tenant_id: UUID, profile_id: UUID) -> bool:
        """Soft-delete a live profile and release its identities; False if none was live."""

    @abstractmethod
    async def _update_field(
        self, tenant_id: UUID, profile_id: UUID, field: ProfileField, supersede_existing: bool
    ) -> UUID:
        """Insert ``field`` (already ACTIVE) atomically, as :meth:`update_field` describes.

        Must keep one ACTIVE version per name under any concurrency; retries of
        serialization or unique-index failures happen inside. A field id already stored:
        :class:`~ccvault.errors.ConflictError`. Without ``supersede_existing``: an ACTIVE
        version of the name with ``expires_at`` after ``field.updated_at`` (or none) raises
        :class:`~ccvault.errors.ActiveFieldConflictError` with nothing written; else the
        profile's ACTIVE versions with ``expires_at <= field.updated_at`` become EXPIRED
        (``updated_at`` = ``field.updated_at``) in the same atomic step as the insert.
        """

    @abstractmethod
    async def _get_field(
        self, tenant_id: UUID, profile_id: UUID, field_name: str, status: ItemStatus | None
    ) -> ProfileField | None:
        """The most recent version (collected_at, then write order) with the stored status."""

    @abstractmethod
    async def _get_field_history(
        self, tenant_id: UUID, profile_id: UUID, field_name: str
    ) -> list[ProfileField]:
        """Every version, newest ``collected_at`` first, ties newest write first."""

    async def _expire_stale_fields_batch(
        self, tenant_id: UUID, profile_id: UUID | None, now: datetime, limit: int
    ) -> int:
        """One batch of :meth:`expire_stale_fields`, atomic: set EXPIRED (and ``updated_at =
        now``) on at most ``limit`` ACTIVE fields with ``expires_at <= now`` (of
        ``profile_id`` only, unless None); return how many. Fewer than ``limit`` means none
        was left due, apart from rows another transaction holds (a provider may skip rows
        locked by a concurrent writer: that writer settles them). Core calls it until a
        batch returns less than ``limit``; nothing may span two calls.

        The default, for providers written before batching, does the whole sweep in one
        step with :meth:`_expire_stale_fields` (and returns its count, which ends the loop
        at the latest on the next call); a provider implements one or the other.
        """
        if type(self)._expire_stale_fields is ProfileStore._expire_stale_fields:
            raise NotImplementedError(
                f"{type(self).__qualname__} implements neither _expire_stale_fields_batch "
                "nor _expire_stale_fields"
            )
        return await self._expire_stale_fields(tenant_id, profile_id, now)

    async def _expire_stale_fields(
        self, tenant_id: UUID, profile_id: UUID | None, now: datetime
    ) -> int:
        """Set EXPIRED on every ACTIVE field with ``expires_at <= now``; return the count.

        The single-step form of :meth:`_expire_stale_fields_batch`, kept for providers
        written before batching (core no longer calls it). The default runs the batch hook
        until nothing is due, in batches of :data:`~ccvault.batches.DEFAULT_BATCH_SIZE`.
        """
        if type(self)._expire_stale_fields_batch is ProfileStore._expire_stale_fields_batch:
            raise NotImplementedError(
                f"{type(self).__qualname__} implements neither _expire_stale_fields_batch "
                "nor _expire_stale_fields"
            )

        async def batch(size: int) -> int:
            return await self._expire_stale_fields_batch(tenant_id, profile_id, now, size)

        return await run_batches("expire", tenant_id, batch, batch_size=DEFAULT_BATCH_SIZE)

    @abstractmethod
    async def _add_asset(
        self, tenant_id: UUID, profile_id: UUID, asset: ProfileAsset, supersede_existing: bool
    ) -> UUID:
        """Insert ``asset`` (ACTIVE), superseding the ACTIVE one of its name if asked."""

    @abstractmethod
    async def _get_asset(
        self, tenant_id: UUID, profile_id: UUID, asset_id: UUID
    ) -> ProfileAsset | None:
        """The asset by id, any status."""

    @abstractmethod
    async def _get_asset_by_name(
        self, tenant_id: UUID, profile_id: UUID, asset_name: str, status: ItemStatus | None
    ) -> ProfileAsset | None:
        """The most recent (uploaded_at, then write order) asset of that name and status."""

    async def _get_derivation_chain(
        self, tenant_id: UUID, item_id: UUID, item_type: ItemType, max_depth: int
    ) -> list[LineageEntry]:
        """Root first, item last, at most ``max_depth`` entries, cycle-safe.

        This default walks :meth:`_get_lineage_node` one item at a time; a provider that can
        do it in one query (a recursive CTE, ``$graphLookup``) overrides this instead.
        """
        chain: list[LineageEntry] = []
        seen: set[UUID] = set()
        next_id: UUID | None = item_id
        next_type: ItemType | None = item_type
        while next_id is not None and next_type is not None and len(chain) < max_depth:
            if next_id in seen:
                break
            node = await self._get_lineage_node(tenant_id, next_id, next_type)
            if node is None:
                break
            seen.add(node.id)
            chain.append(node)
            next_id = node.source_item_id
            next_type = lineage_target(node.source_item_type)
        chain.reverse()
        return chain

    async def _get_lineage_node(
        self, tenant_id: UUID, item_id: UUID, item_type: ItemType
    ) -> LineageEntry | None:
        """One field (any version) or asset as a lineage entry, or None when missing.

        Needed only by the default :meth:`_get_derivation_chain`.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement _get_lineage_node")

    @abstractmethod
    async def _get_derived_items(
        self, tenant_id: UUID, source_item_id: UUID
    ) -> tuple[list[ProfileField], list[ProfileAsset]]:
        """Fields and assets (any status) whose ``source_item_id`` is this id, oldest first."""

    @abstractmethod
    async def _check_has_dependents(self, tenant_id: UUID, item_id: UUID) -> bool:
        """Whether any ACTIVE field or asset has ``source_item_id`` = ``item_id``."""

    @abstractmethod
    async def _link_channel(
        self,
        tenant_id: UUID,
        profile_id: UUID,
        identity: ChannelIdentity,
        *,
        max_per_channel: int | None = None,
    ) -> bool:
        """As :meth:`link_channel`; race-free against concurrent links of one identity.

        ``max_per_channel`` (None: no limit): read the profile's identities inside the
        atomic step, ask :func:`~ccvault.rules.identity.channel_eviction` which one the new
        identity evicts, and remove (release) it and insert the new one in that one step;
        concurrent limited links of one profile never leave more than the limit."""

    @abstractmethod
    async def _merge_profiles(
        self,
        tenant_id: UUID,
        source_profile_id: UUID,
        target_profile_id: UUID,
        choose_winner: MergeWinner,
        log: MergeLogRequest | None = None,
    ) -> None:
        """As :meth:`merge_profiles`, atomically: the rule is computed in core.

        Inside one atomic step, read both live profiles' identities and ACTIVE field
        versions (NotFoundError if either is unknown or gone), call
        :func:`ccvault.rules.merge.plan_merge` with ``choose_winner`` and apply exactly the
        returned plan (superseded losers, identity placements with their ``primary`` flags,
        every item and consent moved, the source soft-deleted). A provider with a merge log
        stores :func:`ccvault.rules.merge.merge_record` of the plan and ``log`` (a new
        request when None) in the same step.
        """

    @abstractmethod
    async def _get_field_definitions(
        self, tenant_id: UUID, agent_id: UUID, enabled_only: bool
    ) -> list[ProfileFieldDefinition]:
        """The agent's definitions, any order."""

    @abstractmethod
    async def _get_field_definition(
        self, tenant_id: UUID, agent_id: UUID, field_name: str
    ) -> ProfileFieldDefinition | None:
        """One definition by name, enabled or not."""

    @abstractmethod
    async def _save_field_definition(self, definition: ProfileFieldDefinition) -> UUID:
        """Upsert by (tenant, agent, name), keeping a stored id and created_at; return the id.

        In one atomic step: read the stored definition with this id and the one with this
        key, call :func:`ccvault.rules.definitions.plan_definition_save` (it raises
        ConflictError for an id bound elsewhere) and write what it returns.
        """

    @abstractmethod
    async def _delete_field_definition(
        self, tenant_id: UUID, agent_id: UUID, field_name: str
    ) -> bool:
        """Delete by (tenant, agent, name); True if one was deleted."""

    @abstractmethod
    async def _get_scenario_requirements(
        self, tenant_id: UUID, scenario_id: UUID, step_id: UUID | None
    ) -> list[ScenarioFieldRequirement]:
        """Requirements with exactly this ``step_id`` (None: scenario-wide ones), any order."""

    async def _get_requirements_with_definitions(
        self, tenant_id: UUID, scenario_id: UUID, step_id: UUID | None
    ) -> tuple[list[ScenarioFieldRequirement], dict[UUID, list[ProfileFieldDefinition]]]:
        """What ``get_missing_fields`` reads, in one go: the requirements
        :meth:`_get_scenario_requirements` returns (any order), and for every ``agent_id``
        among them that agent's *enabled* definitions, as :meth:`_get_field_definitions`
        with ``enabled_only=True`` returns them (any order). An agent without any may be
        absent from the dict or map to an empty list; other agents may be present.

        Optional: this default calls those two hooks (one call per agent). A provider
        overrides it to read both in one round trip on one connection (ideally one
        statement, or one transaction), so the two lists are of one moment. A wrapper
        that serves either hook itself (a cache) keeps this default, so its own hooks
        answer; so does a class overriding either below the class defining this one (a
        provider's subclass filtering requirements: see :meth:`__init_subclass__`).
        """
        requirements = await self._get_scenario_requirements(tenant_id, scenario_id, step_id)
        definitions: dict[UUID, list[ProfileFieldDefinition]] = {}
        for agent_id in dict.fromkeys(req.agent_id for req in requirements):
            definitions[agent_id] = await self._get_field_definitions(tenant_id, agent_id, True)
        return requirements, definitions

    async def _get_requirement_checks(
        self, tenant_id: UUID, scenario_id: UUID, step_id: UUID | None
    ) -> tuple[list[ScenarioFieldRequirement], dict[UUID, dict[str, FieldCheck]]]:
        """What ``get_missing_fields`` reads (through :meth:`_get_requirement_records`),
        narrowed: the requirements
        :meth:`_get_scenario_requirements` returns (any order), and ``{agent_id: {name:
        FieldCheck}}``: for each requirement whose agent has an *enabled* definition of the
        requirement's ``field_name``, ``checks[agent_id][field_name]`` is
        ``FieldCheck(definition.required_verification, definition.freshness_seconds)``
        (:func:`ccvault.requirements.field_check` shares instances); for one without, no
        entry (the agent absent, or the name absent from its dict). Entries for other names
        or agents may be present and are ignored. The dicts are the caller's (not kept or
        shared by the provider, except the FieldCheck values, which are immutable).

        Optional: this default derives the answer from
        :meth:`_get_requirements_with_definitions` (:func:`ccvault.requirements.checks_of`),
        so a provider overriding only that hook, or neither, is served. A provider overrides
        this one to read only what is needed, ideally in one statement (the requirements
        joined to their own field's enabled definition), without building definition
        models. It must agree with :meth:`_get_requirements_with_definitions` (the contract
        suite checks both). In :class:`ForwardingProfileStore` it is forwarded to the inner
        store, except in a wrapper that overrides ``_get_requirements_with_definitions``
        (a cache): there this default runs over the wrapper's own hook. Likewise in any
        class overriding that hook, or one it derives from, below the class defining this
        one (see :meth:`__init_subclass__`).
        """
        requirements, definitions = await self._get_requirements_with_definitions(
            tenant_id, scenario_id, step_id
        )
        return requirements, checks_of(definitions)

    async def _get_requirement_records(
        self, tenant_id: UUID, scenario_id: UUID, step_id: UUID | None
    ) -> RequirementRecords:
        """All ``get_missing_fields`` reads, as records: ``RequirementRecords(records,
        build)`` (:mod:`ccvault.requirements`). ``records`` holds one
        :class:`~ccvault.requirements.RequirementRecord` per requirement
        :meth:`_get_scenario_requirements` returns (any order; an iterable read once, read
        fresh on every call): its ``field_name`` (text), ``required_level`` (a
        :class:`~ccvault.models.RequiredLevel` member: the evaluation compares levels by
        identity, so the text ``"hard"`` is never judged hard), ``when_condition`` and
        ``depends_on_fields`` (a tuple or list of names), its ``check`` (the FieldCheck
        :meth:`_get_requirement_checks` gives it, None without one) and a ``source``;
        ``build(sources)``, synchronous (a source carries what it needs: no I/O), returns a
        new list of exactly one requirement model per source given (some of the records',
        in any order), in that order, each equal to the one
        :meth:`_get_scenario_requirements` returns, as a new model of the caller's (or
        raises :class:`~ccvault.errors.StorageError` for a source that is not a valid
        requirement). ``get_missing_fields`` builds models of the missing requirements
        only, so a corrupt column that only a model holds is refused only when its
        requirement is missing.

        Optional: this default derives the answer from :meth:`_get_requirement_checks`
        (:func:`ccvault.requirements.records_of`: the sources are the models). A provider
        overrides it to read the records from its rows and build models for the few
        sources asked; it must agree with :meth:`_get_requirement_checks` (the contract
        suite checks both). A class overriding a hook this one derives from
        (:meth:`_get_requirement_checks`, or a hook that one derives from, down to
        :meth:`_get_scenario_requirements` and :meth:`_get_field_definitions`) below the
        class that defines this hook (a wrapper serving them, a provider's subclass
        answering them its own way) gets this default again (see
        :meth:`__init_subclass__`), so that ``get_missing_fields`` reads through the
        override.
        """
        requirements, checks = await self._get_requirement_checks(tenant_id, scenario_id, step_id)
        return records_of(requirements, checks)

    @abstractmethod
    async def _save_scenario_requirement(self, requirement: ScenarioFieldRequirement) -> UUID:
        """Upsert by (tenant, scenario, step, rule, field name), keeping a stored id.

        As :meth:`_save_field_definition`, with
        :func:`ccvault.rules.definitions.plan_requirement_save`.
        """

    @abstractmethod
    async def _delete_scenario_requirements(
        self, tenant_id: UUID, scenario_id: UUID, step_id: UUID | None
    ) -> int:
        """``step_id=None``: every requirement of the scenario; else that step's. The count."""

    @abstractmethod
    async def _purge_profile(self, tenant_id: UUID, profile_id: UUID) -> bool:
        """Hard-delete the profile, live or soft-deleted, with all it owns, atomically."""

    @abstractmethod
    async def _export_profile(self, tenant_id: UUID, profile_id: UUID) -> CustomerProfile | None:
        """The profile (live or soft-deleted) with full history, or None."""

    @abstractmethod
    async def _delete_item(self, tenant_id: UUID, item_id: UUID, item_type: ItemType) -> bool:
        """Hard-delete one item; DependentsError if an ACTIVE item derives from it, checked
        in the same atomic step as the delete."""

    async def _mark_orphans_page(
        self, tenant_id: UUID, now: datetime, limit: int, after: str | None
    ) -> KeysetBatch:
        """One keyset batch of :meth:`mark_orphans`, atomic: read at most ``limit`` derived
        items (fields and assets whose ``source_item_id`` is set) of the tenant in a stable
        order the provider chooses, starting strictly after the position ``after`` (None:
        the beginning); mark ORPHANED those among them that are not yet ORPHANED and whose
        profile_field/profile_asset source is gone (fields also get ``updated_at = now``).
        Return :class:`~ccvault.batches.KeysetBatch`: the count marked, the count examined
        (at most ``limit``) and the opaque position after the last examined item, or None
        when no derived item is left after it. The position is a string of at most
        :data:`~ccvault.batches.MAX_CURSOR_LENGTH` characters with no personal data (ids
        only); a provider must accept the positions it returned (a garbled one may raise
        ValidationError). Items inserted behind the position during a job are found by the
        next job; marking is idempotent, so a rerun from the beginning is always correct.

        The default, for providers written before keyset pagination, runs one
        :meth:`_mark_orphans_batch` (which re-reads the tenant from the start) and reports
        ``examined=None``; it continues while a batch marks a full ``limit``.
        """
        marked = await self._mark_orphans_batch(tenant_id, now, limit)
        return KeysetBatch(
            marked=marked, examined=None, resume_after=None if marked < limit else _LEGACY_CURSOR
        )

    async def _mark_orphans_batch(self, tenant_id: UUID, now: datetime, limit: int) -> int:
        """One batch of :meth:`mark_orphans`, atomic: at most ``limit`` items (fields and
        assets together, not already ORPHANED) whose profile_field/profile_asset source is
        gone become ORPHANED (fields also get ``updated_at = now``); return how many. Fewer
        than ``limit`` means no orphan was left unmarked, apart from rows another
        transaction holds. Core calls it until a batch returns less than ``limit``.

        The default, for providers written before batching, marks them all in one step with
        :meth:`_mark_orphans`; a provider implements one or the other.
        """
        if type(self)._mark_orphans is ProfileStore._mark_orphans:
            raise NotImplementedError(
                f"{type(self).__qualname__} implements neither _mark_orphans_batch "
                "nor _mark_orphans"
            )
        return await self._mark_orphans(tenant_id)

    async def _mark_orphans(self, tenant_id: UUID) -> int:
        """Items (not already ORPHANED) whose profile_field/profile_asset source is gone
        become ORPHANED; return how many.

        The single-step form of :meth:`_mark_orphans_batch`, kept for providers written
        before batching (core no longer calls it). The default runs the batch hook until
        nothing is left, in batches of :data:`~ccvault.batches.DEFAULT_BATCH_SIZE`.
        """
        if type(self)._mark_orphans_batch is ProfileStore._mark_orphans_batch:
            raise NotImplementedError(
                f"{type(self).__qualname__} implements neither _mark_orphans_batch "
                "nor _mark_orphans"
            )
        now = self.now()

        async def batch(size: int) -> int:
            return await self._mark_orphans_batch(tenant_id, now, size)

        return await run_batches("mark_orphans", tenant_id, batch, batch_size=DEFAULT_BATCH_SIZE)

    @abstractmethod
    async def _list_tenant_ids(self) -> list[UUID]:
        """Every tenant with at least one profile (live or soft-deleted)."""

    @abstractmethod
    async def _count_items_by_status(self, tenant_id: UUID) -> dict[str, dict[str, int]]:
        """``{"fields": {status_value: n}, "assets": {...}}``; absent statuses may be omitted."""

    async def _estimate_items_by_status(self, tenant_id: UUID) -> dict[str, dict[str, int]]:
        """Like :meth:`_count_items_by_status`, possibly estimated, at a cost bounded
        whatever the tenant's size (a sample of bounded size, statistics, counters kept
        up to date). The default is the exact count, for providers where that is cheap."""
        return await self._count_items_by_status(tenant_id)

    @abstractmethod
    async def _list_profile_ids(self, tenant_id: UUID) -> list[UUID]:
        """Ids of every profile of the tenant, live or soft-deleted, any order."""

    @abstractmethod
    async def _rewrite_field_payloads(
        self,
        tenant_id: UUID,
        profile_id: UUID,
        payloads: dict[UUID, tuple[Any, dict[str, Any]]],
    ) -> int:
        """Set ``value`` and ``source_metadata`` of the listed field versions of the profile
        (any status, soft-deleted profile too), in one atomic step; return how many matched."""

    async def _unmerge(self, tenant_id: UUID, merge_id: UUID) -> UnmergeResult:
        """As :meth:`unmerge`, atomically: the rule is computed in core.

        Inside one atomic step, read the log entry (NotFoundError if unknown), the other
        open entries touching its target or source and both profiles' state, call
        :func:`ccvault.rules.unmerge.plan_unmerge` and apply exactly the returned plan
        (including the entry with ``unmerged_at``); return ``plan.result``. Must serialise
        against concurrent merges, unmerges and writes of the two profiles.

        Required (contract 0.2, issue 16); the default raises NotImplementedError so a
        provider written before it still loads and its report names the missing hook.
        """
        raise NotImplementedError("_unmerge")

    async def _get_merge_log(self, tenant_id: UUID, profile_id: UUID) -> list[MergeRecord]:
        """Every log entry whose source or target is the profile, any order. Required, as
        :meth:`_unmerge`; the default raises NotImplementedError."""
        raise NotImplementedError("_get_merge_log")

    async def _get_tenant_field_definitions(self, tenant_id: UUID) -> list[ProfileFieldDefinition]:
        """Every field definition of the tenant (every agent, enabled or not), any order
        (merge reads the survivorship policies from them). Required, as :meth:`_unmerge`;
        the default raises NotImplementedError."""
        raise NotImplementedError("_get_tenant_field_definitions")

    async def _find_subject_profiles(
        self,
        tenant_id: UUID,
        channel: Channel | None,
        channel_user_id: str | None,
        customer_id: UUID | None,
    ) -> list[UUID]:
        """Ids of every profile, live or soft-deleted, that holds the identity (``channel``
        and ``channel_user_id``; a soft-deleted profile's released identities count) or,
        when those are None, has ``customer_id``; any order. The arguments come in the
        shape of :meth:`_get_by_channel_identity`'s (a wrapper transforming the identity of
        that lookup transforms these the same way).

        This default scans the tenant through :meth:`_list_profile_ids` and
        :meth:`_export_profile` (which must list a soft-deleted profile's released
        identities); a provider answers it from an index instead."""
        found: list[UUID] = []
        for profile_id in await self._list_profile_ids(tenant_id):
            held = await self._export_profile(tenant_id, profile_id)
            if held is None:
                continue
            if channel is None:
                if held.customer_id == customer_id:
                    found.append(profile_id)
            elif any(
                i.channel == channel and i.channel_user_id == channel_user_id
                for i in held.channel_identities
            ):
                found.append(profile_id)
        return found

    async def _erase_subject(
        self, tenant_id: UUID, profile_ids: list[UUID], merge_ids: list[UUID]
    ) -> int:
        """Hard-delete the profiles (live or soft-deleted) with all they own, and every merge
        log entry whose source or target is one of them, in one atomic step; return how
        many profiles were deleted. ``merge_ids``: the entries touching them when the plan
        was read; if the stored set differs (a merge or unmerge happened since), raise
        :class:`~ccvault.errors.ConflictError` with nothing written. A provider with files
        (SQLite) also leaves no copy in its journal (WAL checkpoint).

        This default checks the merge log, then calls :meth:`_purge_profile` per profile:
        correct, but not one atomic step; providers override it."""
        stored: set[UUID] = set()
        for profile_id in profile_ids:
            stored.update(r.id for r in await _merge_log_if_kept(self, tenant_id, profile_id))
        if stored != set(merge_ids):
            raise errors.ConflictError("the merge log of the subject changed")
        erased = 0
        for profile_id in profile_ids:
            erased += await self._purge_profile(tenant_id, profile_id)
        return erased


def lineage_target(source_type: SourceType | None) -> ItemType | None:
    """The item type a lineage link points at, or None when the chain ends there."""
    if source_type is SourceType.PROFILE_FIELD:
        return ItemType.PROFILE_FIELD
    if source_type is SourceType.PROFILE_ASSET:
        return ItemType.PROFILE_ASSET
    return None


_lineage_target = lineage_target  # the former name


#: the resume position the pre-keyset fallback of ``_mark_orphans_page`` returns: it only
#: means "not done yet" (a ``_mark_orphans_batch`` always starts from the beginning)
_LEGACY_CURSOR = "legacy:again"


def _batch_size(value: object) -> int:
    """``value`` as the rows per batch of a bulk job: None (the default) or an int (not a
    bool) from 1 to :data:`~ccvault.batches.MAX_BATCH_SIZE`."""
    if value is None:
        return DEFAULT_BATCH_SIZE
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_BATCH_SIZE:
        raise errors.ValidationError(
            f"batch_size must be None or an int from 1 to {MAX_BATCH_SIZE}, got "
            + (str(value) if isinstance(value, int) else type(value).__name__)
        )
    return value


def _max_batches(value: object) -> int | None:
    """``value`` as the most batches a bulk job may run: None (no limit) or an int >= 1."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise errors.ValidationError(
            "max_batches must be None or an int >= 1, got "
            + (str(value) if isinstance(value, int) else type(value).__name__)
        )
    return value


def _estimated_total(value: object) -> int | None:
    """``value`` as a bulk job's estimated size: None or an int (not a bool) >= 0."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise errors.ValidationError(
            f"estimated_total must be None or an int >= 0, got {type(value).__name__}"
        )
    return value


class ForwardingProfileStore(ProfileStore):
    """A store that wraps another: every hook calls the *same hook* of the inner store.

    Wrappers (cache, encryption) subclass this and override the hooks they change, calling
    ``super()`` to reach the inner store; they never call the inner store's public methods
    (that would re-run the checks, rules and presentation of the public layer) and rely on
    nothing of it but its hooks and ``setup``, ``aclose``, ``now``, ``rules`` and
    ``capabilities``. Lifecycle is forwarded too, so entering the outermost store sets up
    the whole stack. The stack shares one clock and one set of rules: the inner store's.

    Two hooks are not forwarded in every wrapper: ``_get_requirement_checks`` (derived from
    ``_get_requirements_with_definitions``) is answered by the default over the wrapper's
    own wide hook when its class overrides that hook (the cache), so that ``get_missing_fields``
    keeps reading through the override (see :meth:`__init_subclass__`); and
    ``_get_requirement_records`` (derived from ``_get_requirement_checks``) likewise, by
    ``ProfileStore.__init_subclass__``'s rule for every class.
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """A wrapper that overrides ``_get_requirements_with_definitions`` (a cache serving
        requirements and definitions itself) and inherits the forwarding
        ``_get_requirement_checks`` gets the default instead (derived from its own wide
        hook): forwarding the narrow hook would go around the wrapper to the inner store."""
        super().__init_subclass__(**kwargs)
        if (
            cls._get_requirements_with_definitions
            is not ForwardingProfileStore._get_requirements_with_definitions
            and cls._get_requirement_checks is ForwardingProfileStore._get_requirement_checks
        ):
            cls._get_requirement_checks = ProfileStore._get_requirement_checks  # type: ignore[method-assign]

    def __init__(self, inner: ProfileStore) -> None:
        if not isinstance(inner, ProfileStore):
            raise TypeError(f"inner must be a ProfileStore, got {type(inner).__name__}")
        self.inner = inner
        self.capabilities = inner.capabilities

    @property
    def rules(self) -> StoreRules:
        """The wrapped store's rules: one stack, one set of rules."""
        return self.inner.rules

    @rules.setter
    def rules(self, value: StoreRules) -> None:
        self.inner.rules = value

    def now(self) -> datetime:
        return self.inner.now()

    async def setup(self) -> None:
        await self.inner.setup()

    async def schema_status(self) -> SchemaStatus:
        return await self.inner.schema_status()

    async def migrate(self, *, dry_run: bool = False) -> MigrationReport:
        return await self.inner.migrate(dry_run=dry_run)

    async def aclose(self) -> None:
        await self.inner.aclose()

    async def _get_by_customer_id(
        self, tenant_id: UUID, customer_id: UUID, include_history: bool
    ) -> CustomerProfile | None:
        return await self.inner._get_by_customer_id(tenant_id, customer_id, include_history)

    async def _get_by_id(
        self, tenant_id: UUID, profile_id: UUID, include_history: bool
    ) -> CustomerProfile | None:
        return await self.inner._get_by_id(tenant_id, profile_id, include_history)

    async def _get_by_channel_identity(
        self, tenant_id: UUID, channel: Channel, channel_user_id: str, include_history: bool
    ) -> CustomerProfile | None:
        return await self.inner._get_by_channel_identity(
            tenant_id, channel, channel_user_id, include_history
        )

    async def _get_or_create(self, tenant_id: UUID, candidate: CustomerProfile) -> CustomerProfile:
        return await self.inner._get_or_create(tenant_id, candidate)

    async def _save(self, profile: CustomerProfile) -> UUID:
        return await self.inner._save(profile)

    async def _delete(self, tenant_id: UUID, profile_id: UUID) -> bool:
        return await self.inner._delete(tenant_id, profile_id)

    async def _update_field(
        self, tenant_id: UUID, profile_id: UUID, field: ProfileField, supersede_existing: bool
    ) -> UUID:
        return await self.inner._update_field(tenant_id, profile_id, field, supersede_existing)

    async def _get_field(
        self, tenant_id: UUID, profile_id: UUID, field_name: str, status: ItemStatus | None
    ) -> ProfileField | None:
        return await self.inner._get_field(tenant_id, profile_id, field_name, status)

    async def _get_field_history(
        self, tenant_id: UUID, profile_id: UUID, field_name: str
    ) -> list[ProfileField]:
        return await self.inner._get_field_history(tenant_id, profile_id, field_name)

    async def _expire_stale_fields(
        self, tenant_id: UUID, profile_id: UUID | None, now: datetime
    ) -> int:
        return await self.inner._expire_stale_fields(tenant_id, profile_id, now)

    async def _expire_stale_fields_batch(
        self, tenant_id: UUID, profile_id: UUID | None, now: datetime, limit: int
    ) -> int:
        return await self.inner._expire_stale_fields_batch(tenant_id, profile_id, now, limit)

    async def _add_asset(
        self, tenant_id: UUID, profile_id: UUID, asset: ProfileAsset, supersede_existing: bool
    ) -> UUID:
        return await self.inner._add_asset(tenant_id, profile_id, asset, supersede_existing)

    async def _get_asset(
        self, tenant_id: UUID, profile_id: UUID, asset_id: UUID
    ) -> ProfileAsset | None:
        return await self.inner._get_asset(tenant_id, profile_id, asset_id)

    async def _get_asset_by_name(
        self, tenant_id: UUID, profile_id: UUID, asset_name: str, status: ItemStatus | None
    ) -> ProfileAsset | None:
        return await self.inner._get_asset_by_name(tenant_id, profile_id, asset_name, status)

    async def _get_derivation_chain(
        self, tenant_id: UUID, item_id: UUID, item_type: ItemType, max_depth: int
    ) -> list[LineageEntry]:
        return await self.inner._get_derivation_chain(tenant_id, item_id, item_type, max_depth)

    async def _get_lineage_node(
        self, tenant_id: UUID, item_id: UUID, item_type: ItemType
    ) -> LineageEntry | None:
        return await self.inner._get_lineage_node(tenant_id, item_id, item_type)

    async def _get_derived_items(
        self, tenant_id: UUID, source_item_id: UUID
    ) -> tuple[list[ProfileField], list[ProfileAsset]]:
        return await self.inner._get_derived_items(tenant_id, source_item_id)

    async def _check_has_dependents(self, tenant_id: UUID, item_id: UUID) -> bool:
        return await self.inner._check_has_dependents(tenant_id, item_id)

    async def _link_channel(
        self,
        tenant_id: UUID,
        profile_id: UUID,
        identity: ChannelIdentity,
        *,
        max_per_channel: int | None = None,
    ) -> bool:
        if max_per_channel is None:
            return await self.inner._link_channel(tenant_id, profile_id, identity)
        return await self.inner._link_channel(
            tenant_id, profile_id, identity, max_per_channel=max_per_channel
        )

    async def _merge_profiles(
        self,
        tenant_id: UUID,
        source_profile_id: UUID,
        target_profile_id: UUID,
        choose_winner: MergeWinner,
        log: MergeLogRequest | None = None,
    ) -> None:
        await self.inner._merge_profiles(
            tenant_id, source_profile_id, target_profile_id, choose_winner, log
        )

    async def _get_field_definitions(
        self, tenant_id: UUID, agent_id: UUID, enabled_only: bool
    ) -> list[ProfileFieldDefinition]:
        return await self.inner._get_field_definitions(tenant_id, agent_id, enabled_only)

    async def _get_field_definition(
        self, tenant_id: UUID, agent_id: UUID, field_name: str
    ) -> ProfileFieldDefinition | None:
        return await self.inner._get_field_definition(tenant_id, agent_id, field_name)

    async def _save_field_definition(self, definition: ProfileFieldDefinition) -> UUID:
        return await self.inner._save_field_definition(definition)

    async def _delete_field_definition(
        self, tenant_id: UUID, agent_id: UUID, field_name: str
    ) -> bool:
        return await self.inner._delete_field_definition(tenant_id, agent_id, field_name)

    async def _get_scenario_requirements(
        self, tenant_id: UUID, scenario_id: UUID, step_id: UUID | None
    ) -> list[ScenarioFieldRequirement]:
        return await self.inner._get_scenario_requirements(tenant_id, scenario_id, step_id)

    # a wrapper class overriding a wider requirement hook never gets to the three below (see
    # ProfileStore.__init_subclass__); an instance given its own (a test double) is served
    # from it too: each asks whether the instance holds a hook it derives from
    def _holds_own_wider(self, derived: str) -> bool:
        return not self.__dict__.keys().isdisjoint(_WIDER_REQUIREMENT_HOOKS[derived])

    async def _get_requirements_with_definitions(
        self, tenant_id: UUID, scenario_id: UUID, step_id: UUID | None
    ) -> tuple[list[ScenarioFieldRequirement], dict[UUID, list[ProfileFieldDefinition]]]:
        if self._holds_own_wider("_get_requirements_with_definitions"):
            return await ProfileStore._get_requirements_with_definitions(
                self, tenant_id, scenario_id, step_id
            )
        return await self.inner._get_requirements_with_definitions(tenant_id, scenario_id, step_id)

    async def _get_requirement_checks(
        self, tenant_id: UUID, scenario_id: UUID, step_id: UUID | None
    ) -> tuple[list[ScenarioFieldRequirement], dict[UUID, dict[str, FieldCheck]]]:
        if self._holds_own_wider("_get_requirement_checks"):
            return await ProfileStore._get_requirement_checks(self, tenant_id, scenario_id, step_id)
        return await self.inner._get_requirement_checks(tenant_id, scenario_id, step_id)

    async def _get_requirement_records(
        self, tenant_id: UUID, scenario_id: UUID, step_id: UUID | None
    ) -> RequirementRecords:
        if self._holds_own_wider("_get_requirement_records"):
            return await ProfileStore._get_requirement_records(
                self, tenant_id, scenario_id, step_id
            )
        return await self.inner._get_requirement_records(tenant_id, scenario_id, step_id)

    async def _save_scenario_requirement(self, requirement: ScenarioFieldRequirement) -> UUID:
        return await self.inner._save_scenario_requirement(requirement)

    async def _delete_scenario_requirements(
        self, tenant_id: UUID, scenario_id: UUID, step_id: UUID | None
    ) -> int:
        return await self.inner._delete_scenario_requirements(tenant_id, scenario_id, step_id)

    async def _purge_profile(self, tenant_id: UUID, profile_id: UUID) -> bool:
        return await self.inner._purge_profile(tenant_id, profile_id)

    async def _export_profile(self, tenant_id: UUID, profile_id: UUID) -> CustomerProfile | None:
        return await self.inner._export_profile(tenant_id, profile_id)

    async def _find_subject_profiles(
        self,
        tenant_id: UUID,
        channel: Channel | None,
        channel_user_id: str | None,
        customer_id: UUID | None,
    ) -> list[UUID]:
        return await self.inner._find_subject_profiles(
            tenant_id, channel, channel_user_id, customer_id
        )

    async def _erase_subject(
        self, tenant_id: UUID, profile_ids: list[UUID], merge_ids: list[UUID]
    ) -> int:
        return await self.inner._erase_subject(tenant_id, profile_ids, merge_ids)

    async def _delete_item(self, tenant_id: UUID, item_id: UUID, item_type: ItemType) -> bool:
        return await self.inner._delete_item(tenant_id, item_id, item_type)

    async def _mark_orphans(self, tenant_id: UUID) -> int:
        return await self.inner._mark_orphans(tenant_id)

    async def _mark_orphans_batch(self, tenant_id: UUID, now: datetime, limit: int) -> int:
        return await self.inner._mark_orphans_batch(tenant_id, now, limit)

    async def _mark_orphans_page(
        self, tenant_id: UUID, now: datetime, limit: int, after: str | None
    ) -> KeysetBatch:
        return await self.inner._mark_orphans_page(tenant_id, now, limit, after)

    async def _list_tenant_ids(self) -> list[UUID]:
        return await self.inner._list_tenant_ids()

    async def _count_items_by_status(self, tenant_id: UUID) -> dict[str, dict[str, int]]:
        return await self.inner._count_items_by_status(tenant_id)

    async def _estimate_items_by_status(self, tenant_id: UUID) -> dict[str, dict[str, int]]:
        return await self.inner._estimate_items_by_status(tenant_id)

    async def _list_profile_ids(self, tenant_id: UUID) -> list[UUID]:
        return await self.inner._list_profile_ids(tenant_id)

    async def _rewrite_field_payloads(
        self,
        tenant_id: UUID,
        profile_id: UUID,
        payloads: dict[UUID, tuple[Any, dict[str, Any]]],
    ) -> int:
        return await self.inner._rewrite_field_payloads(tenant_id, profile_id, payloads)


def _forwarding_hook(name: str) -> Callable[..., Any]:
    async def forward(self: ForwardingProfileStore, *args: Any, **kwargs: Any) -> Any:
        return await getattr(self.inner, name)(*args, **kwargs)

    forward.__name__ = name
    forward.__qualname__ = f"ForwardingProfileStore.{name}"
    forward.__doc__ = f"Calls the inner store's ``{name}`` hook."
    return forward


# A hook added to ProfileStore without a typed forward above is still forwarded hook to hook,
# never left to a default that would act on the wrapper's own (empty) state.
for _name, _member in list(vars(ProfileStore).items()):
    if (
        _name.startswith("_")
        and not _name.startswith("__")
        and inspect.iscoroutinefunction(_member)
        and _name not in vars(ForwardingProfileStore)
    ):
        setattr(ForwardingProfileStore, _name, _forwarding_hook(_name))
abc.update_abstractmethods(ForwardingProfileStore)


# Observability at the one public layer: every public operation is timed into
# ccvault_operation_duration_seconds{operation, provider} and its errors are counted by type
# in ccvault_operation_errors_total. Wrapped here, where the methods are defined, so a
# store is instrumented however ccvault is imported.
metrics.instrument_operations(ProfileStore, final_methods())
# OpenTelemetry spans for the same operations, wrapped only while [tracing] is enabled
tracing.register_operations(ProfileStore, final_methods())
