"""Printing an eval's figures: a table for people, one JSON object for programs."""

from __future__ import annotations

import json

from ccvault.evaluation.sgd import SgdScores
from ccvault.extras import requires_extra

with requires_extra("cli", "The evaluation report"):
    from rich.table import Table

__all__ = ["scores_json", "scores_table"]


def scores_json(scores: SgdScores) -> str:
    """One JSON object on one line (the ``--json`` output)."""
    return json.dumps(scores.as_dict(), sort_keys=True)


def _pct(value: float) -> str:
    return f"{100 * value:.1f}%"


def scores_table(scores: SgdScores) -> Table:
    """The figures of ``scores`` as a two-column table."""
    data = scores.as_dict()
    table = Table(
        "figure",
        "value",
        title=f"SGD fact tracking: extractor {scores.extractor}, store {scores.provider}",
    )
    table.add_row("dialogues", str(scores.dialogues))
    table.add_row("user turns", str(scores.turns))
    table.add_row("joint goal accuracy", _pct(scores.jga))
    table.add_row(
        "slot precision / recall / F1",
        f"{_pct(scores.slots.precision)} / {_pct(scores.slots.recall)} / {_pct(scores.slots.f1)}",
    )
    table.add_row(
        "  categorical slots",
        f"{_pct(scores.categorical.precision)} / {_pct(scores.categorical.recall)} / "
        f"{_pct(scores.categorical.f1)}",
    )
    table.add_row(
        "  non-categorical slots",
        f"{_pct(scores.non_categorical.precision)} / {_pct(scores.non_categorical.recall)} / "
        f"{_pct(scores.non_categorical.f1)}",
    )
    table.add_row(
        "get_missing_fields accuracy",
        f"{_pct(scores.missing_accuracy)} of {scores.missing_checked} turns with an intent",
    )
    table.add_row("values superseded", str(scores.supersedes))
    table.add_row("supersede errors", str(scores.supersede_errors))
    table.add_row("values written", str(scores.writes))
    table.add_row("user turns / s", f"{data['turns_per_s']}")
    return table
