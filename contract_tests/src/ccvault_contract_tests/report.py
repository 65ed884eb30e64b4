"""Verdicts and the machine-readable conformance report.

The plugin gathers, per contract class, what the suite expects to run (collected in the
process that collects: the only process, or every pytest-xdist worker) and what did run
(every test report, which pytest-xdist forwards to its controller). From both it derives one
verdict per class:

``CONFORMANT``
    every expected test ran (every required test, and every test of a declared capability),
    none failed, no required test is a known gap.
``CONFORMANT (single instance)``
    as above, for a class that declared ``single_instance``: the cross-instance tests ran
    with one instance, so nothing was shown about two processes over the same data.
``NOT CONFORMANT``
    a test failed or errored, a known gap now passes, a required test is declared a known
    gap, or the provider could not be resolved.
``INCOMPLETE``
    nothing failed, but N of the M expected tests did not run (narrowed with ``-k``,
    ``--deselect`` or node ids, stopped early, or skipped by a fixture).

This module has no pytest hooks; ``plugin.py`` feeds it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from ccvault_contract_tests.version import CONTRACT_VERSION, core_version

__all__ = [
    "CONFORMANT",
    "CONFORMANT_SINGLE_INSTANCE",
    "INCOMPLETE",
    "NOT_CONFORMANT",
    "REPORT_FORMAT",
    "ClassInfo",
    "ClassVerdict",
    "ItemInfo",
    "TestOutcome",
    "judge",
    "write_report",
]

CONFORMANT: Final = "CONFORMANT"
CONFORMANT_SINGLE_INSTANCE: Final = "CONFORMANT_SINGLE_INSTANCE"
NOT_CONFORMANT: Final = "NOT_CONFORMANT"
INCOMPLETE: Final = "INCOMPLETE"
#: verdicts that pass the release gate
PASSING: Final = frozenset({CONFORMANT, CONFORMANT_SINGLE_INSTANCE})
#: how each verdict is printed
LABELS: Final = {
    CONFORMANT: "CONFORMANT",
    CONFORMANT_SINGLE_INSTANCE: "CONFORMANT (single instance)",
    NOT_CONFORMANT: "NOT CONFORMANT",
    INCOMPLETE: "INCOMPLETE",
}
REPORT_FORMAT: Final = "ccvault-contract-report/1"


@dataclass
class ClassInfo:
    """What the suite expects of one contract class (plain data: crosses xdist)."""

    key: str
    provider: str | None
    distribution: str | None
    provider_version: str | None
    capabilities: list[str]
    single_instance: str | None
    core_rule_tests: bool
    #: tests that must run: required ones plus those of declared capabilities
    expected: int
    #: of ``expected``: tests of declared capabilities
    expected_optional: int
    #: tests skipped because the provider does not declare their capability
    undeclared_optional: int
    #: core-rule tests left out (``core_rule_tests = False``)
    core_rule_left_out: int
    error: str | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ClassInfo:
        return cls(**data)


@dataclass
class ItemInfo:
    """One collected contract test (plain data: crosses xdist)."""

    cls: str
    name: str
    #: needs optional capabilities (declared or not)
    optional: bool
    #: needs a capability the provider does not declare: skipped, never expected
    undeclared: bool
    gap: bool
    cross_instance: bool

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ItemInfo:
        return cls(**data)


@dataclass
class TestOutcome:
    """The combined outcome of one test's setup, call and teardown reports."""

    __test__ = False  # not a pytest test class

    nodeid: str
    outcome: str = "not run"  # passed failed error skipped xfailed xpassed
    reason: str | None = None
    duration: float = 0.0

    def absorb(self, when: str, outcome: str, wasxfail: bool, reason: str | None) -> None:
        """Fold one phase's report into the outcome (pytest's own precedence)."""
        if when == "setup":
            if outcome == "failed":
                self.outcome, self.reason = "error", reason
            elif outcome == "skipped":
                self.outcome = "xfailed" if wasxfail else "skipped"
                self.reason = reason
        elif when == "call":
            if outcome == "failed":
                self.outcome, self.reason = "failed", reason
            elif outcome == "skipped":
                self.outcome = "xfailed" if wasxfail else "skipped"
                self.reason = reason
            else:
                self.outcome = "passed"
        elif outcome == "failed" and self.outcome not in ("failed", "error"):
            self.outcome, self.reason = "error", reason

    @property
    def ran(self) -> bool:
        return self.outcome not in ("not run", "skipped")


@dataclass
class ClassVerdict:
    info: ClassInfo
    verdict: str
    ran: int = 0
    passed: int = 0
    optional_passed: int = 0
    failed: list[str] = field(default_factory=list)
    fixed_gaps: list[str] = field(default_factory=list)
    gaps: list[str] = field(default_factory=list)
    required_gaps: list[str] = field(default_factory=list)
    capability_skips: dict[str, int] = field(default_factory=dict)
    other_skips: dict[str, int] = field(default_factory=dict)
    cross_instance_ran: int = 0
    #: failing tests by the NotImplementedError they hit first (a provider under construction)
    not_implemented: dict[str, int] = field(default_factory=dict)
    tests: list[dict[str, Any]] = field(default_factory=list)

    @property
    def label(self) -> str:
        return LABELS[self.verdict]


