"""Operator sweeps (``ccvault rotate-keys``): list_profile_ids and rewrite_field_payloads.

``list_profile_ids`` lists every profile a tenant still holds, live or soft-deleted.
``rewrite_field_payloads`` overwrites ``value`` and ``source_metadata`` of field versions in
place and nothing else: ids, status, timestamps, supersede links and each version's place in
the history stay exactly as they were, whatever the version's status and whether the
profile is soft-deleted.
"""

from __future__ import annotations

import json
import math
from typing import Any
from uuid import UUID, uuid4

import pytest

from ccvault import errors
from ccvault.models import ItemStatus, SourceType
from ccvault.store import ProfileStore
from ccvault_contract_tests.base import ContractBase
from ccvault_contract_tests.helpers import make_asset, make_field, new_profile, snapshot, ts

__all__ = ["OperationsContract"]

_OK = ("sealed", {"k": "v"})


def _bad_call(case: str, tenant: UUID, profile_id: UUID, first: UUID, second: UUID) -> Any:
    """(tenant_id, profile_id, payloads) of one malformed call; where the payloads hold a
    well-formed entry too, a store applying part of the call is caught."""
    return {
        "tenant-not-a-uuid": ("tenant", profile_id, {first: _OK}),
        "profile-not-a-uuid": (tenant, 42, {first: _OK}),
        "payloads-not-a-dict": (tenant, profile_id, [(first, _OK)]),
        "field-id-not-a-uuid": (tenant, profile_id, {first: _OK, "not-a-uuid": _OK}),
        "payload-not-a-pair": (tenant, profile_id, {first: _OK, second: ("x", {}, "extra")}),
        "value-nan": (tenant, profile_id, {first: _OK, second: (math.nan, {})}),
        "value-not-json": (tenant, profile_id, {first: _OK, second: ({"a": {1, 2}}, {})}),
        "metadata-not-a-dict": (tenant, profile_id, {first: _OK, second: ("x", ["quote"])}),
        "metadata-not-json": (tenant, profile_id, {first: _OK, second: ("x", {"at": object()})}),
    }[case]


