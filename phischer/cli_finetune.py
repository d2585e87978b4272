"""`phischer finetune start|status|list|cancel`: OpenAI jobs or a local LoRA."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from phischer.cli import Context, friendly_errors, pass_ctx
from phischer.cli_options import Decorator, FiniteFloatRange, base_model_option, epochs_option
from phischer.finetune import jobs
from phischer.finetune.common import FineTuneError, Interrupted
from phischer.finetune.local_request import DEFAULT_SERVE_URL
from phischer.models import FineTuneJob
from phischer.plots import require_matplotlib
from phischer.printing import table
from phischer.stopping import sigterm_as_interrupt

_POSITIVE = click.IntRange(1)
_POSITIVE_FLOAT = FiniteFloatRange(min=0, min_open=True)
INTERRUPTED_EXIT = 130  # 128 + SIGINT, what a shell reports for a Ctrl-C
_LOCAL_ONLY: list[str] = []  # filled by _local: the flags `--provider openai` refuses
_OPENAI_ONLY = ["--suffix"]
_STILL_STOPPING_OPENAI = (
    b"Still stopping (deleting the uploads, or looking for the job OpenAI may have made); "
    b"press Ctrl-C again to quit at once.\n"
)
_STILL_STOPPING = (
    b"Still stopping (recording where the local run stopped); press Ctrl-C again to quit at once.\n"
)


@contextmanager
def interrupted() -> Iterator[None]:
    """Ctrl-C: say what became of the job and how to go on, then exit 130 (not "Aborted!")."""
    try:
        yield
    except Interrupted as exc:
        click.echo(str(exc), err=True)
        raise click.exceptions.Exit(INTERRUPTED_EXIT) from None


def _local(name: str, help: str, **kwargs: Any) -> Decorator:
    # Options only the local provider reads: their help says so, and shows any default.
    _LOCAL_ONLY.append(name)
    return click.option(name, show_default=True, help=f"local: {help}", **kwargs)


def _refuse_other_providers_flags(provider: str) -> None:
    # A flag the chosen provider never reads would be silently ignored: say so instead.
    ctx = click.get_current_context()
    flags = _LOCAL_ONLY if provider == "openai" else _OPENAI_ONLY
    given = [
        f
        for f in flags
        if ctx.get_parameter_source(f.lstrip("-").replace("-", "_")) is ParameterSource.COMMANDLINE
    ]
    if given:
        other = "local" if provider == "openai" else "openai"
        hint = " (the local model name is --lora-name)" if given == ["--suffix"] else ""
        verb = "applies" if len(given) == 1 else "apply"
        raise FineTuneError(
            f"{', '.join(given)} only {verb} to --provider {other}, not {provider}{hint}"
        )


@click.group("finetune")
def finetune_group() -> None:
    """Train a clone: OpenAI fine-tuning jobs or a local LoRA adapter."""


@finetune_group.command("start")
@click.argument("train", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--persona", required=True, help="Persona that gets the trained model.")
@base_model_option(
    "openai: model id (default gpt-4.1-mini-2025-04-14); "
    "local: a local model folder or hub id (required)."
)
@click.option(
    "--validation",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Validation JSONL (from `phischer dataset split`).",
)
@click.option("--suffix", help="openai: model-name suffix (default: the persona name).")
@epochs_option("Passes over the data (openai default: auto; local default: 3).")
@click.option(
    "--provider",
    type=click.Choice(["openai", "local"]),
    default="openai",
    show_default=True,
    help="Where to train.",
)
@_local("--lora-rank", "LoRA rank r.", type=_POSITIVE, default=16)
@_local("--lora-alpha", "LoRA alpha (scale = alpha / r).", type=_POSITIVE, default=32)
@_local("--learning-rate", "peak learning rate.", type=_POSITIVE_FLOAT, default=2e-4)
@_local(
    "--max-seq-length",
    "tokens per example, at most the model's context (longer ones keep their end).",
    type=click.IntRange(16),
    default=1024,
)
@_local("--batch-size", "examples per step.", type=_POSITIVE, default=4)
@_local("--max-steps", "stop after N steps (overrides --epochs).", type=_POSITIVE)
@_local(
    "--save-steps",
    "checkpoint every N steps (a rerun resumes from the last one).",
    type=_POSITIVE,
    default=50,
)
@_local(
    "--output-dir",
    "adapter folder (default instance/adapters/LORA_NAME).",
    type=click.Path(file_okay=False, path_type=Path),
)
@_local(
    "--serve-url",
    "OpenAI-compatible URL the adapter will be served at.",
    default=DEFAULT_SERVE_URL,
)
@_local("--lora-name", "model name the server exposes (default: the persona name).")
@pass_ctx
def start(obj: Context, train: Path, provider: str, **options: object) -> None:
    """Fine-tune persona --persona on TRAIN.jsonl (checked first; nothing is sent on errors)."""
    with interrupted(), friendly_errors():
        _refuse_other_providers_flags(provider)
        if provider == "local":
            from phischer.finetune.local import start_local
            from phischer.finetune.local_request import LocalRequest

            # SIGTERM and SIGHUP (`kill`, `timeout`, a closed terminal) stop it like Ctrl-C:
            # at their default they killed it with its job left `running` for good.
            with sigterm_as_interrupt(_STILL_STOPPING):
                row = start_local(
                    obj.db,
                    obj.settings,
                    LocalRequest.from_options(train, **options),
                    echo=click.echo,
                )
            click.echo(f"Job {row.job_id} {row.status}: adapter in {row.output_dir}")
            return
        from phischer.finetune import openai as ft

        request = ft.StartRequest(
            train_path=train,
            persona=str(options["persona"]),
            base_model=options["base_model"],  # type: ignore[arg-type]
            validation_path=options["validation"],  # type: ignore[arg-type]
            suffix=options["suffix"],  # type: ignore[arg-type]
            epochs=options["epochs"],  # type: ignore[arg-type]
        )
        # SIGTERM and SIGHUP too: at their default they left the uploads (or an unrecorded
        # job) behind without a word.
        with sigterm_as_interrupt(_STILL_STOPPING_OPENAI):
            row = ft.start_openai(obj.db, obj.settings, request, echo=click.echo)
    click.echo(f"Started fine-tuning job {row.job_id} ({row.status}).")
    click.echo(f"Follow it with: phischer finetune status {row.job_id} --wait")


@finetune_group.command("status")
@click.argument("job_id")
@click.option(
    "--wait",
    is_flag=True,
    help="Poll until the job succeeds, fails, is cancelled or paused (network blips are retried).",
)
@click.option(
    "--plot",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Then write the loss curve (training and validation loss per step) to this PNG.",
)
@pass_ctx
def status(obj: Context, job_id: str, wait: bool, plot: Path | None) -> None:
    """Show a job's status and new events; on success the persona switches to the new model."""
    from phischer.finetune import openai as ft

    with interrupted(), friendly_errors():
        with obj.db.read() as session:
            row = jobs.find_job_here(session, job_id)
        if row is not None and row.provider == "local":
            _local_status(obj, row, wait, plot)
            return
        if plot is not None:
            # Before polling: a --wait can last an hour, and failing after it would waste it.
            require_matplotlib()
        client = ft.make_client(obj.settings)
        if wait:
            with _waiting(job_id, "keeps running on OpenAI (Ctrl-C does not cancel it)"):
                result = ft.wait_for(obj.db, client, job_id, echo=click.echo)
        else:
            result = ft.check_status(obj.db, client, job_id)
            for line in ft.describe_status(result):
                click.echo(line)
        if plot is not None:
            click.echo(ft.plot_loss(client, job_id, plot, f"{job_id} ({result.status})"))
        if result.status == "failed":
            raise FineTuneError(
                f"{job_id} failed: {result.error or 'no reason given'} (persona unchanged)"
            )
        if result.status == "succeeded" and not result.fine_tuned_model and wait:
            # A wait ends on success: `&& phischer text …` after it must not run on the old model.
            raise FineTuneError(
                f"{job_id} succeeded, but OpenAI named no model (persona unchanged): check "
                f"again later with: phischer finetune status {job_id}"
            )


