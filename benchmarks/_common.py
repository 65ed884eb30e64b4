"""What every store-throughput benchmark shares: paired interleaved rounds, the spread of
per-pair ratios, goals judged MET / NOT MET, and the results table in RESULTS.md.

How a figure is measured: every operation of a comparison runs for a short round, one after
the other, and the order rotates from round to round (A B, B A, ... for two), so drift and
other load on the machine hit baseline and candidate alike. Rounds are short (about 0.1 s)
and many (30 pairs by default): on a busy machine, load comes and goes within seconds, and
only what changes within one pair skews its ratio. Each round gives one ratio per compared
pair (candidate ops/s over baseline ops/s in that same round); a figure is the median of
those ratios, printed with its interquartile range, its min-max and the number of pairs. A
goal is judged on the median. Nothing is "best of": no round is dropped.

Not a benchmark itself (the leading underscore keeps ``scripts/bench.sh`` from running it).
"""

from __future__ import annotations

import dataclasses
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

Op = Callable[[], Awaitable[Any]]

RESULTS = Path(__file__).with_name("RESULTS.md")
SECTION = "## Store throughput"


# ---------------------------------------------------------------------------------------
# measuring
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Spread:
    """Median of a sample with its quartiles, extremes and size."""

    median: float
    q1: float
    q3: float
    low: float
    high: float
    n: int
    values: tuple[float, ...] = field(default=(), repr=False, compare=False)

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        ordered = sorted(values)
        if len(ordered) >= 2:
            q1, _, q3 = statistics.quantiles(ordered, n=4, method="inclusive")
        else:
            q1 = q3 = ordered[0]
        median = statistics.median(ordered)
        return cls(median, q1, q3, ordered[0], ordered[-1], len(ordered), tuple(values))

    def inverse(self) -> Spread:
        """The same pairs as 1/x (a throughput ratio as a time ratio and back)."""
        return Spread.of([1 / v for v in self.values])

    def text(self, unit: str = "x") -> str:
        return (
            f"{self.median:.2f}{unit} (IQR {self.q1:.2f}-{self.q3:.2f}, "
            f"min-max {self.low:.2f}-{self.high:.2f}, n={self.n} pairs)"
        )


async def rate(op: Op, seconds: float, min_calls: int = 3) -> float:
    """Calls per second of ``op`` run back to back for about ``seconds``."""
    done = 0
    start = time.perf_counter()
    deadline = start + seconds
    while done < min_calls or time.perf_counter() < deadline:
        await op()
        done += 1
    return done / (time.perf_counter() - start)


async def interleaved(
    ops: dict[str, Op], rounds: int, round_seconds: float, warmup: int = 10
) -> dict[str, list[float]]:
    """ops/s of every op in each of ``rounds`` rounds, the order rotating round by round.

    With two ops the order alternates A-B, B-A; with more, each round starts one further
    along, so no op always runs first (or right after the same neighbour).
    """
    for op in ops.values():
        for _ in range(warmup):
            await op()
    names = list(ops)
    rates: dict[str, list[float]] = {name: [] for name in names}
    for number in range(rounds):
        shift = number % len(names)
        order = names[shift:] + names[:shift]
        if len(names) == 2 and number % 2:
            order = names[::-1]
        for name in order:
            rates[name].append(await rate(ops[name], round_seconds))
    return rates


def ratio(rates: dict[str, list[float]], candidate: str, baseline: str) -> Spread:
    """Spread of candidate/baseline over the rounds (each round is one pair)."""
    return Spread.of([c / b for c, b in zip(rates[candidate], rates[baseline], strict=True)])


async def paired(
    baseline: Op, candidate: Op, pairs: int, round_seconds: float, warmup: int = 10
) -> tuple[Spread, Spread, Spread]:
    """(baseline ops/s, candidate ops/s, candidate/baseline ratio) over paired rounds."""
    rates = await interleaved({"b": baseline, "c": candidate}, pairs, round_seconds, warmup)
    return Spread.of(rates["b"]), Spread.of(rates["c"]), ratio(rates, "c", "b")


