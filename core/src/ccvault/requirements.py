"""Scenario requirements: which fields a scenario still needs from a profile.

``when_condition`` is a small expression over the profile's active values, for example
``order_type == "international" and age >= 18``. Its language (docs/conditions.md) is a
whitelisted subset of Python expressions, compiled once and evaluated by a small tree walker
of our own, never by ``eval``: names, literals, ``and``/``or``/``not``, comparisons
(``== != < <= > >= in not in``, ``is None``), ``+ - * / // %`` on numbers, ``+`` on strings
and lists, and ``a if c else b``. There are no calls, attribute access, subscripts,
comprehensions, powers, shifts or string formatting.

Every evaluation is bounded by construction: the expression's length, node count and
nesting depth are capped when it is saved, a walk visits each node at most once (there are
no loops), and every operation checks the size of its operands before it runs (numbers of
at most 1,024 bits, concatenations of at most 10,000 items). A condition that breaks any
rule is refused at save with a :class:`~ccvault.errors.ValidationError`; one that is
accepted always evaluates: a name the profile lacks, or values of the wrong type or size,
make it false (never an exception).
"""

from __future__ import annotations

import ast
import functools
import logging
import math
import operator
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, NamedTuple
from uuid import UUID

from ccvault import errors, metrics
from ccvault.logs import OncePer
from ccvault.models import (
    CustomerProfile,
    ProfileField,
    ProfileFieldDefinition,
    RequiredLevel,
    ScenarioFieldRequirement,
)
from ccvault.store_rules import StoreRules

__all__ = [
    "MAX_CONDITION_DEPTH",
    "MAX_CONDITION_LENGTH",
    "MAX_CONDITION_NODES",
    "CompiledCondition",
    "FieldCheck",
    "RecordValues",
    "RequirementRecord",
    "RequirementRecords",
    "check_condition",
    "check_requirement",
    "checks_of",
    "compile_condition",
    "condition_holds",
    "field_check",
    "find_missing",
    "find_missing_checked",
    "find_missing_fields",
    "find_missing_records",
    "records_of",
]

logger = logging.getLogger(__name__)
_STALE_LOGGED = OncePer()

#: The longest condition accepted, in characters.
MAX_CONDITION_LENGTH = 1000
#: The most syntax-tree nodes a condition may have (each is visited at most once).
MAX_CONDITION_NODES = 200
#: The deepest nesting of a condition's syntax tree.
MAX_CONDITION_DEPTH = 24
#: Integer literals (and integer operands of arithmetic) are at most this large in magnitude.
MAX_LITERAL = 10**18
#: Integer operands of arithmetic have at most this many bits (values come from profiles).
MAX_OPERAND_BITS = 1024
#: ``+`` on strings or lists yields at most this many characters or items.
MAX_CONCAT_LENGTH = 10_000


class _Undefined(Exception):
    """The condition does not hold for these values (a missing name, a type that does not
    fit, an operand too large): the evaluation is false, never an error."""


_BINARY: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
}
_COMPARE: dict[type[ast.cmpop], Callable[[Any, Any], Any]] = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.In: lambda a, b: a in b,
    ast.NotIn: lambda a, b: a not in b,
    ast.Is: operator.is_,
    ast.IsNot: operator.is_not,
}
_NODES = (
    ast.Expression,
    ast.BoolOp,
    ast.And,
    ast.Or,
    ast.UnaryOp,
    ast.Not,
    ast.USub,
    ast.UAdd,
    ast.BinOp,
    ast.Compare,
    ast.IfExp,
    ast.Name,
    ast.Load,
    ast.Constant,
    ast.List,
    ast.Tuple,
    ast.Set,
    *_BINARY,
    *_COMPARE,
)


def _refuse(reason: str) -> errors.ValidationError:
    # the message names the rule, never the condition's text (it may quote a customer value)
    return errors.ValidationError(f"when_condition {reason}")


def _check_constant(value: object) -> None:
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return
    if isinstance(value, int):
        if abs(value) > MAX_LITERAL:
            raise _refuse(f"may not use numbers larger than {MAX_LITERAL} in magnitude")
        return
    if isinstance(value, float):
        if not math.isfinite(value) or abs(value) > MAX_LITERAL:
            raise _refuse(f"may not use numbers larger than {MAX_LITERAL} in magnitude")
        return
    raise _refuse(f"may not use a {type(value).__name__} literal")


