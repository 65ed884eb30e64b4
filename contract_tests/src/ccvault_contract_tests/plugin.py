"""The pytest plugin (entry point ``pytest11``) that runs the contract suite and gates on it.

It is loaded automatically wherever ``ccvault-contract-tests`` is installed and does nothing
to tests that are not contract tests. For every test of a class derived from
:class:`~ccvault_contract_tests.ProfileStoreContract` it:

* marks the test (and its async fixtures, including the provider's ``store``) for
  pytest-asyncio, so the suite works in ``asyncio_mode = "strict"`` as well as ``"auto"``;
* reads the optional capabilities from the class's provider (``provider_name`` ->
  ``ProviderSpec.capabilities``) and skips a test gated with ``@requires(...)`` on one it
  does not declare;
* turns a test named in the class's ``known_gaps`` into a strict xfail;
* leaves out the core-rule tests of a class with ``core_rule_tests = False`` (``scope.py``);
* refuses an ``other_store`` that is the ``store`` object itself;
* prints a conformance verdict per class at the end (``report.py``: CONFORMANT,
  CONFORMANT (single instance), NOT CONFORMANT, INCOMPLETE with "N of M") and **fails the
  run** (exit status 1) when a class is NOT CONFORMANT or INCOMPLETE, unless
  ``--ccvault-allow-incomplete`` / ``--ccvault-allow-nonconformant`` say otherwise;
* writes a JSON report with ``--ccvault-report FILE.json``.

Under pytest-xdist the workers collect and run; what they collected travels to the
controller in ``workeroutput`` and every test report through ``pytest_runtest_logreport``,
so the verdicts, the exit status and the report are the controller's, over the whole run.

``--ccvault-config FILE.toml`` selects zero-code mode
(``pytest --pyargs ccvault_contract_tests --ccvault-config FILE.toml``).
"""

from __future__ import annotations

import inspect
from dataclasses import asdict
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as distribution_version
from pathlib import Path
from typing import Any

import pytest

from ccvault_contract_tests.capabilities import (
    MARKER,
    OPTIONAL_CAPABILITIES,
    required_capabilities,
)
from ccvault_contract_tests.report import (
    LABELS,
    NOT_CONFORMANT,
    ClassInfo,
    ClassVerdict,
    ItemInfo,
    TestOutcome,
    gate_fails,
    judge,
    write_report,
)
from ccvault_contract_tests.scope import is_core_rule_test
from ccvault_contract_tests.version import CONTRACT_VERSION, core_version

__all__ = ["zero_code_config_path"]

_zero_code_config: Path | None = None

_CLASSES = pytest.StashKey[dict[str, ClassInfo]]()
_ITEMS = pytest.StashKey[dict[str, ItemInfo]]()
_OUTCOMES = pytest.StashKey[dict[str, TestOutcome]]()
_VERDICTS = pytest.StashKey[list[ClassVerdict]]()
_GATE = pytest.StashKey[list[ClassVerdict]]()
_WORKEROUTPUT_KEY = "ccvault_contract"
#: the config of the running session, for hooks that do not receive it
_SESSION: dict[str, pytest.Config] = {}


def zero_code_config_path() -> Path | None:
    """The ``--ccvault-config`` file of this session, or None."""
    return _zero_code_config


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("ccvault", "ccvault contract suite")
    group.addoption(
        "--ccvault-config",
        action="store",
        default=None,
        metavar="FILE.toml",
        help="zero-code mode: build the store under test from this ccvault TOML file "
        "(use with: pytest --pyargs ccvault_contract_tests)",
    )
    group.addoption(
        "--ccvault-report",
        action="store",
        default=None,
        metavar="FILE.json",
        help="write the conformance report (per class: provider, versions, capabilities, "
        "verdict, counts, every test's outcome) as JSON to this file",
    )
    group.addoption(
        "--ccvault-allow-incomplete",
        action="store_true",
        default=False,
        help="a contract class that did not run its whole suite (-k, --deselect, node ids, "
        "fixture skips) is still reported INCOMPLETE but does not fail the run",
    )
    group.addoption(
        "--ccvault-allow-nonconformant",
        action="store_true",
        default=False,
        help="report verdicts only: neither NOT CONFORMANT nor INCOMPLETE fails the run "
        "(failing tests still do)",
    )


