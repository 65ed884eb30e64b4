"""Scenario requirements: which fields a scenario still needs from a profile.

``when_condition`` is a small expression over the profile's active values, for example
``order_type == "international" and age >= 18``. It is evaluated by simpleeval, never by
``eval``: only expressions (no calls, no attribute access, no comprehensions) are allowed.
A condition that does not parse is refused when the requirement is saved; one that names a
field the profile lacks, or compares incompatible values, is simply false.
"""

from __future__ import annotations

import ast
import logging
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from simpleeval import EvalWithCompoundTypes, InvalidExpression

from ccvault import errors, metrics
from ccvault.models import (
    CustomerProfile,
    ProfileFieldDefinition,
    RequiredLevel,
    ScenarioFieldRequirement,
)
from ccvault.store import StoreRules

__all__ = ["check_condition", "check_requirement", "condition_holds", "find_missing"]

logger = logging.getLogger(__name__)

# Nodes refused even though simpleeval knows them: no calls, no attribute access and no
# comprehensions, since a condition only compares stored values.
_FORBIDDEN = (
    ast.Call,
    ast.Attribute,
    ast.Lambda,
    ast.NamedExpr,
    ast.Subscript,
    ast.ListComp,
    ast.SetComp,
    ast.DictComp,
    ast.GeneratorExp,
)
_OPERATOR_NODES = (ast.operator, ast.unaryop, ast.cmpop)


def _evaluator(names: Mapping[str, Any]) -> EvalWithCompoundTypes:
    return EvalWithCompoundTypes(names=dict(names), functions={})


def check_condition(expression: str) -> ast.Expression:
    """Parse ``expression``; raise :class:`~ccvault.errors.ValidationError` saying why if it
    is not an allowed condition."""
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError as exc:
        raise errors.ValidationError(f"when_condition does not parse: {exc.msg}") from None
    evaluator = _evaluator({})
    allowed = tuple(evaluator.nodes)
    operators = tuple(evaluator.operators)
    for node in ast.walk(tree):
        if (
            isinstance(node, _FORBIDDEN)
            or (isinstance(node, ast.expr) and not isinstance(node, allowed))
            # an operator simpleeval does not know (``@``) would fail at every evaluation
            or (isinstance(node, _OPERATOR_NODES) and not isinstance(node, operators))
        ):
            raise errors.ValidationError(
                f"when_condition may not use {type(node).__name__}: {expression!r}"
            )
    return tree


def check_requirement(requirement: ScenarioFieldRequirement) -> None:
    """Refuse a requirement whose condition does not parse or that depends on itself."""
    if requirement.when_condition is not None and requirement.when_condition.strip():
        check_condition(requirement.when_condition)
    if requirement.field_name in requirement.depends_on_fields:
        raise errors.ValidationError(
            f"requirement for {requirement.field_name!r} cannot depend on itself"
        )


def condition_holds(expression: str | None, values: Mapping[str, Any]) -> bool:
    """True when ``expression`` is empty or evaluates truthy over ``values``.

    A missing name or a type error makes it false rather than raising.
    """
    if expression is None or not expression.strip():
        return True
    try:
        return bool(_evaluator(values).eval(expression.strip()))
    except (InvalidExpression, TypeError, ValueError, ArithmeticError, KeyError) as exc:
        logger.debug("when_condition %r is false: %s", expression, exc)
        return False
    except Exception as exc:  # a condition must never break a read
        # conditions are checked at save, but a stored one may predate the check or come
        # from another writer; whatever it raises, it does not hold
        logger.warning("when_condition %r could not be evaluated: %r", expression, exc)
        return False


def find_missing(
    profile: CustomerProfile,
    requirements: Iterable[ScenarioFieldRequirement],
    definitions: Mapping[str, ProfileFieldDefinition],
    *,
    rules: StoreRules,
    required_level: RequiredLevel | None,
    now: datetime,
) -> list[ScenarioFieldRequirement]:
    """The requirements that apply to ``profile`` and that it does not meet, in order.

    A requirement applies when its level matches, its ``when_condition`` holds and every one
    of its ``depends_on_fields`` is ACTIVE. It is unmet when its field is not ACTIVE (or has
    passed ``expires_at``), when the definition requires verification and the field is not
    verified, or when the field is stale and ``stale_field_action`` is "block".
    """
    values = profile.active_values()
    missing: list[ScenarioFieldRequirement] = []
    for requirement in requirements:
        if required_level is not None and requirement.required_level is not required_level:
            continue
        if not condition_holds(requirement.when_condition, values):
            continue
        if any(name not in profile.fields for name in requirement.depends_on_fields):
            continue
        field = profile.fields.get(requirement.field_name)
        if field is None or field.is_expired(now):
            missing.append(requirement)
            continue
        definition = definitions.get(requirement.field_name)
        if definition is not None and definition.required_verification and not field.verified:
            missing.append(requirement)
            continue
        if rules.stale_field_action == "ignore":
            continue
        freshness = rules.default_freshness_seconds
        if definition is not None and definition.freshness_seconds is not None:
            freshness = definition.freshness_seconds
        if freshness and (now - field.collected_at).total_seconds() > freshness:
            if rules.stale_field_action == "block":
                missing.append(requirement)
            else:
                metrics.STALE_FIELD_WARNINGS.labels(
                    tenant_id=str(profile.tenant_id), field_name=field.name
                ).inc()
                logger.warning(
                    "field %s of profile %s is stale (collected %s, freshness %ss)",
                    field.name,
                    profile.id,
                    field.collected_at.isoformat(),
                    freshness,
                )
    return missing
