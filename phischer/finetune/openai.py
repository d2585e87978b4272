"""OpenAI fine-tuning: upload, create the job, follow it, and switch the persona on success."""

from __future__ import annotations

import datetime as dt
import email.utils
import http
import json
import shlex
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import openai
from openai.types import FileObject
from openai.types.fine_tuning import FineTuningJob, FineTuningJobEvent
from tqdm import tqdm

from phischer import personas, plots
from phischer.backends.openai import sdk_client
from phischer.base_models import MAX_UPLOAD_BYTES
from phischer.config import Settings
from phischer.db import Database
from phischer.finetune import jobs
from phischer.finetune.common import (
    FINAL_STATES,
    Echo,
    FineTuneError,
    Interrupted,
    check_dataset,
    deadline_notice,
    one_line,
    refuse_after_jobs_end,
    sanitize_suffix,
    step_bar,
)
from phischer.models import FineTuneJob
from phischer.plots import LossSeries
from phischer.printing import plural

OPENAI_URL = "https://api.openai.com/v1"
# Explicit, not the SDK's 600 s / 2 retries: a stuck upload or poll should fail in a minute.
TIMEOUT_S = 60.0
MAX_RETRIES = 2
# A job request's Retry-After is waited for up to this long, as the SDK waits for any other
# request's: a longer one fails at once, saying how long OpenAI asked to wait.
MAX_RETRY_AFTER_S = 120.0
# The SDK waits out a Retry-After of up to 2 minutes in silence: one of this long or more is said.
NOTICE_WAIT_S = 1.0
# Statuses a gateway or proxy in front of the API answers with when what is behind it failed.
GATEWAY_STATUSES = (502, 504)
# `status --wait` polls after 5 s, then backs off by 1.5x up to once a minute.
POLL_FIRST_S = 5.0
POLL_MAX_S = 60.0
POLL_FACTOR = 1.5
MAX_EVENTS = 200  # a first `status` of a long job would otherwise print every metrics step
# The ids of this many newest events are kept as shown: one listed late, below them, is caught.
EVENT_WINDOW = 50
# What an OpenAI-compatible server without the events endpoint answers it with: events are
# a nicety, the status and the switch are what `status` is for.
NO_EVENTS_STATUSES = (404, 405, 501)
# `status --wait` rides out this many failed checks in a row (network, 429, 5xx, each after
# the SDK's own retries) before it gives up: on the backoff above, 6 minutes or more.
MAX_POLL_FAILURES = 10
# A Retry-After longer than the backoff is waited out, but for an hour at most: a server's
# "a day" (or a typo) would leave the wait silent for that long before its next check.
MAX_POLL_WAIT_S = 3600.0
# A timed-out upload's file is looked for among those created since it began, by the server's
# clock: this much earlier too, for a clock that is behind ours.
CLOCK_SLACK_S = 300
# After a Ctrl-C cut the job request short, the one look for the job it may have made takes
# at most this long: the user asked to stop.
LOOK_AFTER_STOP_S = 5.0
PAUSED = "paused"  # paused on OpenAI's side: it trains again only once someone resumes it

_sleep = time.sleep  # tests replace this to poll without waiting


@dataclass(frozen=True)
class StartRequest:
    """What `finetune start --provider openai` asks for."""

    train_path: Path
    persona: str
    base_model: str | None = None
    validation_path: Path | None = None
    suffix: str | None = None
    epochs: int | None = None


class _SaysItsWaits(openai.OpenAI):
    """The SDK's client, saying when it waits before a retry as a Retry-After asks."""

    # The SDK's own hook (keyword arguments only, as the SDK calls it): it sleeps up to two
    # minutes per retry, on an upload or a status check, with no line and no bar moving.
    def _sleep_for_retry(self, *, response: Any = None, **kwargs: Any) -> None:
        asked = retry_after_s(response.headers) if response is not None else None
        if asked is not None and asked >= NOTICE_WAIT_S:
            # tqdm.write: above an upload's bar instead of through it.
            tqdm.write(_waiting_line(server_of(self), response.status_code, asked))
        super()._sleep_for_retry(response=response, **kwargs)


def _waiting_line(server: str, status: int, seconds: float) -> str:
    if status == 429:
        return f"OpenAI is rate-limiting (429); waiting {_duration(seconds)} before trying again"
    return f"{server} answered {status}; waiting {_duration(seconds)} before trying again"


def make_client(settings: Settings, no_key_hint: str = "") -> openai.OpenAI:
    """An SDK client on OPENAI_API_KEY / OPENAI_BASE_URL with explicit timeout and retries."""
    if not settings.openai_api_key:
        raise FineTuneError(f"No OPENAI_API_KEY: set it in .env{no_key_hint}")
    return sdk_client(
        settings.openai_base_url or OPENAI_URL,
        settings.openai_api_key,
        timeout_s=TIMEOUT_S,
        max_retries=MAX_RETRIES,
        client_class=_SaysItsWaits,
    )


def retry_after_s(headers: Any) -> float | None:
    """The seconds a response's retry-after-ms or Retry-After (number or HTTP date) asks for."""
    try:
        if "retry-after-ms" in headers:
            return max(0.0, float(headers["retry-after-ms"]) / 1000)
        value = headers.get("retry-after")
        if value is None:
            return None
        try:
            seconds = float(value)
        except ValueError:
            seconds = _seconds_until(value)
        return max(0.0, seconds)
    except (TypeError, ValueError, OverflowError):
        return None  # a header no one can read: as without one


def _duration(seconds: float) -> str:
    """A wait as people say it: "45 s", "10 min", "3 h"."""
    if seconds < 120:
        return f"{max(1, round(seconds))} s"
    if seconds < 2 * 3600:
        return f"{round(seconds / 60)} min"
    return f"{round(seconds / 3600)} h"


def server_of(client: openai.OpenAI) -> str:
    """The base URL a client's jobs live on, as stored with them (no trailing slash)."""
    return str(client.base_url).rstrip("/")


