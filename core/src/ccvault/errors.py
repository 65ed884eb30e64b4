"""The one error hierarchy of the vault.

Every error a store, a wrapper or a service raises on purpose is a :class:`VaultError`.
Bad input is refused with a :class:`ValidationError` before anything is written.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "ActiveFieldConflictError",
    "ConfigurationError",
    "ConflictError",
    "CorruptRowError",
    "DependentsError",
    "EncryptionError",
    "IdentityConflictError",
    "MissingExtraError",
    "NotFoundError",
    "PartialWriteError",
    "ProviderNotFoundError",
    "ProviderUnavailableError",
    "SchemaNotReadyError",
    "SchemaValidationError",
    "SchemaVersionError",
    "StorageError",
    "ValidationError",
    "VaultError",
]


class VaultError(Exception):
    """Base of every error the vault raises on purpose."""


class NotFoundError(VaultError, LookupError):
    """The profile, item or definition named does not exist for this tenant (or is deleted)."""


class ConflictError(VaultError):
    """The write contradicts what is stored; nothing was written."""


class IdentityConflictError(ConflictError):
    """A channel identity (or customer id) already belongs to another live profile."""


class ActiveFieldConflictError(ConflictError):
    """``supersede_existing=False`` but an ACTIVE version of the field exists."""


class DependentsError(ConflictError):
    """The item cannot be hard-deleted while ACTIVE items derive from it."""


class ValidationError(VaultError, ValueError):
    """Bad input: malformed ids, bad names, non-JSON values, wrong types. Nothing was written."""


class SchemaValidationError(ValidationError):
    """A field's value breaks its definition; ``errors`` lists every problem at once."""

    def __init__(
        self,
        field_name: str,
        errors: Sequence[str],
        error_types: Sequence[str] | None = None,
    ) -> None:
        self.field_name = field_name
        self.errors = list(errors)
        self.error_types = list(error_types) if error_types is not None else []
        super().__init__(f"Validation failed for {field_name}: {self.errors}")


class ConfigurationError(VaultError):
    """Settings are missing or invalid; the message names the key and the reason."""


class SchemaNotReadyError(ConfigurationError):
    """The storage schema is missing or behind this code: run ``ccvault migrate`` first.

    Raised by a store's ``setup()``, which never changes the schema itself (see
    :mod:`ccvault.migration`); nothing was created or written. A deployment error, so the
    CLI exits with the configuration code (6).
    """


class MissingExtraError(ConfigurationError, ImportError):
    """A feature was used whose optional dependencies are not installed.

    The message is one line naming the feature and the command that installs them
    (``pip install 'ccvault[EXTRA]'``; another distribution's name for its own extras);
    ``extra`` holds the extra's name. An :class:`ImportError` too, so code probing for a
    feature with ``except ImportError`` still works.
    """

    def __init__(self, extra: str, feature: str, distribution: str = "ccvault") -> None:
        self.extra = extra
        self.feature = feature
        self.distribution = distribution
        super().__init__(
            f"{feature} needs the optional dependencies of the {extra!r} extra: "
            f"pip install '{distribution}[{extra}]'"
        )

    def __reduce__(self) -> tuple[type[MissingExtraError], tuple[str, str, str]]:
        return (type(self), (self.extra, self.feature, self.distribution))


class ProviderNotFoundError(ConfigurationError):
    """No installed provider has the requested name; the message says what to install."""


class ProviderUnavailableError(VaultError):
    """The storage backend cannot be reached right now; the call may be retried later."""


class StorageError(VaultError):
    """The storage itself is unusable: not a database of ours, read-only, corrupt."""


class CorruptRowError(StorageError):
    """A stored row (or document) the vault cannot read back: written outside the vault,
    or corrupted. Built by :func:`ccvault.storage.corrupt_row`, its message names places
    and kinds of error only, never stored text, so it may be logged as it is; retrying does
    not help (the HTTP service answers 500 and logs the message)."""


class PartialWriteError(StorageError):
    """A write failed after part of it was stored, and the backend could not undo it.

    Only a backend without multi-document transactions can raise it (MongoDB on a
    standalone server), and only for a failure it could not rule out before writing (a
    concurrent writer taking a unique key in between). It is never a
    :class:`ConflictError`: the store is NOT as before. Re-read before writing again; the
    cache treats the data as written (it drops what it held).
    """


class SchemaVersionError(StorageError):
    """The database was written by a newer schema version than this code knows."""


class EncryptionError(VaultError):
    """A value could not be encrypted or decrypted (missing key, tampered ciphertext...)."""
