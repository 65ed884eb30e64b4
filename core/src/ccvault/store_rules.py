"""``StoreRules``: the ``[profile]`` settings that change what a store answers.

A leaf module (it imports nothing from ``ccvault``), so that the store, the settings and the
requirement evaluation can all depend on it without depending on each other. The name stays
importable from :mod:`ccvault.store`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["StaleFieldAction", "StoreRules"]

StaleFieldAction = Literal["warn", "block", "ignore"]


@dataclass(frozen=True, slots=True)
class StoreRules:
    """The `[profile]` settings that change what a store answers."""

    max_derivation_chain_depth: int = 10
    default_freshness_seconds: int = 0
    stale_field_action: StaleFieldAction = "warn"
    lineage_tracking_enabled: bool = True
    #: the largest field ``value`` (and ``source_metadata``) accepted, in bytes of its JSON
    #: serialization; a larger one is a ValidationError before anything is written
    max_field_value_bytes: int = 2 * 1024 * 1024
