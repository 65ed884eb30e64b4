"""Wrappers forward hook to hook: only the outermost public layer checks, applies the rules
and presents; side effects of the public layer happen once per call; public methods are
final."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from typing import Any
from uuid import UUID

import pytest
from redis.asyncio import Redis

from ccvault import metrics
from ccvault import store as store_module
from ccvault.cache import CachedProfileStore
from ccvault.crypto import EncryptedProfileStore, Keyring, generate_key_entry
from ccvault.models import (
    Channel,
    ItemStatus,
    ProfileField,
    ProfileFieldDefinition,
    ScenarioFieldRequirement,
    SourceType,
    utcnow,
)
from ccvault.store import ForwardingProfileStore, ProfileStore, final_methods
from ccvault_inmemory import InMemoryProfileStore

REDIS_URL = "redis://127.0.0.1:6379/0"


class HookCounter(ForwardingProfileStore):
    """The provider seen from the wrappers: counts every hook call that reaches it."""

    def __init__(self, inner: ProfileStore) -> None:
        super().__init__(inner)
        self.calls: Counter[str] = Counter()

    def __getattribute__(self, name: str) -> Any:
        attribute = super().__getattribute__(name)
        if name.startswith("_") and not name.startswith("__") and callable(attribute):
            hooks = vars(ProfileStore)
            if name in hooks and name != "__init__":
                super().__getattribute__("calls")[name] += 1
        return attribute


@pytest.fixture
async def stack() -> AsyncIterator[tuple[EncryptedProfileStore, HookCounter]]:
    client = Redis.from_url(REDIS_URL)
    prefix = f"ccvault-test:{uuid.uuid4().hex}:"
    counter = HookCounter(InMemoryProfileStore())
    cached = CachedProfileStore(counter, client, key_prefix=prefix)
    encrypted = EncryptedProfileStore(
        cached, Keyring.parse(generate_key_entry("k1")), encrypt_all=True
    )
    async with encrypted:
        yield encrypted, counter
    keys = [key async for key in client.scan_iter(match=f"{prefix}*", count=1000)]
    if keys:
        await client.delete(*keys)
    await client.aclose()


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """How often the public layer's argument check of models and its presentation run."""
    seen: Counter[str] = Counter()

    def counting(name: str, real: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            seen[name] += 1
            return real(*args, **kwargs)

        return wrapper

    for name in ("_model", "present_profile", "present_field"):
        monkeypatch.setattr(store_module, name, counting(name, getattr(store_module, name)))
    return seen


def _chain_observations(tenant: UUID) -> float:
    value = metrics.REGISTRY.get_sample_value(
        "profile_derivation_chain_depth_count", {"tenant_id": str(tenant)}
    )
    return value or 0.0


async def test_each_public_call_checks_and_presents_once_through_cache_and_encryption(
    stack: tuple[EncryptedProfileStore, HookCounter], counted: Counter[str]
) -> None:
    store, _ = stack
    tenant = uuid.uuid4()
    profile = await store.get_or_create(tenant, Channel.WEB, "user-1")
    assert counted["present_profile"] == 1

    counted.clear()
    await store.update_field(tenant, profile.id, ProfileField(name="email", value="a@b.c"))
    assert counted["_model"] == 1  # the field is checked and copied once, not once per layer

    counted.clear()
    found = await store.get_by_id(tenant, profile.id)
    assert found is not None and found.fields["email"].value == "a@b.c"
    assert counted["present_profile"] == 1

    counted.clear()
    item = await store.get_field(tenant, profile.id, "email")
    assert item is not None and item.value == "a@b.c"
    assert counted["present_field"] == 1

    counted.clear()
    history = await store.get_field_history(tenant, profile.id, "email")
    assert len(history) == 1 and counted["present_field"] == 1


async def test_the_overdue_sweep_of_a_non_superseding_write_runs_once(
    stack: tuple[EncryptedProfileStore, HookCounter],
) -> None:
    store, provider = stack
    tenant = uuid.uuid4()
    profile = await store.get_or_create(tenant, Channel.WEB, "user-2")
    past = utcnow() - timedelta(seconds=5)
    await store.update_field(
        tenant, profile.id, ProfileField(name="code", value="1", expires_at=past)
    )
    provider.calls.clear()
    await store.update_field(
        tenant, profile.id, ProfileField(name="code", value="2"), supersede_existing=False
    )
    # the sweep is part of the provider's one atomic _update_field step (so a refused
    # write sweeps nothing), reached once through the whole stack
    assert provider.calls["_expire_stale_fields"] == 0
    assert provider.calls["_update_field"] == 1
    expired = await store.get_field(tenant, profile.id, "code", status=ItemStatus.EXPIRED)
    assert expired is not None and expired.value == "1"


async def test_a_derivation_chain_is_observed_once_per_call(
    stack: tuple[EncryptedProfileStore, HookCounter],
) -> None:
    store, provider = stack
    tenant = uuid.uuid4()
    profile = await store.get_or_create(tenant, Channel.WEB, "user-3")
    root = ProfileField(name="scan", value="x", source_item_type=SourceType.SESSION)
    await store.update_field(tenant, profile.id, root)
    child = ProfileField(
        name="dob",
        value="2000-01-01",
        source_item_id=root.id,
        source_item_type=SourceType.PROFILE_FIELD,
    )
    await store.update_field(tenant, profile.id, child)
    before = _chain_observations(tenant)
    for _ in range(2):  # a miss, then a hit in the cache: one observation each
        chain = await store.get_derivation_chain(tenant, child.id, "profile_field")
        assert [entry["id"] for entry in chain] == [root.id, child.id]
    assert _chain_observations(tenant) == before + 2
    assert provider.calls["_get_derivation_chain"] == 1  # the second came from Redis


async def test_wrappers_reach_the_provider_through_hooks_only(
    stack: tuple[EncryptedProfileStore, HookCounter], monkeypatch: pytest.MonkeyPatch
) -> None:
    """No layer below the outermost runs a public method: a call would show up here."""
    store, _ = stack
    layers: list[str] = []
    for name in sorted(final_methods()):
        real = getattr(ProfileStore, name)

        def spy(self: ProfileStore, *args: Any, _real: Any = real, **kwargs: Any) -> Any:
            layers.append(type(self).__name__)
            return _real(self, *args, **kwargs)

        monkeypatch.setattr(ProfileStore, name, spy)
    tenant, agent, scenario = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    profile = await store.get_or_create(tenant, Channel.SMS, "+4915112345678")
    await store.update_field(tenant, profile.id, ProfileField(name="email", value="a@b.c"))
    await store.save_field_definition(
        ProfileFieldDefinition(tenant_id=tenant, agent_id=agent, name="email", is_pii=True)
    )
    await store.save_scenario_requirement(
        ScenarioFieldRequirement(
            tenant_id=tenant, agent_id=agent, scenario_id=scenario, field_name="phone"
        )
    )
    found = await store.get_by_id(tenant, profile.id)
    assert found is not None
    await store.get_missing_fields(tenant, found, scenario)
    await store.export_profile(tenant, profile.id)
    await store.expire_stale_fields(tenant)
    assert set(layers) == {"EncryptedProfileStore"}


def test_overriding_a_public_method_is_refused_at_class_creation() -> None:
    with pytest.raises(TypeError, match=r"get_by_id\(\).*final.*_get_by_id\(\)"):

        class Sneaky(InMemoryProfileStore):
            async def get_by_id(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[misc]
                return None

    class Mixin:
        async def save(self, *args: Any, **kwargs: Any) -> Any:
            return None

    with pytest.raises(TypeError, match=r"save\(\) \(through .*Mixin\).*_save\(\)"):

        class Mixed(Mixin, InMemoryProfileStore):  # type: ignore[misc]
            pass

    with pytest.raises(TypeError, match=r"get_missing_fields\(\).*hooks it uses"):

        class Sneakier(ForwardingProfileStore):
            async def get_missing_fields(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[misc]
                return []


def test_every_public_data_method_is_final() -> None:
    public = {
        name
        for name, member in vars(ProfileStore).items()
        if not name.startswith("_") and callable(member)
    }
    # lifecycle and the clock stay overridable: providers open pools and migrate their
    # schema, tests set the time
    assert public - final_methods() == {"setup", "aclose", "now", "schema_status", "migrate"}
    for name in final_methods():
        assert getattr(getattr(ProfileStore, name), "__final__", False)


def test_the_forwarding_store_forwards_every_hook() -> None:
    hooks = {
        name
        for name, member in vars(ProfileStore).items()
        if name.startswith("_") and not name.startswith("__") and callable(member)
    }
    assert hooks <= set(vars(ForwardingProfileStore)), hooks - set(vars(ForwardingProfileStore))
    assert not ForwardingProfileStore.__abstractmethods__


async def test_a_hook_without_a_typed_forward_is_forwarded_to_the_same_hook() -> None:
    """The fallback that keeps a hook added to ProfileStore later forwarded hook to hook."""

    class Inner(InMemoryProfileStore):
        async def _extra_hook(self, value: int, *, twice: bool = False) -> tuple[str, int]:
            return ("inner", value * 2 if twice else value)

    forward = store_module._forwarding_hook("_extra_hook")
    wrapper = ForwardingProfileStore(Inner())
    assert await forward(wrapper, 3, twice=True) == ("inner", 6)


# ---------------------------------------------------------------------------------------
# get_missing_fields' narrow hook (_get_requirement_checks) through wrappers
# ---------------------------------------------------------------------------------------


async def _email_requirement(store: ProfileStore) -> tuple[UUID, UUID, UUID, Any]:
    """A tenant whose scenario requires an unverified ``email`` the profile holds; no
    definition is stored. Returns (tenant, agent, scenario, profile)."""
    tenant, agent, scenario = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    await store.save_scenario_requirement(
        ScenarioFieldRequirement(
            tenant_id=tenant, agent_id=agent, scenario_id=scenario, field_name="email"
        )
    )
    profile = await store.get_or_create(tenant, Channel.WEB, "narrow-hook")
    await store.update_field(
        tenant, profile.id, ProfileField(name="email", value="a@example.com", verified=False)
    )
    found = await store.get_by_id(tenant, profile.id)
    assert found is not None
    return tenant, agent, scenario, found


class _NarrowSpy(InMemoryProfileStore):
    """A provider recording which of the two requirement hooks get_missing_fields asks."""

    def __init__(self) -> None:
        super().__init__()
        self.asked: list[str] = []

    async def _get_requirement_checks(
        self, tenant_id: UUID, scenario_id: UUID, step_id: UUID | None
    ) -> Any:
        self.asked.append("narrow")
        requirements = await self._get_scenario_requirements(tenant_id, scenario_id, step_id)
        # its own answer: every requirement's field must be verified
        from ccvault.requirements import field_check

        forced = {r.agent_id: {r.field_name: field_check(True, None)} for r in requirements}
        return requirements, forced

    async def _get_requirements_with_definitions(
        self, tenant_id: UUID, scenario_id: UUID, step_id: UUID | None
    ) -> Any:
        self.asked.append("wide")
        return await super()._get_requirements_with_definitions(tenant_id, scenario_id, step_id)


async def test_a_plain_forwarding_wrapper_forwards_the_narrow_hook() -> None:
    inner = _NarrowSpy()
    wrapper = ForwardingProfileStore(inner)
    tenant, _, scenario, profile = await _email_requirement(wrapper)
    inner.asked.clear()
    missing = await wrapper.get_missing_fields(tenant, profile, scenario)
    # the inner provider's narrow answer judged (verification required: email is missing),
    # its wide hook never asked
    assert [r.field_name for r in missing] == ["email"]
    assert inner.asked == ["narrow"]


async def test_a_wrapper_serving_the_wide_hook_answers_get_missing_fields_from_it() -> None:
    inner = _NarrowSpy()

    class Serving(ForwardingProfileStore):
        """Overrides the wide hook only (as the cache does): its own definitions judge."""

        async def _get_requirements_with_definitions(
            self, tenant_id: UUID, scenario_id: UUID, step_id: UUID | None
        ) -> Any:
            requirements = await self._get_scenario_requirements(tenant_id, scenario_id, step_id)
            own = {
                r.agent_id: [
                    ProfileFieldDefinition(
                        tenant_id=tenant_id,
                        agent_id=r.agent_id,
                        name=r.field_name,
                        required_verification=False,
                        freshness_seconds=None,
                    )
                ]
                for r in requirements
            }
            return requirements, own

    wrapper = Serving(inner)
    tenant, _, scenario, profile = await _email_requirement(wrapper)
    inner.asked.clear()
    # the wrapper's definition (no verification required) judges, not the inner provider's
    # narrow answer (which would require it): nothing missing, and the inner store's
    # requirement hooks were not asked beyond its requirements
    assert await wrapper.get_missing_fields(tenant, profile, scenario) == []
    assert inner.asked == []
    # an instance whose wide hook is replaced is served from it too
    plain = ForwardingProfileStore(inner)
    answer = await wrapper._get_requirements_with_definitions(tenant, scenario, None)

    async def replaced(*args: Any) -> Any:
        return answer

    plain._get_requirements_with_definitions = replaced  # type: ignore[method-assign,assignment]
    assert await plain.get_missing_fields(tenant, profile, scenario) == []
    assert inner.asked == []


async def test_the_cache_serves_get_missing_fields_from_its_own_hooks(
    stack: tuple[EncryptedProfileStore, HookCounter],
) -> None:
    store, counter = stack
    tenant, agent, scenario, profile = await _email_requirement(store)
    await store.save_field_definition(
        ProfileFieldDefinition(
            tenant_id=tenant, agent_id=agent, name="email", required_verification=True
        )
    )
    assert [r.field_name for r in await store.get_missing_fields(tenant, profile, scenario)] == [
        "email"
    ]
    counter.calls.clear()
    # warm: the cache answers; neither requirement hook reaches the provider
    assert [r.field_name for r in await store.get_missing_fields(tenant, profile, scenario)] == [
        "email"
    ]
    reached = {name for name in counter.calls if "requirement" in name or "definition" in name}
    assert reached == set()


def test_which_wrappers_derive_the_narrow_hook() -> None:
    # decided at class creation: overriding the wide hook (the cache) derives the narrow one;
    # a plain wrapper (encryption) forwards it; a wrapper's own narrow hook is kept
    assert CachedProfileStore._get_requirement_checks is ProfileStore._get_requirement_checks
    assert (
        EncryptedProfileStore._get_requirement_checks
        is ForwardingProfileStore._get_requirement_checks
    )

    class Own(CachedProfileStore):
        async def _get_requirement_checks(
            self, tenant_id: UUID, scenario_id: UUID, step_id: UUID | None
        ) -> Any:
            return [], {}

    assert "_get_requirement_checks" in vars(Own)
    assert Own._get_requirement_checks is not ProfileStore._get_requirement_checks
