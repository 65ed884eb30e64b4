"""ccvault-mongo: the MongoDB provider of ccvault, on PyMongo's native async API."""

from ccvault_mongo.settings import MongoSettings
from ccvault_mongo.store import MongoProfileStore

__all__ = ["MongoProfileStore", "MongoSettings"]