async def paired_runs(
    baseline: Callable[[], Awaitable[float]],
    candidate: Callable[[], Awaitable[float]],
    pairs: int,
) -> tuple[Spread, Spread, Spread]:
    """Like :func:`paired` for operations that time themselves (return seconds): the
    figures are (baseline s, candidate s, candidate/baseline TIME ratio)."""
    base: list[float] = []
    cand: list[float] = []
    for number in range(pairs):
        if number % 2 == 0:
            base.append(await baseline())
            cand.append(await candidate())
        else:
            cand.append(await candidate())
            base.append(await baseline())
    costs = [c / b for c, b in zip(cand, base, strict=True)]
    return Spread.of(base), Spread.of(cand), Spread.of(costs)


# ---------------------------------------------------------------------------------------
# goals and the report
# ---------------------------------------------------------------------------------------


@dataclass
class Row:
    figure: str
    value: Spread
    unit: str  # "x": throughput ratio (higher is better); "x cost": time ratio (lower)
    goal: str  # ">= 0.8", "<= 1.5", "0.8..1.2" or "" (information only)
    met: bool | None
    detail: str = ""


def judge(value: float, goal: str) -> bool | None:
    if not goal:
        return None
    if goal.startswith(">="):
        return value >= float(goal[2:])
    if goal.startswith("<="):
        return value <= float(goal[2:])
    low, high = (float(x) for x in goal.split(".."))
    return low <= value <= high


def verdict(met: bool | None) -> str:
    return "info" if met is None else ("MET" if met else "NOT MET")


@dataclass
class Report:
    """The figures of one benchmark, printed as they come and summed up at the end."""

    bench: str
    rows: list[Row] = field(default_factory=list)
    curves: dict[str, list[tuple[float, Spread]]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    load_before: tuple[float, float, float] = field(default_factory=os.getloadavg)
    started: float = field(default_factory=time.perf_counter)

    def figure(
        self, figure: str, value: Spread, goal: str = "", *, cost: bool = False, detail: str = ""
    ) -> Row:
        """Record and print one ratio. ``cost``: a time ratio (candidate time / baseline
        time, lower is better); otherwise a throughput ratio (higher is better)."""
        row = Row(figure, value, "x cost" if cost else "x", goal, judge(value.median, goal), detail)
        self.rows.append(row)
        target = f"goal {goal}" if goal else "no goal"
        print(f"  -> {figure}: {value.text()} {target}: {verdict(row.met)}", flush=True)
        return row

    def point(self, curve: str, x: float, ops_per_second: Spread) -> None:
        self.curves.setdefault(curve, []).append((x, ops_per_second))

    def summary(self) -> int:
        elapsed = time.perf_counter() - self.started
        print(f"\nsummary of {self.bench} ({elapsed:.0f}s, {machine()['load']}):")
        for row in self.rows:
            goal = row.goal or "-"
            print(
                f"  {row.figure:<58} {row.value.median:7.2f}{row.unit:<7}"
                f" [{row.value.low:.2f}-{row.value.high:.2f}, n={row.value.n}]"
                f"  goal {goal:<9} {verdict(row.met)}"
            )
        return 0

    def markdown(self) -> str:
        info = machine(self.load_before)
        lines = [
            f"### `benchmarks/{self.bench}` — {info['date']}",
            "",
            f"Machine: {info['cpus']} CPUs ({info['cpu']}), {info['memory']} RAM, "
            f"Python {info['python']}. {info['load'].capitalize()}.",
        ]
        lines.append(f"Code: {code_state()}.")
        if info["busy"]:
            lines.append(
                "**Measured while other work ran on the machine** (the load average above "
                "was not ours alone): absolute ops/s are low and noisy; the paired ratios "
                "are what to read."
            )
        lines += [
            "",
            "| figure | median | IQR | min-max | pairs | goal | verdict | detail |",
            "|---|---:|---:|---:|---:|---|---|---|",
        ]
        for row in self.rows:
            v = row.value
            lines.append(
                f"| {row.figure} | {v.median:.2f}{row.unit} | {v.q1:.2f}-{v.q3:.2f} "
                f"| {v.low:.2f}-{v.high:.2f} | {v.n} | {row.goal or '-'} "
                f"| {verdict(row.met)} | {row.detail} |"
            )
        for name, points in self.curves.items():
            lines += ["", f"Scale curve, {name} (median ops/s, min-max over rounds):", ""]
            lines += [
                f"- {x:g}: {s.median:,.0f} ops/s ({s.low:,.0f}-{s.high:,.0f})" for x, s in points
            ]
        if self.notes:
            lines.append("")
            lines += [f"- {note}" for note in self.notes]
        return "\n".join(lines) + "\n"


def machine(load_before: tuple[float, float, float] | None = None) -> dict[str, Any]:
    cpu = platform.processor() or "unknown CPU"
    memory = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                memory = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
                break
    except OSError:
        pass
    cpus = os.cpu_count() or 1
    now = os.getloadavg()
    before = load_before or now
    # our own benchmark keeps about one core busy; more than that is somebody else's work
    busy = max(before[0], now[0]) > 1.25 or before[0] > 0.5
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu,
        "cpus": cpus,
        "memory": memory,
        "python": sys.version.split()[0],
        "load": f"load average {before[0]:.1f} before, {now[0]:.1f} after (1 min)",
        "busy": busy,
    }