def server_here(settings: Settings) -> str:
    """The server (as `server_of` names it) that OPENAI_BASE_URL points at, key or no key."""
    # A client only to read its base URL as the SDK normalises it (it sends no request).
    base_url = settings.openai_base_url or OPENAI_URL
    return server_of(openai.OpenAI(api_key="unused", base_url=base_url))


def _api_message(exc: openai.APIStatusError) -> str:
    # The SDK puts the body's "error" object in .body; its "message" is the useful part.
    body = exc.body
    if isinstance(body, dict) and body.get("message"):
        return str(body["message"])
    return exc.message


class TransientApiError(FineTuneError):
    """An API error that may pass by itself: no network, a rate limit, a server error."""


class NoAnswer(TransientApiError):
    """A request whose answer never came, or came garbled: what it asked for may be done."""


def _garbled(client: openai.OpenAI, doing: str) -> NoAnswer:
    return NoAnswer(
        f"{server_of(client)} answered something that is not OpenAI's API while {doing} (a "
        "proxy's error page, or a cut-off answer): try again, or check OPENAI_BASE_URL"
    )


def _expect(client: openai.OpenAI, obj: Any, kind: type, doing: str, *fields: str) -> Any:
    """`obj` if the SDK made a `kind` of it whose `fields` are strings, else a NoAnswer."""
    # The SDK does not validate: an HTML page or another JSON shape comes back as a str, a
    # list or an object missing its fields, which would fail far from here with a traceback.
    if isinstance(obj, kind) and all(isinstance(getattr(obj, f, None), str) for f in fields):
        return obj
    raise _garbled(client, doing)


def _is_transient(exc: openai.APIError) -> bool:
    # A 429 for an exhausted quota stays until someone pays: waiting does not help.
    if isinstance(exc, openai.RateLimitError):
        return exc.code != "insufficient_quota"
    if isinstance(exc, openai.APIStatusError):
        return exc.status_code >= 500
    return isinstance(exc, openai.APIConnectionError)  # timeouts too


def _api_error_message(client: openai.OpenAI, exc: openai.APIError, doing: str) -> str:
    if isinstance(exc, openai.AuthenticationError):
        return (
            f"OpenAI rejected the API key while {doing} (401: {_api_message(exc)}): "
            "check OPENAI_API_KEY in .env"
        )
    if isinstance(exc, openai.RateLimitError):
        asked = retry_after_s(exc.response.headers)
        what = f"OpenAI rate limit or quota hit while {doing} (429: {_api_message(exc)})"
        if asked is not None and asked >= NOTICE_WAIT_S:
            return f"{what}: OpenAI asks to wait {_duration(asked)} before the next try"
        return f"{what}: wait a minute and retry, or check your plan's billing"
    if isinstance(exc, openai.APIStatusError):
        if not isinstance(exc.body, dict):  # not the API's error JSON: a page, text, nothing
            return _not_the_api(client, exc.status_code, doing)
        return f"OpenAI answered {exc.status_code} while {doing}: {_api_message(exc)}"
    return (
        f"cannot reach {client.base_url} while {doing} ({exc.message}): "
        "check your network or OPENAI_BASE_URL"
    )


def _not_the_api(client: openai.OpenAI, status: int, doing: str) -> str:
    """An error status whose body is not the API's JSON: who answered, and what it means."""
    # Its body (often a proxy's HTML page) says nothing a terminal line can use: not shown.
    try:
        answered = f"{status} {http.HTTPStatus(status).phrase}"
    except ValueError:
        answered = str(status)
    if status in GATEWAY_STATUSES:
        return (
            f"{server_of(client)} answered {answered} while {doing}: a gateway or proxy error "
            "(the API behind it did not answer): try again in a while, or check OPENAI_BASE_URL"
        )
    again = "try again in a while, or " if status >= 500 else ""
    return (
        f"{server_of(client)} answered {answered} while {doing}, not as OpenAI's API answers "
        f"(a proxy or another server): {again}check OPENAI_BASE_URL"
    )


@contextmanager
def api_errors(client: openai.OpenAI, doing: str) -> Iterator[None]:
    """Turn SDK errors into one-line FineTuneErrors that say what to do.

    Errors that may pass by themselves are TransientApiErrors, which `status --wait` rides out.
    """
    try:
        yield
    except openai.APITimeoutError as exc:
        raise NoAnswer(_api_error_message(client, exc, doing)) from None
    except (openai.APIStatusError, openai.APIConnectionError) as exc:
        kind = TransientApiError if _is_transient(exc) else FineTuneError
        if isinstance(exc, openai.APIConnectionError):
            kind = NoAnswer  # dropped after the request went out, maybe: it may be done
        raise kind(_api_error_message(client, exc, doing)) from None
    except FineTuneError:
        raise
    except (openai.APIResponseValidationError, ValueError, AttributeError, TypeError):
        # What the SDK raises parsing a body that is not JSON or not the API's shape (a
        # ValueError is json's JSONDecodeError); only SDK calls run inside this block.
        raise _garbled(client, doing) from None


def _check_command(request: StartRequest) -> str:
    """The `dataset check` command that prints the estimate `finetune start` would."""
    words = ["phischer", "dataset", "check", str(request.train_path)]
    if request.base_model:
        words += ["--base-model", request.base_model]
    if request.epochs is not None:
        words += ["--epochs", str(request.epochs)]
    return shlex.join(words)


def _check(
    path: Path, base_model: str, epochs: int | None, echo: Echo, *, training: bool = True
) -> Any:
    from phischer.base_models import MIN_EXAMPLES

    _refuse_too_big(path)
    report = check_dataset(path, echo, "nothing was uploaded", base_model=base_model, epochs=epochs)
    if training and report.examples < MIN_EXAMPLES:
        # Only a warning for `dataset check` (a LoRA trains on fewer), but OpenAI would take
        # the upload and then fail the job: refuse before anything is sent.
        raise FineTuneError(
            f"{path}: only {plural(report.examples, 'example')}, and OpenAI fine-tunes on at "
            f"least {MIN_EXAMPLES}: import more chats, or train with --provider local; "
            "nothing was uploaded"
        )
    return report


