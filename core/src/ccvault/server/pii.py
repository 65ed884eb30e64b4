"""PII masking of responses for keys without the ``pii:read`` scope.

A field is PII when a definition of the tenant marks its name ``is_pii`` or
``encryption_required``. The tenant-wide list is the PII registry the encryption layer keeps
in the store (disabled marker definitions under
:data:`~ccvault.crypto.PII_REGISTRY_AGENT_ID`); on a store without encryption the server
writes the same markers itself when a definition is saved through the API. The value and the
``source_metadata`` (which may hold the quote the value came from) of a PII field are
replaced by :data:`MASK`; identities, names, statuses and timestamps stay visible.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ccvault.crypto import PII_REGISTRY_AGENT_ID, EncryptedProfileStore
from ccvault.models import (
    CustomerProfile,
    GapFillResult,
    ProfileField,
    ProfileFieldDefinition,
)
from ccvault.server.deps import Caller
from ccvault.store import ForwardingProfileStore, ProfileStore

__all__ = ["MASK", "Masker", "register_pii_definition"]

MASK = "[pii:masked]"
_MASKED_METADATA: dict[str, Any] = {"masked": True}


def _encrypting(store: ProfileStore) -> bool:
    current: ProfileStore | None = store
    while current is not None:
        if isinstance(current, EncryptedProfileStore):
            return True
        current = current.inner if isinstance(current, ForwardingProfileStore) else None
    return False


async def register_pii_definition(store: ProfileStore, definition: ProfileFieldDefinition) -> None:
    """Keep the tenant's PII registry when no encryption layer does it (sticky, as there)."""
    if not (definition.is_pii or definition.encryption_required) or _encrypting(store):
        return
    existing = await store.get_field_definition(
        definition.tenant_id, PII_REGISTRY_AGENT_ID, definition.name
    )
    if existing is None:
        await store.save_field_definition(
            ProfileFieldDefinition(
                tenant_id=definition.tenant_id,
                agent_id=PII_REGISTRY_AGENT_ID,
                name=definition.name,
                is_pii=True,
                encryption_required=True,
                enabled=False,
            )
        )


class Masker:
    """Masks PII for one caller; a no-op for a key with ``pii:read``."""

    def __init__(self, names: frozenset[str] | None) -> None:
        self.names = names  # None: nothing is masked

    @classmethod
    async def for_caller(cls, store: ProfileStore, caller: Caller) -> Masker:
        if caller.can("pii:read"):
            return cls(None)
        markers = await store.get_field_definitions(
            caller.tenant_id, PII_REGISTRY_AGENT_ID, enabled_only=False
        )
        return cls(frozenset(marker.name for marker in markers))

    def is_pii(self, name: str) -> bool:
        return self.names is not None and name in self.names

    def field(self, item: ProfileField) -> ProfileField:
        if not self.is_pii(item.name):
            return item
        return item.model_copy(
            update={
                "value": MASK,
                "source_metadata": _MASKED_METADATA if item.source_metadata else {},
            }
        )

    def fields(self, items: Iterable[ProfileField]) -> list[ProfileField]:
        return [self.field(item) for item in items]

    def profile(self, profile: CustomerProfile) -> CustomerProfile:
        if not self.names:
            return profile
        return profile.model_copy(
            update={
                "fields": {name: self.field(item) for name, item in profile.fields.items()},
                "field_history": {
                    name: self.fields(versions) for name, versions in profile.field_history.items()
                },
            }
        )

    def lineage(self, entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [
            {**entry, "source_metadata": _MASKED_METADATA}
            if entry.get("type") == "profile_field"
            and self.is_pii(str(entry.get("name")))
            and entry.get("source_metadata")
            else entry
            for entry in entries
        ]

    def gap_fill(self, result: GapFillResult) -> GapFillResult:
        if not self.is_pii(result.field_name):
            return result
        return result.model_copy(
            update={
                "value": MASK if result.value is not None else None,
                "extraction_quote": MASK if result.extraction_quote else None,
                "source_metadata": _MASKED_METADATA if result.source_metadata else {},
            }
        )

    def definitions_for(self, agent_definitions: Iterable[ProfileFieldDefinition]) -> Masker:
        """This masker, also covering the given definitions' PII names (agent-scoped calls)."""
        if self.names is None:
            return self
        extra = {d.name for d in agent_definitions if d.is_pii or d.encryption_required}
        return Masker(self.names | extra)
