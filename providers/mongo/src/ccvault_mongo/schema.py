"""The collections and indexes of the MongoDB provider.

Every index starts with ``tenant_id`` (a sharded deployment can shard every collection on
``tenant_id``), except the small recovery index on interrupted writes.

A vault id (of a profile, field, asset, definition or requirement) is stored as ``id`` and
is unique per tenant through a ``(tenant_id, id)`` unique index; ``_id`` is left to the
driver (an ``ObjectId``) and never looked up by vault id. So two tenants may hold the same
id, and a write refused for a duplicate id never tells one tenant that another holds it.
A unique ``_id`` per tenant would not do: on a sharded collection a unique index must start
with the shard key, which ``(tenant_id, id)`` does.

Schema versions: ``ccvault migrate`` (``MongoProfileStore.migrate()``) creates the indexes
with ``create_indexes``, which a server treats as a no-op for an index that already exists
with the same name and options (so several migrators at once are safe), then records each
step of :data:`MIGRATIONS` in the ``ccvault_schema_version`` collection (one document per
version, ``_id`` = the version, inserted by an idempotent upsert). ``setup()`` only reads
that collection: it never creates a collection or an index (unless ``migrate_on_start``).
A database written before versions were recorded (indexes, no version document) is at
version 0: ``ccvault migrate`` finds its indexes in place and records version 1.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from pymongo import ASCENDING, DESCENDING, IndexModel

from ccvault.migration import SchemaStep

__all__ = [
    "COLLECTIONS",
    "INDEXES",
    "LATEST_VERSION",
    "MIGRATIONS",
    "PENDING",
    "VERSION_COLLECTION",
    "Migration",
]

#: The collection recording the applied schema versions (with the collection prefix).
VERSION_COLLECTION = "ccvault_schema_version"

#: The internal status of a field version written but not yet made ACTIVE (standalone
#: servers only); never returned by a read, see ``MongoProfileStore._put_field_standalone``.
PENDING = "pending"

COLLECTIONS = (
    "profiles",
    "identities",
    "consents",
    "fields",
    "assets",
    "definitions",
    "requirements",
    "merge_log",
)

INDEXES: dict[str, list[IndexModel]] = {
    "profiles": [
        # ids are unique per tenant, not globally: another tenant may reuse the same id
        IndexModel(
            [("tenant_id", ASCENDING), ("id", ASCENDING)],
            name="profile_id_unique",
            unique=True,
        ),
        # a customer id belongs to at most one live profile per tenant
        IndexModel(
            [("tenant_id", ASCENDING), ("customer_id", ASCENDING)],
            name="live_customer_unique",
            unique=True,
            partialFilterExpression={"live": True},
        ),
    ],
    "identities": [
        # a channel identity belongs to at most one profile; released identities are deleted
        IndexModel(
            [("tenant_id", ASCENDING), ("channel", ASCENDING), ("channel_user_id", ASCENDING)],
            name="identity_unique",
            unique=True,
        ),
        IndexModel(
            [("tenant_id", ASCENDING), ("profile_id", ASCENDING), ("position", ASCENDING)],
            name="identities_by_profile",
        ),
    ],
    "consents": [
        IndexModel(
            [("tenant_id", ASCENDING), ("profile_id", ASCENDING), ("position", ASCENDING)],
            name="consents_by_profile",
        ),
    ],
    "fields": [
        # ids are unique per tenant, not globally: another tenant may reuse the same id
        IndexModel(
            [("tenant_id", ASCENDING), ("id", ASCENDING)],
            name="field_id_unique",
            unique=True,
        ),
        # the heart of the contract: at most one ACTIVE version per (tenant, profile, name)
        IndexModel(
            [("tenant_id", ASCENDING), ("profile_id", ASCENDING), ("name", ASCENDING)],
            name="one_active_field",
            unique=True,
            partialFilterExpression={"status": "active"},
        ),
        IndexModel(
            [
                ("tenant_id", ASCENDING),
                ("profile_id", ASCENDING),
                ("name", ASCENDING),
                ("collected_at", DESCENDING),
                ("seq", DESCENDING),
            ],
            name="field_history",
        ),
        IndexModel(
            [("tenant_id", ASCENDING), ("source_item_id", ASCENDING)],
            name="fields_by_source_item",
        ),
        IndexModel(
            [("tenant_id", ASCENDING), ("status", ASCENDING), ("expires_at", ASCENDING)],
            name="fields_by_expiry",
        ),
        IndexModel(
            [("pending_since", ASCENDING)],
            name="interrupted_writes",
            partialFilterExpression={"status": PENDING},
        ),
    ],
    "assets": [
        # ids are unique per tenant, not globally: another tenant may reuse the same id
        IndexModel(
            [("tenant_id", ASCENDING), ("id", ASCENDING)],
            name="asset_id_unique",
            unique=True,
        ),
        IndexModel(
            [
                ("tenant_id", ASCENDING),
                ("profile_id", ASCENDING),
                ("name", ASCENDING),
                ("uploaded_at", DESCENDING),
                ("seq", DESCENDING),
            ],
            name="asset_history",
        ),
        IndexModel(
            [("tenant_id", ASCENDING), ("source_item_id", ASCENDING)],
            name="assets_by_source_item",
        ),
    ],
    "definitions": [
        # ids are unique per tenant, not globally: another tenant may reuse the same id
        IndexModel(
            [("tenant_id", ASCENDING), ("id", ASCENDING)],
            name="definition_id_unique",
            unique=True,
        ),
        IndexModel(
            [("tenant_id", ASCENDING), ("agent_id", ASCENDING), ("name", ASCENDING)],
            name="definition_natural_key",
            unique=True,
        ),
    ],
    "requirements": [
        # ids are unique per tenant, not globally: another tenant may reuse the same id
        IndexModel(
            [("tenant_id", ASCENDING), ("id", ASCENDING)],
            name="requirement_id_unique",
            unique=True,
        ),
        IndexModel(
            [
                ("tenant_id", ASCENDING),
                ("scenario_id", ASCENDING),
                ("step_id", ASCENDING),
                ("rule_id", ASCENDING),
                ("field_name", ASCENDING),
            ],
            name="requirement_natural_key",
            unique=True,
        ),
    ],
    # issue 16: one document per merge (the entry itself as JSON text)
    "merge_log": [
        IndexModel(
            [("tenant_id", ASCENDING), ("id", ASCENDING)],
            name="merge_id_unique",
            unique=True,
        ),
        IndexModel(
            [("tenant_id", ASCENDING), ("source_profile_id", ASCENDING)],
            name="merge_by_source",
        ),
        IndexModel(
            [("tenant_id", ASCENDING), ("target_profile_id", ASCENDING)],
            name="merge_by_target",
        ),
    ],
}


@dataclass(frozen=True)
class Migration:
    """One schema step: ``indexes`` are created (idempotently) per collection."""

    version: int
    description: str
    indexes: dict[str, list[IndexModel]]

    def step(self, prefix: str = "") -> SchemaStep:
        """The step as reported: one ``createIndexes`` command per collection, as JSON."""
        return SchemaStep(
            self.version,
            self.description,
            tuple(
                f"db.{prefix}{name}.createIndexes("
                + json.dumps([dict(m.document) for m in models], default=str)
                + ")"
                for name, models in self.indexes.items()
            ),
        )


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "collections and indexes (merge log included)", INDEXES),
)

LATEST_VERSION = MIGRATIONS[-1].version
