"""Fields: update_field, get_field, get_field_history, values, supersede semantics."""

from __future__ import annotations

from typing import Any
from uuid import UUID, uuid4

import pytest

from ccvault import errors
from ccvault.models import ItemStatus, ProfileFieldSource, SourceType
from ccvault.store import ProfileStore
from ccvault_contract_tests.base import ContractBase
from ccvault_contract_tests.capabilities import LARGE_VALUES, NUL_CHARACTERS, requires
from ccvault_contract_tests.helpers import (
    assert_unbroken_chain,
    field_view,
    make_field,
    new_profile,
    snapshot,
    ts,
)

__all__ = ["FieldsContract"]

JSON_VALUES: dict[str, Any] = {
    "null": None,
    "true": True,
    "false": False,
    "zero": 0,
    "negative_int": -42,
    "big_int": 2**53,
    "float": 3.25,
    "empty_string": "",
    "unicode": "Zoë 🌍 日本語 \u2028 ok",
    "list": [1, "two", None, [3.5, False]],
    "object": {"street": "1 Main St", "geo": {"lat": 48.85, "lon": 2.35}, "tags": []},
    "empty_object": {},
    "whole_float": 2.0,
    "tiny_and_huge_floats": [1e-300, 1.7976931348623157e308, -2.5e-7],
    "unicode_keys": {"clé": "valeur", "名前": "太郎", "": "empty key"},
    "deeply_nested": {"a": [{"b": [{"c": [{"d": [{"e": [1]}]}]}]}]},
}


