"""``[providers.myprovider]``: the options of this provider, validated at start-up."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

__all__ = ["MySettings"]


class MySettings(BaseModel):
    """Connection options. Unknown keys are refused, so a typo names itself."""

    model_config = ConfigDict(extra="forbid")

    url: str = "mybackend://127.0.0.1/vault"
