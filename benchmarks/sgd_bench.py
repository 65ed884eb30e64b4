"""SGD fact tracking: ``ccvault eval sgd`` on the full dev sample, per extractor and store.

Replays the Schema-Guided Dialogue dev sample (``../shared/data/sgd/dev``, or ``--data``, or
``$CCVAULT_SGD_DATA``) through gap fill with the oracle extractor on every stack (in-memory,
SQLite file, PostgreSQL, PostgreSQL + Redis cache + PII encryption) and with the offline
extractor on the in-memory store and on the production stack. The oracle must score JGA 1.0,
get_missing_fields accuracy 1.0 and no supersede error on every stack: anything less is the
vault losing or mixing up facts (the script then exits 1).

Writes its table to ``benchmarks/RESULTS.md`` under "## SGD fact tracking" (its own
subsection only) unless ``--no-results``. Missing data is a skip, not a failure.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).with_name("RESULTS.md")
SECTION = "## SGD fact tracking"
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "sgd" / "dev"
REDIS_URL = "redis://127.0.0.1:6379/0"


def replace_subsection(heading: str, block: str, path: Path = RESULTS) -> None:
    """Put ``block`` (starting with ``heading``, a ``### `` line) into ``path`` under
    :data:`SECTION`, replacing only that subsection; the rest of the file is kept (re-read
    right before writing, replaced in one rename)."""
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    start = text.find(f"\n{SECTION}\n")
    if start < 0:
        text = text.rstrip("\n") + f"\n\n{SECTION}\n\n" + block
    else:
        body_start = start + len(SECTION) + 2
        end = text.find("\n## ", body_start)
        end = len(text) if end < 0 else end + 1
        section = text[body_start:end]
        at = section.find(heading)
        if at < 0:
            section = section.rstrip("\n") + "\n\n" + block
        else:
            stop = section.find("\n### ", at + len(heading))
            stop = len(section) if stop < 0 else stop + 1
            section = section[:at] + block + ("\n" if stop < len(section) else "") + section[stop:]
        tail = text[end:]
        text = text[:body_start] + section.rstrip("\n") + "\n" + ("\n" + tail if tail else "")
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    print(f"results written to {path} ({heading})")


def machine_line() -> str:
    load = os.getloadavg()[0]
    return (
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} CPUs, Python "
        f"{sys.version.split()[0]}, load average {load:.1f} (1 min)"
        + (" — **measured while other work ran on the machine**" if load > 1.25 else "")
    )


async def _drop_prefix(prefix: str) -> None:
    from redis.asyncio import Redis

    client = Redis.from_url(REDIS_URL)
    try:
        keys = [key async for key in client.scan_iter(match=f"{prefix}*", count=1000)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


async def run_one(stack: str, extractor_name: str, data: Path, limit: int | None) -> dict[str, Any]:
    import ccvault
    from ccvault.crypto import generate_key_entry
    from ccvault.evaluation.command import _extractor
    from ccvault.evaluation.sgd import load_dataset, run_sgd_eval
    from ccvault_postgres.testing import (
        admin_dsn,
        create_database,
        drop_database,
        dsn_with_database,
    )

    os.environ.setdefault("PROFILE_PII_ENCRYPTION_KEY", generate_key_entry("bench"))
    options: dict[str, Any] = {"cache_enabled": False, "auto_encrypt_pii": False}
    cleanup: list[Callable[[], Any]] = []
    prefix = f"ccvault-sgd-bench:{uuid.uuid4().hex}:"
    with tempfile.TemporaryDirectory() as tmp:
        if stack == "inmemory":
            options["store_provider"] = "inmemory"
        elif stack == "sqlite":
            options["store_provider"] = "sqlite"
            options["providers"] = {"sqlite": {"path": str(Path(tmp) / "vault.db")}}
        else:
            server = admin_dsn()
            name = await create_database(server)
            cleanup.append(lambda: drop_database(server, name))
            options["store_provider"] = "postgres"
            options["providers"] = {"postgres": {"dsn": dsn_with_database(server, name)}}
            if stack == "postgres+cache+encryption":
                options.update(cache_enabled=True, auto_encrypt_pii=True)
                options["redis"] = {"url": REDIS_URL, "key_prefix": prefix}
                cleanup.append(lambda: _drop_prefix(prefix))
        try:
            settings = ccvault.load_settings(None, **options)
            await ccvault.migrate_schema(settings)  # the explicit step: opening never migrates
            dataset = load_dataset(data, limit=limit)
            extractor = _extractor(extractor_name, settings)
            async with ccvault.open_store(settings) as store:
                scores = await run_sgd_eval(
                    store,
                    dataset,
                    extractor=extractor,
                    settings=settings,
                    extractor_name=extractor_name,
                )
        finally:
            for step in cleanup:
                await step()
    row = scores.as_dict()
    row["provider"] = stack
    return row


COLUMNS = [
    ("extractor", "extractor"),
    ("store", "provider"),
    ("dialogues", "dialogues"),
    ("user turns", "turns"),
    ("JGA", "jga"),
    ("slot P", "slot_precision"),
    ("slot R", "slot_recall"),
    ("slot F1", "slot_f1"),
    ("categorical F1", "categorical_f1"),
    ("non-categorical F1", "non_categorical_f1"),
    ("missing acc.", "missing_accuracy"),
    ("supersedes", "supersedes"),
    ("supersede errors", "supersede_errors"),
    ("turns/s", "turns_per_s"),
]


def _cell(key: str, value: Any) -> str:
    if isinstance(value, float) and key not in ("turns_per_s",):
        return f"{100 * value:.1f}%"
    return str(value)


def markdown(rows: list[dict[str, Any]], data: Path, verdicts: list[str]) -> str:
    head = "### `benchmarks/sgd_bench.py` — measured"
    lines = [
        head,
        "",
        f"{machine_line()}. Data: {data.name} split, "
        f"{rows[0]['dialogues'] if rows else 0} dialogues.",
        "",
        "| " + " | ".join(title for title, _ in COLUMNS) + " |",
        "|" + "|".join("---" if i < 2 else "---:" for i in range(len(COLUMNS))) + "|",
    ]
    for row in rows:
        lines.append("| " + " | ".join(_cell(key, row[key]) for _, key in COLUMNS) + " |")
    lines.append("")
    lines += [f"- {verdict}" for verdict in verdicts]
    return "\n".join(lines) + "\n"


RUNS = [
    ("oracle", "inmemory"),
    ("oracle", "sqlite"),
    ("oracle", "postgres"),
    ("oracle", "postgres+cache+encryption"),
    ("offline", "inmemory"),
    ("offline", "postgres+cache+encryption"),
]


async def main(args: argparse.Namespace) -> int:
    data = Path(args.data)
    if not (data / "schema.json").is_file():
        print(f"sgd_bench: skipped, no SGD data at {data} (give --data or $CCVAULT_SGD_DATA)")
        return 0
    rows = []
    for extractor, stack in RUNS:
        row = await run_one(stack, extractor, data, args.limit)
        rows.append(row)
        print(
            f"{extractor:8} {stack:28} JGA {row['jga']:.4f} slot F1 {row['slot_f1']:.4f} "
            f"missing {row['missing_accuracy']:.4f} supersede errors {row['supersede_errors']} "
            f"({row['supersedes']} supersedes) {row['turns_per_s']} turns/s"
        )
    verdicts = []
    failed = False
    for row in rows:
        if row["extractor"] != "oracle":
            continue
        met = row["jga"] == 1.0 and row["missing_accuracy"] == 1.0 and not row["supersede_errors"]
        failed |= not met
        verdicts.append(
            f"oracle on {row['provider']}: JGA 1.0, missing accuracy 1.0, 0 supersede errors "
            f"— {'MET' if met else 'NOT MET'}"
        )
    for verdict in verdicts:
        print(verdict)
    if not args.no_results:
        replace_subsection(
            "### `benchmarks/sgd_bench.py` — measured", markdown(rows, data, verdicts)
        )
    return 1 if failed else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=os.environ.get("CCVAULT_SGD_DATA", str(DEFAULT_DATA)))
    parser.add_argument("--limit", type=int, default=None, help="first N dialogues only")
    parser.add_argument("--no-results", action="store_true", help="do not write RESULTS.md")
    sys.exit(asyncio.run(main(parser.parse_args())))