def _refuse_too_big(path: Path) -> None:
    # Before the check: counting the tokens of a file this size takes minutes, for nothing.
    size = path.stat().st_size
    if size > MAX_UPLOAD_BYTES:
        raise FineTuneError(
            f"{path}: {size / 2**20:,.0f} MB, and OpenAI takes files of up to "
            f"{MAX_UPLOAD_BYTES // 2**20} MB: train on fewer examples, or with --provider "
            "local; nothing was uploaded"
        )


def _cost_line(report: Any) -> str:
    cost = report.estimated_cost_usd
    if cost is None:
        price = "unknown (no price for this model)"
    elif cost < 0.01:
        price = "less than $0.01"  # "about $0.00" would read as free
    else:
        price = f"about ${cost:,.2f}"
    return (
        f"{plural(report.examples, 'example')}, {report.billed_tokens:,} billed tokens "
        f"({plural(report.epochs, 'epoch')} on {report.base_model}): estimated cost {price}"
    )


class _ProgressReader:
    """A file whose reads move a tqdm bar (the HTTP client streams it in chunks)."""

    def __init__(self, fh: Any, bar: tqdm) -> None:
        self._fh = fh
        self._bar = bar

    def read(self, size: int = -1) -> bytes:
        data = self._fh.read(size)
        self._bar.update(len(data))
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        # A retry rewinds the file: rewind the bar with it.
        pos = self._fh.seek(offset, whence)
        self._bar.n = pos
        self._bar.refresh()
        return pos

    def __getattr__(self, name: str) -> Any:
        return getattr(self._fh, name)


def _upload(client: openai.OpenAI, path: Path, echo: Echo) -> str:
    size = path.stat().st_size
    started = time.time()
    doing = f"uploading {path.name}"

    def send(once: openai.OpenAI) -> Any:
        # A bar per attempt: closed, it leaves the lines said between attempts whole.
        bar = tqdm(
            total=size,
            unit="B",
            unit_scale=True,
            desc=f"upload {path.name}",
            leave=False,
            disable=None,
        )
        with api_errors(client, doing), path.open("rb") as fh, bar:
            reader = _ProgressReader(fh, bar)
            uploaded = once.files.create(file=(path.name, reader), purpose="fine-tune")
        return _expect(client, uploaded, FileObject, doing, "id")

    def made_anyway() -> Any | None:
        return _stored_anyway(client, path.name, size, started, echo)

    try:
        uploaded = _made_once(client, send, made_anyway, echo)
    except NoAnswer:
        # Each look after a lost answer found nothing: OpenAI may still list the file later.
        echo(
            f"OpenAI answered too late, but may have kept {path.name}: if it shows up in the "
            "account's files, delete it there."
        )
        raise
    if uploaded.status == "error":
        # A job on it would only fail: say OpenAI's reason, and take the file off the account.
        _delete_uploads(client, {uploaded.id: path.name}, echo)
        reason = uploaded.status_details or "no reason given"
        raise FineTuneError(f"OpenAI could not process {path.name}: {reason}")
    echo(f"Uploaded {path.name} ({size:,} bytes) as {uploaded.id}")
    return uploaded.id


def _stored_anyway(
    client: openai.OpenAI, name: str, size: int, since: float, echo: Echo
) -> Any | None:
    """The file an upload whose answer was lost stored all the same, if the account lists one."""
    # Its name and size, uploaded since this upload began (by the server's clock, which may
    # be behind ours): the file this upload sent, whose id never came back. Used rather than
    # sent again, which would leave the first copy on the account with nothing reading it.
    try:
        with api_errors(client, "listing files"):
            page = client.files.list(purpose="fine-tune", order="desc", limit=100)
            found = [
                f
                for f in page.data
                if f.filename == name and f.bytes == size and f.created_at >= since - CLOCK_SLACK_S
            ]
    except FineTuneError:  # the account cannot be read: the upload is tried again
        return None
    if not found:
        return None
    newest, *others = found  # listed newest first
    echo(
        f"Note: OpenAI's answer was lost, but it kept {name} as {newest.id}: using it "
        "rather than uploading it again."
    )
    if others:
        # Not deleted: a file of the same name and size uploaded meanwhile may be another
        # `finetune start`'s, about to be trained on.
        ids = ", ".join(f.id for f in others)
        it, has, was = ("it", "has", "was") if len(others) == 1 else ("them", "have", "were")
        echo(
            f"Also {ids} on the account {has} its name and size and {was} uploaded just now: "
            f"unless another `finetune start` uploaded {it}, delete {it} {_where_files(client)}."
        )
    return newest


def _where_files(client: openai.OpenAI) -> str:
    """Where the user deletes a file of the account: OpenAI's page, or the server's API."""
    if server_of(client) == OPENAI_URL:
        return "at https://platform.openai.com/storage/files"
    return f"with DELETE {server_of(client)}/files/ID"


def _made_once(
    client: openai.OpenAI,
    send: Callable[[openai.OpenAI], Any],
    made_anyway: Callable[[], Any | None],
    echo: Echo,
) -> Any:
    """What `send` makes (an upload, a job), sent again only if a lost answer made nothing.

    The SDK's own retries would send it blind: each lost answer (a reset connection, a
    proxy's 502 after OpenAI acted) would leave one more file on the account, or start one
    more paid job, that nothing records. `send` gets a client without retries;
    `made_anyway` finds (and says) what a failed request made all the same, else None.
    """
    once = client.with_options(max_retries=0)
    for attempt in range(1, MAX_RETRIES + 2):
        try:
            return send(once)
        except TransientApiError as exc:
            failed = exc
        limited = isinstance(failed.__context__, openai.RateLimitError)
        if not limited:  # a 429 made nothing
            found = made_anyway()
            if found is not None:
                return found
        delay = _retry_after(failed, attempt)
        if attempt > MAX_RETRIES or delay is None:
            raise failed
        # A 429 is said as the SDK's own waits are (see _SaysItsWaits).
        echo(
            _waiting_line(server_of(client), 429, delay)
            if limited
            else f"Warning: {failed}; trying again in {delay:g} s"
        )
        _sleep(delay)
    raise AssertionError("unreachable")