def _check_tree(tree: ast.Expression) -> None:
    """Walk ``tree`` without recursion; refuse what the language does not have."""
    count = 0
    stack: list[tuple[ast.AST, int]] = [(tree, 0)]
    while stack:
        node, depth = stack.pop()
        count += 1
        if count > MAX_CONDITION_NODES:
            raise _refuse(f"is too complex (more than {MAX_CONDITION_NODES} parts)")
        if depth > MAX_CONDITION_DEPTH:
            raise _refuse(f"is nested too deeply (more than {MAX_CONDITION_DEPTH} levels)")
        if not isinstance(node, _NODES):
            raise _refuse(f"may not use {type(node).__name__}")
        if isinstance(node, ast.Constant):
            _check_constant(node.value)
        elif isinstance(node, ast.BinOp) and not isinstance(node.op, ast.Add):
            if any(
                isinstance(side, ast.Constant) and isinstance(side.value, str)
                for side in (node.left, node.right)
            ):
                raise _refuse("may not repeat or format strings (only + joins them)")
        elif isinstance(node, ast.Compare):
            for op, right in zip(node.ops, node.comparators, strict=True):
                if isinstance(op, ast.Is | ast.IsNot) and not (
                    isinstance(right, ast.Constant)
                    and any(right.value is allowed for allowed in (None, True, False))
                ):
                    raise _refuse("may use 'is' only with None, True or False")
        elif isinstance(node, ast.Name) and node.id.startswith("__"):
            raise _refuse("may not use names starting with '__'")
        stack.extend((child, depth + 1) for child in ast.iter_child_nodes(node))


def _number(value: Any) -> int | float:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        if value.bit_length() > MAX_OPERAND_BITS:
            raise _Undefined("number too large")
        return value
    if isinstance(value, float):
        return value
    raise _Undefined("not a number")


def _check_concat(left: str | list[Any] | tuple[Any, ...], right: object) -> None:
    if not isinstance(right, str | list | tuple) or len(left) + len(right) > MAX_CONCAT_LENGTH:
        raise _Undefined("concatenation too long")


def _binary(op: type[ast.operator], left: Any, right: Any) -> Any:
    if op is ast.Add:
        if isinstance(left, str) and isinstance(right, str):
            _check_concat(left, right)
            return left + right
        if isinstance(left, list) and isinstance(right, list):
            _check_concat(left, right)
            return left + right
        if isinstance(left, tuple) and isinstance(right, tuple):
            _check_concat(left, right)
            return left + right
    # everything else is arithmetic on numbers only: no string repetition or formatting
    result = _BINARY[op](_number(left), _number(right))
    if isinstance(result, float) and not math.isfinite(result):
        raise _Undefined("not a finite number")
    return result


def _contained(needle: Any, haystack: Any) -> bool:
    if isinstance(haystack, str):
        if not isinstance(needle, str):
            raise _Undefined("'in' a string needs a string")
        return needle in haystack
    if isinstance(haystack, list | tuple | set | frozenset | dict):
        return needle in haystack
    raise _Undefined("'in' needs a string, list or object")


