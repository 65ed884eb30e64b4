"""Which suite tests are storage-facing and which check only core's rules.

Every public ``ProfileStore`` method checks its arguments and applies the vault's rules once,
in core, before any provider hook runs (``ccvault.store``). Some contract tests observe only
that layer: a malformed argument refused with ``ValidationError``, a requirement's condition
or freshness evaluated over values that every storage test already round-trips. They are the
**core-rule tests**. A provider cannot make them pass or fail; they run for every class by
default, and a repository that runs the suite against many classes over one core (this one
runs 13 providers and stacks) may set ``core_rule_tests = False`` on all but a few.

Everything else is **storage-facing** and runs for every class, always.

A suite module declares itself core-rule only with a module-level ``STORAGE_FACING = False``;
single tests of a mixed module are listed in :data:`CORE_RULE_TESTS`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, Final

__all__ = ["CORE_RULE_TESTS", "is_core_rule_test"]

#: ``{suite module: test function names}`` of core-rule tests (``None``: the whole module).
CORE_RULE_TESTS: Final[dict[str, frozenset[str] | None]] = {
    # ~90 malformed calls, each refused by core's argument checks before any hook runs
    "ccvault_contract_tests.suite_bad_input": None,
    # lone surrogates and naive or out-of-range timestamps are refused by core's argument
    # checks; the round trips at the edges of the range stay storage-facing
    "ccvault_contract_tests.suite_edges": frozenset(
        {
            "test_lone_surrogates_in_fields_are_refused_before_anything_is_written",
            "test_lone_surrogates_in_profiles_identities_and_assets_are_refused",
            "test_lone_surrogates_in_definitions_and_requirements_are_refused",
            "test_lone_surrogates_in_rewritten_payloads_are_refused",
            "test_naive_or_out_of_range_timestamps_are_refused",
        }
    ),
    # a bad item type is refused by core's argument check
    "ccvault_contract_tests.suite_lineage": frozenset({"test_bad_item_type_is_a_validation_error"}),
    # get_missing_fields is evaluated in core over the stored profile, definitions and
    # requirements; these vary only the evaluation (conditions, dependencies, verification,
    # freshness actions, levels). The tests of what is read (stored requirements, per step,
    # unknown scenario, collection order) stay storage-facing.
    "ccvault_contract_tests.suite_missing": frozenset(
        {
            "test_when_condition_gates_the_requirement",
            "test_condition_expressions",
            "test_condition_naming_an_absent_field_is_false",
            "test_condition_comparing_incompatible_values_is_false",
            "test_depends_on_fields_must_all_be_present",
            "test_unverified_field_is_missing_when_verification_is_required",
            "test_stale_field_blocks_when_the_action_is_block",
            "test_stale_field_is_only_warned_about_when_the_action_is_warn",
            "test_staleness_is_not_checked_when_the_action_is_ignore",
            "test_fresh_field_is_not_stale",
            "test_default_freshness_applies_without_a_definition",
            "test_definition_freshness_zero_means_never_stale",
            "test_required_level_filter",
        }
    ),
}


def is_core_rule_test(function: Callable[..., Any]) -> bool:
    """True when ``function`` (a suite test) checks only core's rules."""
    module_name = getattr(function, "__module__", "")
    module = sys.modules.get(module_name)
    if module is not None and getattr(module, "STORAGE_FACING", True) is False:
        return True
    if module_name not in CORE_RULE_TESTS:
        return False
    names = CORE_RULE_TESTS[module_name]
    return names is None or getattr(function, "__name__", "") in names