def _delete_uploads(client: openai.OpenAI, uploaded: dict[str, str], echo: Echo) -> None:
    # No job was created, so nothing reads these files: leaving them would only clutter the
    # account's storage. Best-effort: the error that stopped the job is what matters.
    deleted, kept = [], []
    for file_id, name in uploaded.items():
        try:
            with api_errors(client, "deleting it"):
                client.files.delete(file_id)
            deleted.append(f"{file_id} ({name})")
        except FineTuneError as exc:
            kept.append(f"{file_id} ({name}) from the account ({exc})")
    if deleted:
        echo(f"No job was created: deleted the uploaded {', '.join(deleted)} from the account.")
    for line in kept:
        echo(f"Could not delete the uploaded {line}: delete it yourself.")


def _job_created_anyway(client: openai.OpenAI, training_file_id: str) -> Any | None:
    """The account's job training on `training_file_id`, made by a request whose answer was lost."""
    # The upload is this start's own: no other job reads it.
    try:
        recent, _ = list_remote(client)
    except FineTuneError:  # the account cannot be read either: say the files were kept
        return None
    return next((job for job in recent if job.training_file == training_file_id), None)


def _retry_after(exc: FineTuneError, attempt: int) -> float | None:
    """Seconds before sending the job request again: the server's Retry-After, or a backoff.

    None when the server asks for longer than MAX_RETRY_AFTER_S: the error says how long.
    """
    response = getattr(exc.__context__, "response", None)
    asked = retry_after_s(response.headers) if response is not None else None
    if asked is None:
        return 0.5 * 2 ** (attempt - 1)
    return asked if asked <= MAX_RETRY_AFTER_S else None


def _seconds_until(http_date: str) -> float:
    return email.utils.parsedate_to_datetime(http_date).timestamp() - time.time()


def _create_job(
    client: openai.OpenAI, training_file_id: str, job: dict[str, Any], echo: Echo
) -> Any:
    """Create the job once: a request whose answer was lost is sent again only if no job came of it."""
    doing = "creating the fine-tuning job"

    def send(once: openai.OpenAI) -> Any:
        with api_errors(client, doing):
            remote = once.fine_tuning.jobs.create(training_file=training_file_id, **job)
        return _expect(client, remote, FineTuningJob, doing, "id", "status")

    def made_anyway() -> Any | None:
        found = _job_created_anyway(client, training_file_id)
        if found is not None:
            echo(f"Note: OpenAI's answer was lost, but it created the job {found.id}.")
        return found

    return _made_once(client, send, made_anyway, echo)


def _kept_uploads(uploaded: dict[str, str]) -> str:
    files = ", ".join(f"{file_id} ({name})" for file_id, name in uploaded.items())
    return (
        f"Kept the uploaded {files} on the account: OpenAI may still create the job. If "
        "`phischer finetune list` shows no job reading it in a few minutes, delete it and "
        "start again."
    )


JOB_REQUEST = "the job request"  # what `start` sends after the uploads


@dataclass(frozen=True)
class _Created:
    """The job OpenAI made, the ids of the uploads it reads, and whether a Ctrl-C came first."""

    remote: Any
    training_file_id: str
    validation_file_id: str | None
    interrupted: bool = False


def _upload_and_create(
    client: openai.OpenAI, request: StartRequest, job: dict[str, Any], echo: Echo
) -> _Created:
    """Upload the files and create the job; after a failure or Ctrl-C, delete what none reads.

    A Ctrl-C while the job request was pending returns the job it made all the same, if any.
    """
    uploaded: dict[str, str] = {}  # file id: name, of every upload so far
    sending = ""  # what a Ctrl-C would cut short: a file's name, or JOB_REQUEST
    validation_file_id = None
    try:
        sending = request.train_path.name
        training_file_id = _upload(client, request.train_path, echo)
        uploaded[training_file_id] = sending
        if request.validation_path is not None:
            sending = request.validation_path.name
            validation_file_id = _upload(client, request.validation_path, echo)
            uploaded[validation_file_id] = sending
            job = {**job, "validation_file": validation_file_id}
        sending = JOB_REQUEST
        remote = _create_job(client, training_file_id, job, echo)
    except FineTuneError as exc:
        # Only a job request that got no answer may still create the job (reading these
        # files); an upload without one created nothing, and what it left is deleted like
        # after any other failure.
        if sending == JOB_REQUEST and isinstance(exc, NoAnswer):
            echo(_kept_uploads(uploaded))
        else:
            _delete_uploads(client, uploaded, echo)
        raise
    except KeyboardInterrupt:
        if sending == JOB_REQUEST:
            found = _job_after_interrupt(client, training_file_id)
            if found is not None:
                return _Created(found, training_file_id, validation_file_id, interrupted=True)
        raise _interrupted(client, uploaded, sending, echo) from None
    return _Created(remote, training_file_id, validation_file_id)


def _job_after_interrupt(client: openai.OpenAI, training_file_id: str) -> Any | None:
    """The job a job request cut short by Ctrl-C made all the same: one brief look, else None."""
    # OpenAI may have made it (the request went out): unrecorded, it would switch no persona.
    brief = client.with_options(timeout=LOOK_AFTER_STOP_S, max_retries=0)
    try:
        return _job_created_anyway(brief, training_file_id)
    except KeyboardInterrupt:  # pressed again: quit at once, as the Ctrl-C asked
        return None