def _evaluate(node: ast.AST, names: Mapping[str, Any]) -> Any:
    """The reference semantics of a condition, a plain tree walk. Evaluations run the
    closures :func:`_compile` builds from the same tree once; ``test_requirements_compiled``
    checks that both always agree."""
    # recursion is bounded by MAX_CONDITION_DEPTH, checked when the condition was compiled
    if isinstance(node, ast.Expression):
        return _evaluate(node.body, names)
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name):
        if node.id in ("True", "False", "None"):  # pragma: no cover - parsed as Constant
            return {"True": True, "False": False, "None": None}[node.id]
        try:
            return names[node.id]
        except KeyError:
            raise _Undefined("a name the profile lacks") from None
    if isinstance(node, ast.BoolOp):
        if isinstance(node.op, ast.And):
            result: Any = True
            for value in node.values:
                result = _evaluate(value, names)
                if not result:
                    return result
            return result
        result = False
        for value in node.values:
            result = _evaluate(value, names)
            if result:
                return result
        return result
    if isinstance(node, ast.UnaryOp):
        operand = _evaluate(node.operand, names)
        if isinstance(node.op, ast.Not):
            return not operand
        number = _number(operand)
        return -number if isinstance(node.op, ast.USub) else +number
    if isinstance(node, ast.BinOp):
        return _binary(type(node.op), _evaluate(node.left, names), _evaluate(node.right, names))
    if isinstance(node, ast.Compare):
        left = _evaluate(node.left, names)
        for op, comparator in zip(node.ops, node.comparators, strict=True):
            right = _evaluate(comparator, names)
            if isinstance(op, ast.In):
                holds = _contained(left, right)
            elif isinstance(op, ast.NotIn):
                holds = not _contained(left, right)
            else:
                holds = bool(_COMPARE[type(op)](left, right))
            if not holds:
                return False
            left = right
        return True
    if isinstance(node, ast.IfExp):
        if _evaluate(node.test, names):
            return _evaluate(node.body, names)
        return _evaluate(node.orelse, names)
    if isinstance(node, ast.List | ast.Tuple):
        items = [_evaluate(item, names) for item in node.elts]
        return items if isinstance(node, ast.List) else tuple(items)
    if isinstance(node, ast.Set):
        return {_evaluate(item, names) for item in node.elts}
    raise _Undefined(f"unexpected {type(node).__name__}")  # pragma: no cover - refused


_Run = Callable[[Mapping[str, Any]], Any]


def _compile(node: ast.AST) -> _Run:
    """``node`` as a closure that does what :func:`_evaluate` does with it, decided once
    instead of on every evaluation (which node type, which operator). Same semantics, same
    operand checks (``_binary``, ``_number``, ``_contained``); only accepted trees (checked
    by ``_check_tree``) are compiled, so the recursion is bounded by MAX_CONDITION_DEPTH."""
    if isinstance(node, ast.Expression):
        return _compile(node.body)
    if isinstance(node, ast.Constant):
        constant = node.value
        return lambda names: constant
    if isinstance(node, ast.Name):
        name = node.id

        def lookup(names: Mapping[str, Any]) -> Any:
            try:
                return names[name]
            except KeyError:
                raise _Undefined("a name the profile lacks") from None

        return lookup
    if isinstance(node, ast.BoolOp):
        simple = [_simple_comparison(value) for value in node.values]
        if all(simple):
            # ``a != "x" and b >= 18``: every part a name against a constant, run in one
            # closure (no call per part)
            return _comparisons(
                [part for part in simple if part is not None], isinstance(node.op, ast.And)
            )
        parts = [_compile(value) for value in node.values]
        if isinstance(node.op, ast.And):

            def all_of(names: Mapping[str, Any]) -> Any:
                result: Any = True
                for part in parts:
                    result = part(names)
                    if not result:
                        return result
                return result

            return all_of

        def any_of(names: Mapping[str, Any]) -> Any:
            result: Any = False
            for part in parts:
                result = part(names)
                if result:
                    return result
            return result

        return any_of
    if isinstance(node, ast.UnaryOp):
        operand = _compile(node.operand)
        if isinstance(node.op, ast.Not):
            return lambda names: not operand(names)
        if isinstance(node.op, ast.USub):
            return lambda names: -_number(operand(names))
        return lambda names: +_number(operand(names))
    if isinstance(node, ast.BinOp):
        operation = type(node.op)
        left, right = _compile(node.left), _compile(node.right)
        return lambda names: _binary(operation, left(names), right(names))
    if isinstance(node, ast.Compare):
        first = _compile(node.left)
        steps: list[tuple[Callable[[Any, Any], bool], _Run]] = []
        for op, comparator in zip(node.ops, node.comparators, strict=True):
            if isinstance(op, ast.In):
                test: Callable[[Any, Any], bool] = _contained
            elif isinstance(op, ast.NotIn):
                test = _not_contained
            else:
                test = _truth_of(_COMPARE[type(op)])
            steps.append((test, _compile(comparator)))
        if len(steps) == 1:
            (op,), (against,) = node.ops, node.comparators
            if (
                isinstance(node.left, ast.Name)
                and isinstance(against, ast.Constant)
                and not isinstance(op, ast.In | ast.NotIn)
            ):
                # the most common shape (``age >= 18``, ``kind == "x"``): the lookup, the
                # constant and the comparison in one closure instead of four
                return _name_against_constant(node.left.id, _COMPARE[type(op)], against.value)
            ((only, second),) = steps
            return lambda names: only(first(names), second(names))

        def chain(names: Mapping[str, Any]) -> bool:
            left = first(names)
            for holds, comparator in steps:
                right = comparator(names)
                if not holds(left, right):
                    return False
                left = right
            return True

        return chain
    if isinstance(node, ast.IfExp):
        decide, body, orelse = _compile(node.test), _compile(node.body), _compile(node.orelse)
        return lambda names: body(names) if decide(names) else orelse(names)
    if isinstance(node, ast.List):
        items = [_compile(item) for item in node.elts]
        return lambda names: [item(names) for item in items]
    if isinstance(node, ast.Tuple):
        items = [_compile(item) for item in node.elts]
        return lambda names: tuple([item(names) for item in items])
    if isinstance(node, ast.Set):
        items = [_compile(item) for item in node.elts]
        return lambda names: {item(names) for item in items}
    kind = type(node).__name__  # pragma: no cover - refused by _check_tree

    def refused(names: Mapping[str, Any]) -> Any:  # pragma: no cover
        raise _Undefined(f"unexpected {kind}")

    return refused  # pragma: no cover


