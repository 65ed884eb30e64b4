"""Measuring the vault on real conversations (``ccvault eval ...``).

:mod:`ccvault.evaluation.sgd` replays the Schema-Guided Dialogue dataset through gap fill and a
store and scores what the vault holds after every customer turn;
:mod:`ccvault.evaluation.report` prints the figures as a table or one JSON object.
"""

from __future__ import annotations

from ccvault.evaluation.sgd import (
    DatasetError,
    OracleExtractor,
    SgdDataset,
    SgdScores,
    field_name_for,
    load_dataset,
    run_sgd_eval,
)

__all__ = [
    "DatasetError",
    "OracleExtractor",
    "SgdDataset",
    "SgdScores",
    "field_name_for",
    "load_dataset",
    "run_sgd_eval",
]
