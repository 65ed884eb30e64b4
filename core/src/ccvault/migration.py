"""Schema versions and migrations as an explicit step, the same for every provider.

A provider whose storage has a schema (tables, indexes, collections) numbers its schema
steps 1, 2, 3... Starting a store (``setup()``) never changes the schema: it reads the
version recorded in the storage and calls :func:`require_ready`, which refuses to run
against a schema that is missing or behind (:class:`~ccvault.errors.SchemaNotReadyError`,
naming ``ccvault migrate``) or newer than the code knows
(:class:`~ccvault.errors.SchemaVersionError`, naming both versions). The schema is changed
only by :meth:`ccvault.store.ProfileStore.migrate` (``ccvault migrate``), run by an operator
or a deployment job with a role allowed to change it; a provider may offer a
``migrate_on_start`` setting for embedded, single-user stores where there is no such role.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ccvault import errors

__all__ = ["MigrationReport", "SchemaStatus", "SchemaStep", "require_ready"]


@dataclass(frozen=True)
class SchemaStep:
    """One numbered schema change: ``statements`` are what it runs, as text an operator can
    read and review (SQL for a relational provider, the index commands for MongoDB)."""

    version: int
    description: str
    statements: tuple[str, ...] = ()


@dataclass(frozen=True)
class SchemaStatus:
    """Where a store's schema stands: ``current`` is the version recorded in the storage
    (0: none, nothing created yet), ``latest`` the newest version this code knows,
    ``pending`` the steps ``migrate()`` would apply, in order (empty when up to date or
    newer). A provider without a schema reports 0, 0, ()."""

    current: int
    latest: int
    pending: tuple[SchemaStep, ...] = ()
    #: where the schema lives, for messages (e.g. ``PostgreSQL schema "public"``)
    location: str = ""

    @property
    def up_to_date(self) -> bool:
        """True when the storage is exactly at the version this code writes."""
        return self.current == self.latest and not self.pending

    @property
    def newer(self) -> bool:
        """True when the storage was migrated by a newer version of the provider."""
        return self.current > self.latest


@dataclass(frozen=True)
class MigrationReport:
    """What :meth:`~ccvault.store.ProfileStore.migrate` did: ``applied`` lists the steps it
    applied (with ``dry_run``: the steps it WOULD apply, nothing was changed), ``status`` is
    where the schema stands afterwards (unchanged by a dry run)."""

    applied: tuple[SchemaStep, ...]
    status: SchemaStatus
    dry_run: bool = False
    #: with ``dry_run``: statements that would run before the steps (creating the schema
    #: or the version table when they are missing)
    preamble: tuple[str, ...] = field(default=())


def require_ready(status: SchemaStatus, *, distribution: str) -> None:
    """Refuse to start against a schema that is not exactly the one this code knows.

    Raises :class:`~ccvault.errors.SchemaVersionError` when ``status.current`` is newer than
    ``status.latest`` (both versions named: upgrade ``distribution``), and
    :class:`~ccvault.errors.SchemaNotReadyError` when steps are pending (run ``ccvault
    migrate``). Nothing else: the caller has changed nothing before calling it.
    """
    where = f"{status.location}: " if status.location else ""
    if status.newer:
        raise errors.SchemaVersionError(
            f"{where}the {distribution} schema is at version {status.current}, newer than "
            f"this {distribution} knows (latest {status.latest}); upgrade {distribution} "
            "(never run an older version against a migrated schema)"
        )
    if not status.up_to_date:
        state = (
            "has not been created"
            if status.current == 0
            else f"is at version {status.current}, behind"
        )
        pending = ", ".join(f"{s.version} {s.description}" for s in status.pending)
        raise errors.SchemaNotReadyError(
            f"{where}the {distribution} schema {state} (this code needs version "
            f"{status.latest}; pending: {pending}): run `ccvault migrate` first, with a role "
            "allowed to change the schema (starting the vault never changes it)"
        )