@contextmanager
def _waiting(job_id: str, goes_on: str) -> Iterator[None]:
    """A `status --wait` that Ctrl-C, SIGTERM or SIGHUP end, saying the job `goes_on`."""
    # Only the waiting stops: the job is left as it is, wherever it runs.
    try:
        with sigterm_as_interrupt(b""):
            yield
    except KeyboardInterrupt:
        raise Interrupted(
            f"Stopped waiting: {job_id} {goes_on}. Wait again with: "
            f"phischer finetune status {job_id} --wait"
        ) from None


def _local_status(obj: Context, row: FineTuneJob, wait: bool, plot: Path | None) -> None:
    """`finetune status` of a local job: as stored, or (--wait) once its run has ended."""
    from phischer.finetune import local_status

    if wait:
        goes_on = "keeps training in its `phischer finetune start` (Ctrl-C there stops it)"
        with _waiting(row.job_id, goes_on):
            row = local_status.wait_local(obj.db, row, echo=click.echo)
    for line in local_status.status_lines(row):
        click.echo(line)
    dead = local_status.stopped_hard(row)
    if dead is not None:
        click.echo(f"  {dead}")
    if plot is not None:
        from phischer.finetune.loss_plot import copy_loss_plot

        click.echo(copy_loss_plot(row, plot))
    if row.status == "failed":
        raise FineTuneError(f"{row.job_id} failed: {row.error or 'no reason recorded'}")


