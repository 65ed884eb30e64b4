"""ccvault-postgres: the PostgreSQL provider of ccvault, on asyncpg."""

from ccvault_postgres.settings import PostgresSettings
from ccvault_postgres.store import PostgresProfileStore

__all__ = ["PostgresProfileStore", "PostgresSettings"]
