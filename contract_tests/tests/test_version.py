"""CONTRACT_VERSION is tied to the core release the suite describes."""

from __future__ import annotations

from importlib.metadata import version

import ccvault
from ccvault_contract_tests import CONTRACT_VERSION


def _major_minor(text: str) -> str:
    return ".".join(text.split(".")[:2])


def test_contract_version_is_core_major_minor() -> None:
    assert CONTRACT_VERSION == _major_minor(ccvault.__version__)


def test_suite_distribution_carries_the_contract_version() -> None:
    assert _major_minor(version("ccvault-contract-tests")) == CONTRACT_VERSION