def _name_against_constant(name: str, compare: Callable[[Any, Any], Any], constant: Any) -> _Run:
    """``name <op> constant`` as :func:`_compile` builds it in general (``lookup``, the
    constant, ``_truth_of(compare)``), in one closure: same lookup, same result."""

    def name_against_constant(names: Mapping[str, Any]) -> bool:
        try:
            left = names[name]
        except KeyError:
            raise _Undefined("a name the profile lacks") from None
        return bool(compare(left, constant))

    return name_against_constant


_Comparison = tuple[str, Callable[[Any, Any], Any], Any]


def _simple_comparison(node: ast.AST) -> _Comparison | None:
    """(name, comparison, constant) of ``name <op> constant`` (one operator, not ``in``):
    the shape :func:`_name_against_constant` compiles; None for any other node."""
    if (
        isinstance(node, ast.Compare)
        and len(node.ops) == 1
        and isinstance(node.left, ast.Name)
        and isinstance(node.comparators[0], ast.Constant)
        and not isinstance(node.ops[0], ast.In | ast.NotIn)
    ):
        return node.left.id, _COMPARE[type(node.ops[0])], node.comparators[0].value
    return None


def _comparisons(parts: list[_Comparison], conjunction: bool) -> _Run:
    """``and`` (``conjunction``) or ``or`` of ``name <op> constant`` parts, as
    :func:`_compile` builds it in general (``all_of``/``any_of`` over
    :func:`_name_against_constant` closures), in one closure: same lookups in the same
    order, same short-circuit, same result (each part is a bool)."""
    steps = tuple(parts)

    def joined(names: Mapping[str, Any]) -> bool:
        # ``and`` stops at the first false part, ``or`` at the first true one: a part whose
        # falsity *is* ``conjunction`` decides, as ``not conjunction``
        for name, compare, constant in steps:
            try:
                left = names[name]
            except KeyError:
                raise _Undefined("a name the profile lacks") from None
            if (not compare(left, constant)) is conjunction:
                return not conjunction
        return conjunction

    return joined


def _not_contained(needle: Any, haystack: Any) -> bool:
    return not _contained(needle, haystack)


def _truth_of(compare: Callable[[Any, Any], Any]) -> Callable[[Any, Any], bool]:
    return lambda left, right: bool(compare(left, right))


@dataclass(frozen=True)
class CompiledCondition:
    """A condition that passed every check; :meth:`holds` always answers.

    ``tree`` is the checked syntax tree; the closure it compiles to (:func:`_compile`) is
    built once, with the instance, and every evaluation runs that.
    """

    tree: ast.Expression
    #: :meth:`holds` as a plain function (what the evaluation loop calls)
    test: Callable[[Mapping[str, Any]], bool] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        run = _compile(self.tree)
        object.__setattr__(self, "_run", run)
        object.__setattr__(self, "test", _test(self.tree, run))

    def holds(self, values: Mapping[str, Any]) -> bool:
        """True when the condition is truthy over ``values``; false when it is undefined
        for them (a missing name, values of the wrong type or size)."""
        return self.test(values)


