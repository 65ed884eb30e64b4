"""Every distribution of the workspace ships its licence and the metadata an index shows;
the core's optional parts are extras, and the core installs and works without them."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import textwrap
import zipfile
from email.message import Message
from email.parser import Parser
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

from ccvault.extras import EXTRAS

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


#: What the core needs without any extra: nothing else may be required unconditionally.
CORE_BASE = {"pydantic", "pydantic-settings", "pluggy", "orjson"}
#: Never in the core's base requirements (each belongs to an extra).
OPTIONAL = (
    "redis",
    "httpx",
    "click",
    "rich",
    "prometheus-client",
    "cryptography",
    "google-re2",
    "phonenumbers",
    "email-validator",
    "rapidfuzz",
    "python-dateutil",
    "opentelemetry-api",
    "fastapi",
    "uvicorn",
    "mcp",
)
URL_LABELS = {"Homepage", "Documentation", "Source", "Issues", "Changelog"}


def _build_wheel(folder: str, into: Path) -> Path:
    subprocess.run(
        [
            *(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"),
            *("-w", str(into), str(ROOT / folder)),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = into.glob(f"{_project_name(folder).replace('-', '_')}-*.whl")
    return wheel


def _project_name(folder: str) -> str:
    text = (ROOT / folder / "pyproject.toml").read_text()
    match = re.search(r'^name = "([^"]+)"', text, re.MULTILINE)
    assert match
    return match.group(1)


def _metadata(wheel: Path) -> Message:
    with zipfile.ZipFile(wheel) as archive:
        (name,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        return Parser().parsestr(archive.read(name).decode())


def _requirement_name(requirement: str) -> str:
    match = re.match(r"[A-Za-z0-9._-]+", requirement)
    assert match, requirement
    return match.group(0).lower().replace("_", "-")


@pytest.mark.parametrize("folder", DISTRIBUTIONS)
def test_wheel_ships_license_and_metadata(folder: str, tmp_path: Path) -> None:
    wheel = _build_wheel(folder, tmp_path)
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
    # an index page links home, docs, source, issues and changes
    urls = dict(u.split(", ", 1) for u in metadata.get_all("Project-URL") or [])
    assert set(urls) == URL_LABELS, urls
    assert all(url.startswith("https://") for url in urls.values())
    if folder == "contract_tests":
        assert "Framework :: Pytest" in classifiers
    # Typing :: Typed is true only with a py.typed marker in each package of the wheel
    packages = {n.split("/")[0] for n in names if n.endswith(".py")}
    assert packages
    for package in packages:
        assert f"{package}/py.typed" in names, f"{wheel.name}: {package} has no py.typed"
    # a README that says how to install and use it, not a stub
    description = metadata.get_payload()
    assert isinstance(description, str)
    assert len(description.splitlines()) >= 20, f"{folder}/README.md is too thin"
    assert "pip install" in description


def test_core_requires_only_its_base_unconditionally(tmp_path: Path) -> None:
    """Library-only installs get pydantic, pydantic-settings, pluggy and orjson; redis,
    httpx, click, rich, prometheus-client, cryptography, RE2, phonenumbers... come only with
    an extra (``extra == "..."`` markers), and every extra of ccvault.extras exists."""
    metadata = _metadata(_build_wheel("core", tmp_path))
    requirements = metadata.get_all("Requires-Dist") or []
    unconditional = {_requirement_name(r) for r in requirements if "extra ==" not in r}
    assert unconditional == CORE_BASE
    for name in OPTIONAL:
        assert any(_requirement_name(r) == name for r in requirements), name
    by_extra: dict[str, set[str]] = {}
    for requirement in requirements:
        marker = re.search(r"extra == ['\"]([a-z0-9-]+)['\"]", requirement)
        if marker:
            by_extra.setdefault(marker.group(1), set()).add(_requirement_name(requirement))
    assert set(metadata.get_all("Provides-Extra") or []) == {*EXTRAS, "all"}
    # each module ccvault.extras names for an extra is installed by that extra
    providers = packages_distributions()
    for extra, modules in EXTRAS.items():
        for module in modules:
            distributions = {_requirement_name(d) for d in providers[module]}
            assert distributions & by_extra[extra], f"{module} is not in the {extra!r} extra"
    assert by_extra["all"] >= set(OPTIONAL)


def test_test_helpers_are_behind_a_testing_extra(tmp_path: Path) -> None:
    mongo = _metadata(_build_wheel("providers/mongo", tmp_path))
    requirements = mongo.get_all("Requires-Dist") or []
    assert "testing" in (mongo.get_all("Provides-Extra") or [])
    assert [r for r in requirements if _requirement_name(r) == "mongomock"] == [
        "mongomock>=4.3; extra == 'testing'"
    ]
    postgres = _metadata(_build_wheel("providers/postgres", tmp_path))
    assert "testing" in (postgres.get_all("Provides-Extra") or [])


# The library-only installation: core without extras + the in-memory provider, in a fresh
# virtual environment. Their requirements come from uv's cache (filled by `make venv`, the
# same pinned versions), offline: no index is asked.
LIBRARY_ONLY_SCRIPT = textwrap.dedent(
    """
    import asyncio, subprocess, sys, uuid
    from pathlib import Path

    import ccvault
    from ccvault import errors
    from ccvault.models import Channel, ChannelIdentity, CustomerProfile, ProfileField

    async def main() -> None:
        settings = ccvault.load_settings(
            store_provider="inmemory", cache_enabled=False, auto_encrypt_pii=False
        )
        tenant = uuid.uuid4()
        profile = CustomerProfile(
            tenant_id=tenant,
            channel_identities=[ChannelIdentity(channel=Channel.WEB, channel_user_id="u-1")],
            fields={"plan": ProfileField(name="plan", value="gold")},
        )
        async with ccvault.open_store(settings) as store:
            await store.save(profile)
            found = await store.get_by_channel_identity(tenant, Channel.WEB, "u-1")
        assert found is not None and found.fields["plan"].value == "gold"
        print("profile saved and read")

    asyncio.run(main())
    for module, extra in [("ccvault.cache", "cache"), ("ccvault.crypto", "crypto")]:
        try:
            __import__(module)
        except errors.MissingExtraError as exc:
            assert exc.extra == extra
            print(exc)
        else:
            raise AssertionError(f"{module} imported without its extra")
    console = Path(sys.executable).with_name("ccvault")
    result = subprocess.run([str(console), "providers"], capture_output=True, text=True)
    print(f"ccvault exit {result.returncode}: {result.stderr.strip()}")
    optional = {"redis", "httpx", "click", "rich", "prometheus_client", "cryptography",
                "re2", "phonenumbers", "email_validator", "rapidfuzz", "dateutil",
                "opentelemetry"}
    loaded = sorted(optional & {name.split(".")[0] for name in sys.modules})
    print(f"optional modules loaded: {loaded}")
    """
)


@pytest.mark.xdist_group("library_only_install")
def test_library_only_install_works_without_extras(tmp_path: Path) -> None:
    uv = shutil.which("uv", path=str(Path(sys.executable).parent))
    if uv is None:
        pytest.skip("uv is not installed in the dev venv (make venv installs it)")
    wheels = tmp_path / "wheels"
    for folder in ("core", "providers/inmemory"):
        _build_wheel(folder, wheels)
    venv = tmp_path / "venv"
    subprocess.run([uv, "venv", "-q", "--python", sys.executable, str(venv)], check=True)
    python = venv / "bin" / "python"
    install = subprocess.run(
        [uv, "pip", "install", "-q", "--offline", "--python", str(python)]
        + [str(w) for w in sorted(wheels.glob("*.whl"))],
        capture_output=True,
        text=True,
        timeout=120,
    )
    offline_miss = ("offline", "network connectivity is disabled", "not found in the cache")
    if install.returncode != 0 and any(m in install.stderr.lower() for m in offline_miss):
        pytest.skip(f"uv's cache lacks a base requirement offline: {install.stderr[-300:]}")
    assert install.returncode == 0, install.stderr
    listed = subprocess.run(
        [uv, "pip", "list", "--format", "freeze", "--python", str(python)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    installed = {_requirement_name(line) for line in listed.splitlines() if line}
    assert not installed & set(OPTIONAL), installed
    result = subprocess.run(
        [str(python), "-c", LIBRARY_ONLY_SCRIPT],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines == [
        "profile saved and read",
        "The Redis profile cache (ccvault.cache) needs the optional dependencies of the "
        "'cache' extra: pip install 'ccvault[cache]'",
        "Encryption at rest (ccvault.crypto) needs the optional dependencies of the "
        "'crypto' extra: pip install 'ccvault[crypto]'",
        "ccvault exit 6: ccvault: error: The ccvault command needs the optional dependencies "
        "of the 'cli' extra: pip install 'ccvault[cli]'",
        "optional modules loaded: []",
    ]


def test_console_script_exit_code_is_the_cli_configuration_code() -> None:
    from ccvault import cli, entry

    assert entry.EXIT_CONFIGURATION == cli.EXIT_CONFIGURATION
