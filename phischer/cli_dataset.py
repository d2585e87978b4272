"""`phischer dataset check|split`: validate and split a chat fine-tuning JSONL."""

from __future__ import annotations

from pathlib import Path

import click

from phischer.base_models import DEFAULT_BASE_MODEL
from phischer.cli import friendly_errors
from phischer.cli_options import base_model_option, epochs_option
from phischer.dataset_check import check_file, plot_tokens
from phischer.dataset_split import split_file
from phischer.plots import require_matplotlib
from phischer.stopping import sigterm_as_interrupt

# A second Ctrl-C while a stopped split removes its unfinished files (a moment at most).
_STILL_STOPPING = (
    b"Still stopping (removing the unfinished output files); press Ctrl-C again to quit at once.\n"
)


@click.group("dataset")
def dataset_group() -> None:
    """Check a fine-tuning JSONL, or split it into train and validation files."""


@dataset_group.command("check")
@click.argument("file", type=click.Path(path_type=Path))
@base_model_option(
    "Model to be fine-tuned: sets the tokenizer, example limit and price.",
    default=DEFAULT_BASE_MODEL,
)
@epochs_option("Epochs to estimate for (default: OpenAI's automatic rule).")
@click.option(
    "--max-shown",
    type=click.IntRange(1),
    default=20,
    show_default=True,
    help="Errors and warnings listed before '… and N more'.",
)
@click.option(
    "--plot",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write a histogram of tokens per example (limit, median, p95) to this PNG.",
)
def check(
    file: Path, base_model: str, epochs: int | None, max_shown: int, plot: Path | None
) -> None:
    """Check FILE: format errors by line, tokens, epochs and cost.

    Runs the checks of OpenAI's chat fine-tuning data-prep guide; exits 1 on format errors.
    """
    with friendly_errors():
        if plot is not None:
            # Before the check, not after: a big file takes minutes to count.
            require_matplotlib()
        report = check_file(file, base_model, epochs, progress=True)
    click.echo(report.format(max_problems=max_shown))
    if plot is not None:
        with friendly_errors():
            click.echo(plot_tokens(report, plot))
    if report.errors:
        raise SystemExit(1)


@dataset_group.command("split")
@click.argument("file", type=click.Path(path_type=Path))
@click.option(
    "--validation",
    type=float,
    default=0.2,
    show_default=True,
    help="Share of examples held out (whole conversations only), in (0, 1).",
)
@click.option(
    "--seed",
    type=int,
    default=0,
    show_default=True,
    help="Random seed: the same seed gives the same split.",
)
@click.option(
    "-o",
    "--output-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for the output files (default: next to FILE).",
)
def split(file: Path, validation: float, seed: int, output_dir: Path | None) -> None:
    """Split FILE into train and validation files by conversation.

    Writes FILE.train.jsonl and FILE.validation.jsonl (with .conversations files); no
    conversation ends up on both sides, and the same --seed gives the same split.
    """
    # SIGTERM and SIGHUP (`kill`, `timeout`, a closed terminal) stop it like Ctrl-C, so its
    # temp output files are removed: left at their default they killed it with them behind.
    try:
        with friendly_errors(), sigterm_as_interrupt(_STILL_STOPPING):
            result = split_file(file, validation=validation, seed=seed, out_dir=output_dir)
    except OSError as exc:
        # A full disk, an unwritable or impossible -o: the unfinished files are gone already.
        # A failed write names no file: all four go to one folder, which is named instead.
        folder = output_dir if output_dir is not None else file.parent
        where = exc.filename or f"the split files in {folder}"
        raise click.ClickException(f"cannot write {where}: {exc.strerror or exc}") from None
    click.echo(result.format())


def register(cli: click.Group) -> None:
    """Add the `dataset` group to the CLI."""
    cli.add_command(dataset_group)