class OperationsContract(ContractBase):
    async def _history(self, store: ProfileStore, tenant: UUID) -> tuple[UUID, list[UUID]]:
        """A profile with email v1 (SUPERSEDED) -> v2 (ACTIVE) and phone (ACTIVE)."""
        profile = await new_profile(store, tenant)
        v1 = await store.update_field(
            tenant,
            profile.id,
            make_field("email", "old@x.org", collected_at=ts(-20), source_metadata={"q": "o"}),
        )
        v2 = await store.update_field(
            tenant, profile.id, make_field("email", "new@x.org", collected_at=ts(-10))
        )
        phone = await store.update_field(tenant, profile.id, make_field("phone", "+15550001"))
        return profile.id, [v1, v2, phone]

    @staticmethod
    async def _stored(store: ProfileStore, tenant: UUID, profile_id: UUID) -> dict[str, Any]:
        """Every field version of the profile (live or soft-deleted) by id, as exported."""
        body = (await store.export_profile(tenant, profile_id))["profile"]
        return {v["id"]: v for versions in body["field_history"].values() for v in versions}

    @staticmethod
    async def _lifecycle(
        store: ProfileStore, tenant: UUID, profile_id: UUID
    ) -> dict[str, list[dict[str, Any]]]:
        """Each name's history in order, every attribute but value and source_metadata."""
        body = (await store.export_profile(tenant, profile_id))["profile"]
        return {
            name: [
                {k: v for k, v in version.items() if k not in ("value", "source_metadata")}
                for version in versions
            ]
            for name, versions in body["field_history"].items()
        }

    # ---------------------------------------------------------------- list_profile_ids

    async def test_list_profile_ids_lists_live_and_soft_deleted_profiles(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        live = await new_profile(store, tenant)
        deleted = await new_profile(store, tenant)
        await store.delete(tenant, deleted.id)
        assert await store.list_profile_ids(tenant) == sorted([live.id, deleted.id])

    async def test_list_profile_ids_excludes_purged_profiles(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        kept = await new_profile(store, tenant)
        purged = await new_profile(store, tenant)
        deleted_then_purged = await new_profile(store, tenant)
        await store.purge_profile(tenant, purged.id)
        await store.delete(tenant, deleted_then_purged.id)
        await store.purge_profile(tenant, deleted_then_purged.id)
        assert await store.list_profile_ids(tenant) == [kept.id]

    async def test_list_profile_ids_is_per_tenant(
        self, store: ProfileStore, tenant: UUID, other_tenant: UUID
    ) -> None:
        mine = [(await new_profile(store, tenant)).id for _ in range(3)]
        theirs = await new_profile(store, other_tenant)
        assert await store.list_profile_ids(tenant) == sorted(mine)
        assert await store.list_profile_ids(other_tenant) == [theirs.id]
        assert await store.list_profile_ids(uuid4()) == []

    async def test_list_profile_ids_refuses_a_non_uuid_tenant(self, store: ProfileStore) -> None:
        bad: Any = "not-a-uuid"
        with pytest.raises(errors.ValidationError):
            await store.list_profile_ids(bad)

    # ---------------------------------------------------------------- rewrite_field_payloads

    async def test_rewrite_sets_value_and_metadata_of_the_listed_versions(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        profile_id, (v1, v2, phone) = await self._history(store, tenant)
        # read first: a store that keeps reads (a cache) must not serve the old payloads
        assert await store.get_by_id(tenant, profile_id, include_history=True) is not None
        structured = {"n": [1, 2.5, None, True], "s": "x"}
        count = await store.rewrite_field_payloads(
            tenant, profile_id, {v1: ("sealed-1", {"k": "m1"}), phone: (structured, {})}
        )
        assert count == 2
        history = await store.get_field_history(tenant, profile_id, "email")
        assert [(v.id, v.value, v.source_metadata) for v in history] == [
            (v2, "new@x.org", {}),
            (v1, "sealed-1", {"k": "m1"}),
        ]
        profile = await store.get_by_id(tenant, profile_id)
        assert profile is not None
        assert profile.fields["phone"].value == structured
        assert profile.fields["email"].value == "new@x.org"

    async def test_rewrite_changes_nothing_but_value_and_metadata(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        profile_id, ids = await self._history(store, tenant)
        before = await self._lifecycle(store, tenant, profile_id)
        counts = await store.count_items_by_status(tenant)
        payloads: dict[UUID, tuple[Any, dict[str, Any]]] = {
            item: (f"sealed-{n}", {"n": n}) for n, item in enumerate(ids)
        }
        assert await store.rewrite_field_payloads(tenant, profile_id, payloads) == 3
        # same ids, statuses, timestamps, supersede links, in the same history order
        assert await self._lifecycle(store, tenant, profile_id) == before
        assert await store.count_items_by_status(tenant) == counts
        active = await store.get_field(tenant, profile_id, "email")
        assert active is not None and (active.id, active.value) == (ids[1], "sealed-1")

    async def test_rewrite_reaches_versions_of_every_status(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        profile_id, (v1, v2, _) = await self._history(store, tenant)
        doc = await store.add_asset(tenant, profile_id, make_asset("payslip"))
        orphan = await store.update_field(
            tenant,
            profile_id,
            make_field(
                "income",
                1,
                collected_at=ts(-20),
                source_item_id=doc,
                source_item_type=SourceType.PROFILE_ASSET,
            ),
        )
        await store.update_field(tenant, profile_id, make_field("income", 2, collected_at=ts(-10)))
        await store.delete_item(tenant, doc, "profile_asset")
        assert await store.mark_orphans(tenant) == 1
        before = await self._lifecycle(store, tenant, profile_id)
        payloads: dict[UUID, tuple[Any, dict[str, Any]]] = {
            v1: ("s-superseded", {}),
            v2: ("s-active", {}),
            orphan: ("s-orphaned", {"m": True}),
        }
        assert await store.rewrite_field_payloads(tenant, profile_id, payloads) == 3
        stored = await self._stored(store, tenant, profile_id)
        assert [(stored[str(i)]["status"], stored[str(i)]["value"]) for i in payloads] == [
            (ItemStatus.SUPERSEDED.value, "s-superseded"),
            (ItemStatus.ACTIVE.value, "s-active"),
            (ItemStatus.ORPHANED.value, "s-orphaned"),
        ]
        assert stored[str(orphan)]["source_metadata"] == {"m": True}
        assert await self._lifecycle(store, tenant, profile_id) == before

    async def test_rewrite_ignores_ids_not_on_the_profile(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        profile_id, (_, v2, _) = await self._history(store, tenant)
        neighbour = await new_profile(store, tenant)
        theirs = await store.update_field(tenant, neighbour.id, make_field("email", "n@x.org"))
        before = await snapshot(store, tenant, profiles=(neighbour.id,))
        count = await store.rewrite_field_payloads(
            tenant, profile_id, {uuid4(): ("x", {}), theirs: ("x", {}), v2: ("sealed", {})}
        )
        assert count == 1
        assert await snapshot(store, tenant, profiles=(neighbour.id,)) == before
        active = await store.get_field(tenant, profile_id, "email")
        assert active is not None and active.value == "sealed"
        # nothing to match: an empty call, an unknown profile, a purged one
        assert await store.rewrite_field_payloads(tenant, profile_id, {}) == 0
        assert await store.rewrite_field_payloads(tenant, uuid4(), {v2: ("y", {})}) == 0
        await store.purge_profile(tenant, neighbour.id)
        assert await store.rewrite_field_payloads(tenant, neighbour.id, {theirs: ("y", {})}) == 0
        active = await store.get_field(tenant, profile_id, "email")
        assert active is not None and active.value == "sealed"

    async def test_rewrite_is_tenant_isolated(
        self, store: ProfileStore, tenant: UUID, other_tenant: UUID
    ) -> None:
        theirs, their_ids = await self._history(store, other_tenant)
        mine, _ = await self._history(store, tenant)
        before = await snapshot(store, other_tenant, profiles=(theirs,))
        payloads: dict[UUID, tuple[Any, dict[str, Any]]] = {i: ("x", {}) for i in their_ids}
        # their profile id under my tenant, and their field ids on my profile
        assert await store.rewrite_field_payloads(tenant, theirs, payloads) == 0
        assert await store.rewrite_field_payloads(tenant, mine, payloads) == 0
        assert await snapshot(store, other_tenant, profiles=(theirs,)) == before

    async def test_rewrite_on_a_soft_deleted_profile(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        profile_id, (v1, v2, _) = await self._history(store, tenant)
        await store.delete(tenant, profile_id)
        before = await self._lifecycle(store, tenant, profile_id)
        count = await store.rewrite_field_payloads(
            tenant, profile_id, {v1: ("s1", {"m": 1}), v2: ("s2", {})}
        )
        assert count == 2
        stored = await self._stored(store, tenant, profile_id)
        assert (stored[str(v1)]["value"], stored[str(v1)]["source_metadata"]) == ("s1", {"m": 1})
        assert stored[str(v2)]["value"] == "s2"
        assert await self._lifecycle(store, tenant, profile_id) == before
        # still soft-deleted: the rewrite brings nothing back
        assert await store.get_by_id(tenant, profile_id) is None
        assert await store.list_profile_ids(tenant) == [profile_id]

    @pytest.mark.parametrize(
        "case",
        [
            "tenant-not-a-uuid",
            "profile-not-a-uuid",
            "payloads-not-a-dict",
            "field-id-not-a-uuid",
            "payload-not-a-pair",
            "value-nan",
            "value-not-json",
            "metadata-not-a-dict",
            "metadata-not-json",
        ],
    )
    async def test_rewrite_refuses_bad_input_and_changes_nothing(
        self, store: ProfileStore, tenant: UUID, case: str
    ) -> None:
        profile_id, (v1, v2, _) = await self._history(store, tenant)
        before = json.loads(await snapshot(store, tenant, profiles=(profile_id,)))
        tenant_arg, profile_arg, payloads = _bad_call(case, tenant, profile_id, v1, v2)
        with pytest.raises(errors.ValidationError):
            await store.rewrite_field_payloads(tenant_arg, profile_arg, payloads)
        assert json.loads(await snapshot(store, tenant, profiles=(profile_id,))) == before