def pytest_configure(config: pytest.Config) -> None:
    global _zero_code_config
    config.addinivalue_line(
        "markers", f"{MARKER}(*names): contract test needing optional provider capabilities"
    )
    option = config.getoption("ccvault_config", default=None)
    _zero_code_config = Path(option).resolve() if option else None
    config.stash[_CLASSES] = {}
    config.stash[_ITEMS] = {}
    config.stash[_OUTCOMES] = {}
    _SESSION["config"] = config


def pytest_unconfigure(config: pytest.Config) -> None:
    if _SESSION.get("config") is config:
        del _SESSION["config"]


def pytest_report_header(config: pytest.Config) -> list[str]:
    lines = [f"ccvault contract suite {CONTRACT_VERSION} (ccvault core {core_version()})"]
    if ".".join(core_version().split(".")[:2]) != CONTRACT_VERSION:
        lines.append(
            f"WARNING: the installed ccvault {core_version()} is not the {CONTRACT_VERSION}.x "
            "release this suite describes; install matching ccvault-contract-tests"
        )
    return lines


def _is_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


def _contract_class(item: pytest.Item) -> type[Any] | None:
    from ccvault_contract_tests.contract import ProfileStoreContract

    cls = getattr(item, "cls", None)
    if isinstance(cls, type) and issubclass(cls, ProfileStoreContract):
        return cls
    return None


def _class_key(cls: type[Any]) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


# ------------------------------------------------------------------------------------------
# collection: what each class must run
# ------------------------------------------------------------------------------------------


def _mark_async_fixtures(item: pytest.Item) -> None:
    """Let pytest-asyncio run the async fixtures of a contract test in strict mode too.

    A provider writes ``@pytest.fixture async def store(self)``; in strict mode
    pytest-asyncio runs only fixtures it marked itself (``@pytest_asyncio.fixture``). The
    marking is an attribute on the fixture function; we set it the same way.
    """
    try:
        from pytest_asyncio.plugin import _make_asyncio_fixture_function
    except ImportError:  # pragma: no cover - other pytest-asyncio layouts
        return

    info = getattr(item, "_fixtureinfo", None)
    if info is None:
        return
    for defs in info.name2fixturedefs.values():
        for fixturedef in defs:
            func = fixturedef.func
            raw = getattr(func, "__func__", func)
            if inspect.iscoroutinefunction(raw) or inspect.isasyncgenfunction(raw):
                if not getattr(raw, "_force_asyncio_fixture", False):
                    _make_asyncio_fixture_function(raw, None)


def _provider_of(cls: type[Any]) -> tuple[dict[str, Any], str | None]:
    """The provider facts of a class (name, distribution, version, capabilities), or an error."""
    facts: dict[str, Any] = {
        "provider": cls.provider_name,
        "distribution": None,
        "provider_version": None,
        "capabilities": [],
    }
    if cls.provider_name is None:
        return facts, None  # no capabilities; the summary says how to name the provider
    from ccvault.registry import load_provider

    try:
        spec = load_provider(cls.provider_name)
    except Exception as exc:  # a missing or broken provider: every test says why
        return facts, f"{cls.__name__}: provider {cls.provider_name!r} cannot be loaded: {exc}"
    facts["distribution"] = spec.distribution
    try:
        facts["provider_version"] = distribution_version(spec.distribution)
    except PackageNotFoundError:
        facts["provider_version"] = None
    facts["capabilities"] = sorted(spec.capabilities)
    unknown = sorted(set(spec.capabilities) - set(OPTIONAL_CAPABILITIES))
    if unknown:
        return facts, (
            f"provider {spec.name!r} ({spec.distribution}) declares unknown capabilities "
            f"{unknown} in its ProviderSpec; known: {sorted(OPTIONAL_CAPABILITIES)}"
        )
    return facts, None


