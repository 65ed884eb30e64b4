"""The provider template (``examples/provider_template``) is a working starting point: copied
as is, its contract test runs, fails the gate as NOT CONFORMANT and lists what is left."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ccvault.store import ProfileStore

TEMPLATE = Path(__file__).resolve().parents[2] / "examples" / "provider_template"


def test_the_template_declares_every_hook_and_each_raises_not_implemented() -> None:
    tree = ast.parse((TEMPLATE / "src" / "ccvault_myprovider" / "store.py").read_text())
    store = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "MyProfileStore")
    hooks = {
        node.name: ast.unparse(node.body[-1])
        for node in store.body
        if isinstance(node, ast.AsyncFunctionDef) and node.name.startswith("_")
    }
    assert set(ProfileStore.__abstractmethods__) | {"_get_lineage_node"} <= set(hooks)
    for name, last in hooks.items():
        assert last == f"raise NotImplementedError({name!r})", name


def test_a_fresh_copy_of_the_template_is_not_conformant_and_lists_what_is_left(
    tmp_path: Path,
) -> None:
    project = tmp_path / "ccvault-myprovider"
    shutil.copytree(TEMPLATE, project, ignore=shutil.ignore_patterns("__pycache__"))
    report = tmp_path / "conformance.json"
    env = {**os.environ, "PYTHONPATH": str(project / "src")}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "tests",
            "-q",
            "-p",
            "no:cacheprovider",
            "-p",
            "no:schemathesis",
            "-p",
            "no:hypothesispytest",
            "-k",
            "get_or_create or test_delete_unknown_is_false or concurrent_updates",
            "--ccvault-report",
            str(report),
        ],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    out = result.stdout
    assert result.returncode == pytest.ExitCode.TESTS_FAILED, out[-3000:] + result.stderr[-2000:]
    assert "TestMyProviderContract: NOT CONFORMANT" in out, out[-3000:]
    assert "provider myprovider (ccvault-myprovider" in out
    assert "left to implement (NotImplementedError" in out and "_get_or_create (" in out
    assert report.is_file()
