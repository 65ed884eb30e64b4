"""Self-tests of the contract suite: they run pytest on small generated provider projects."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

#: a generated project's pytest needs neither a cache nor these plugins (faster start-up)
LEAN = ("-p", "no:cacheprovider", "-p", "no:schemathesis", "-p", "no:hypothesispytest")

STRICT_INI = """
[pytest]
asyncio_mode = strict
asyncio_default_fixture_loop_scope = function
"""


#: the test class of each store, unless a mutation test gives its own: ``{cls}`` the
#: test class, ``{store_class}`` the store's, ``{attributes}`` more class attributes
CONTRACT_CLASS = """
class {cls}(ProfileStoreContract):
    single_instance = "an in-process mutant"
    {attributes}

    @pytest.fixture
    async def store(self):
        async with {store_class}() as store:
            yield store
"""


class MutantProject:
    """A generated project of mutant providers, run by pytest once (the mutation tests).

    :meth:`run` writes ``header``, then a store class and a test class for the unbroken
    reference (``TestUnbroken``, the in-memory store) and for each mutant, and runs the
    tests that must tell them apart: on the reference, every mutant's killer (it passes);
    on each mutant, its own killer (it fails).
    """

    @staticmethod
    def class_name(mutant: str) -> str:
        """The test class of ``mutant`` (``a_b`` -> ``TestAB``)."""
        return "Test" + "".join(part.title() for part in mutant.split("_"))

    def run(
        self,
        root: Path,
        header: str,
        mutants: Mapping[str, tuple[str, str]],
        contract_class: str = CONTRACT_CLASS,
        attributes: str = "",
    ) -> MutantRun:
        """The run of pytest (``-rfp``: a PASSED or FAILED line per test) over ``mutants``
        (name -> (code defining ``class Mutant(...)``, its killer: a ``-k`` expression)),
        each store tested by ``contract_class`` (a template of ``{cls}``, the test class,
        ``{store_class}`` and ``{attributes}``, here ``attributes``)."""
        parts = [header]
        killers = sorted({killer for _, killer in mutants.values()})
        selections = [f"(TestUnbroken and ({' or '.join(killers)}))"]
        cases = [("TestUnbroken", "InMemoryProfileStore", "")]
        for mutant, (code, killer) in sorted(mutants.items()):
            cls = self.class_name(mutant)
            store_class = f"{cls}Store"
            renamed = textwrap.dedent(code).replace("class Mutant(", f"class {store_class}(")
            cases.append((cls, store_class, renamed))
            selections.append(f"({cls} and {killer})")
        template = textwrap.dedent(contract_class)
        for cls, store_class, code in cases:
            parts.append(code)
            parts.append(template.format(cls=cls, store_class=store_class, attributes=attributes))
        return MutantRun(self, self.pytest(root, parts, selections))

    @staticmethod
    def pytest(root: Path, parts: Sequence[str], selections: Sequence[str]) -> str:
        """pytest's output (``-rfp``) for ``parts`` written as ``root/test_mutants.py``
        (next to a strict-asyncio ``pytest.ini``), run on the tests ``selections`` pick
        (``-k`` expressions, or-ed) in one session, without the plugins it does not need."""
        (root / "pytest.ini").write_text(STRICT_INI)
        (root / "test_mutants.py").write_text("\n".join(parts))
        result = subprocess.run(
            [sys.executable, "-m", "pytest", *LEAN, "-rfp", "-k", " or ".join(selections)],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        return result.stdout + result.stderr


class MutantRun:
    """What a :meth:`MutantProject.run` printed, and the two checks of a mutation test."""

    def __init__(self, project: MutantProject, output: str) -> None:
        self.project = project
        self.output = output

    def assert_killed(self, mutant: str, killer: str) -> None:
        """``killer`` (a test id in the class) failed on ``mutant``'s store."""
        cls = self.project.class_name(mutant)
        assert f"FAILED test_mutants.py::{cls}::{killer}" in self.output, self.output[-5000:]

    def assert_reference_passes(self, killer: str) -> None:
        """``killer`` passed on the unbroken reference store."""
        assert f"PASSED test_mutants.py::TestUnbroken::{killer}" in self.output, self.output[-5000:]
        assert f"FAILED test_mutants.py::TestUnbroken::{killer}" not in self.output


@pytest.fixture(scope="session")
def mutant_project() -> MutantProject:
    return MutantProject()


class LeanPytester:
    """``pytester`` runs of a generated project the way ``MutantProject`` runs them: strict
    asyncio mode (``STRICT_INI``, written at once) and the ``LEAN`` plugin set, in a
    subprocess (the way a third party runs the suite)."""

    def __init__(self, pytester: pytest.Pytester) -> None:
        self.pytester = pytester
        pytester.makeini(STRICT_INI)

    def run(self, *args: str | os.PathLike[str]) -> pytest.RunResult:
        """pytest on the files written so far."""
        return self.pytester.runpytest_subprocess(*LEAN, *args)

    def run_module(self, source: str, *args: str | os.PathLike[str]) -> pytest.RunResult:
        """pytest on ``source`` written as ``test_provider.py``."""
        self.pytester.makepyfile(test_provider=source)
        return self.run(*args)


@pytest.fixture
def lean(pytester: pytest.Pytester) -> LeanPytester:
    return LeanPytester(pytester)