# what makes a condition undefined for the values, besides _Undefined (a missing name):
# values that do not order (``None < 1``), dividing by zero, deeply nested stored JSON
_UNDEFINED_ERRORS = (TypeError, ValueError, ArithmeticError, RecursionError)


def _test(tree: ast.Expression, run: _Run) -> Callable[[Mapping[str, Any]], bool]:
    """:meth:`CompiledCondition.holds` of ``tree`` compiled to ``run``, as one function
    (what the evaluation loop calls: no method call in between). The commonest conditions,
    ``name <op> constant`` parts joined by ``and`` or ``or`` (or one alone), are one
    function with no call per part (:func:`_comparisons_test`)."""
    body = tree.body
    if isinstance(body, ast.BoolOp):
        parts = [_simple_comparison(value) for value in body.values]
        if all(parts):
            return _comparisons_test(
                [part for part in parts if part is not None], isinstance(body.op, ast.And)
            )
    else:
        only = _simple_comparison(body)
        if only is not None:
            return _comparisons_test([only], True)

    def holds(values: Mapping[str, Any]) -> bool:
        try:
            return bool(run(values))
        except _Undefined:
            return False
        except _UNDEFINED_ERRORS:
            return False

    return holds


def _comparisons_test(
    parts: list[_Comparison], conjunction: bool
) -> Callable[[Mapping[str, Any]], bool]:
    """The ``holds`` of :func:`_comparisons` (``_test`` over it), in one function: a name
    the values lack makes the whole condition false (undefined), as does a comparison that
    raises what ``holds`` catches; otherwise ``and``/``or`` of the parts, in order,
    short-circuited."""
    steps = tuple(parts)
    undefined = _UNDEFINED_ERRORS  # (no comparison raises _Undefined)
    if conjunction and len(steps) == 2:
        # ``a <op> x and b <op> y``, the commonest shape, without the loop: the same steps
        (first, first_compare, first_constant), (second, second_compare, second_constant) = steps

        def both_hold(values: Mapping[str, Any]) -> bool:
            try:
                left = values[first]
            except KeyError:
                return False
            try:
                if not first_compare(left, first_constant):
                    return False
            except undefined:
                return False
            try:
                left = values[second]
            except KeyError:
                return False
            try:
                return bool(second_compare(left, second_constant))
            except undefined:
                return False

        return both_hold

    def joined_holds(values: Mapping[str, Any]) -> bool:
        # as _comparisons' ``joined``, a missing name or a failing comparison false
        for name, compare, constant in steps:
            try:
                left = values[name]
            except KeyError:
                return False
            try:
                if (not compare(left, constant)) is conjunction:
                    return not conjunction
            except undefined:
                return False
        return conjunction

    return joined_holds


@functools.lru_cache(maxsize=1024)
def compile_condition(expression: str) -> CompiledCondition:
    """Check and compile ``expression``; raise :class:`~ccvault.errors.ValidationError`
    saying which rule it breaks (the message never quotes the condition)."""
    text = expression.strip()
    if not text:
        raise _refuse("is empty")
    if len(text) > MAX_CONDITION_LENGTH:
        raise _refuse(f"is longer than {MAX_CONDITION_LENGTH} characters")
    if "\x00" in text:
        raise _refuse("may not contain NUL characters")
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as exc:
        raise _refuse(f"does not parse: {exc.msg}") from None
    except (RecursionError, MemoryError, ValueError):
        raise _refuse("is nested too deeply") from None
    _check_tree(tree)
    return CompiledCondition(tree)


def check_condition(expression: str) -> ast.Expression:
    """Parse ``expression``; raise :class:`~ccvault.errors.ValidationError` saying why if it
    is not an allowed condition."""
    return compile_condition(expression).tree


def check_requirement(requirement: ScenarioFieldRequirement) -> None:
    """Refuse a requirement whose condition is not allowed or that depends on itself."""
    if requirement.when_condition is not None and requirement.when_condition.strip():
        check_condition(requirement.when_condition)
    if requirement.field_name in requirement.depends_on_fields:
        raise errors.ValidationError(
            f"requirement for {requirement.field_name!r} cannot depend on itself"
        )


def condition_holds(expression: str | None, values: Mapping[str, Any]) -> bool:
    """True when ``expression`` is empty or evaluates truthy over ``values``.

    A missing name or a type error makes it false rather than raising. A stored condition
    that the current rules refuse (written before they existed, or by another writer) is
    false too, and logged without its text.
    """
    return True if expression is None else _holds(expression, values)