class FieldsContract(ContractBase):
    async def test_update_field_stores_an_active_version_and_returns_its_id(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        profile = await new_profile(store, tenant)
        item = make_field("email", "ada@example.com")
        field_id = await store.update_field(tenant, profile.id, item)
        assert field_id == item.id
        found = await store.get_field(tenant, profile.id, "email")
        assert found is not None and found.id == field_id
        assert found.status is ItemStatus.ACTIVE and found.value == "ada@example.com"

    async def test_every_attribute_round_trips(self, store: ProfileStore, tenant: UUID) -> None:
        profile = await new_profile(store, tenant)
        item = make_field(
            "date_of_birth",
            "1815-12-10",
            value_type="date",
            source=ProfileFieldSource.DOCUMENT_EXTRACTED,
            source_session_id=uuid4(),
            source_scenario_id=uuid4(),
            source_step_id=uuid4(),
            source_item_id=uuid4(),
            source_item_type=SourceType.SESSION,
            source_metadata={"quote": "born 10 Dec 1815", "page": 2, "score": [0.5, 1]},
            verified=True,
            verification_method="document",
            verified_at=ts(-30),
            verified_by="agent-7",
            confidence=0.875,
            requires_confirmation=True,
            collected_at=ts(-60),
            expires_at=ts(3600),
            field_definition_id=uuid4(),
        )
        await store.update_field(tenant, profile.id, item)
        found = await store.get_field(tenant, profile.id, "date_of_birth")
        assert found is not None
        assert field_view(found) == field_view(item)

    async def test_status_and_supersede_links_given_by_the_caller_are_ignored(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        profile = await new_profile(store, tenant)
        item = make_field(
            "city",
            "Lima",
            status=ItemStatus.SUPERSEDED,
            superseded_by_id=uuid4(),
            superseded_at=ts(),
        )
        await store.update_field(tenant, profile.id, item)
        found = await store.get_field(tenant, profile.id, "city")
        assert found is not None
        assert found.status is ItemStatus.ACTIVE
        assert found.superseded_by_id is None and found.superseded_at is None

    async def test_update_field_supersedes_the_active_version(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        profile = await new_profile(store, tenant)
        old_id = await store.update_field(tenant, profile.id, make_field("email", "a@x.org"))
        new_id = await store.update_field(tenant, profile.id, make_field("email", "b@x.org"))
        old = await store.get_field(tenant, profile.id, "email", status=ItemStatus.SUPERSEDED)
        assert old is not None and old.id == old_id
        assert old.superseded_by_id == new_id
        assert old.superseded_at is not None
        current = await store.get_field(tenant, profile.id, "email")
        assert current is not None and current.id == new_id and current.value == "b@x.org"

    async def test_without_supersede_an_active_version_is_a_conflict(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        profile = await new_profile(store, tenant)
        await store.update_field(tenant, profile.id, make_field("email", "a@x.org"))
        before = await snapshot(store, tenant, profiles=(profile.id,))
        with pytest.raises(errors.ActiveFieldConflictError):
            await store.update_field(
                tenant, profile.id, make_field("email", "b@x.org"), supersede_existing=False
            )
        assert await snapshot(store, tenant, profiles=(profile.id,)) == before

    async def test_without_supersede_and_no_active_version_it_is_stored(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        profile = await new_profile(store, tenant)
        field_id = await store.update_field(
            tenant, profile.id, make_field("email"), supersede_existing=False
        )
        found = await store.get_field(tenant, profile.id, "email")
        assert found is not None and found.id == field_id

    async def test_update_field_on_an_unknown_profile_is_not_found(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        with pytest.raises(errors.NotFoundError):
            await store.update_field(tenant, uuid4(), make_field())
        assert (await store.count_items_by_status(tenant))["fields"]["active"] == 0

    async def test_reusing_a_stored_field_id_is_a_conflict(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        profile = await new_profile(store, tenant)
        item = make_field("email", "a@x.org")
        await store.update_field(tenant, profile.id, item)
        before = await snapshot(store, tenant, profiles=(profile.id,))
        with pytest.raises(errors.ConflictError):
            await store.update_field(tenant, profile.id, item.model_copy(update={"value": "b"}))
        assert await snapshot(store, tenant, profiles=(profile.id,)) == before

    async def test_caller_changes_after_the_call_do_not_reach_the_store(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        profile = await new_profile(store, tenant)
        item = make_field("prefs", {"lang": "en"})
        await store.update_field(tenant, profile.id, item)
        item.value["lang"] = "fr"
        found = await store.get_field(tenant, profile.id, "prefs")
        assert found is not None and found.value == {"lang": "en"}

    @pytest.mark.parametrize("case", sorted(JSON_VALUES))
    async def test_json_values_round_trip(
        self, store: ProfileStore, tenant: UUID, case: str
    ) -> None:
        profile = await new_profile(store, tenant)
        value = JSON_VALUES[case]
        await store.update_field(tenant, profile.id, make_field("value_under_test", value))
        found = await store.get_field(tenant, profile.id, "value_under_test")
        assert found is not None
        assert found.value == value
        assert type(found.value) is type(value)
        again = await store.get_by_id(tenant, profile.id)
        assert again is not None and again.fields["value_under_test"].value == value

    async def test_updates_of_different_names_are_independent(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        profile = await new_profile(store, tenant)
        for name in ("first_name", "last_name", "email"):
            await store.update_field(tenant, profile.id, make_field(name, name.upper()))
        found = await store.get_by_id(tenant, profile.id)
        assert found is not None
        assert {n: f.value for n, f in found.fields.items()} == {
            "first_name": "FIRST_NAME",
            "last_name": "LAST_NAME",
            "email": "EMAIL",
        }

    async def test_sequential_updates_form_an_unbroken_chain(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        profile = await new_profile(store, tenant)
        for i in range(6):
            await store.update_field(tenant, profile.id, make_field("score", i))
        history = await store.get_field_history(tenant, profile.id, "score")
        assert len(history) == 6
        assert_unbroken_chain(history)
        assert history[0].value == 5 and history[0].status is ItemStatus.ACTIVE

    async def test_a_field_reads_the_same_through_every_path(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        profile = await new_profile(store, tenant)
        item = make_field(
            "income",
            {"amount": 4200.5, "currency": "EUR"},
            source_metadata={"doc": "payslip"},
            verified=True,
            confidence=0.5,
        )
        await store.update_field(tenant, profile.id, item)
        by_get = await store.get_field(tenant, profile.id, "income")
        (by_history,) = await store.get_field_history(tenant, profile.id, "income")
        whole = await store.get_by_id(tenant, profile.id, include_history=True)
        assert by_get is not None and whole is not None
        expected = field_view(item)
        assert field_view(by_get) == expected
        assert field_view(by_history) == expected
        assert field_view(whole.fields["income"]) == expected
        assert field_view(whole.field_history["income"][0]) == expected

    async def test_timestamps_in_other_zones_are_stored_as_the_same_instant_in_utc(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        from datetime import timedelta, timezone

        profile = await new_profile(store, tenant)
        plus_two = timezone(timedelta(hours=2))
        moment = ts(-3600).astimezone(plus_two)
        await store.update_field(
            tenant, profile.id, make_field("city", "Cairo", collected_at=moment)
        )
        found = await store.get_field(tenant, profile.id, "city")
        assert found is not None
        assert found.collected_at == moment
        offset = found.collected_at.utcoffset()
        assert offset is not None and offset.total_seconds() == 0

    async def test_a_field_id_of_another_profile_is_a_conflict(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        first = await new_profile(store, tenant)
        second = await new_profile(store, tenant)
        item = make_field("email", "a@x.org")
        await store.update_field(tenant, first.id, item)
        before = await snapshot(store, tenant, profiles=(first.id, second.id))
        with pytest.raises(errors.ConflictError):
            await store.update_field(tenant, second.id, item)
        assert await snapshot(store, tenant, profiles=(first.id, second.id)) == before

    # ---------------------------------------------------------------- get_field

    async def test_get_field_by_status_returns_the_most_recent_of_that_status(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        profile = await new_profile(store, tenant)
        ids = [
            await store.update_field(
                tenant, profile.id, make_field("email", f"v{i}@x.org", collected_at=ts(-100 + i))
            )
            for i in range(3)
        ]
        superseded = await store.get_field(
            tenant, profile.id, "email", status=ItemStatus.SUPERSEDED
        )
        assert superseded is not None and superseded.id == ids[1]
        active = await store.get_field(tenant, profile.id, "email", status=ItemStatus.ACTIVE)
        assert active is not None and active.id == ids[2]
        assert (
            await store.get_field(tenant, profile.id, "email", status=ItemStatus.ORPHANED) is None
        )

    async def test_get_field_with_status_none_returns_the_most_recent_of_any_status(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        profile = await new_profile(store, tenant)
        await store.update_field(tenant, profile.id, make_field("email", "a", collected_at=ts(-50)))
        newest = await store.update_field(
            tenant, profile.id, make_field("email", "b", collected_at=ts(-10))
        )
        found = await store.get_field(tenant, profile.id, "email", status=None)
        assert found is not None and found.id == newest

    async def test_get_field_with_status_none_sees_superseded_when_newest(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        profile = await new_profile(store, tenant)
        newest = await store.update_field(
            tenant, profile.id, make_field("email", "new", collected_at=ts(-1))
        )
        # a late-arriving older observation becomes ACTIVE but is not the newest collected
        await store.update_field(
            tenant, profile.id, make_field("email", "old", collected_at=ts(-99))
        )
        found = await store.get_field(tenant, profile.id, "email", status=None)
        assert found is not None and found.id == newest
        assert found.status is ItemStatus.SUPERSEDED

    async def test_get_field_unknown_name_is_none(self, store: ProfileStore, tenant: UUID) -> None:
        profile = await new_profile(store, tenant)
        await store.update_field(tenant, profile.id, make_field("email"))
        assert await store.get_field(tenant, profile.id, "phone") is None
        assert await store.get_field(tenant, profile.id, "phone", status=None) is None

    async def test_get_field_of_unknown_profile_is_none(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        assert await store.get_field(tenant, uuid4(), "email") is None

    # ---------------------------------------------------------------- get_field_history

    async def test_field_history_is_newest_collected_first(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        profile = await new_profile(store, tenant)
        ages = [30, 90, 10, 60]
        ids = {
            age: await store.update_field(
                tenant, profile.id, make_field("city", f"c{age}", collected_at=ts(-age))
            )
            for age in ages
        }
        history = await store.get_field_history(tenant, profile.id, "city")
        assert [v.id for v in history] == [ids[age] for age in sorted(ages)]

    async def test_field_history_ties_are_newest_write_first(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        profile = await new_profile(store, tenant)
        moment = ts(-5)
        ids = [
            await store.update_field(
                tenant, profile.id, make_field("city", f"c{i}", collected_at=moment)
            )
            for i in range(5)
        ]
        history = await store.get_field_history(tenant, profile.id, "city")
        assert [v.id for v in history] == list(reversed(ids))

    async def test_field_history_of_unknown_name_is_empty(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        profile = await new_profile(store, tenant)
        assert await store.get_field_history(tenant, profile.id, "city") == []

    async def test_field_history_only_holds_that_name(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        profile = await new_profile(store, tenant)
        await store.update_field(tenant, profile.id, make_field("city", "A"))
        await store.update_field(tenant, profile.id, make_field("country", "B"))
        history = await store.get_field_history(tenant, profile.id, "city")
        assert [v.name for v in history] == ["city"]

    # ---------------------------------------------------------------- odd values

    async def test_nul_characters_round_trip_or_are_refused(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        profile = await new_profile(store, tenant)
        before = await snapshot(store, tenant, profiles=(profile.id,))
        try:
            await store.update_field(tenant, profile.id, make_field("note", "a\x00b"))
        except errors.ValidationError:
            assert await snapshot(store, tenant, profiles=(profile.id,)) == before
            return
        found = await store.get_field(tenant, profile.id, "note")
        assert found is not None and found.value == "a\x00b"

    @requires(NUL_CHARACTERS)
    async def test_nul_characters_round_trip(self, store: ProfileStore, tenant: UUID) -> None:
        profile = await new_profile(store, tenant)
        value = {"k\x00": ["\x00", "x\x00y"]}
        await store.update_field(
            tenant, profile.id, make_field("note", value, source_metadata={"q": "\x00"})
        )
        found = await store.get_field(tenant, profile.id, "note")
        assert found is not None and found.value == value
        assert found.source_metadata == {"q": "\x00"}

    @requires(LARGE_VALUES)
    async def test_a_one_mebibyte_string_round_trips(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        profile = await new_profile(store, tenant)
        value = "é" * (1 << 19)  # 1 MiB of UTF-8
        await store.update_field(tenant, profile.id, make_field("blob", value))
        found = await store.get_field(tenant, profile.id, "blob")
        assert found is not None and found.value == value

    @requires(LARGE_VALUES)
    async def test_a_ten_thousand_item_list_round_trips(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        profile = await new_profile(store, tenant)
        value = [{"i": i, "s": str(i) * 10} for i in range(10_000)]
        await store.update_field(tenant, profile.id, make_field("items", value))
        found = await store.get_field(tenant, profile.id, "items")
        assert found is not None and found.value == value
