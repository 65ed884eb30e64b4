"""Each optional part of ccvault, used without its extra, raises one clear error naming
``pip install 'DIST[EXTRA]'`` (issue 17, packaging); metrics degrade to no-ops.

The missing libraries are simulated by ``sys.modules[name] = None`` (what Python does for a
module it cannot import), in a fresh interpreter for the module-level guards.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import uuid

import pytest

from ccvault import errors, value_checks
from ccvault.extras import EXTRAS, requires_extra
from ccvault.models import FieldValueType, ProfileFieldDefinition

#: module, the libraries made missing, the extra named, the distribution named
GUARDED = [
    ("ccvault.cache", ["redis"], "cache", "ccvault"),
    ("ccvault.crypto", ["cryptography"], "crypto", "ccvault"),
    ("ccvault.client", ["httpx"], "client", "ccvault"),
    ("ccvault.extraction", ["rapidfuzz"], "extraction", "ccvault"),
    ("ccvault.gapfill", ["dateutil"], "extraction", "ccvault"),
    ("ccvault.cli", ["click"], "cli", "ccvault"),
    ("ccvault.cli", ["rich"], "cli", "ccvault"),
    ("ccvault.server.testing", ["httpx"], "testing", "ccvault"),
    ("ccvault_mongo.emulation", ["mongomock"], "testing", "ccvault-mongo"),
]

_IMPORT_WITHOUT = textwrap.dedent(
    """
    import sys
    for name in sys.argv[2:]:
        sys.modules[name] = None
    from ccvault import errors
    try:
        __import__(sys.argv[1])
    except errors.MissingExtraError as exc:
        print(exc)
    else:
        print("imported")
    """
)


@pytest.mark.parametrize(
    ("module", "missing", "extra", "distribution"),
    GUARDED,
    ids=[f"{module}-without-{'+'.join(missing)}" for module, missing, _, _ in GUARDED],
)
def test_importing_without_the_extra_names_the_install_command(
    module: str, missing: list[str], extra: str, distribution: str
) -> None:
    result = subprocess.run(
        [sys.executable, "-c", _IMPORT_WITHOUT, module, *missing],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    (line,) = result.stdout.splitlines()
    assert line.endswith(
        f"needs the optional dependencies of the {extra!r} extra: "
        f"pip install '{distribution}[{extra}]'"
    ), line


def test_the_console_script_without_click_prints_one_line_and_exits_6() -> None:
    code = "import sys; sys.modules['click'] = None; from ccvault.entry import main; main()"
    result = subprocess.run(
        [sys.executable, "-c", code, "providers"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 6
    assert result.stdout == ""
    assert result.stderr == (
        "ccvault: error: The ccvault command needs the optional dependencies of the 'cli' "
        "extra: pip install 'ccvault[cli]'\n"
    )


def test_metrics_without_prometheus_client_are_no_ops() -> None:
    code = textwrap.dedent(
        """
        import sys
        sys.modules["prometheus_client"] = None
        from ccvault import errors, metrics
        from ccvault._prometheus import AVAILABLE
        assert not AVAILABLE
        metrics.OPERATION_DURATION.labels("get_by_id", "inmemory").observe(0.1)
        metrics.OPERATION_ERRORS.labels("get_by_id", "inmemory", "NotFoundError").inc()
        metrics.PROFILE_CACHE_HITS.labels(tenant_id="t").inc()
        metrics.FIELD_STATUS_GAUGE.labels(tenant_id="t", status="active").set(3)
        metrics.configure(tenant_labels=False, process_metrics=False)
        metrics.forget_tenants([])
        assert metrics.REGISTRY.get_sample_value("ccvault_operation_errors_total") is None
        try:
            metrics.serve(port=0)
        except errors.MissingExtraError as exc:
            print(exc)
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout == (
        "Serving Prometheus metrics needs the optional dependencies of the 'metrics' extra: "
        "pip install 'ccvault[metrics]'\n"
    )


def _definition(**options: object) -> ProfileFieldDefinition:
    return ProfileFieldDefinition(
        tenant_id=uuid.uuid4(), agent_id=uuid.uuid4(), name="contact", **options
    )


def test_value_checks_need_the_validation_extra_only_where_they_use_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in EXTRAS["validation"]:
        monkeypatch.setitem(sys.modules, name, None)
    # types that need no library are checked as before
    value_checks.check_definition(_definition(value_type=FieldValueType.STRING))
    assert value_checks.check_type("x", FieldValueType.STRING) is None
    assert value_checks.check_type(3, FieldValueType.STRING) is not None
    # a pattern (RE2), an email or a phone check name the extra; a pattern not compiled
    # before (compile_pattern caches) so the import really happens
    pattern = f"^[a-z]{{{uuid.uuid4().int % 1000 + 1}}}$"
    with pytest.raises(errors.MissingExtraError, match=r"pip install 'ccvault\[validation\]'"):
        value_checks.check_definition(_definition(validation_regex=pattern))
    with pytest.raises(errors.MissingExtraError, match="email value_type"):
        value_checks.check_type("ana@example.com", FieldValueType.EMAIL)
    with pytest.raises(errors.MissingExtraError, match="phone value_type"):
        value_checks.check_type("+4915112345678", FieldValueType.PHONE)


def test_a_missing_module_outside_the_extra_is_not_disguised() -> None:
    """Only the extra's own modules become MissingExtraError: a bug stays a bug."""
    with pytest.raises(ModuleNotFoundError) as caught, requires_extra("cache", "x"):
        import ccvault_no_such_module  # type: ignore[import-not-found]  # noqa: F401
    assert not isinstance(caught.value, errors.MissingExtraError)


def test_missing_extra_error_is_a_configuration_and_import_error() -> None:
    exc = errors.MissingExtraError("cache", "The Redis profile cache")
    assert isinstance(exc, errors.ConfigurationError)
    assert isinstance(exc, ImportError)
    assert exc.extra == "cache"
    import pickle

    again = pickle.loads(pickle.dumps(exc))
    assert str(again) == str(exc) and again.extra == "cache"
