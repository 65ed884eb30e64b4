"""ccvault-inmemory: the dict-based reference provider of the Customer Context Vault."""

from ccvault_inmemory.store import InMemoryProfileStore

__all__ = ["InMemoryProfileStore"]
