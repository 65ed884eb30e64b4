"""``[providers.example_redis]``: where the Redis server is and which keys are ours."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["RedisExampleSettings"]


class RedisExampleSettings(BaseModel):
    """Connection options. Unknown keys are refused, so a typo names itself.

    ``key_prefix``: every key this store reads or writes starts with it; stores (processes)
    with the same ``url`` and ``key_prefix`` share one vault. ``max_retries``: how many
    lost optimistic-transaction races one write hook absorbs before it raises
    ``ProviderUnavailableError``.
    """

    model_config = ConfigDict(extra="forbid")

    url: str = "redis://127.0.0.1:6379/0"
    key_prefix: str = Field(default="ccvault:", min_length=1, max_length=200)
    max_retries: int = Field(default=200, ge=1, le=10_000)
