"""``TenantLease``: what the worker needs to keep several workers out of each other's way.

A leaf module (it imports nothing from ``ccvault``), so the hook specification a provider
implements to contribute a lease of its own (``ccvault_worker_lease`` in
:mod:`ccvault.hookspecs`) and the worker that uses it share the protocol without depending
on each other. Importable from :mod:`ccvault.worker` too.
"""

from __future__ import annotations

from typing import Protocol
from uuid import UUID

__all__ = ["TenantLease"]


class TenantLease(Protocol):
    """Who may process a tenant right now: one instance per worker, shared by nobody.

    A claim is *exclusive* (two leases never hold one tenant at once) and *re-entrant*
    (the lease already holding a tenant gets it again). It lasts at least ``ttl_seconds``
    after the last successful ``acquire``/``renew``, *also after the lease is closed or its
    process ends* (the worker renews a claim for one more interval when it is done with the
    tenant, so another worker, or a second ``worker --once`` run, skips that tenant until
    then): two workers never sweep a tenant in the same interval. A claim released when
    its holder's connection ends (a session-level lock) does not meet this contract.
    """

    async def acquire(self, tenant_id: UUID, ttl_seconds: float) -> str | None:
        """Claim ``tenant_id`` for ``ttl_seconds`` if free or already ours; return the
        claim's token, or None when another lease holds it. Raises
        :class:`~ccvault.errors.ProviderUnavailableError` when the backing service cannot
        be reached (the caller skips the tenant) and never blocks waiting for a holder."""
        ...

    async def renew(self, tenant_id: UUID, token: str, ttl_seconds: float) -> bool:
        """Extend our claim to ``ttl_seconds`` from now. True only if the claim identified
        by ``token`` is still ours; False when it lapsed, was taken over or cannot be
        confirmed (never raises): the caller must then stop working on the tenant."""
        ...

    async def aclose(self) -> None:
        """Release connections. Claims still held lapse on their own. Idempotent."""
        ...