@finetune_group.command("list")
@pass_ctx
def list_(obj: Context) -> None:
    """List jobs started here, then recent jobs on the OpenAI account."""
    from phischer.finetune import openai as ft

    with obj.db.read() as session:
        rows = jobs.list_jobs(session)
    client = ft.make_client(obj.settings) if obj.settings.openai_api_key else None
    # Without a key too: a job on the server OPENAI_BASE_URL names is not "at" another one.
    here = ft.server_of(client) if client is not None else ft.server_here(obj.settings)
    stored = [_stored_job_row(job, persona, here) for job, persona in rows]
    # The account's jobs are read before anything is printed: one table, lined up as a whole.
    remote, more, note = [], False, "(remote OpenAI jobs not listed: no OPENAI_API_KEY)"
    if client is not None:
        try:
            remote, more = ft.list_remote(client)
            note = ""
        except FineTuneError as exc:
            # The jobs stored here are what `list` is for: an account it cannot reach is a note.
            note = f"(remote OpenAI jobs not listed: {exc})"
    known = {job.job_id for job, _ in rows if job.server in (None, here)}
    others = [
        (j.id, "openai", j.status, "-", j.model, j.fine_tuned_model or "")
        for j in remote
        if j.id not in known
    ]
    header, *lines = table([JOB_HEADER, *stored, *others])
    if not rows:
        click.echo("No fine-tuning jobs yet: `phischer finetune start TRAIN.jsonl --persona NAME`.")
    else:
        click.echo(header)
    for line in lines[: len(stored)]:
        click.echo(line)
    if others:
        click.echo("On the OpenAI account (not started here):")
        if not rows:  # else the header above the stored jobs already names the columns
            click.echo(header)
    for line in lines[len(stored) :]:
        click.echo(line)
    if note:
        click.echo(note)
    if more:
        # One page is read: an account with hundreds of jobs would take a request per page.
        click.echo(
            f"(only the account's {len(remote)} most recent jobs were read; it has older "
            "ones: `phischer finetune status JOB` shows any job)"
        )


def _stored_job_row(job: FineTuneJob, persona: str | None, here: str) -> tuple[str, ...]:
    """The cells of `finetune list` for a job stored here, whose server is `here` or not."""
    # A local job's result is its adapter folder (what a server loads, where SERVING.md
    # is), whatever its status; its fine_tuned_model is only the name it is served under.
    result = (job.output_dir if job.provider == "local" else job.fine_tuned_model) or ""
    if job.server not in (None, here):
        # Two servers can number their jobs alike: name the one this job lives on when
        # OPENAI_BASE_URL points elsewhere (where `finetune status` would not find it).
        result = f"{result} at {job.server}".lstrip()
    return (job.job_id, job.provider, job.status, persona or "-", job.base_model, result)


JOB_HEADER = ("JOB", "PROVIDER", "STATUS", "PERSONA", "BASE MODEL", "RESULT")


@finetune_group.command("cancel")
@click.argument("job_id")
@pass_ctx
def cancel(obj: Context, job_id: str) -> None:
    """Cancel a running OpenAI job."""
    from phischer.finetune import openai as ft

    with friendly_errors():
        lines = ft.cancel(obj.db, obj.settings, job_id)
    for line in lines:
        click.echo(line)


def register(cli: click.Group) -> None:
    """Attach the finetune group to the main CLI."""
    cli.add_command(finetune_group)
