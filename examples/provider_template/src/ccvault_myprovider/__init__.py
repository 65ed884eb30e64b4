"""A ccvault storage provider (made from ccvault's provider template)."""

from ccvault_myprovider.store import MyProfileStore

__all__ = ["MyProfileStore"]