def _cases(function: Any) -> int:
    """How many test cases ``function`` yields: the product of its parametrizations."""
    count = 1
    for mark in getattr(function, "pytestmark", []):
        if getattr(mark, "name", None) != "parametrize":
            continue
        values = mark.args[1] if len(mark.args) > 1 else mark.kwargs.get("argvalues", [])
        try:
            count *= len(values)
        except TypeError:  # a generator: count what pytest collected instead
            return 0
    return count


def _expected(cls: type[Any], capabilities: frozenset[str]) -> dict[str, int]:
    """What the class must run, from its test functions (independent of any selection)."""
    counts = {"expected": 0, "expected_optional": 0, "undeclared_optional": 0, "left_out": 0}
    for name in sorted(dir(cls)):
        if not name.startswith("test"):
            continue
        function = getattr(cls, name)
        if not callable(function):
            continue
        cases = _cases(function)
        needed: set[str] = set()
        for mark in getattr(function, "pytestmark", []):
            if getattr(mark, "name", None) == MARKER:
                needed.update(mark.args)
        if not cls.core_rule_tests and is_core_rule_test(function):
            counts["left_out"] += cases
        elif needed - capabilities:
            counts["undeclared_optional"] += cases
        else:
            counts["expected"] += cases
            if needed:
                counts["expected_optional"] += cases
    return counts


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(
    session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
) -> None:
    """Runs before ``-k``/``--deselect`` narrow the list: records everything collected."""
    classes = config.stash[_CLASSES]
    infos = config.stash[_ITEMS]
    collected: dict[str, int] = {}
    left_out: list[pytest.Item] = []
    keep: list[pytest.Item] = []
    for item in items:
        cls = _contract_class(item)
        if cls is None:
            keep.append(item)
            continue
        key = _class_key(cls)
        if key not in classes:
            facts, error = _provider_of(cls)
            counts = _expected(cls, frozenset(facts["capabilities"]))
            classes[key] = ClassInfo(
                key=key,
                single_instance=cls.single_instance,
                core_rule_tests=bool(cls.core_rule_tests),
                expected=counts["expected"],
                expected_optional=counts["expected_optional"],
                undeclared_optional=counts["undeclared_optional"],
                core_rule_left_out=counts["left_out"],
                error=error,
                **facts,
            )
        function = getattr(item, "function", None)
        if not cls.core_rule_tests and function is not None and is_core_rule_test(function):
            left_out.append(item)
            continue
        keep.append(item)
        _mark_async_fixtures(item)
        info = classes[key]
        name = getattr(item, "originalname", item.name)
        needed = required_capabilities(item)
        missing = sorted(needed - frozenset(info.capabilities))
        gap_reason = cls.known_gaps.get(item.name, cls.known_gaps.get(name))
        infos[item.nodeid] = ItemInfo(
            cls=key,
            name=item.name,
            optional=bool(needed),
            undeclared=bool(missing),
            gap=gap_reason is not None,
            cross_instance="other_store" in getattr(item, "fixturenames", ()),
        )
        if not missing:
            collected[key] = collected.get(key, 0) + 1
        if info.error is not None:
            continue  # pytest_runtest_setup fails it with the reason
        if missing:
            item.add_marker(
                pytest.mark.skip(reason=f"provider lacks optional capability {missing}")
            )
        elif gap_reason is not None:
            item.add_marker(
                pytest.mark.xfail(reason=f"known gap: {gap_reason}", strict=True, run=True)
            )
    for key, count in collected.items():
        # a parametrization the class introspection could not count: trust the collection
        classes[key].expected = max(classes[key].expected, count)
    if left_out:
        config.hook.pytest_deselected(items=left_out)
        items[:] = keep
    if _is_worker(config):
        workeroutput: dict[str, Any] = config.workeroutput  # type: ignore[attr-defined]
        workeroutput[_WORKEROUTPUT_KEY] = {
            "classes": {key: asdict(info) for key, info in classes.items()},
            "items": {nodeid: asdict(info) for nodeid, info in infos.items()},
        }


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:
    """xdist controller: merge what a worker collected."""
    config = _SESSION.get("config")
    output = getattr(node, "workeroutput", None) or {}
    data = output.get(_WORKEROUTPUT_KEY)
    if config is None or not data:
        return
    for key, info in data["classes"].items():
        config.stash[_CLASSES].setdefault(key, ClassInfo.from_dict(info))
    for nodeid, info in data["items"].items():
        config.stash[_ITEMS].setdefault(nodeid, ItemInfo.from_dict(info))


