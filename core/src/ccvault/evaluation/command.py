"""``ccvault eval sgd``: the command's body (``ccvault.cli`` only registers :data:`eval_group`).

Without ``--config`` on the command line (here or before the subcommand; ``$CCVAULT_CONFIG``
and system config files are ignored) the eval runs on the in-memory provider with no cache and
no encryption, so it never writes into a configured production store by accident. With
``--config`` it runs on that store and stack (cache, encryption), under a fresh random tenant,
and removes everything it wrote when it ends.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from ccvault import errors
from ccvault.evaluation.report import scores_json, scores_table
from ccvault.evaluation.sgd import (
    SGD_TODAY,
    SgdDataset,
    SgdScores,
    load_dataset,
    run_sgd_eval,
)
from ccvault.extraction import (
    ExtractionError,
    ExtractionLimits,
    ExtractionRequest,
    Extractor,
    OfflineExtractor,
    extractor_from_settings,
)
from ccvault.extras import requires_extra
from ccvault.models import ConversationTurn
from ccvault.settings import VaultSettings, load_settings

with requires_extra("cli", "ccvault eval"):
    import click
    from click.core import ParameterSource
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
    )

__all__ = ["eval_group", "sgd_settings"]


def sgd_settings(config: Path | None) -> VaultSettings:
    """The settings of an eval: ``config`` if given, else in-memory, no cache, no encryption."""
    if config is not None:
        return load_settings(config)
    return load_settings(
        None, store_provider="inmemory", cache_enabled=False, auto_encrypt_pii=False
    )


def _extractor(name: str, settings: VaultSettings) -> Extractor | None:
    if name == "oracle":
        return None
    if name == "offline":
        # relative dates ("tomorrow", "the 4th") are read as the dataset does
        return OfflineExtractor(
            default_region=settings.extraction.default_region,
            limits=ExtractionLimits.from_settings(settings),
            today=SGD_TODAY,
        )
    openai = settings.extraction.openai
    if not openai.base_url or not openai.model:
        raise errors.ConfigurationError(
            "--extractor openai needs [extraction.openai] base_url and model in the --config "
            'file (api_key = "${OPENAI_API_KEY}" reads the key from the environment)'
        )
    return extractor_from_settings(settings, name="openai")


async def _evaluate(
    settings: VaultSettings,
    dataset: SgdDataset,
    extractor_name: str,
    progress: Progress | None,
) -> SgdScores:
    from ccvault.registry import open_store

    extractor = _extractor(extractor_name, settings)
    if extractor is not None and extractor_name == "openai":
        await _preflight(extractor)
    task = (
        progress.add_task(f"replaying {extractor_name}", total=len(dataset.dialogues))
        if progress is not None
        else None
    )

    def advance(scores: SgdScores) -> None:
        if progress is not None and task is not None:
            progress.update(
                task,
                advance=1,
                description=f"replaying {extractor_name}: JGA {100 * scores.jga:.1f}%",
            )

    try:
        async with open_store(settings) as store:
            return await run_sgd_eval(
                store,
                dataset,
                extractor=extractor,
                settings=settings,
                extractor_name=extractor_name,
                on_dialogue=advance,
            )
    finally:
        close = getattr(extractor, "aclose", None)
        if close is not None:
            await close()


async def _preflight(extractor: Extractor) -> None:
    """One request before the run: an endpoint that does not answer is one clear error, not
    thousands of "extraction failed" warnings and a JGA of zero."""
    probe = ExtractionRequest(field_name="city", description="the city the customer names")
    try:
        await extractor.extract(probe, [ConversationTurn(content="I live in Lisbon.")])
    except ExtractionError as exc:
        close = getattr(extractor, "aclose", None)
        if close is not None:
            await close()
        raise errors.ConfigurationError(f"the openai extractor cannot run: {exc}") from None


@click.group("eval")
def eval_group() -> None:
    """Measure the vault on real conversations."""


@eval_group.command("sgd")
@click.option(
    "--data",
    "data",
    type=click.Path(path_type=Path),
    required=True,
    help="An SGD split folder (schema.json and dialogues_*.json), e.g. dstc8/dev.",
)
@click.option(
    "--extractor",
    type=click.Choice(["oracle", "offline", "openai"]),
    default="oracle",
    show_default=True,
    help="oracle: the turn's ground truth (measures the store); offline: the built-in "
    "extractor; openai: the OpenAI-compatible endpoint of [extraction.openai].",
)
@click.option(
    "--config",
    "-c",
    "config",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="TOML settings of the store to run on (default: in-memory, nothing persisted).",
)
@click.option("--limit", type=click.IntRange(min=1), default=None, help="First N dialogues only.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object, no progress bar.")
@click.pass_context
def sgd_command(
    ctx: click.Context,
    data: Path,
    extractor: str,
    config: Path | None,
    limit: int | None,
    as_json: bool,
) -> None:
    """Replay Schema-Guided Dialogue conversations through gap fill and score the vault:
    joint goal accuracy, slot precision/recall, get_missing_fields accuracy, supersede
    correctness, user turns per second."""
    root = ctx.find_root()
    if config is None and root.get_parameter_source("config") is ParameterSource.COMMANDLINE:
        config = root.params.get("config")
    # the root's --json (given before the subcommand) counts too
    as_json = as_json or bool(root.params.get("as_json"))
    settings = sgd_settings(config)
    dataset = load_dataset(data, limit=limit)
    if as_json:
        scores = asyncio.run(_evaluate(settings, dataset, extractor, None))
        click.echo(scores_json(scores))
        return
    console = Console(stderr=True)
    with Progress(
        SpinnerColumn(),
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        scores = asyncio.run(_evaluate(settings, dataset, extractor, progress))
    out = Console()
    (out if out.is_terminal else Console(width=200)).print(scores_table(scores))