@functools.lru_cache(maxsize=1024)
def _stored(expression: str) -> CompiledCondition | None:
    # refused ones are remembered too: one warning per condition, not one per evaluation
    try:
        return compile_condition(expression)
    except errors.ValidationError as exc:
        logger.warning("a stored when_condition is not allowed and never holds: %s", exc)
        return None


class FieldCheck(NamedTuple):
    """All ``get_missing_fields`` reads of an *enabled* field definition: whether the field
    must be verified, and its own freshness (None: the rules' default). Immutable and small
    (a tuple of a bool and an int or None); :func:`field_check` hands out shared instances.
    A field with a ``FieldCheck`` is judged as with its definition; one without, as a field
    without a definition."""

    required_verification: bool
    freshness_seconds: int | None


_PLAIN_CHECKS = (FieldCheck(False, None), FieldCheck(True, None))
_FRESHNESS_CHECKS: tuple[dict[int, FieldCheck], dict[int, FieldCheck]] = ({}, {})
_MAX_SHARED_CHECKS = 1024  # per flag: emptied when full (a bound, never a correctness matter)


def field_check(required_verification: bool, freshness_seconds: int | None) -> FieldCheck:
    """The :class:`FieldCheck` of these values, shared: the same instance for the same values
    (a bounded memo), so reading 50 definitions allocates next to nothing."""
    flag = 1 if required_verification else 0
    if freshness_seconds is None:
        return _PLAIN_CHECKS[flag]
    memo = _FRESHNESS_CHECKS[flag]
    check = memo.get(freshness_seconds)
    if check is None:
        if len(memo) >= _MAX_SHARED_CHECKS:
            memo.clear()
        check = memo[freshness_seconds] = FieldCheck(bool(flag), freshness_seconds)
    return check


def checks_of(
    definitions_by_agent: Mapping[UUID, Iterable[ProfileFieldDefinition]],
) -> dict[UUID, dict[str, FieldCheck]]:
    """``{agent_id: {name: FieldCheck}}`` of the *enabled* definitions among
    ``definitions_by_agent`` (what ``_get_requirements_with_definitions`` returns): the
    default ``_get_requirement_checks`` derives its answer with this."""
    checks: dict[UUID, dict[str, FieldCheck]] = {}
    for agent_id, definitions in definitions_by_agent.items():
        own = {
            definition.name: field_check(
                definition.required_verification, definition.freshness_seconds
            )
            for definition in definitions
            if definition.enabled
        }
        if own:
            checks[agent_id] = own
    return checks


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
    return find_missing_fields(
        profile.fields,
        requirements,
        definitions,
        tenant_id=profile.tenant_id,
        profile_id=profile.id,
        rules=rules,
        required_level=required_level,
        now=now,
    )


def find_missing_fields(
    fields: Mapping[str, ProfileField],
    requirements: Iterable[ScenarioFieldRequirement],
    definitions: Mapping[str, ProfileFieldDefinition],
    *,
    tenant_id: UUID,
    profile_id: UUID | None,
    rules: StoreRules,
    required_level: RequiredLevel | None,
    now: datetime,
) -> list[ScenarioFieldRequirement]:
    """:func:`find_missing` over a profile's ACTIVE ``fields`` (name -> version) alone: all
    it reads of a profile. The values every condition sees are gathered once; each condition
    is compiled once per process (:func:`compile_condition`, a bounded LRU by its text)."""
    return find_missing_checked(
        fields,
        {name: item.value for name, item in fields.items()},
        requirements,
        # every definition given judges (enabled or not: the callers chose them)
        {
            name: field_check(definition.required_verification, definition.freshness_seconds)
            for name, definition in definitions.items()
        },
        tenant_id=tenant_id,
        profile_id=profile_id,
        rules=rules,
        required_level=required_level,
        now=now,
    )