# ------------------------------------------------------------------------------------------
# running
# ------------------------------------------------------------------------------------------


def pytest_runtest_setup(item: pytest.Item) -> None:
    cls = _contract_class(item)
    if cls is None:
        return
    info = item.config.stash[_CLASSES].get(_class_key(cls))
    if info is not None and info.error is not None:
        pytest.fail(info.error, pytrace=False)


@pytest.hookimpl(wrapper=True)
def pytest_fixture_setup(fixturedef: Any, request: pytest.FixtureRequest) -> Any:
    """``other_store`` must be another instance than ``store`` (unless single_instance)."""
    result = yield
    if fixturedef.argname != "other_store":
        return result
    cls = getattr(request, "cls", None)
    from ccvault_contract_tests.contract import ProfileStoreContract

    if not (isinstance(cls, type) and issubclass(cls, ProfileStoreContract)):
        return result
    if cls.single_instance is None and result is request.getfixturevalue("store"):
        pytest.fail(
            f"{cls.__name__}.other_store returned the `store` object itself: the "
            "cross-instance tests need a second, independent instance over the same data "
            "(or declare single_instance = 'why' for a store that cannot be opened twice)",
            pytrace=False,
        )
    return result


def _reason(report: pytest.TestReport) -> str | None:
    longrepr = report.longrepr
    if longrepr is None:
        return None
    if isinstance(longrepr, tuple):  # a skip: (path, line, "Skipped: reason")
        return str(longrepr[-1])
    crash = getattr(longrepr, "reprcrash", None)
    message = getattr(crash, "message", None)
    text = str(message) if message else str(longrepr)
    return text if len(text) <= 2000 else text[:2000] + "..."


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Every phase of every test (forwarded by xdist to the controller)."""
    config = _SESSION.get("config")
    if config is None or _is_worker(config):
        return
    outcomes = config.stash[_OUTCOMES]
    outcome = outcomes.setdefault(report.nodeid, TestOutcome(report.nodeid))
    outcome.duration += float(getattr(report, "duration", 0.0) or 0.0)
    outcome.absorb(
        report.when or "call",
        report.outcome,
        hasattr(report, "wasxfail"),
        _reason(report),
    )


# ------------------------------------------------------------------------------------------
# verdicts, the gate, the report
# ------------------------------------------------------------------------------------------


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    config = session.config
    if _is_worker(config) or config.option.collectonly:
        return
    classes = config.stash[_CLASSES]
    verdicts = judge(classes, config.stash[_ITEMS], config.stash[_OUTCOMES])
    config.stash[_VERDICTS] = verdicts
    if config.getoption("ccvault_allow_nonconformant"):
        failing: list[ClassVerdict] = []
    else:
        failing = gate_fails(
            verdicts, allow_incomplete=bool(config.getoption("ccvault_allow_incomplete"))
        )
    config.stash[_GATE] = failing
    if failing and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    path = config.getoption("ccvault_report")
    if path:
        write_report(
            Path(path).expanduser().resolve(), verdicts, exit_status=int(session.exitstatus)
        )


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    verdicts = config.stash.get(_VERDICTS, [])
    if not verdicts:
        return
    write = terminalreporter.write_line
    terminalreporter.section(f"ccvault contract {CONTRACT_VERSION} conformance")
    for verdict in verdicts:
        _summarise(write, verdict)
    failing = config.stash.get(_GATE, [])
    if failing:
        incomplete_only = all(v.verdict != NOT_CONFORMANT for v in failing)
        hint = (
            "--ccvault-allow-incomplete for a deliberately partial run"
            if incomplete_only
            else "--ccvault-allow-nonconformant to report without gating"
        )
        write(
            f"contract gate: {len(failing)} of {len(verdicts)} classes not CONFORMANT; "
            f"the run fails ({hint})",
            red=True,
            bold=True,
        )
    path = config.getoption("ccvault_report")
    if path:
        write(f"conformance report written to {Path(path).expanduser().resolve()}")


def _summarise(write: Any, verdict: ClassVerdict) -> None:
    info = verdict.info
    label = LABELS[verdict.verdict]
    colour = {"green": True} if verdict.verdict.startswith("CONFORMANT") else {"red": True}
    write(f"{info.key}: {label}", bold=True, **colour)
    if info.provider is not None:
        version = f" {info.provider_version}" if info.provider_version else ""
        capabilities = ", ".join(info.capabilities) or "none"
        write(
            f"  provider {info.provider} ({info.distribution}{version}); "
            f"capabilities: {capabilities}"
        )
    else:
        write(
            "  no provider_name: no optional capabilities (name the provider's entry point "
            "to read them from its ProviderSpec)",
            yellow=True,
        )
    if info.error:
        write(f"  {info.error}", red=True)
    declared = (
        f" (incl. {info.expected_optional} of declared capabilities)"
        if info.expected_optional
        else ""
    )
    write(
        f"  {verdict.ran} of {info.expected} required ran{declared}; "
        f"passed: {verdict.passed}, failed: {len(verdict.failed)}"
    )
    if info.single_instance is not None:
        write(
            f"  single instance ({info.single_instance}): {verdict.cross_instance_ran} "
            "cross-instance tests ran with other_store = store",
            yellow=True,
        )
    if info.core_rule_left_out:
        write(f"  {info.core_rule_left_out} core-rule tests left out (core_rule_tests = False)")
    for reason, count in sorted(verdict.capability_skips.items()):
        write(f"  skipped {count} optional: {reason}")
    for reason, count in sorted(verdict.other_skips.items()):
        write(f"  skipped {count} REQUIRED: {reason}", yellow=True)
    optional_gaps = sorted(set(verdict.gaps) - set(verdict.required_gaps))
    if optional_gaps:
        write(f"  known gaps in optional tests: {', '.join(optional_gaps)}")
    if verdict.required_gaps:
        write(
            "  REQUIRED BEHAVIOUR DECLARED AS KNOWN GAP (cannot be opted out of): "
            + ", ".join(sorted(verdict.required_gaps)),
            red=True,
            bold=True,
        )
    if verdict.fixed_gaps:
        write(
            "  known gaps that now pass (remove them from known_gaps): "
            + ", ".join(sorted(verdict.fixed_gaps)),
            yellow=True,
        )
    if verdict.not_implemented:
        ranked = sorted(verdict.not_implemented.items(), key=lambda pair: (-pair[1], pair[0]))
        write(
            "  left to implement (NotImplementedError, by what the failing tests hit first): "
            + ", ".join(
                f"{what} ({count} {'test' if count == 1 else 'tests'})" for what, count in ranked
            ),
            red=True,
        )
    if verdict.failed:
        shown = sorted(set(verdict.failed))
        more = f" (+{len(shown) - 20} more)" if len(shown) > 20 else ""
        write("  failed: " + ", ".join(shown[:20]) + more, red=True)
    missing = info.expected - verdict.ran
    if missing > 0:
        write(
            f"  {missing} required tests did not run (narrowed, stopped early or skipped): "
            "not a verdict of conformance",
            yellow=True,
        )
