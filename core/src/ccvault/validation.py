"""Schema validation of field values against their definitions.

(Placeholder until the validation issue lands: only the save-time definition check.)
"""

from __future__ import annotations

import re2

from ccvault import errors
from ccvault.models import ProfileFieldDefinition

__all__ = ["check_definition"]


def check_definition(definition: ProfileFieldDefinition) -> None:
    """Refuse a definition the vault could not enforce (an uncompilable regex...)."""
    if definition.validation_regex is not None:
        try:
            re2.compile(definition.validation_regex)
        except re2.error as exc:
            raise errors.ValidationError(
                f"validation_regex of {definition.name!r} cannot be compiled by the "
                f"linear-time engine: {exc}"
            ) from None
