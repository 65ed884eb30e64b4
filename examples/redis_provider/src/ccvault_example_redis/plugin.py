"""Registers the ``example_redis`` provider: the module named by the ``ccvault.providers``
entry point. Cheap and free of I/O: ``setup()`` of the store connects later."""

from __future__ import annotations

from pydantic import BaseModel

from ccvault.hookspecs import ProviderSpec, hookimpl
from ccvault.store import ProfileStore, StoreRules
from ccvault_example_redis.settings import RedisExampleSettings

__all__ = ["CAPABILITIES", "ccvault_provider"]

#: Optional contract capabilities (``ccvault_contract_tests.capabilities``), declared once.
CAPABILITIES: frozenset[str] = frozenset({"large_values", "nul_characters"})


def _create_store(options: BaseModel, rules: StoreRules) -> ProfileStore:
    from ccvault_example_redis.store import RedisExampleProfileStore

    settings = (
        options
        if isinstance(options, RedisExampleSettings)
        else RedisExampleSettings.model_validate(options.model_dump())
    )
    return RedisExampleProfileStore(settings, rules=rules)


@hookimpl
def ccvault_provider() -> ProviderSpec:
    """The example Redis provider: one JSON document per tenant, optimistic transactions."""
    return ProviderSpec(
        name="example_redis",
        distribution="ccvault-example-redis",
        settings_model=RedisExampleSettings,
        create_store=_create_store,
        description="example: Redis, one JSON document per tenant, WATCH/MULTI/EXEC writes",
        capabilities=CAPABILITIES,
    )