def judge(
    classes: dict[str, ClassInfo],
    items: dict[str, ItemInfo],
    outcomes: dict[str, TestOutcome],
) -> list[ClassVerdict]:
    """One verdict per class, sorted by class."""
    by_class: dict[str, list[tuple[ItemInfo, TestOutcome]]] = {key: [] for key in classes}
    for nodeid, item in items.items():
        outcome = outcomes.get(nodeid)
        if outcome is None or item.cls not in by_class:
            continue  # collected (here or by a worker) but deselected, or never reported
        by_class[item.cls].append((item, outcome))
    verdicts = []
    for key in sorted(classes):
        info = classes[key]
        verdict = ClassVerdict(info=info, verdict=CONFORMANT)
        for item, outcome in sorted(by_class[key], key=lambda pair: pair[1].nodeid):
            _count(verdict, item, outcome)
        if info.error or verdict.failed or verdict.fixed_gaps or verdict.required_gaps:
            verdict.verdict = NOT_CONFORMANT
        elif verdict.ran < info.expected:
            verdict.verdict = INCOMPLETE
        elif info.single_instance is not None:
            verdict.verdict = CONFORMANT_SINGLE_INSTANCE
        verdicts.append(verdict)
    return verdicts


def _count(verdict: ClassVerdict, item: ItemInfo, outcome: TestOutcome) -> None:
    verdict.tests.append(
        {
            "id": outcome.nodeid,
            "name": item.name,
            "required": not item.optional,
            "outcome": outcome.outcome,
            "reason": outcome.reason,
            "duration": round(outcome.duration, 4),
            "known_gap": item.gap,
            "cross_instance": item.cross_instance,
        }
    )
    if outcome.outcome == "skipped":
        reason = (outcome.reason or "").removeprefix("Skipped: ")
        bucket = verdict.capability_skips if item.undeclared else verdict.other_skips
        bucket[reason] = bucket.get(reason, 0) + 1
        return
    if not outcome.ran or item.undeclared:
        return
    verdict.ran += 1
    if item.cross_instance:
        verdict.cross_instance_ran += 1
    if outcome.outcome in ("failed", "error"):
        if item.gap and outcome.outcome == "failed":
            verdict.fixed_gaps.append(item.name)  # a strict xfail that passed
        else:
            verdict.failed.append(item.name)
        reason = outcome.reason or ""
        if reason.startswith("NotImplementedError"):
            what = reason.removeprefix("NotImplementedError").lstrip(": ").strip() or "?"
            verdict.not_implemented[what] = verdict.not_implemented.get(what, 0) + 1
    elif outcome.outcome == "xfailed":
        verdict.gaps.append(item.name)
        if not item.optional:
            verdict.required_gaps.append(item.name)
    elif outcome.outcome == "passed":
        verdict.passed += 1
        if item.optional:
            verdict.optional_passed += 1


def gate_fails(verdicts: list[ClassVerdict], *, allow_incomplete: bool) -> list[ClassVerdict]:
    """The classes that fail the release gate."""
    return [
        v
        for v in verdicts
        if v.verdict not in PASSING and not (allow_incomplete and v.verdict == INCOMPLETE)
    ]


def report_document(verdicts: list[ClassVerdict], *, exit_status: int) -> dict[str, Any]:
    """The JSON report: one entry per class, with every test's outcome."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        suite_version = version("ccvault-contract-tests")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        suite_version = "0.0.0"
    return {
        "format": REPORT_FORMAT,
        "contract_version": CONTRACT_VERSION,
        "suite_version": suite_version,
        "ccvault_version": core_version(),
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "exit_status": exit_status,
        "conformant": all(v.verdict in PASSING for v in verdicts) and bool(verdicts),
        "classes": [_class_document(v) for v in verdicts],
    }


def _class_document(verdict: ClassVerdict) -> dict[str, Any]:
    info = asdict(verdict.info)
    return {
        "class": info.pop("key"),
        "provider": info.pop("provider"),
        "distribution": info.pop("distribution"),
        "provider_version": info.pop("provider_version"),
        "capabilities": info.pop("capabilities"),
        "verdict": verdict.verdict,
        "single_instance": info.pop("single_instance"),
        "core_rule_tests": info.pop("core_rule_tests"),
        "error": info.pop("error"),
        "counts": {
            "expected": verdict.info.expected,
            "ran": verdict.ran,
            "passed": verdict.passed,
            "optional_passed": verdict.optional_passed,
            "failed": len(verdict.failed),
            "fixed_gaps": len(verdict.fixed_gaps),
            "known_gaps": len(verdict.gaps),
            "required_gaps": len(verdict.required_gaps),
            "skipped_undeclared_capability": sum(verdict.capability_skips.values()),
            "skipped_other": sum(verdict.other_skips.values()),
            "cross_instance_ran": verdict.cross_instance_ran,
            "core_rule_left_out": verdict.info.core_rule_left_out,
        },
        "not_implemented": dict(sorted(verdict.not_implemented.items())),
        "tests": verdict.tests,
    }


def write_report(path: Path, verdicts: list[ClassVerdict], *, exit_status: int) -> None:
    """Write the JSON report to ``path`` (its folder is created)."""
    document = report_document(verdicts, exit_status=exit_status)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2, sort_keys=False) + "\n", encoding="utf-8")
