"""The collections and indexes of the MongoDB provider.

Every index starts with ``tenant_id`` (a sharded deployment can shard every collection on
``tenant_id``), except the small recovery index on interrupted writes. ``setup()`` creates
them with ``create_indexes``, which a server treats as a no-op for an index that already
exists with the same name and options, so starting several processes at once is safe.
"""

from __future__ import annotations

from pymongo import ASCENDING, DESCENDING, IndexModel

__all__ = ["COLLECTIONS", "INDEXES", "PENDING"]

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
)

INDEXES: dict[str, list[IndexModel]] = {
    "profiles": [
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
        IndexModel(
            [("tenant_id", ASCENDING), ("agent_id", ASCENDING), ("name", ASCENDING)],
            name="definition_natural_key",
            unique=True,
        ),
    ],
    "requirements": [
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
}