def find_missing_checked(
    fields: Mapping[str, ProfileField],
    values: Mapping[str, Any],
    requirements: Iterable[ScenarioFieldRequirement],
    checks: Mapping[str, FieldCheck],
    *,
    tenant_id: UUID,
    profile_id: UUID | None,
    rules: StoreRules,
    required_level: RequiredLevel | None,
    now: datetime,
) -> list[ScenarioFieldRequirement]:
    """:func:`find_missing_fields` (``values``: each of ``fields``' ``value`` by name,
    gathered by the caller) with each field's definition reduced to its
    :class:`FieldCheck` (``checks``: field name -> check, of the definitions that judge,
    i.e. the enabled ones of the requirements' agent): :func:`find_missing_records` over
    the requirements' records."""
    check_of = checks.get
    return find_missing_records(
        fields,
        values,
        [
            RequirementRecord(
                requirement.field_name,
                requirement.required_level,
                requirement.when_condition,
                requirement.depends_on_fields,
                check_of(requirement.field_name),
                requirement,
            )
            for requirement in requirements
        ],
        tenant_id=tenant_id,
        profile_id=profile_id,
        rules=rules,
        required_level=required_level,
        now=now,
    )


class RequirementRecord(NamedTuple):
    """One requirement as ``get_missing_fields`` judges it: what the evaluation reads of it,
    the :class:`FieldCheck` of its own agent's *enabled* definition of its field (None
    without one), and ``source``, what the hook's ``build`` makes the requirement model of
    (a provider's row; the model itself for :func:`records_of`). Immutable and small: a
    provider hands out one per requirement and a model is built only for the missing ones.
    """

    field_name: str
    required_level: RequiredLevel
    when_condition: str | None
    depends_on_fields: Sequence[str]
    check: FieldCheck | None
    source: Any


#: a record's values, in :class:`RequirementRecord`'s order: a provider may hand out plain
#: tuples (the evaluation unpacks them by position)
RecordValues = tuple[str, RequiredLevel, str | None, Sequence[str], FieldCheck | None, Any]


class RequirementRecords(NamedTuple):
    """What ``_get_requirement_records`` answers: ``records`` (one per requirement, any
    order; each a :class:`RequirementRecord` or a plain tuple of its values in its order;
    an iterable read once, maybe an iterator) and ``build``, which turns the ``source`` of
    some of them (a list, in any order) into their requirement models, in that order
    (refusing a source that is not a valid requirement with
    :class:`~ccvault.errors.StorageError`)."""

    records: Iterable[RecordValues]
    build: Callable[[list[Any]], list[ScenarioFieldRequirement]]


def _as_built(sources: list[Any]) -> list[ScenarioFieldRequirement]:
    return list(sources)


def records_of(
    requirements: Iterable[ScenarioFieldRequirement],
    checks_by_agent: Mapping[UUID, Mapping[str, FieldCheck]],
) -> RequirementRecords:
    """The records of ``requirements`` (models, their own sources) and ``checks_by_agent``
    (what ``_get_requirement_checks`` returns): the default ``_get_requirement_records``
    derives its answer with this."""
    records: list[RequirementRecord] = []
    append = records.append
    no_checks: Mapping[str, FieldCheck] = {}
    checks_get = checks_by_agent.get
    last_agent: object = None
    own: Mapping[str, FieldCheck] = no_checks
    for requirement in requirements:
        agent = requirement.agent_id
        if agent is not last_agent:  # requirements of one agent share its UUID (mostly)
            own, last_agent = checks_get(agent, no_checks), agent
        name = requirement.field_name
        append(
            RequirementRecord(
                name,
                requirement.required_level,
                requirement.when_condition,
                requirement.depends_on_fields,
                own.get(name),
                requirement,
            )
        )
    return RequirementRecords(records, _as_built)