def _interrupted(
    client: openai.OpenAI, uploaded: dict[str, str], sending: str, echo: Echo
) -> Interrupted:
    """What a Ctrl-C while `sending` left of the uploads (said), and the line to end on."""
    if sending == JOB_REQUEST:
        # Like a timed-out job request: OpenAI may create the job all the same, reading the
        # uploads, so they stay. Before it, no job can read them: they are deleted.
        echo(_kept_uploads(uploaded))
        return Interrupted(
            "Interrupted while OpenAI was creating the job, and no job reading the upload was "
            "found: if OpenAI makes it all the same, it is not recorded here and switches no "
            "persona (`phischer finetune list` shows it, `phischer finetune cancel JOB` stops it)."
        )
    _delete_uploads(client, uploaded, echo)
    # The upload cut short may have reached OpenAI whole (its answer was what was pending):
    # its id never came back, so it cannot be deleted from here.
    return Interrupted(
        f"Interrupted while uploading {sending}: no job was created; if {sending} shows up "
        "in the account's files all the same, delete it there."
    )


def start_openai(
    db: Database,
    settings: Settings,
    request: StartRequest,
    *,
    echo: Echo,
    today: dt.date | None = None,
) -> FineTuneJob:
    """Check, upload, create the job and record it; returns the stored row."""
    from phischer.base_models import DEFAULT_BASE_MODEL

    refuse_after_jobs_end(today)
    # A missing key is known before any file is read: a cost estimate and the deadline notice
    # printed only to end in this error would read as a job about to start.
    client = make_client(settings, f" (`{_check_command(request)}` estimates the cost without one)")
    base_model = request.base_model or DEFAULT_BASE_MODEL
    with db.read() as session:
        persona = personas.get_persona(session, request.persona)
        persona_id, persona_name = persona.id, persona.name
    suffix = sanitize_suffix(request.suffix or persona_name)
    report = _check(request.train_path, base_model, request.epochs, echo)
    if request.validation_path is not None:
        _check(request.validation_path, base_model, request.epochs, echo, training=False)
    echo(_cost_line(report))
    echo(deadline_notice(today))
    jobs.warn_unfinished(db, persona_id, persona_name, echo)

    hyper = {"n_epochs": request.epochs if request.epochs is not None else "auto"}
    job = {
        "model": base_model,
        "suffix": suffix,
        "method": {"type": "supervised", "supervised": {"hyperparameters": hyper}},
    }
    created = _upload_and_create(client, request, job, echo)
    remote = created.remote
    server = server_of(client)
    with db.write() as session:
        # A server restarted (or a second one once at this URL) can reuse an id: both rows
        # stay, and `status` follows the newer one, the job the server knows now.
        earlier = jobs.find_job(session, remote.id, server)
        if earlier is not None:
            echo(
                f"Note: {server} gave this job the id of an earlier one stored here "
                f"({earlier.status}, started {earlier.created_at:%Y-%m-%d %H:%M} UTC): "
                f"`finetune status {remote.id}` follows the new one; `finetune list` shows both."
            )
        row = jobs.record_job(
            session,
            job_id=remote.id,
            provider="openai",
            server=server,
            persona_id=persona_id,
            base_model=base_model,
            status=remote.status,
            training_file=str(request.train_path.resolve()),
            validation_file=(
                str(request.validation_path.resolve()) if request.validation_path else None
            ),
            training_file_id=created.training_file_id,
            validation_file_id=created.validation_file_id,
            suffix=suffix,
            hyperparameters=hyper,
        )
    if created.interrupted:
        raise Interrupted(
            f"Interrupted while OpenAI was creating the job: it did, as {remote.id}, recorded "
            f"here like any start. Follow it with: phischer finetune status {remote.id} --wait "
            f"(`phischer finetune cancel {remote.id}` stops it)."
        )
    return row


def _new_events(
    client: openai.OpenAI, job_id: str, shown: list[str]
) -> tuple[list[Any], bool, list[str]]:
    """The events not shown yet, oldest first; whether older new ones were cut; the ids of
    the newest EVENT_WINDOW events now (all shown once these are)."""
    # The API lists events newest first and pages backwards (`after` = older than). An
    # event may be listed late, below one already shown (an earlier created_at), and two of
    # one second may swap places: so every id down to the oldest of the newest ones shown
    # last time is compared with those, not only the last one shown.
    seen, oldest = set(shown), shown[-1] if shown else None
    fresh: list[Any] = []
    newest: list[str] = []
    for event in client.fine_tuning.jobs.list_events(job_id, limit=50):
        if len(newest) < EVENT_WINDOW:
            newest.append(event.id)
        if event.id == oldest:
            break
        if event.id in seen:
            continue
        if len(fresh) >= MAX_EVENTS:
            return fresh[::-1], True, newest
        fresh.append(event)
    return fresh[::-1], False, newest


def _stored_shown(row: FineTuneJob | None) -> list[str]:
    """The ids of the events a stored job's last check showed, newest first."""
    if row is None:
        return []
    try:
        shown = json.loads(row.shown_event_ids) if row.shown_event_ids else None
    except ValueError:
        shown = None
    if isinstance(shown, list) and all(isinstance(i, str) for i in shown):
        return shown
    # Stored before the ids were (revision 0009): only the last event shown is known.
    return [row.last_event_id] if row.last_event_id else []


def _no_events_here(exc: FineTuneError) -> bool:
    """Whether `exc` is a server saying it has no events endpoint (404, 405 or 501)."""
    answer = exc.__context__
    return isinstance(answer, openai.APIStatusError) and answer.status_code in NO_EVENTS_STATUSES


def _no_events_line(client: openai.OpenAI) -> str:
    return f"  ({server_of(client)} gives no events for its jobs: only the status is shown)"