def code_state() -> str:
    """The commit measured, and whether the store code had uncommitted changes."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "core", "providers"],
            cwd=root,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        return "unknown commit"
    if not head:
        return "unknown commit"
    if dirty:
        return f"commit {head} with uncommitted changes in core/ or providers/ (work in progress)"
    return f"commit {head}"


def write_results(report: Report, path: Path = RESULTS) -> None:
    """Put ``report`` into ``path`` under "## Store throughput", replacing only the
    subsection of this benchmark; everything else in the file is kept as it is (the file
    is re-read right before writing and replaced in one rename)."""
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    head = f"### `benchmarks/{report.bench}`"
    block = report.markdown()
    start = text.find(f"\n{SECTION}\n")
    if start < 0:
        intro = (
            f"{SECTION}\n\n"
            "Written by `benchmarks/postgres_bench.py`, `sqlite_bench.py` and `cache_bench.py` "
            "(each replaces its own part). Ratios are candidate over baseline throughput "
            "(`x`, higher is better) or candidate over baseline time (`x cost`, lower is "
            "better), measured in paired interleaved rounds in one run: the median of the "
            "per-pair ratios, its interquartile range, min-max and the number of pairs. "
            "Goals are those of issue 13 (and issue 4 where marked), judged on the median.\n"
        )
        text = text.rstrip("\n") + "\n\n" + intro + "\n" + block
    else:
        body_start = start + len(SECTION) + 2
        end = text.find("\n## ", body_start)
        end = len(text) if end < 0 else end + 1
        section = text[body_start:end]
        at = section.find(head)
        if at < 0:
            section = section.rstrip("\n") + "\n\n" + block
        else:
            stop = section.find("\n### ", at + len(head))
            stop = len(section) if stop < 0 else stop + 1
            section = section[:at] + block + ("\n" if stop < len(section) else "") + section[stop:]
        tail = text[end:]
        text = text[:body_start] + section.rstrip("\n") + "\n" + ("\n" + tail if tail else "")
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    print(f"results written to {path} ({head})")
    write_curves(report, path.with_name(CURVES_DIR))


# ---------------------------------------------------------------------------------------
# scale curves of every provider: kept as JSON beside RESULTS.md, drawn by plot_results.py
# ---------------------------------------------------------------------------------------

CURVES_DIR = "curves"
#: the kinds of scale curve every provider's benchmark draws (``scale_point``)
HISTORY_DEPTH = "read vs history depth (versions per field)"
PROFILE_SIZE = "read vs profile size (fields)"
TENANT_SIZE = "read vs tenant size (profiles)"
CHAIN_DEPTH = "get_derivation_chain vs chain depth (links)"
# curve names written before the "kind | provider" convention: their prefix is the provider
_LEGACY_PREFIXES = {"pg ": "PostgreSQL", "sqlite ": "SQLite", "inmemory ": "in-memory"}


def scale_point(report: Report, kind: str, provider: str, x: float, ops: Spread) -> None:
    """One point of a provider's scale curve of ``kind`` (one of the constants above, or
    any text): drawn with every other provider's curve of the same kind by
    ``plot_results.py`` into ``benchmarks/scale_curves.png``."""
    report.point(f"{kind} | {provider}", x, ops)


def split_curve(name: str, bench: str = "") -> tuple[str, str]:
    """(kind, provider) of a curve name: ``"kind | provider"``, or a legacy ``"pg read vs
    ..."`` name (the provider is its prefix), else the whole name and the benchmark."""
    if " | " in name:
        kind, _, provider = name.rpartition(" | ")
        return kind, provider
    for prefix, provider in _LEGACY_PREFIXES.items():
        if name.startswith(prefix):
            return name[len(prefix) :], provider
    return name, bench.removesuffix(".py").removesuffix("_bench")


