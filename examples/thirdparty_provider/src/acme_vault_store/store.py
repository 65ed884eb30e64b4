"""ACME's store: the in-memory reference store plus an audit trail of writes.

It stands in for any third-party backend: it lives in its own distribution, registers
through the ``ccvault.providers`` entry point and is held to the unchanged contract suite.
"""

from __future__ import annotations

from uuid import UUID

from ccvault.models import ProfileField
from ccvault.store import StoreRules
from ccvault_inmemory import InMemoryProfileStore

__all__ = ["AcmeProfileStore"]


class AcmeProfileStore(InMemoryProfileStore):
    """In-memory storage that also records which fields were written, for ACME's auditors."""

    def __init__(self, *, audit: bool = True, rules: StoreRules | None = None) -> None:
        super().__init__(rules=rules)
        self.audit = audit
        self.audit_log: list[tuple[UUID, UUID, str]] = []

    async def _update_field(
        self, tenant_id: UUID, profile_id: UUID, field: ProfileField, supersede_existing: bool
    ) -> UUID:
        field_id = await super()._update_field(tenant_id, profile_id, field, supersede_existing)
        if self.audit:
            # recorded only after the write succeeded: refused writes leave no audit entry
            self.audit_log.append((tenant_id, profile_id, field.name))
        return field_id