@dataclass
class StatusResult:
    """One status check: the job as OpenAI sees it, the events new since last time."""

    job_id: str
    status: str
    events: list[Any]
    trained_tokens: int | None
    fine_tuned_model: str | None
    error: str | None
    estimated_finish: int | None = None  # Unix time, while OpenAI can tell
    older_events_cut: bool = False  # more new events than MAX_EVENTS: only the latest shown
    persona_switched: str | None = None
    persona_removed: bool = False  # it succeeded just now, and its persona is gone
    kept_newer: str | None = None  # it succeeded, but a newer job had switched the persona
    # The ids of the newest events, all shown by now: what the next check compares with.
    shown_event_ids: list[str] = field(default_factory=list)
    no_events: bool = False  # the server has no events endpoint: not asked again in a wait
    notes: list[str] = field(default_factory=list)  # said once, by the check that found them


def check_status(
    db: Database, client: openai.OpenAI, job_id: str, previous: StatusResult | None = None
) -> StatusResult:
    """Fetch the job and its new events, store them, and switch the persona on success.

    `previous` is this process's last check of the job (`status --wait`); without one, the
    events and status stored with the job say what was shown before.
    """
    server = server_of(client)
    with db.read() as session:
        row = jobs.find_job(session, job_id, server)
        shown = _stored_shown(row)
    if previous is not None:
        # A wait compares with what it showed itself: the stored ids (for the next `status`)
        # move on under a second `status --wait` of the job, whose events this one missed.
        shown = previous.shown_event_ids
    if row is not None and row.provider != "openai":
        raise FineTuneError(f"{job_id} is a {row.provider} job: it has no remote status")
    doing = f"checking {job_id}"
    with _started_elsewhere(db, client, job_id, row), api_errors(client, doing):
        remote = client.fine_tuning.jobs.retrieve(job_id)
    remote = _expect(client, remote, FineTuningJob, doing, "id", "status")
    events: list[Any] = []
    cut, no_events, notes = False, previous is not None and previous.no_events, []
    if previous is None and row is None:
        notes.append("  (not started from here: no persona will be switched)")
    if not no_events:
        try:
            with api_errors(client, doing):
                events, cut, shown = _new_events(client, job_id, shown)
        except FineTuneError as exc:
            if not _no_events_here(exc):
                raise
            no_events = True
            notes.append(_no_events_line(client))
    for event in events:
        _expect(client, event, FineTuningJobEvent, doing, "id")
    error = job_error(remote.error)
    result = StatusResult(
        job_id=job_id,
        status=remote.status,
        events=events,
        trained_tokens=remote.trained_tokens,
        fine_tuned_model=remote.fine_tuned_model,
        error=error,
        estimated_finish=getattr(remote, "estimated_finish", None),
        older_events_cut=cut,
        shown_event_ids=shown,
        no_events=no_events,
        notes=notes,
    )
    if row is None:
        return result
    update = jobs.JobUpdate(
        status=remote.status,
        fine_tuned_model=remote.fine_tuned_model,
        trained_tokens=remote.trained_tokens,
        error=error,
        last_event_id=shown[0] if shown else None,
        shown_event_ids=json.dumps(shown) if shown else None,
    )
    with db.write() as session:
        stored = jobs.get_job(session, job_id, server)
        was = previous if previous is not None else stored
        switched_before = was.status == "succeeded" and was.fine_tuned_model
        jobs.apply_update(session, stored, update)
        if remote.status == "succeeded" and not switched_before and stored.fine_tuned_model:
            # Switched once, by whichever check stored the success first; every wait that
            # saw the job train says so, as the run that made the switch does.
            _say_switch(result, session, stored)
    return result


def job_error(error: Any) -> str | None:
    """A job's `error` ({code, message, param}) as one line; None if it says nothing."""
    if isinstance(error, str):  # not OpenAI's object: a server behind OPENAI_BASE_URL's text
        return one_line(error) or None
    message, code, param = (getattr(error, f, None) for f in ("message", "code", "param"))
    if isinstance(message, str) and message.strip():
        # OpenAI's message may quote the file's lines, one per line: the `Error:` is one line.
        return one_line(message)
    if isinstance(code, str) and code.strip():
        # An empty message with a code (invalid_training_file…) still says what went wrong.
        about = f" ({one_line(param)})" if isinstance(param, str) and param.strip() else ""
        return f"OpenAI gave no message, only the code {one_line(code)}{about}"
    return None


@contextmanager
def _started_elsewhere(
    db: Database, client: openai.OpenAI, job_id: str, row: FineTuneJob | None
) -> Iterator[None]:
    """A 404 for a job: where it was started, if stored for another server, else that the
    account does not have it (OPENAI_BASE_URL changed since, or an id mistyped)."""
    try:
        yield
    except FineTuneError as exc:
        missing = exc.__context__
        # Only the API's own 404 (its JSON): a proxy's page is another server answering.
        if not (isinstance(missing, openai.NotFoundError) and isinstance(missing.body, dict)):
            raise
        server = server_of(client)
        if row is None:
            with db.read() as session:
                there = jobs.stored_elsewhere(session, job_id, server)
            if there is not None:
                raise FineTuneError(
                    f"{job_id} was started on {there}, not on {server} (where "
                    f"OPENAI_BASE_URL points now): to reach it, set OPENAI_BASE_URL={there} "
                    "and that account's OPENAI_API_KEY (in .env, or before the command)"
                ) from None
        account = "this OpenAI account" if server == OPENAI_URL else f"the account at {server}"
        said = f"(404: {_api_message(missing)})"
        if row is not None:  # started here, on this server: the key may be another account's
            raise FineTuneError(
                f"{job_id} was started here, but {account} does not have it {said}: is "
                "OPENAI_API_KEY another account's now? `phischer finetune list` shows the "
                "account's recent jobs"
            ) from None
        raise FineTuneError(
            f"{job_id} is not a fine-tuning job of {account} {said}: `phischer finetune "
            "list` shows the jobs started here and the account's recent ones"
        ) from None


