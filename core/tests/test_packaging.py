"""Every distribution of the workspace ships its licence and the metadata an index shows."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DISTRIBUTIONS = [
    "core",
    "providers/inmemory",
    "providers/sqlite",
    "providers/postgres",
    "providers/mongo",
    "contract_tests",
    "examples/thirdparty_provider",
    "examples/redis_provider",
]


@pytest.mark.parametrize("folder", DISTRIBUTIONS)
def test_wheel_ships_license_and_metadata(folder: str, tmp_path: Path) -> None:
    subprocess.run(
        [
            *(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"),
            *("-w", str(tmp_path), str(ROOT / folder)),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        licences = [n for n in names if n.endswith(".dist-info/licenses/LICENSE")]
        assert licences, f"{wheel.name} carries no LICENSE"
        assert b"Apache License" in archive.read(licences[0])
        (metadata_name,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        metadata = Parser().parsestr(archive.read(metadata_name).decode())
    assert metadata["License-Expression"] == "Apache-2.0"
    classifiers = metadata.get_all("Classifier") or []
    assert "Typing :: Typed" in classifiers
    assert "Programming Language :: Python :: 3.11" in classifiers
    assert metadata["Description-Content-Type"] == "text/markdown"
    assert (ROOT / folder / "LICENSE").read_text() == (ROOT / "LICENSE").read_text()
