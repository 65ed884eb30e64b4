"""docs/configuration.md is what scripts/gen_config_docs.py writes from the settings models:
a key added, removed or changed in a model (or a provider's) without regenerating fails here.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from ccvault.settings import VaultSettings

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "gen_config_docs.py"
DOC = REPO / "docs" / "configuration.md"


def test_the_committed_reference_matches_the_generator() -> None:
    # a child process: the generator imports every installed provider's settings model
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--check"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, (
        f"{done.stdout}{done.stderr}\nregenerate: python scripts/gen_config_docs.py"
    )


def test_every_table_and_key_is_documented() -> None:
    text = DOC.read_text()
    for table, field in VaultSettings.model_fields.items():
        model = field.annotation
        if table == "providers":
            continue
        assert f"## `[{table}]`" in text, table
        assert isinstance(model, type)
        for key, sub in model.model_fields.items():  # type: ignore[attr-defined]
            if isinstance(sub.annotation, type) and hasattr(sub.annotation, "model_fields"):
                assert f"## `[{table}.{key}]`" in text, f"{table}.{key}"  # a nested table
            else:
                assert f"| `{key}` |" in text, f"{table}.{key}"
    for provider in ("postgres", "sqlite", "mongo", "inmemory"):
        assert f"## `[providers.{provider}]`" in text
