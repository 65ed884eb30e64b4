"""``MyProfileStore``: the skeleton of a ccvault storage provider. Every hook raises
``NotImplementedError`` until you write it.

Implement the hooks below (the ``_``-prefixed methods) and nothing else: the public
``ProfileStore`` methods are final and already check arguments, apply the vault's rules and
present results, once, in core. A hook receives checked, typed arguments and only stores and
fetches. The hook table with each hook's atomicity and ordering rules is in the contract
suite's README ("Provider author's guide"); ``ccvault/store.py`` is the source of truth.

Start with ``setup``/``aclose`` and the reads and writes of a profile (``_get_or_create``,
``_get_by_id``, ``_save``): almost every contract test needs them. The contract test in
``tests/test_contract.py`` lists, after every run, the hooks its failing tests hit first.

A row your backend hands back that is not one the vault wrote (edited by hand, corrupted)
must raise ``ccvault.errors.StorageError`` without quoting it: build the models of what you
read with ``model_validate`` and turn its failure into ``ccvault.storage.corrupt_row(...)``
(raised after the ``except`` block), as the contract suite's README says ("A stored row
that cannot be read back").
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from ccvault.batches import KeysetBatch
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
    UnmergeResult,
)
from ccvault.rules.merge import MergeLogRequest, MergeWinner
from ccvault.store import ProfileStore
from ccvault.store_rules import StoreRules
from ccvault_myprovider.settings import MySettings

__all__ = ["MyProfileStore"]


class MyProfileStore(ProfileStore):
    """A store over your backend. Two instances opened on the same settings must read and
    write the same data (the contract's ``other_store``): keep nothing in the instance that
    another process could not see, and make every "atomic" hook atomic in the backend
    (a transaction, a conditional write), not with an in-process lock."""

    def __init__(self, settings: MySettings | None = None, *, rules: StoreRules | None = None):
        super().__init__(rules=rules)
        self.settings = settings or MySettings()

    async def setup(self) -> None:
        """Connect, and check the schema version without changing it (refuse a missing or
        older schema with ``ccvault.migration.require_ready``). A backend with a schema also
        overrides ``schema_status()`` and ``migrate(dry_run=...)``, the explicit step
        ``ccvault migrate`` runs. Nothing to do yet."""

    async def aclose(self) -> None:
        """Release connections. Idempotent."""

    # -------------------------------------------------------------------------------------
    # the hooks: every one of them raises NotImplementedError until you write it
    # -------------------------------------------------------------------------------------

    async def _get_by_customer_id(
        self, tenant_id: UUID, customer_id: UUID, include_history: bool
    ) -> CustomerProfile | None:
        """The live profile, fields = ACTIVE versions (expired or not), assets = ACTIVE."""
        raise NotImplementedError("_get_by_customer_id")

    async def _get_by_id(
        self, tenant_id: UUID, profile_id: UUID, include_history: bool
    ) -> CustomerProfile | None:
        """As :meth:`_get_by_customer_id`, by profile id."""
        raise NotImplementedError("_get_by_id")

    async def _get_by_channel_identity(
        self, tenant_id: UUID, channel: Channel, channel_user_id: str, include_history: bool
    ) -> CustomerProfile | None:
        """As :meth:`_get_by_customer_id`, by an identity the live profile owns."""
        raise NotImplementedError("_get_by_channel_identity")

    async def _get_or_create(self, tenant_id: UUID, candidate: CustomerProfile) -> CustomerProfile:
        """The live owner of ``candidate.channel_identities[0]``, else ``candidate`` stored."""
        raise NotImplementedError("_get_or_create")

    async def _save(self, profile: CustomerProfile) -> UUID:
        """Upsert the aggregate atomically, as :meth:`save` describes.

        In one transaction: read ``ccvault.rules.save.SaveState`` (the profile row, the live
        owners of its customer id and identities, the stored fields/assets it lists), call
        ``plan_save`` (it raises every refusal before you write), apply the ``SavePlan``
        (in-place updates only to items still ACTIVE)."""
        raise NotImplementedError("_save")

    async def _delete(self, tenant_id: UUID, profile_id: UUID) -> bool:
        """Soft-delete a live profile and release its identities; False if none was live."""
        raise NotImplementedError("_delete")

    async def _update_field(
        self, tenant_id: UUID, profile_id: UUID, field: ProfileField, supersede_existing: bool
    ) -> UUID:
        """Insert ``field`` (already ACTIVE) atomically, as :meth:`update_field` describes.

        Without ``supersede_existing``: an unexpired ACTIVE version of the name refuses the
        write (nothing written); else the profile's overdue versions become EXPIRED in the
        same transaction as the insert."""
        raise NotImplementedError("_update_field")

    async def _get_field(
        self, tenant_id: UUID, profile_id: UUID, field_name: str, status: ItemStatus | None
    ) -> ProfileField | None:
        """The most recent version (collected_at, then write order) with the stored status."""
        raise NotImplementedError("_get_field")

    async def _get_field_history(
        self, tenant_id: UUID, profile_id: UUID, field_name: str
    ) -> list[ProfileField]:
        """Every version, newest ``collected_at`` first, ties newest write first."""
        raise NotImplementedError("_get_field_history")

    async def _expire_stale_fields_batch(
        self, tenant_id: UUID, profile_id: UUID | None, now: datetime, limit: int
    ) -> int:
        """One transaction: set EXPIRED on at most ``limit`` ACTIVE fields with ``expires_at <=
        now`` (of ``profile_id`` only, unless None); return the count. Core calls it until a
        batch returns less than ``limit``."""
        raise NotImplementedError("_expire_stale_fields_batch")

    async def _add_asset(
        self, tenant_id: UUID, profile_id: UUID, asset: ProfileAsset, supersede_existing: bool
    ) -> UUID:
        """Insert ``asset`` (ACTIVE), superseding the ACTIVE one of its name if asked."""
        raise NotImplementedError("_add_asset")

    async def _get_asset(
        self, tenant_id: UUID, profile_id: UUID, asset_id: UUID
    ) -> ProfileAsset | None:
        """The asset by id, any status."""
        raise NotImplementedError("_get_asset")

    async def _get_asset_by_name(
        self, tenant_id: UUID, profile_id: UUID, asset_name: str, status: ItemStatus | None
    ) -> ProfileAsset | None:
        """The most recent (uploaded_at, then write order) asset of that name and status."""
        raise NotImplementedError("_get_asset_by_name")

    async def _get_lineage_node(
        self, tenant_id: UUID, item_id: UUID, item_type: ItemType
    ) -> LineageEntry | None:
        """One field (any version) or asset as a lineage entry, or None when missing."""
        raise NotImplementedError("_get_lineage_node")

    async def _get_derived_items(
        self, tenant_id: UUID, source_item_id: UUID
    ) -> tuple[list[ProfileField], list[ProfileAsset]]:
        """Fields and assets (any status) whose ``source_item_id`` is this id, oldest first."""
        raise NotImplementedError("_get_derived_items")

    async def _check_has_dependents(self, tenant_id: UUID, item_id: UUID) -> bool:
        """Whether any ACTIVE field or asset has ``source_item_id`` = ``item_id``."""
        raise NotImplementedError("_check_has_dependents")

    async def _link_channel(
        self,
        tenant_id: UUID,
        profile_id: UUID,
        identity: ChannelIdentity,
        *,
        max_per_channel: int | None = None,
    ) -> bool:
        """As :meth:`link_channel`; race-free against concurrent links of one identity.
        ``max_per_channel``: in the same atomic step, evict what
        ``ccvault.rules.identity.channel_eviction`` says (see contract_tests/CHANGELOG.md)."""
        raise NotImplementedError("_link_channel")

    async def _merge_profiles(
        self,
        tenant_id: UUID,
        source_profile_id: UUID,
        target_profile_id: UUID,
        choose_winner: MergeWinner,
        log: MergeLogRequest | None = None,
    ) -> None:
        """As :meth:`merge_profiles`, atomically: the rule is computed in core; store
        ``ccvault.rules.merge.merge_record(...)`` of the plan and ``log`` in the same step."""
        raise NotImplementedError("_merge_profiles")

    async def _unmerge(self, tenant_id: UUID, merge_id: UUID) -> UnmergeResult:
        """As :meth:`unmerge`: read the entry and both profiles, ``plan_unmerge``, apply."""
        raise NotImplementedError("_unmerge")

    async def _get_merge_log(self, tenant_id: UUID, profile_id: UUID) -> list[MergeRecord]:
        """Every merge log entry whose source or target is the profile, any order."""
        raise NotImplementedError("_get_merge_log")

    async def _get_tenant_field_definitions(self, tenant_id: UUID) -> list[ProfileFieldDefinition]:
        """Every definition of the tenant, every agent, enabled or not, any order."""
        raise NotImplementedError("_get_tenant_field_definitions")

    async def _get_field_definitions(
        self, tenant_id: UUID, agent_id: UUID, enabled_only: bool
    ) -> list[ProfileFieldDefinition]:
        """The agent's definitions, any order."""
        raise NotImplementedError("_get_field_definitions")

    async def _get_field_definition(
        self, tenant_id: UUID, agent_id: UUID, field_name: str
    ) -> ProfileFieldDefinition | None:
        """One definition by name, enabled or not."""
        raise NotImplementedError("_get_field_definition")

    async def _save_field_definition(self, definition: ProfileFieldDefinition) -> UUID:
        """Upsert by (tenant, agent, name), keeping a stored id and created_at; return the id."""
        raise NotImplementedError("_save_field_definition")

    async def _delete_field_definition(
        self, tenant_id: UUID, agent_id: UUID, field_name: str
    ) -> bool:
        """Delete by (tenant, agent, name); True if one was deleted."""
        raise NotImplementedError("_delete_field_definition")

    async def _get_scenario_requirements(
        self, tenant_id: UUID, scenario_id: UUID, step_id: UUID | None
    ) -> list[ScenarioFieldRequirement]:
        """Requirements with exactly this ``step_id`` (None: scenario-wide ones), any order."""
        raise NotImplementedError("_get_scenario_requirements")

    async def _save_scenario_requirement(self, requirement: ScenarioFieldRequirement) -> UUID:
        """Upsert by (tenant, scenario, step, rule, field name), keeping a stored id."""
        raise NotImplementedError("_save_scenario_requirement")

    async def _delete_scenario_requirements(
        self, tenant_id: UUID, scenario_id: UUID, step_id: UUID | None
    ) -> int:
        """``step_id=None``: every requirement of the scenario; else that step's. The count."""
        raise NotImplementedError("_delete_scenario_requirements")

    async def _purge_profile(self, tenant_id: UUID, profile_id: UUID) -> bool:
        """Hard-delete the profile, live or soft-deleted, with all it owns, atomically."""
        raise NotImplementedError("_purge_profile")

    async def _export_profile(self, tenant_id: UUID, profile_id: UUID) -> CustomerProfile | None:
        """The profile (live or soft-deleted) with full history, or None."""
        raise NotImplementedError("_export_profile")

    # Erasure by data subject (issue 12). Optional: ProfileStore's defaults are correct (a
    # scan through _list_profile_ids/_export_profile; _purge_profile per profile after a merge
    # log check) but neither indexed nor one atomic step. Override both when you can:
    #
    # async def _find_subject_profiles(
    #     self, tenant_id, channel, channel_user_id, customer_id
    # ) -> list[UUID]:
    #     """Every profile, live or soft-deleted, holding the identity (released ones too)
    #     or, when channel is None, with the customer id."""
    #
    # async def _erase_subject(self, tenant_id, profile_ids, merge_ids) -> int:
    #     """In one atomic step: ConflictError if the merge log entries touching the profiles
    #     are not exactly merge_ids; else delete those entries and the profiles with all
    #     they own; return how many profiles were deleted."""

    async def _delete_item(self, tenant_id: UUID, item_id: UUID, item_type: ItemType) -> bool:
        """Hard-delete one item; DependentsError if an ACTIVE item derives from it, checked in the
        same atomic step as the delete."""
        raise NotImplementedError("_delete_item")

    async def _mark_orphans_page(
        self, tenant_id: UUID, now: datetime, limit: int, after: str | None
    ) -> KeysetBatch:
        """One transaction: read at most ``limit`` derived items (``source_item_id`` set) in a
        stable order of your choice (e.g. by table, then id) strictly after the opaque
        position ``after`` (None: the start); those not yet ORPHANED whose
        profile_field/profile_asset source is gone become ORPHANED (fields also get
        ``updated_at = now``). Return ``KeysetBatch(marked, examined, resume_after)``:
        ``resume_after`` is the position after the last item read (ids only, at most 200
        characters), None when nothing is left. Core passes it to the next call. (A provider
        written before keyset pages may implement ``_mark_orphans_batch`` instead.)"""
        raise NotImplementedError("_mark_orphans_page")

    async def _list_tenant_ids(self) -> list[UUID]:
        """Every tenant with at least one profile (live or soft-deleted)."""
        raise NotImplementedError("_list_tenant_ids")

    async def _count_items_by_status(self, tenant_id: UUID) -> dict[str, dict[str, int]]:
        """``{"fields": {status_value: n}, "assets": {...}}``; absent statuses may be omitted."""
        raise NotImplementedError("_count_items_by_status")

    async def _list_profile_ids(self, tenant_id: UUID) -> list[UUID]:
        """Ids of every profile of the tenant, live or soft-deleted, any order."""
        raise NotImplementedError("_list_profile_ids")

    async def _rewrite_field_payloads(
        self,
        tenant_id: UUID,
        profile_id: UUID,
        payloads: dict[UUID, tuple[Any, dict[str, Any]]],
    ) -> int:
        """Set ``value`` and ``source_metadata`` of the listed field versions of the profile (any
        status, soft-deleted profile too), in one atomic step; return how many matched."""
        raise NotImplementedError("_rewrite_field_payloads")