def write_curves(report: Report, folder: Path) -> None:
    """The report's curves as ``folder/<bench>.json`` (replacing that benchmark's file)."""
    if not report.curves:
        return
    import json

    folder.mkdir(exist_ok=True)
    data = {
        "bench": report.bench,
        "date": machine(report.load_before)["date"],
        "load": machine(report.load_before)["load"],
        "curves": {
            name: [[x, s.median, s.low, s.high] for x, s in points]
            for name, points in report.curves.items()
        },
    }
    target = folder / f"{report.bench.removesuffix('.py')}.json"
    tmp = target.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, target)


async def scale_curves(
    store: Any,
    report: Report,
    provider: str,
    *,
    pairs: int,
    seconds: float,
    depths: Sequence[int] = (0, 10, 100),
    sizes: Sequence[int] = (10, 50, 200),
    chains: Sequence[int] = (1, 10, 100),
) -> None:
    """History depth, profile size and chain depth curves of any provider, through its
    public API only (``store`` set up and open; chains need ``store.rules`` to allow the
    deepest chain). Each curve's points are measured in interleaved rounds."""
    from uuid import uuid4

    from ccvault.models import Channel, ItemType, ProfileField, SourceType

    tenant = uuid4()
    if chains and store.rules.max_derivation_chain_depth < max(chains) + 1:
        store.rules = dataclasses.replace(store.rules, max_derivation_chain_depth=max(chains) + 1)

    async def measure(kind: str, ops: dict[int, Op]) -> None:
        if not ops:
            return
        rates = await interleaved(
            {str(x): op for x, op in ops.items()}, pairs, seconds / pairs / len(ops)
        )
        for x in ops:
            spread = Spread.of(rates[str(x)])
            scale_point(report, kind, provider, x, spread)
            print(f"  {provider}, {kind}: {x:>6,} -> {spread.median:9,.0f} ops/s", flush=True)

    def read(customer: Any) -> Op:
        return lambda: store.get_by_customer_id(tenant, customer)

    ops: dict[int, Op] = {}
    for depth in depths:  # 10 fields, each with `depth` superseded versions
        person = await store.get_or_create(tenant, Channel.WEB, f"depth-{depth}")
        for version in range(depth + 1):
            for n in range(10):
                await store.update_field(tenant, person.id, bench_field(n, version))
        ops[depth] = read(person.customer_id)
    await measure(HISTORY_DEPTH, ops)
    ops = {}
    for size in sizes:
        person = await store.get_or_create(tenant, Channel.WEB, f"size-{size}")
        await fill(store, tenant, person.id, size)
        ops[size] = read(person.customer_id)
    await measure(PROFILE_SIZE, ops)
    ops = {}
    for links in chains:  # a field derived from a field ... `links` deep
        person = await store.get_or_create(tenant, Channel.WEB, f"chain-{links}")
        previous = None
        for n in range(links + 1):
            item = ProfileField(
                name=f"chain_{n:03d}",
                value=f"derived {n}",
                source_item_id=previous,
                source_item_type=None if previous is None else SourceType.PROFILE_FIELD,
            )
            previous = await store.update_field(tenant, person.id, item)
        last = previous

        def chain(item_id: Any = last) -> Awaitable[Any]:
            return store.get_derivation_chain(tenant, item_id, ItemType.PROFILE_FIELD.value)

        found = await chain()
        assert len(found) == links + 1, (links, len(found))
        ops[links] = chain
    await measure(CHAIN_DEPTH, ops)


def plot(report: Report, path: Path) -> None:
    """A PNG of the scale curves, only when matplotlib is importable (it is optional)."""
    if not report.curves:
        return
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        note = "matplotlib is not installed: no PNG plot of the scale curves was written."
        print(note)
        report.notes.append(note)
        return
    figure, axes = plt.subplots(1, len(report.curves), figsize=(5 * len(report.curves), 4))
    for axis, (name, points) in zip(
        axes if len(report.curves) > 1 else [axes], report.curves.items(), strict=True
    ):
        xs = [x for x, _ in points]
        axis.errorbar(
            xs,
            [s.median for _, s in points],
            yerr=[[s.median - s.low for _, s in points], [s.high - s.median for _, s in points]],
            marker="o",
        )
        axis.set_title(name)
        axis.set_ylabel("ops/s")
        axis.set_ylim(bottom=0)
    figure.tight_layout()
    figure.savefig(path)
    report.notes.append(f"plot: `{path.name}`")
    print(f"plot written to {path}")


