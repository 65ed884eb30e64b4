"""Extraction time against message length: the offline extractor's curve (issue 12).

For message sizes from 1,000 to 100,000 characters and three kinds of text (dense with
candidates of every kind; a comma-separated list of numbers, the worst case of the old
extractor, whose work grew with candidates times clause breaks; words without punctuation),
times one extraction of every field kind (email, phone, date, time, number, boolean, string,
allowed values, counts, True/False) and reports the slowest kind per size, with the size
limits raised so nothing is refused. With ``--before COMMIT`` the extractor of that commit is
timed too (up to the size where one call passes ``--before-budget`` seconds).

Writes its table to ``benchmarks/RESULTS.md`` under "## SGD fact tracking" unless
``--no-results``.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path
from types import ModuleType
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sgd_bench import ROOT, machine_line, replace_subsection

SIZES = [1_000, 2_000, 4_000, 8_000, 16_000, 32_000, 64_000, 100_000]
UNIT = (
    "my city is Paris, not Berlin; call +14155550123 or a.b@example.org on March 4th 2019 "
    "at 7 pm and 3 nights for two people. No wifi, any airline. "
)
TEXTS: dict[str, Callable[[int], str]] = {
    "dense": lambda n: (UNIT * (n // len(UNIT) + 1))[:n],
    "number list": lambda n: ", ".join(str(i % 97) for i in range(n))[:n],
    "no punctuation": lambda n: ("lorem ipsum dolor sit amet " * (n // 27 + 1))[:n],
}


def requests(module: ModuleType) -> dict[str, Any]:
    request = module.ExtractionRequest
    kinds = module.FieldValueType
    return {
        "email": request(field_name="email", value_type=kinds.EMAIL),
        "phone": request(field_name="phone", value_type=kinds.PHONE),
        "date": request(field_name="birth_date", value_type=kinds.DATE),
        "time": request(field_name="pickup_time"),
        "number": request(field_name="night_count", value_type=kinds.NUMBER),
        "boolean": request(field_name="has_wifi", value_type=kinds.BOOLEAN),
        "string": request(field_name="city"),
        "allowed": request(field_name="city", allowed_values=("Paris", "Berlin", "Rome")),
        "count": request(field_name="travelers", allowed_values=("1", "2", "3", "4")),
        "true/false": request(field_name="hotels__has_wifi", allowed_values=("True", "False")),
    }


def current() -> tuple[ModuleType, Callable[[Any, list[Any]], Any]]:
    from ccvault import extraction

    extractor = extraction.OfflineExtractor(
        limits=extraction.ExtractionLimits(10**7, 10**7), today=date(2019, 3, 1)
    )
    return extraction, extractor.extract_sync


def before(commit: str) -> tuple[ModuleType, Callable[[Any, list[Any]], Any]]:
    source = subprocess.run(
        ["git", "show", f"{commit}:core/src/ccvault/extraction.py"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    folder = Path(tempfile.mkdtemp())
    path = folder / "extraction_before.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("extraction_before", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["extraction_before"] = module
    spec.loader.exec_module(module)
    extractor = module.OfflineExtractor()

    def run(request: Any, turns: list[Any]) -> Any:
        import asyncio

        return asyncio.run(extractor.extract(request, turns))

    return module, run


def curve(
    module: ModuleType, run: Callable[[Any, list[Any]], Any], budget: float | None, rounds: int
) -> dict[str, list[tuple[int, float, str]]]:
    from ccvault.models import ConversationTurn

    found: dict[str, list[tuple[int, float, str]]] = {}
    for text_name, make in TEXTS.items():
        points = found.setdefault(text_name, [])
        for size in SIZES:
            turns = [ConversationTurn(role="user", content=make(size))]
            worst, worst_kind = 0.0, ""
            for kind, request in requests(module).items():
                times = []
                for _ in range(rounds):
                    started = time.perf_counter()
                    run(request, turns)
                    times.append(time.perf_counter() - started)
                median = statistics.median(times)
                if median > worst:
                    worst, worst_kind = median, kind
            points.append((size, worst, worst_kind))
            print(f"{text_name:15} {size:>7} chars: slowest {worst_kind:10} {1000 * worst:9.1f} ms")
            if budget is not None and worst > budget:
                break
    return found


def markdown(now: dict[str, Any], old: dict[str, Any] | None, commit: str | None) -> str:
    head = "### `benchmarks/extraction_bench.py` — extraction time against message length"
    lines = [
        head,
        "",
        f"{machine_line()}. One call per field kind (10 kinds), median of the rounds; the "
        "slowest kind per size is shown (ms). Limits raised so nothing is refused; by default "
        "a turn over 20,000 characters is refused with a ValidationError before any work.",
        "",
    ]
    header = "| text | " + " | ".join(f"{s:,}" for s in SIZES) + " |"
    lines += [header, "|---|" + "---:|" * len(SIZES)]
    for label, data in (("now", now), (f"before ({commit})", old)):
        if data is None:
            continue
        for text_name, points in data.items():
            cells = {size: f"{1000 * t:.1f}" for size, t, _ in points}
            row = [cells.get(s, "—") for s in SIZES]
            lines.append(f"| {text_name}, {label} | " + " | ".join(row) + " |")
    if old is not None:
        lines += ["", "— : not measured, the previous size already took over the budget."]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", default=None, help="also time the extractor of COMMIT")
    parser.add_argument("--before-budget", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-results", action="store_true", help="do not write RESULTS.md")
    args = parser.parse_args()
    module, run = current()
    now = curve(module, run, None, args.rounds)
    old = None
    if args.before:
        old_module, old_run = before(args.before)
        old = curve(old_module, old_run, args.before_budget, 1)
    worst = max(t for points in now.values() for _, t, _ in points)
    print(f"slowest call at any size up to 100,000 characters: {1000 * worst:.1f} ms")
    if not args.no_results:
        replace_subsection(
            "### `benchmarks/extraction_bench.py` — extraction time against message length",
            markdown(now, old, args.before),
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