def _say_switch(result: StatusResult, session: Any, job: FineTuneJob) -> None:
    persona = jobs.persona_of(session, job)
    newer = jobs.newer_success(session, job)
    if persona is None:
        result.persona_removed = True
    elif newer is not None:
        # The model lives at OPENAI_BASE_URL: a base URL or key variable kept from a newer
        # local job's switch is cleared.
        flags = f"--model {job.fine_tuned_model} --base-url '' --api-key-env ''"
        result.kept_newer = jobs.kept_newer(persona.name, newer, job.job_id, flags)
    elif persona.model == job.fine_tuned_model:  # not when edited by hand since: that stands
        result.persona_switched = persona.name


def describe_event(event: Any) -> str:
    """One event as a log line: time, level (if not info) and message."""
    # A server's event may lack a field or have one of another type: shown as it can be.
    at = _utc(event.created_at)
    when = f"{at:%Y-%m-%d %H:%M:%S}" if at is not None else "????-??-?? ??:??:??"
    level = event.level if isinstance(event.level, str) and event.level != "info" else ""
    # One log line per event, whatever lines its message has; a null one is no "None".
    message = one_line(event.message, limit=2000) if isinstance(event.message, str) else ""
    return f"  {when} {level.upper() + ' ' if level else ''}{message}".rstrip()


def _utc(timestamp: Any) -> dt.datetime | None:
    """A Unix time in seconds as a UTC datetime; None for what is none (ms, a string, null)."""
    if isinstance(timestamp, bool):
        return None
    try:
        return dt.datetime.fromtimestamp(timestamp, dt.UTC)
    except (TypeError, ValueError, OverflowError, OSError):
        return None


def describe_status(result: StatusResult) -> list[str]:
    """The lines `finetune status` prints for one check."""
    lines = []
    if result.older_events_cut:
        lines.append(
            f"  (older events not shown, the latest {MAX_EVENTS} follow: --plot reads all)"
        )
    lines += [describe_event(e) for e in result.events]
    head = f"{result.job_id}: {result.status}"
    if result.trained_tokens:
        head += f", {result.trained_tokens:,} trained tokens"
    if result.fine_tuned_model:
        head += f", model {result.fine_tuned_model}"
    finish = _utc(result.estimated_finish) if result.estimated_finish else None
    if finish is not None and result.status not in FINAL_STATES:
        head += f", estimated to finish {finish:%Y-%m-%d %H:%M} UTC"
    lines.append(head)
    if result.status == "succeeded" and not result.fine_tuned_model:
        lines.append(
            f"  OpenAI named no fine-tuned model yet: nothing switched; `phischer finetune "
            f"status {result.job_id}` switches the persona once it does"
        )
    if result.status == PAUSED:
        lines.append(
            f"  It trains again once resumed on OpenAI (its fine-tuning dashboard, or the API's "
            f"resume); then follow it with: phischer finetune status {result.job_id} --wait"
        )
    lines += result.notes
    if result.persona_switched:
        lines.append(
            f"Persona {result.persona_switched} now answers with {result.fine_tuned_model}."
        )
    if result.kept_newer:
        lines.append(result.kept_newer)
    if result.persona_removed:
        model = result.fine_tuned_model
        lines.append(
            jobs.removed_while_trained(
                "Its persona", result.job_id, f"{model} is not served", f"--model {model}"
            )
        )
    return lines


def _progress(bar: tqdm | None, events: list[Any]) -> tqdm | None:
    # Metrics events carry {"step", "total_steps", "train_loss"}: enough for a real bar.
    for event in events:
        data = event.data if isinstance(event.data, dict) else {}
        step, total = _number(data.get("step")), _number(data.get("total_steps"))
        if step is None or total is None or not 0 <= step <= total < 1e9:
            continue  # not a step of a bar (or a server's odd numbers: no bar is better)
        bar = step_bar(bar, int(step), int(total), _number(data.get("train_loss")))
    return bar


def wait_for(
    db: Database,
    client: openai.OpenAI,
    job_id: str,
    *,
    echo: Echo,
    sleep: Callable[[float], None] | None = None,
) -> StatusResult:
    """Poll with backoff until the job succeeds, fails, is cancelled or paused, printing as it goes.

    A status it does not know (one OpenAI adds later) is polled on like `running`. A check
    that fails for a reason that may pass (network, 429, 5xx) is said and retried on the same
    backoff; MAX_POLL_FAILURES in a row end the wait with the last error.
    """
    sleep = sleep or _sleep
    interval = POLL_FIRST_S
    bar = None
    result: StatusResult | None = None  # this wait's last check: what it has shown
    failures = 0
    try:
        while True:
            # tqdm.write keeps the bar below the log instead of tearing it.
            write = tqdm.write if bar is not None else echo
            try:
                result = check_status(db, client, job_id, result)
            except TransientApiError as exc:
                failures += 1
                if failures >= MAX_POLL_FAILURES:
                    raise TransientApiError(_gave_up(exc, job_id, failures)) from None
                # A Retry-After longer than the SDK waits is waited out: checking sooner only
                # meets the same answer, and ten of them would end a wait it said how to ride out.
                pause = max(interval, _asked_wait(exc) or 0.0)
                when = f"{interval:g} s" if pause == interval else _duration(pause)
                write(f"Warning: {exc}; checking again in {when}")
            else:
                failures = 0
                bar = _progress(bar, result.events)
                for line in describe_status(result):
                    (tqdm.write if bar is not None else echo)(line)
                if result.status in FINAL_STATES or result.status == PAUSED:
                    return result
                pause = interval
            sleep(pause)
            interval = min(POLL_MAX_S, interval * POLL_FACTOR)
    finally:
        if bar is not None:
            bar.close()


