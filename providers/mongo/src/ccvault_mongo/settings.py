"""``[providers.mongo]``: how to reach MongoDB and how to make writes atomic."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ccvault.secretvalues import SecretUrl

__all__ = ["MongoSettings"]


class MongoSettings(BaseModel):
    """Connection options of the MongoDB provider.

    ``transactions`` chooses how supersede, merge, purge and save are made atomic:

    * ``"auto"`` (default): multi-document transactions when the server supports them (a
      replica set or a sharded cluster), else the ordered single-document writes described
      in the README;
    * ``"on"``: transactions are required; ``setup()`` fails on a standalone server;
    * ``"off"``: always the ordered single-document writes, even on a replica set.
    """

    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    #: The connection URI; a password in it is a secret (shown masked; the store connects
    #: with ``uri.get_secret_value()``).
    uri: SecretUrl = SecretUrl("mongodb://127.0.0.1:27017")
    database: str = Field(default="ccvault", min_length=1, max_length=63, pattern=r"^[^/\\. \"$]+$")
    #: prepended to every collection name, so several vaults can share one database
    collection_prefix: str = Field(default="", pattern=r"^[A-Za-z0-9_]*$", max_length=40)
    server_selection_timeout_ms: int = Field(default=5000, gt=0)
    connect_timeout_ms: int = Field(default=5000, gt=0)
    socket_timeout_ms: int | None = Field(default=None, gt=0)
    max_pool_size: int = Field(default=100, gt=0)
    app_name: str = "ccvault"
    transactions: Literal["auto", "on", "off"] = "auto"
    #: how often a single-document write sequence is retried after losing a race
    max_write_retries: int = Field(default=50, ge=1)
    #: standalone servers: how long a field writer may hold a profile's write lease
    write_lease_ms: int = Field(default=15000, ge=100)
    #: Create the indexes and record the schema version when a store starts. Off by
    #: default: starting only reads the recorded version, ``ccvault migrate`` creates them
    #: (a user with the ``readWrite`` role is enough to run the vault then).
    migrate_on_start: bool = False

    @field_validator("uri")
    @classmethod
    def _check_uri(cls, value: SecretUrl) -> SecretUrl:
        if not value.get_secret_value().strip():
            raise ValueError("uri must be a mongodb:// URI")
        return value

    def client_options(self) -> dict[str, Any]:
        """Keyword arguments for :class:`pymongo.AsyncMongoClient`."""
        options: dict[str, Any] = {
            "serverSelectionTimeoutMS": self.server_selection_timeout_ms,
            "connectTimeoutMS": self.connect_timeout_ms,
            "maxPoolSize": self.max_pool_size,
            "appname": self.app_name,
            "tz_aware": True,
        }
        if self.socket_timeout_ms is not None:
            options["socketTimeoutMS"] = self.socket_timeout_ms
        return options
