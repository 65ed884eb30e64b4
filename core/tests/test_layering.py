"""The import contracts of ``make lint`` (``[tool.importlinter]`` in the root pyproject.toml)
hold on the real tree, and fail on a copy of core with a cycle or a provider import injected.

The copy is analysed with the repository's own contracts: ``lint-imports`` runs in a
directory holding only the copy, which comes first on ``PYTHONPATH``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import ccvault

REPO = Path(__file__).resolve().parents[2]
PYPROJECT = REPO / "pyproject.toml"
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _lint(cwd: Path, pythonpath: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(PYPROJECT), "--no-cache"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_real_tree_keeps_every_import_contract() -> None:
    result = _lint(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "BROKEN" not in result.stdout


@pytest.mark.parametrize(
    ("module", "injected", "expected"),
    [
        # a leaf that imports the store, which imports it: a direct cycle
        ("store_rules.py", "import ccvault.store", ".store_rules -> .store"),
        # a function-level import counts too (a lazy import is still a dependency)
        (
            "arguments.py",
            "def _late() -> None:\n    from ccvault import validation  # noqa: F401",
            ".arguments -> .validation",
        ),
        # a longer cycle: metrics -> registry -> ... -> store -> metrics
        ("metrics.py", "import ccvault.registry", "ccvault"),
        # core naming a provider
        ("worker.py", "import ccvault_postgres", "ccvault_postgres"),
    ],
)
def test_an_injected_cycle_or_provider_import_fails_the_check(
    tmp_path: Path, module: str, injected: str, expected: str
) -> None:
    source = Path(ccvault.__file__).resolve().parent
    copy = tmp_path / "src" / "ccvault"
    shutil.copytree(source, copy, ignore=shutil.ignore_patterns("__pycache__"))
    target = copy / module
    target.write_text(target.read_text(encoding="utf-8") + f"\n{injected}\n", encoding="utf-8")
    result = _lint(tmp_path / "src", pythonpath=tmp_path / "src")
    assert result.returncode != 0, result.stdout + result.stderr
    assert "BROKEN" in result.stdout and expected in result.stdout, result.stdout