def find_missing_records(
    fields: Mapping[str, ProfileField],
    values: Mapping[str, Any],
    records: Iterable[RecordValues],
    *,
    tenant_id: UUID,
    profile_id: UUID | None,
    rules: StoreRules,
    required_level: RequiredLevel | None,
    now: datetime,
) -> list[Any]:
    """The evaluation itself, what ``get_missing_fields`` calls: the ``source`` of each
    record (in their order) that applies to the profile (``fields``: its ACTIVE fields
    by name, unexpired; ``values``: their values) and that it does not meet, each judged
    by its record's ``check``, as :func:`find_missing` describes. The loop reads each
    record once, into locals; each condition is looked up once by its text."""
    stale_action = rules.stale_field_action
    judge_age = stale_action != "ignore"
    default_freshness = rules.default_freshness_seconds
    field_of = fields.get
    test_of = _TESTS.get
    missing: list[Any] = []
    append = missing.append
    # freshness -> the collection time before which a field is stale (_cutoff)
    cutoffs: dict[int, Any] = {}
    cutoff_of = cutoffs.get
    for name, level, condition, depends_on, check, source in records:
        if required_level is not None and level is not required_level:
            continue
        if condition is not None:
            test = test_of(condition)
            if test is None:
                test = _test_of(condition)
            if not test(values):
                continue
        if depends_on and any(depended not in fields for depended in depends_on):
            continue
        version = field_of(name)
        if version is None:
            append(source)
            continue
        expires = version.expires_at
        if expires is not None and expires <= now:  # ProfileField.is_expired
            append(source)
            continue
        freshness = default_freshness
        if check is not None:
            verify, own_freshness = check  # required_verification, freshness_seconds
            if verify and not version.verified:
                append(source)
                continue
            if own_freshness is not None:
                freshness = own_freshness
        if not judge_age or not freshness:
            continue
        cutoff = cutoff_of(freshness)
        if cutoff is None:
            cutoff = cutoffs[freshness] = _cutoff(now, freshness)
        if (
            version.collected_at < cutoff
            if cutoff is not _EXACT
            else (now - version.collected_at).total_seconds() > freshness
        ):
            if stale_action == "block":
                append(source)
            else:
                _warn_stale(version, check is not None, freshness, tenant_id, profile_id)
    return missing


_EXACT = object()  # no cutoff: the age computed in seconds, as always
# below 2**33 seconds (272 years) a second and a microsecond apart as floats: the float age
# ``(now - collected).total_seconds()`` exceeds an integer ``freshness`` exactly when the
# timedelta exceeds ``freshness`` seconds, i.e. when collected < now - freshness
_EXACT_CUTOFF_BELOW = 2**33


def _cutoff(now: datetime, freshness: int) -> Any:
    """``now - freshness`` seconds: a field collected before it is stale (exactly as
    ``(now - collected).total_seconds() > freshness``), or _EXACT when that equivalence is
    not proven (a float, a huge freshness) or the time is out of range."""
    if type(freshness) is not int or not 0 < freshness < _EXACT_CUTOFF_BELOW:
        return _EXACT
    try:
        return now - timedelta(seconds=freshness)
    except OverflowError:
        return _EXACT


def _always(values: Mapping[str, Any]) -> bool:
    return True


def _never(values: Mapping[str, Any]) -> bool:
    return False


# a condition's text -> the function telling whether it holds (what _holds decides for it)
_TESTS: dict[str, Callable[[Mapping[str, Any]], bool]] = {}
_MAX_TESTS = 1024  # emptied when full (a bound, never a correctness matter)


def _test_of(expression: str) -> Callable[[Mapping[str, Any]], bool]:
    """Whether ``expression`` holds, as a function of the values (:func:`_holds` for it):
    decided once per text and kept (bounded)."""
    test: Callable[[Mapping[str, Any]], bool]
    if not expression or expression.isspace():  # as ``not expression.strip()``
        test = _always
    else:
        compiled = _stored(expression)
        test = _never if compiled is None else compiled.test
    if len(_TESTS) >= _MAX_TESTS:
        _TESTS.clear()
    _TESTS[expression] = test
    return test


def _holds(expression: str, values: Mapping[str, Any]) -> bool:
    """:func:`condition_holds` for a condition that is not None."""
    test = _TESTS.get(expression)
    if test is None:
        test = _test_of(expression)
    return test(values)


def _warn_stale(
    field: ProfileField,
    defined: bool,
    freshness: int,
    tenant_id: UUID,
    profile_id: UUID | None,
) -> None:
    metrics.STALE_FIELD_WARNINGS.labels(
        tenant_id=str(tenant_id),
        # a label value only from a stored definition
        field_name=field.name if defined else metrics.UNDEFINED_FIELD,
    ).inc()
    # a hot path: WARNING once per (tenant, field) and process, then DEBUG
    once = _STALE_LOGGED.first((tenant_id, field.name))
    logger.log(
        logging.WARNING if once else logging.DEBUG,
        "field %s of profile %s is stale (collected %s, freshness %ss)%s",
        field.name,
        profile_id,
        field.collected_at.isoformat(),
        freshness,
        "; further stale fields of this name are logged at DEBUG" if once else "",
    )
