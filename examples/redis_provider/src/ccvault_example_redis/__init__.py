"""An example ccvault provider with Redis as its only storage (one document per tenant)."""

from ccvault_example_redis.settings import RedisExampleSettings
from ccvault_example_redis.store import RedisExampleProfileStore

__all__ = ["RedisExampleProfileStore", "RedisExampleSettings"]
