"""The pytest plugin (entry point ``pytest11``) that runs the contract suite.

It is loaded automatically wherever ``ccvault-contract-tests`` is installed and does nothing
to tests that are not contract tests. For every test of a class derived from
:class:`~ccvault_contract_tests.ProfileStoreContract` it:

* marks the test (and its async fixtures, including the provider's ``store``) for
  pytest-asyncio, so the suite works in ``asyncio_mode = "strict"`` as well as ``"auto"``;
* skips a test gated with ``@requires(...)`` on a capability the class does not declare;
* turns a test named in the class's ``known_gaps`` into a strict xfail (an unexpected pass
  fails the run, so a fixed gap must be removed from the list);
* prints a conformance summary at the end of the session: per provider class, how many
  required and optional tests passed, which were skipped for capabilities, and any REQUIRED
  test declared as a known gap — such a provider is reported NOT CONFORMANT even though the
  run itself passes. A class whose required tests were skipped (its fixture skipped them,
  say for a missing server) is reported NOT VERIFIED rather than CONFORMANT.

It also adds ``--ccvault-config FILE.toml`` for the zero-code mode
(``pytest --pyargs ccvault_contract_tests --ccvault-config FILE.toml``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from ccvault_contract_tests.capabilities import MARKER, required_capabilities
from ccvault_contract_tests.version import CONTRACT_VERSION, core_version

__all__ = ["zero_code_config_path"]

_zero_code_config: Path | None = None


def zero_code_config_path() -> Path | None:
    """The ``--ccvault-config`` file of this session, or None."""
    return _zero_code_config


@dataclass
class _ClassReport:
    required_passed: int = 0
    optional_passed: int = 0
    failed: list[str] = field(default_factory=list)
    capability_skips: dict[str, int] = field(default_factory=dict)
    other_skips: dict[str, int] = field(default_factory=dict)
    gaps: list[str] = field(default_factory=list)
    required_gaps: list[str] = field(default_factory=list)
    fixed_gaps: list[str] = field(default_factory=list)


@dataclass
class _ItemInfo:
    cls_name: str
    test_name: str
    optional: bool
    gap: bool


_REPORTS = pytest.StashKey[dict[str, _ClassReport]]()
_ITEMS = pytest.StashKey[dict[str, _ItemInfo]]()


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


def pytest_configure(config: pytest.Config) -> None:
    global _zero_code_config
    config.addinivalue_line(
        "markers", f"{MARKER}(*names): contract test needing optional provider capabilities"
    )
    option = config.getoption("ccvault_config", default=None)
    _zero_code_config = Path(option).resolve() if option else None
    config.stash[_REPORTS] = {}
    config.stash[_ITEMS] = {}


def pytest_report_header(config: pytest.Config) -> list[str]:
    lines = [f"ccvault contract suite {CONTRACT_VERSION} (ccvault core {core_version()})"]
    if ".".join(core_version().split(".")[:2]) != CONTRACT_VERSION:
        lines.append(
            f"WARNING: the installed ccvault {core_version()} is not the {CONTRACT_VERSION}.x "
            "release this suite describes; install matching ccvault-contract-tests"
        )
    return lines


def _contract_class(item: pytest.Item) -> type[Any] | None:
    from ccvault_contract_tests.contract import ProfileStoreContract

    cls = getattr(item, "cls", None)
    if isinstance(cls, type) and issubclass(cls, ProfileStoreContract):
        return cls
    return None


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
    import inspect

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


def pytest_collection_modifyitems(
    session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
) -> None:
    infos = config.stash[_ITEMS]
    for item in items:
        cls = _contract_class(item)
        if cls is None:
            continue
        _mark_async_fixtures(item)
        name = getattr(item, "originalname", item.name)
        needed = required_capabilities(item)
        missing = sorted(needed - frozenset(cls.capabilities))
        gap_reason = cls.known_gaps.get(item.name, cls.known_gaps.get(name))
        infos[item.nodeid] = _ItemInfo(
            cls_name=f"{cls.__module__}.{cls.__qualname__}",
            test_name=item.name,
            optional=bool(needed),
            gap=gap_reason is not None,
        )
        if missing:
            item.add_marker(
                pytest.mark.skip(reason=f"provider lacks optional capability {missing}")
            )
        elif gap_reason is not None:
            item.add_marker(
                pytest.mark.xfail(reason=f"known gap: {gap_reason}", strict=True, run=True)
            )


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    config = _CONFIG.get("config")
    if config is None:
        return
    info = config.stash[_ITEMS].get(report.nodeid)
    if info is None:
        return
    entry = config.stash[_REPORTS].setdefault(info.cls_name, _ClassReport())
    if report.skipped and not hasattr(report, "wasxfail"):
        reason = str(report.longrepr[-1]) if isinstance(report.longrepr, tuple) else ""
        reason = reason.removeprefix("Skipped: ")
        bucket = entry.capability_skips if info.optional else entry.other_skips
        bucket[reason] = bucket.get(reason, 0) + 1
        return
    if report.failed:
        if report.when == "call" and info.gap:
            entry.fixed_gaps.append(info.test_name)
        else:
            entry.failed.append(info.test_name)
        return
    if report.when != "call":
        return
    if hasattr(report, "wasxfail"):
        if report.skipped:
            entry.gaps.append(info.test_name)
            if not info.optional:
                entry.required_gaps.append(info.test_name)
        return
    if report.passed:
        if info.optional:
            entry.optional_passed += 1
        else:
            entry.required_passed += 1


_CONFIG: dict[str, pytest.Config] = {}


@pytest.hookimpl(tryfirst=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    _CONFIG["config"] = session.config


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    reports = config.stash[_REPORTS]
    if not reports:
        return
    write = terminalreporter.write_line
    terminalreporter.section(f"ccvault contract {CONTRACT_VERSION} conformance")
    for cls_name, entry in sorted(reports.items()):
        conformant = not entry.failed and not entry.required_gaps and not entry.fixed_gaps
        if not conformant:
            verdict = "NOT CONFORMANT"
        elif entry.other_skips:
            # required tests that did not run prove nothing either way
            verdict = "NOT VERIFIED (required tests were skipped)"
        else:
            verdict = "CONFORMANT"
        write(f"{cls_name}: {verdict}")
        write(
            f"  required passed: {entry.required_passed}, optional passed: "
            f"{entry.optional_passed}, failed: {len(entry.failed)}"
        )
        for reason, count in sorted(entry.capability_skips.items()):
            write(f"  skipped {count} optional: {reason}")
        for reason, count in sorted(entry.other_skips.items()):
            write(f"  skipped {count} REQUIRED: {reason}", yellow=True)
        if entry.gaps:
            optional_gaps = sorted(set(entry.gaps) - set(entry.required_gaps))
            if optional_gaps:
                write(f"  known gaps in optional tests: {', '.join(optional_gaps)}")
        if entry.required_gaps:
            write(
                "  REQUIRED BEHAVIOUR DECLARED AS KNOWN GAP (cannot be opted out of): "
                + ", ".join(sorted(entry.required_gaps)),
                red=True,
                bold=True,
            )
        if entry.fixed_gaps:
            write(
                "  known gaps that now pass (remove them from known_gaps): "
                + ", ".join(sorted(entry.fixed_gaps)),
                yellow=True,
            )
        if entry.failed:
            write("  failed: " + ", ".join(sorted(set(entry.failed))), red=True)