# ---------------------------------------------------------------------------------------
# workloads built through the public ProfileStore API only (any provider)
# ---------------------------------------------------------------------------------------

FIELDS = 50


def bench_field(n: int, version: int = 0) -> Any:
    from ccvault.models import ProfileField

    return ProfileField(
        name=f"field_{n:02d}",
        value=f"value {n} version {version} for somebody.{n}@example.com",
        source_metadata={"session": f"s-{version}", "quote": f"my field {n} is {version}"},
        confidence=0.9,
    )


async def fill(store: Any, tenant: Any, profile_id: Any, fields: int = FIELDS) -> None:
    """``fields`` ACTIVE fields on the profile, one update_field each (through ``store``,
    so an encrypting wrapper seals them)."""
    for n in range(fields):
        await store.update_field(tenant, profile_id, bench_field(n))


async def encryption_pair(store: Any) -> tuple[Op, Op]:
    """(plaintext read, encrypted read): ``get_by_customer_id`` of two profiles of the same
    50 fields, one written and read through ``store`` itself, the other through
    ``EncryptedProfileStore(store, encrypt_all=True)`` (every value and metadata sealed)."""
    from uuid import uuid4

    from ccvault.crypto import EncryptedProfileStore, Keyring, generate_key_entry
    from ccvault.models import Channel

    sealed = EncryptedProfileStore(
        store, Keyring.parse(generate_key_entry("bench")), encrypt_all=True
    )
    tenant = uuid4()
    plain_profile = await store.get_or_create(tenant, Channel.WEB, "plain")
    sealed_profile = await sealed.get_or_create(tenant, Channel.WEB, "sealed")
    await fill(store, tenant, plain_profile.id)
    await fill(sealed, tenant, sealed_profile.id)
    raw = await store.get_by_customer_id(tenant, sealed_profile.customer_id)
    assert raw is not None and all(
        str(f.value).startswith("ccvault:pii:") for f in raw.fields.values()
    ), "the wrapper did not seal the values"
    opened = await sealed.get_by_customer_id(tenant, sealed_profile.customer_id)
    assert opened is not None and len(opened.fields) == FIELDS
    assert opened.fields["field_07"].value == bench_field(7).value

    async def plain_read() -> Any:
        return await store.get_by_customer_id(tenant, plain_profile.customer_id)

    async def sealed_read() -> Any:
        return await sealed.get_by_customer_id(tenant, sealed_profile.customer_id)

    return plain_read, sealed_read


REQUIREMENTS = 50


async def missing_fields_setup(store: Any) -> tuple[Any, Any, Any, Any]:
    """A profile of 50 fields, a scenario of 50 requirements (40 on present fields, 10 on
    absent ones; every other one with a ``when_condition``) and 50 definitions of one agent.
    Returns (tenant, agent, scenario, profile)."""
    from uuid import uuid4

    from ccvault.models import Channel, ProfileFieldDefinition, ScenarioFieldRequirement

    tenant, agent, scenario = uuid4(), uuid4(), uuid4()
    person = await store.get_or_create(tenant, Channel.WEB, "missing-fields")
    await fill(store, tenant, person.id)
    names = [f"field_{n:02d}" for n in range(40)] + [f"absent_{n:02d}" for n in range(10)]
    for order, name in enumerate(names):
        await store.save_field_definition(
            ProfileFieldDefinition(
                tenant_id=tenant, agent_id=agent, name=name, freshness_seconds=86_400 * 365
            )
        )
        await store.save_scenario_requirement(
            ScenarioFieldRequirement(
                tenant_id=tenant,
                agent_id=agent,
                scenario_id=scenario,
                field_name=name,
                collection_order=order,
                when_condition=(
                    f'field_{order % 40:02d} != "nobody" and field_03 != "x"' if order % 2 else None
                ),
            )
        )
    profile = await store.get_by_id(tenant, person.id)
    assert profile is not None
    missing = await store.get_missing_fields(tenant, profile, scenario)
    assert [r.field_name for r in missing] == names[40:], [r.field_name for r in missing]
    return tenant, agent, scenario, profile