def _asked_wait(exc: FineTuneError) -> float | None:
    """The Retry-After of the answer behind `exc` (a 429, a 503), at most MAX_POLL_WAIT_S."""
    response = getattr(exc.__context__, "response", None)
    asked = retry_after_s(response.headers) if response is not None else None
    return min(asked, MAX_POLL_WAIT_S) if asked is not None else None


def _gave_up(exc: FineTuneError, job_id: str, failures: int) -> str:
    return (
        f"{exc} ({failures} checks in a row failed: stopped waiting; {job_id} goes on at "
        f"OpenAI, wait again with: phischer finetune status {job_id} --wait)"
    )


def all_events(client: openai.OpenAI, job_id: str) -> list[Any]:
    """Every event of a job, oldest first (pages through the whole list)."""
    events = []
    bar = tqdm(desc="reading events", unit="event", leave=False, disable=None)
    doing = f"reading the events of {job_id}"
    with api_errors(client, doing), bar:
        # Newest first, paged backwards by the SDK's auto-pagination (see _new_events).
        for event in client.fine_tuning.jobs.list_events(job_id, limit=50):
            events.append(_expect(client, event, FineTuningJobEvent, doing, "id"))
            bar.update()
    events.reverse()
    return events


def _number(value: Any) -> float | None:
    # A number a server sent as a string, a bool or null is no number to draw.
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def loss_series(events: list[Any]) -> LossSeries:
    """Training and validation loss per step from a job's `metrics` events.

    OpenAI's metrics events carry `data` = {"step", "train_loss", "total_steps",
    "train_mean_token_accuracy"} and, on the steps where it validates, "valid_loss" too.
    A step reported twice keeps its last value.
    """
    by_step: dict[int, tuple[float | None, float | None]] = {}
    for event in events:
        data = event.data if isinstance(event.data, dict) else None
        step = _number(data.get("step")) if data else None
        if getattr(event, "type", None) != "metrics" or step is None or not 0 <= step < 1e9:
            continue
        by_step[int(step)] = (_number(data.get("train_loss")), _number(data.get("valid_loss")))
    steps = sorted(by_step)
    valid = [by_step[s][1] for s in steps]
    return LossSeries(
        steps=steps,
        train_loss=[by_step[s][0] for s in steps],
        valid_loss=valid if any(v is not None for v in valid) else None,
    )


def plot_loss(client: openai.OpenAI, job_id: str, path: Path, title: str) -> str:
    """Write the job's loss curve from all its metrics events; returns the line to print."""
    series = loss_series(all_events(client, job_id))
    if not any(v is not None for v in series.train_loss + (series.valid_loss or [])):
        return f"No loss curve: {job_id} has no metrics events yet (nothing written to {path})."
    plots.loss_curve(series.steps, series.train_loss, series.valid_loss, path, title)
    return f"Loss curve: {path}"


def cancel(db: Database, settings: Settings, job_id: str) -> list[str]:
    """Ask OpenAI to cancel a job and store the new status; returns the lines to print.

    A job that had already ended is checked instead: its real final state is stored (and a
    success switches the persona, as `status` would) and said, with nothing to cancel.
    """
    with db.read() as session:
        row = jobs.find_job_here(session, job_id)
    # Before the API key is needed: a local job is not OpenAI's to cancel, key or no key.
    if row is not None and row.provider != "openai":
        if row.status in FINAL_STATES:  # not running anywhere: no Ctrl-C to press
            raise FineTuneError(f"{job_id} is a {row.provider} job that already {row.status}")
        raise FineTuneError(f"{job_id} is a {row.provider} job: stop it with Ctrl-C where it runs")
    client = make_client(settings)
    doing = f"cancelling {job_id}"
    try:
        with _started_elsewhere(db, client, job_id, row), api_errors(client, doing):
            remote = client.fine_tuning.jobs.cancel(job_id)
    except FineTuneError as exc:
        # OpenAI's 400 for a job that has ended ("already completed"): the stored status
        # may still say running, and would go on saying so.
        if not isinstance(exc.__context__, openai.BadRequestError):
            raise
        return _ended_before_cancel(db, client, job_id, exc)
    remote = _expect(client, remote, FineTuningJob, doing, "status")
    with db.write() as session:
        stored = jobs.find_job(session, job_id, server_of(client))
        if stored is not None:
            jobs.apply_update(session, stored, jobs.JobUpdate(remote.status))
    return [f"{job_id}: {remote.status}"]


def _ended_before_cancel(
    db: Database, client: openai.OpenAI, job_id: str, refused: FineTuneError
) -> list[str]:
    """The lines for a job whose cancel was refused because it had ended; else `refused`."""
    try:
        with api_errors(client, f"checking {job_id}"):
            ended = client.fine_tuning.jobs.retrieve(job_id).status in FINAL_STATES
        # Refused for another reason (OpenAI's words say which): nothing to store or show.
        result = check_status(db, client, job_id) if ended else None
    except FineTuneError:
        result = None  # the job cannot be read either: the cancel's answer stands
    if result is None or result.status not in FINAL_STATES:
        raise refused
    said = f"{job_id} already {result.status}"
    if result.status == "failed" and result.error:
        said += f" ({result.error})"
    return [*describe_status(result), f"{said}; nothing to cancel"]


def list_remote(client: openai.OpenAI, limit: int = 20) -> tuple[list[Any], bool]:
    """The `limit` most recent jobs on the account (newest first), and whether it has more."""
    doing = "listing fine-tuning jobs"
    with api_errors(client, doing):
        page = client.fine_tuning.jobs.list(limit=limit)
        found, more = list(page.data), bool(page.has_more)
    return [_expect(client, j, FineTuningJob, doing, "id", "status") for j in found], more


def hyperparameters_text(row: FineTuneJob) -> str:
    """The stored hyperparameters as `k=v` pairs."""
    if not row.hyperparameters:
        return ""
    return " ".join(f"{k}={v}" for k, v in json.loads(row.hyperparameters).items())
