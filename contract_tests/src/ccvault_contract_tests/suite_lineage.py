"""Lineage: derivation chains (root first, cycles, depth), derived items, dependents."""

from __future__ import annotations

from uuid import UUID, uuid4

import pytest

from ccvault import errors
from ccvault.models import ItemStatus, SourceType
from ccvault.store import ProfileStore, StoreRules
from ccvault_contract_tests.base import ContractBase
from ccvault_contract_tests.helpers import make_asset, make_field, new_profile

__all__ = ["LineageContract"]


async def _field_chain(
    store: ProfileStore, tenant: UUID, profile_id: UUID, length: int
) -> list[UUID]:
    """``length`` fields, each derived from the one before; the first from a session."""
    ids: list[UUID] = []
    for i in range(length):
        source = (
            {"source_item_id": ids[-1], "source_item_type": SourceType.PROFILE_FIELD}
            if ids
            else {"source_item_id": uuid4(), "source_item_type": SourceType.SESSION}
        )
        ids.append(
            await store.update_field(
                tenant,
                profile_id,
                make_field(f"step_{i}", i, source_metadata={"step": i}, **source),
            )
        )
    return ids


class LineageContract(ContractBase):
    async def test_chain_is_root_first_and_item_last(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        profile = await new_profile(store, tenant)
        asset_id = await store.add_asset(
            tenant,
            profile.id,
            make_asset("payslip", source_item_id=uuid4(), source_item_type=SourceType.EXTERNAL),
        )
        income = await store.update_field(
            tenant,
            profile.id,
            make_field(
                "monthly_income",
                4200,
                source_item_id=asset_id,
                source_item_type=SourceType.PROFILE_ASSET,
                source_metadata={"page": 1},
            ),
        )
        yearly = await store.update_field(
            tenant,
            profile.id,
            make_field(
                "yearly_income",
                50400,
                source_item_id=income,
                source_item_type=SourceType.PROFILE_FIELD,
                source_metadata={"formula": "x12"},
            ),
        )
        chain = await store.get_derivation_chain(tenant, yearly, "profile_field")
        assert [(e["id"], e["type"], e["name"]) for e in chain] == [
            (asset_id, "profile_asset", "payslip"),
            (income, "profile_field", "monthly_income"),
            (yearly, "profile_field", "yearly_income"),
        ]
        assert chain[1]["source_metadata"] == {"page": 1}
        assert chain[2]["source_metadata"] == {"formula": "x12"}

    async def test_chain_entries_have_exactly_the_documented_keys(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        profile = await new_profile(store, tenant)
        ids = await _field_chain(store, tenant, profile.id, 2)
        chain = await store.get_derivation_chain(tenant, ids[-1], "profile_field")
        assert all(set(entry) == {"id", "type", "name", "source_metadata"} for entry in chain)

    async def test_chain_of_an_underived_item_is_the_item_alone(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        profile = await new_profile(store, tenant)
        field_id = await store.update_field(tenant, profile.id, make_field())
        chain = await store.get_derivation_chain(tenant, field_id, "profile_field")
        assert [e["id"] for e in chain] == [field_id]

    async def test_chain_of_an_unknown_item_is_empty(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        assert await store.get_derivation_chain(tenant, uuid4(), "profile_field") == []
        assert await store.get_derivation_chain(tenant, uuid4(), "profile_asset") == []

    async def test_chain_stops_at_a_session_tool_or_external_source(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        profile = await new_profile(store, tenant)
        for kind in (SourceType.SESSION, SourceType.TOOL, SourceType.EXTERNAL):
            root = await store.update_field(
                tenant,
                profile.id,
                make_field(f"root_{kind.value}", 1, source_item_id=uuid4(), source_item_type=kind),
            )
            chain = await store.get_derivation_chain(tenant, root, "profile_field")
            assert [e["id"] for e in chain] == [root]

    async def test_chain_stops_at_a_missing_item(self, store: ProfileStore, tenant: UUID) -> None:
        profile = await new_profile(store, tenant)
        orphan = await store.update_field(
            tenant,
            profile.id,
            make_field(
                "derived", 1, source_item_id=uuid4(), source_item_type=SourceType.PROFILE_FIELD
            ),
        )
        child = await store.update_field(
            tenant,
            profile.id,
            make_field(
                "child", 2, source_item_id=orphan, source_item_type=SourceType.PROFILE_FIELD
            ),
        )
        chain = await store.get_derivation_chain(tenant, child, "profile_field")
        assert [e["id"] for e in chain] == [orphan, child]

    async def test_chain_never_loops_on_a_cycle(self, store: ProfileStore, tenant: UUID) -> None:
        profile = await new_profile(store, tenant)
        a, b, c = uuid4(), uuid4(), uuid4()
        for me, parent, name in ((a, c, "cycle_a"), (b, a, "cycle_b"), (c, b, "cycle_c")):
            await store.update_field(
                tenant,
                profile.id,
                make_field(
                    name, 0, id=me, source_item_id=parent, source_item_type=SourceType.PROFILE_FIELD
                ),
            )
        chain = await store.get_derivation_chain(tenant, c, "profile_field")
        ids = [e["id"] for e in chain]
        assert ids[-1] == c
        assert sorted(map(str, ids)) == sorted(map(str, (a, b, c)))
        assert len(set(ids)) == len(ids)

    async def test_a_self_derived_item_is_its_own_chain(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        profile = await new_profile(store, tenant)
        me = uuid4()
        await store.update_field(
            tenant,
            profile.id,
            make_field(
                "selfish", 0, id=me, source_item_id=me, source_item_type=SourceType.PROFILE_FIELD
            ),
        )
        chain = await store.get_derivation_chain(tenant, me, "profile_field")
        assert [e["id"] for e in chain] == [me]

    async def test_chain_respects_max_derivation_chain_depth(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        profile = await new_profile(store, tenant)
        ids = await _field_chain(store, tenant, profile.id, 6)
        store.rules = StoreRules(max_derivation_chain_depth=3)
        chain = await store.get_derivation_chain(tenant, ids[-1], "profile_field")
        assert [e["id"] for e in chain] == ids[-3:]

    async def test_default_depth_limit_is_ten(self, store: ProfileStore, tenant: UUID) -> None:
        profile = await new_profile(store, tenant)
        ids = await _field_chain(store, tenant, profile.id, 12)
        store.rules = StoreRules()
        chain = await store.get_derivation_chain(tenant, ids[-1], "profile_field")
        assert [e["id"] for e in chain] == ids[-10:]

    async def test_chain_of_an_asset_derived_from_a_field(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        profile = await new_profile(store, tenant)
        field_id = await store.update_field(tenant, profile.id, make_field("address", "1 Main"))
        asset_id = await store.add_asset(
            tenant,
            profile.id,
            make_asset(
                "address_proof", source_item_id=field_id, source_item_type=SourceType.PROFILE_FIELD
            ),
        )
        chain = await store.get_derivation_chain(tenant, asset_id, "profile_asset")
        assert [(e["id"], e["type"]) for e in chain] == [
            (field_id, "profile_field"),
            (asset_id, "profile_asset"),
        ]

    async def test_chain_follows_superseded_sources(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        profile = await new_profile(store, tenant)
        source = await store.update_field(tenant, profile.id, make_field("salary", 1))
        derived = await store.update_field(
            tenant,
            profile.id,
            make_field(
                "tax_band", "A", source_item_id=source, source_item_type=SourceType.PROFILE_FIELD
            ),
        )
        await store.update_field(tenant, profile.id, make_field("salary", 2))
        chain = await store.get_derivation_chain(tenant, derived, "profile_field")
        assert [e["id"] for e in chain] == [source, derived]

    async def test_get_derived_items_lists_direct_children_only(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        profile = await new_profile(store, tenant)
        root = await store.add_asset(tenant, profile.id, make_asset("bank_statement"))
        link = {"source_item_id": root, "source_item_type": SourceType.PROFILE_ASSET}
        child_field = await store.update_field(tenant, profile.id, make_field("iban", "X", **link))
        child_asset = await store.add_asset(tenant, profile.id, make_asset("summary", **link))
        await store.update_field(
            tenant,
            profile.id,
            make_field(
                "grandchild",
                1,
                source_item_id=child_field,
                source_item_type=SourceType.PROFILE_FIELD,
            ),
        )
        derived = await store.get_derived_items(tenant, root)
        assert set(derived) == {"fields", "assets"}
        assert [f.id for f in derived["fields"]] == [child_field]
        assert [a.id for a in derived["assets"]] == [child_asset]

    async def test_get_derived_items_includes_every_status(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        profile = await new_profile(store, tenant)
        root = await store.update_field(tenant, profile.id, make_field("source_doc", "x"))
        link = {"source_item_id": root, "source_item_type": SourceType.PROFILE_FIELD}
        first = await store.update_field(tenant, profile.id, make_field("derived", 1, **link))
        second = await store.update_field(tenant, profile.id, make_field("derived", 2, **link))
        derived = await store.get_derived_items(tenant, root)
        assert [(f.id, f.status) for f in derived["fields"]] == [
            (first, ItemStatus.SUPERSEDED),
            (second, ItemStatus.ACTIVE),
        ]

    async def test_get_derived_items_of_an_unknown_item_is_empty(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        assert await store.get_derived_items(tenant, uuid4()) == {"fields": [], "assets": []}

    async def test_check_has_dependents_follows_active_children(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        profile = await new_profile(store, tenant)
        root = await store.update_field(tenant, profile.id, make_field("source_doc", "x"))
        assert await store.check_has_dependents(tenant, root) is False
        await store.update_field(
            tenant,
            profile.id,
            make_field(
                "derived", 1, source_item_id=root, source_item_type=SourceType.PROFILE_FIELD
            ),
        )
        assert await store.check_has_dependents(tenant, root) is True
        # the only child is superseded by a version that no longer derives from root
        await store.update_field(tenant, profile.id, make_field("derived", 2))
        assert await store.check_has_dependents(tenant, root) is False

    async def test_check_has_dependents_counts_assets(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        profile = await new_profile(store, tenant)
        root = await store.update_field(tenant, profile.id, make_field("source_doc", "x"))
        await store.add_asset(
            tenant,
            profile.id,
            make_asset("rendered", source_item_id=root, source_item_type=SourceType.PROFILE_FIELD),
        )
        assert await store.check_has_dependents(tenant, root) is True

    async def test_check_has_dependents_of_an_unknown_item_is_false(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        assert await store.check_has_dependents(tenant, uuid4()) is False

    @pytest.mark.parametrize("bad", ["field", "asset", "", "PROFILE_FIELD_X", None, 3])
    async def test_bad_item_type_is_a_validation_error(
        self, store: ProfileStore, tenant: UUID, bad: object
    ) -> None:
        with pytest.raises(errors.ValidationError):
            await store.get_derivation_chain(tenant, uuid4(), bad)  # type: ignore[arg-type]
