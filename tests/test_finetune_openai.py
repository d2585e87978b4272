"""`phischer finetune` against a loopback fake of OpenAI's files and fine-tuning API."""

from __future__ import annotations

import datetime as dt
import email.utils
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import openai
import pytest
import sqlalchemy as sa
from click.testing import Result
from openai.types.fine_tuning import FineTuningJobEvent

from phischer import plots
from phischer.db import Database
from phischer.finetune import common
from phischer.finetune import openai as ft
from phischer.finetune.local_jobs import training_lock
from phischer.models import FineTuneJob, Persona
from phischer.personas import PersonaSpec, add_persona
from phischer.printing import display_width
from tests.conftest import jobs_in, persona_row, record_local_job, run
from tests.fake_openai import VALID_KEY, FakeOpenAI, Step, greet_model, metrics_event
from tests.plot_helpers import assert_png

FT_MODEL = "ft:gpt-4.1-mini-2025-04-14:org-fake:ada-lovelace:AbC123"


def example(user: str, assistant: str) -> dict[str, Any]:
    """One chat fine-tuning example."""
    return {
        "messages": [
            {"role": "system", "content": "You are Ada Lovelace."},
            {"role": "user", "content": user},
            {"role": "assistant", "content": assistant},
        ]
    }


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    """Write rows (dicts or raw strings) one per line."""
    lines = [r if isinstance(r, str) else json.dumps(r, ensure_ascii=False) for r in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def fake_ft(fake_openai: FakeOpenAI, monkeypatch: pytest.MonkeyPatch) -> FakeOpenAI:
    """The fake as an OpenAI account behind OPENAI_BASE_URL (only VALID_KEY works); date pinned."""
    fake_openai.valid_key = VALID_KEY
    fake_openai.responder = greet_model
    monkeypatch.setenv("OPENAI_BASE_URL", fake_openai.base_url)
    monkeypatch.setattr(common, "_today", lambda: dt.date(2026, 11, 22))
    return fake_openai


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Intervals `status --wait` asked to sleep (it does not actually sleep)."""
    recorded: list[float] = []
    monkeypatch.setattr(ft, "_sleep", recorded.append)
    return recorded


@pytest.fixture
def ada(database: Database, tmp_path: Path) -> Path:
    """A retrieval persona 'Ada Lovelace' (#ada) and its dataset."""
    data = write_jsonl(tmp_path / "ada.jsonl", [example("hi", "Hello, dear.")])
    with database.write() as session:
        add_persona(session, PersonaSpec(name="Ada Lovelace", keyword="ada", dataset=str(data)))
    return data


@pytest.fixture
def train(tmp_path: Path) -> Path:
    """A valid training file of 12 examples (OpenAI wants at least 10)."""
    return write_jsonl(
        tmp_path / "train.jsonl",
        [example(f"question {i}", f"Answer number {i}, dear.") for i in range(12)],
    )


@pytest.fixture
def validation(tmp_path: Path) -> Path:
    """A valid validation file."""
    return write_jsonl(
        tmp_path / "val.jsonl", [example(f"other {i}", f"Reply {i}.") for i in range(3)]
    )


def error_lines(result: Result) -> list[str]:
    """The `Error: …` lines of a run."""
    return [line for line in result.output.splitlines() if line.startswith("Error:")]


def stored_job(database: Database) -> dict[str, Any]:
    """Every column of the one stored job."""
    (job,) = jobs_in(database)
    return {c.name: getattr(job, c.name) for c in FineTuneJob.__table__.c}


def start(train: Path, *options: str, persona: str = "ada") -> Result:
    """Run `finetune start TRAIN --persona PERSONA OPTIONS…`."""
    return run("finetune", "start", str(train), "--persona", persona, *options)


def refused_before_upload(
    fake: FakeOpenAI, database: Database, train: Path, *options: str, persona: str = "ada"
) -> Result:
    """`start` refused: nothing sent to OpenAI, no job stored."""
    result = start(train, *options, persona=persona)
    assert result.exit_code == 1
    assert fake.requests == [] and jobs_in(database) == []
    return result


def start_job(train: Path, *extra: str) -> str:
    """Run `finetune start` and return the job id it printed."""
    result = start(train, *extra)
    assert result.exit_code == 0, result.output
    line = next(x for x in result.output.splitlines() if x.startswith("Started fine-tuning job"))
    return line.split()[3]


# -- start ---------------------------------------------------------------------------------


def test_start_uploads_files_and_creates_supervised_job(
    fake_ft: FakeOpenAI, ada: Path, train: Path, validation: Path, database: Database
) -> None:
    result = start(train, "--validation", str(validation), "--epochs", "4", persona="Ada Lovelace")
    assert result.exit_code == 0, result.output

    uploads = fake_ft.calls("POST", "/v1/files")
    assert len(uploads) == 2
    stored = list(fake_ft.files.values())
    assert [f["filename"] for f in stored] == ["train.jsonl", "val.jsonl"]
    assert [f["purpose"] for f in stored] == ["fine-tune", "fine-tune"]
    assert stored[0]["content"] == train.read_bytes()
    assert stored[1]["content"] == validation.read_bytes()
    train_id, val_id = list(fake_ft.files)

    (create,) = fake_ft.calls("POST", "/v1/fine_tuning/jobs")
    assert create.json() == {
        "model": "gpt-4.1-mini-2025-04-14",
        "training_file": train_id,
        "validation_file": val_id,
        "suffix": "ada-lovelace",
        "method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 4}}},
    }
    (job_id,) = fake_ft.jobs
    assert f"Started fine-tuning job {job_id} (validating_files)." in result.output
    assert f"phischer finetune status {job_id} --wait" in result.output
    # 12 examples x 4 epochs, priced from the `dataset check` table.
    assert (
        "12 examples" in result.output and "(4 epochs on gpt-4.1-mini-2025-04-14)" in result.output
    )
    # 12 x ~30 tokens x 4 epochs at $5 per 1M tokens: not "about $0.00".
    assert "estimated cost less than $0.01" in result.output
    assert (
        "OpenAI stops accepting new fine-tuning jobs on 2027-01-06 and retires fine-tuned "
        "gpt-4o/gpt-4.1 models on 2027-01-14"
    ) in result.output
    assert "--provider local" in result.output

    (row,) = jobs_in(database)
    assert row.job_id == job_id and row.provider == "openai"
    assert row.persona_id == persona_row(database).id
    assert row.base_model == "gpt-4.1-mini-2025-04-14"
    assert row.status == "validating_files"
    assert (row.training_file_id, row.validation_file_id) == (train_id, val_id)
    assert row.training_file == str(train.resolve())
    assert row.suffix == "ada-lovelace"
    assert json.loads(row.hyperparameters) == {"n_epochs": 4}


def test_start_defaults_epochs_to_auto_and_takes_base_model_and_suffix(
    fake_ft: FakeOpenAI, ada: Path, train: Path
) -> None:
    start_job(train, "--base-model", "gpt-4o-mini-2024-07-18", "--suffix", "Zoë: v2!")
    (create,) = fake_ft.calls("POST", "/v1/fine_tuning/jobs")
    body = create.json()
    assert body["model"] == "gpt-4o-mini-2024-07-18"
    assert body["suffix"] == "zoe-v2"
    assert body["method"]["supervised"]["hyperparameters"] == {"n_epochs": "auto"}
    assert "validation_file" not in body


def test_format_errors_refuse_before_anything_is_sent(
    fake_ft: FakeOpenAI, ada: Path, tmp_path: Path, database: Database
) -> None:
    rows = [example(f"q{i}", f"a{i}") for i in range(11)]
    rows.insert(3, "{not json")
    rows.insert(6, {"messages": [{"role": "user", "content": "no answer"}]})
    bad = write_jsonl(tmp_path / "bad.jsonl", rows)
    result = refused_before_upload(fake_ft, database, bad)
    assert error_lines(result) == [
        f"Error: {bad}: 2 format errors (first on line 4): fix them before fine-tuning; "
        "nothing was uploaded"
    ]
    assert "line 4" in result.output  # the check report names the lines


def test_an_empty_file_is_refused_without_a_line_number(
    fake_ft: FakeOpenAI, ada: Path, tmp_path: Path, database: Database
) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert error_lines(refused_before_upload(fake_ft, database, empty)) == [
        f"Error: {empty}: 1 format error (no examples in the file [no_examples]): fix them "
        "before fine-tuning; nothing was uploaded"
    ]


def test_cost_line_wording(fake_ft: FakeOpenAI, ada: Path, train: Path) -> None:
    for options, line in [
        (
            ["--epochs", "1"],
            "12 examples, 384 billed tokens (1 epoch on gpt-4.1-mini-2025-04-14): "
            "estimated cost less than $0.01",
        ),
        (
            ["--epochs", "2", "--base-model", "gpt-4.1-2025-04-14"],
            "12 examples, 768 billed tokens (2 epochs on gpt-4.1-2025-04-14): "
            "estimated cost about $0.02",
        ),
    ]:
        result = start(train, *options)
        assert result.exit_code == 0, result.output
        assert result.output.splitlines()[0] == line


def test_the_check_before_upload_shows_progress_on_big_files(
    fake_ft: FakeOpenAI,
    ada: Path,
    train: Path,
    validation: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from phischer import dataset_check

    asked: list[tuple[Path, bool]] = []
    real = dataset_check.check_file

    def spy(path: Path, *args: Any, progress: bool = False, **kwargs: Any) -> Any:
        asked.append((path, progress))
        return real(path, *args, progress=progress, **kwargs)

    monkeypatch.setattr(dataset_check, "check_file", spy)
    start_job(train, "--validation", str(validation))
    # check_file draws its bar only for big files, and only on a terminal (disable=None).
    assert asked == [(train, True), (validation, True)]


def test_fewer_examples_than_openai_takes_refuse_before_upload(
    fake_ft: FakeOpenAI, ada: Path, tmp_path: Path, database: Database
) -> None:
    few = write_jsonl(tmp_path / "few.jsonl", [example(f"q{i}", f"a{i}") for i in range(9)])
    assert error_lines(refused_before_upload(fake_ft, database, few)) == [
        f"Error: {few}: only 9 examples, and OpenAI fine-tunes on at least 10: import more "
        "chats, or train with --provider local; nothing was uploaded"
    ]


def test_a_small_validation_file_is_fine(
    fake_ft: FakeOpenAI, ada: Path, train: Path, tmp_path: Path
) -> None:
    val = write_jsonl(tmp_path / "val.jsonl", [example("q", "a")])
    result = start(train, "--validation", str(val))
    assert result.exit_code == 0, result.output
    (create,) = fake_ft.calls("POST", "/v1/fine_tuning/jobs")
    assert create.json()["validation_file"]


def test_bad_validation_file_also_refuses(
    fake_ft: FakeOpenAI, ada: Path, train: Path, tmp_path: Path, database: Database
) -> None:
    bad = write_jsonl(tmp_path / "val.jsonl", ["[]"])
    refused_before_upload(fake_ft, database, train, "--validation", str(bad))


@pytest.mark.parametrize("which", ["training", "validation"])
def test_a_file_over_openais_upload_limit_refuses_before_reading_it(
    fake_ft: FakeOpenAI, ada: Path, train: Path, tmp_path: Path, database: Database, which: str
) -> None:
    big = tmp_path / "big.jsonl"
    with big.open("wb") as fh:  # sparse: 513 MB on paper, nothing on disk
        fh.truncate(513 * 2**20)
    files = (big,) if which == "training" else (train, "--validation", str(big))
    result = refused_before_upload(fake_ft, database, *files)
    # One line, and no format errors: the file is refused by its size before any is counted.
    assert result.output.splitlines() == [
        f"Error: {big}: 513 MB, and OpenAI takes files of up to 512 MB: train on fewer "
        "examples, or with --provider local; nothing was uploaded"
    ]


def test_missing_api_key_is_one_line(
    fake_ft: FakeOpenAI,
    ada: Path,
    train: Path,
    database: Database,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY")
    result = refused_before_upload(fake_ft, database, train, "--epochs", "2")
    # Nothing before it: no cost estimate or deadline notice for a job that cannot start.
    assert result.output == (
        "Error: No OPENAI_API_KEY: set it in .env "
        f"(`phischer dataset check {train} --epochs 2` estimates the cost without one)\n"
    )


def test_unknown_persona_is_refused_before_upload(
    fake_ft: FakeOpenAI, ada: Path, train: Path, database: Database
) -> None:
    result = refused_before_upload(fake_ft, database, train, persona="nobody")
    assert error_lines(result) == ["Error: no persona 'nobody' (known: Ada Lovelace)"]


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (
            401,
            "OpenAI rejected the API key while uploading train.jsonl (401: bad key): "
            "check OPENAI_API_KEY in .env",
        ),
        (400, "OpenAI answered 400 while uploading train.jsonl: bad key"),
    ],
)
def test_upload_errors_leave_no_job(
    fake_ft: FakeOpenAI, ada: Path, train: Path, database: Database, status: int, expected: str
) -> None:
    fake_ft.fail("POST", "/v1/files", status, "bad key")
    result = start(train)
    assert result.exit_code == 1
    assert error_lines(result) == [f"Error: {expected}"]
    assert "Traceback" not in result.output
    assert fake_ft.calls("POST", "/v1/fine_tuning") == []
    assert jobs_in(database) == []


def test_job_creation_error_is_one_line_and_records_nothing(
    fake_ft: FakeOpenAI, ada: Path, train: Path, database: Database
) -> None:
    fake_ft.fail(
        "POST",
        "/v1/fine_tuning/jobs",
        400,
        "Model gpt-3 is not available for fine-tuning or does not exist.",
    )
    result = start(train, "--base-model", "gpt-3")
    assert result.exit_code == 1
    assert error_lines(result) == [
        "Error: OpenAI answered 400 while creating the fine-tuning job: Model gpt-3 is not "
        "available for fine-tuning or does not exist."
    ]
    assert fake_ft.jobs == {} and jobs_in(database) == []
    # The upload happened; with no job to read it, it is deleted again (and said so).
    (upload,) = fake_ft.calls("POST", "/v1/files")
    (delete,) = fake_ft.calls("DELETE", "/v1/files/")
    assert delete.path == "/v1/files/file-0001" and fake_ft.files == {}
    assert result.output.splitlines()[-2:] == [
        "No job was created: deleted the uploaded file-0001 (train.jsonl) from the account.",
        "Error: OpenAI answered 400 while creating the fine-tuning job: Model gpt-3 is not "
        "available for fine-tuning or does not exist.",
    ]


@pytest.mark.parametrize(("status", "times"), [(503, 3), (429, 3)])
def test_every_upload_is_deleted_when_the_job_is_refused(
    fake_ft: FakeOpenAI,
    ada: Path,
    train: Path,
    validation: Path,
    database: Database,
    status: int,
    times: int,
) -> None:
    fake_ft.fail("POST", "/v1/fine_tuning/jobs", status, "try later", times=times)
    result = start(train, "--validation", str(validation))
    assert result.exit_code == 1
    assert [c.path for c in fake_ft.calls("DELETE")] == [
        "/v1/files/file-0001",
        "/v1/files/file-0002",
    ]
    assert fake_ft.files == {} and jobs_in(database) == []
    assert (
        "No job was created: deleted the uploaded file-0001 (train.jsonl), file-0002 (val.jsonl) "
        "from the account."
    ) in result.output.splitlines()


def test_a_failed_validation_upload_deletes_the_training_upload(
    fake_ft: FakeOpenAI,
    ada: Path,
    train: Path,
    validation: Path,
    database: Database,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = ft._upload

    def upload(client: openai.OpenAI, path: Path, echo: Any) -> str:
        if path == validation:
            raise common.FineTuneError(f"OpenAI answered 413 while uploading {path.name}: big")
        return real(client, path, echo)

    monkeypatch.setattr(ft, "_upload", upload)
    result = start(train, "--validation", str(validation))
    assert result.exit_code == 1
    assert result.output.splitlines()[-2:] == [
        "No job was created: deleted the uploaded file-0001 (train.jsonl) from the account.",
        "Error: OpenAI answered 413 while uploading val.jsonl: big",
    ]
    assert fake_ft.files == {} and fake_ft.calls("POST", "/v1/fine_tuning") == []


@pytest.fixture
def quick_timeout(monkeypatch: pytest.MonkeyPatch) -> float:
    """Requests time out after 0.3 s, with no retry; the seconds a stalled answer takes."""
    monkeypatch.setattr(ft, "TIMEOUT_S", 0.3)
    monkeypatch.setattr(ft, "MAX_RETRIES", 0)
    return 1.5


def test_a_timed_out_validation_upload_deletes_the_training_upload(
    fake_ft: FakeOpenAI,
    ada: Path,
    train: Path,
    validation: Path,
    database: Database,
    quick_timeout: float,
) -> None:
    # No job can read the training file then: it was left on the account without a word.
    fake_ft.stall("POST", "/v1/files", quick_timeout, body=b'filename="val.jsonl"')
    fake_ft.drop("GET", "/v1/files")  # nor can the account show whether val.jsonl was kept
    result = start(train, "--validation", str(validation))
    assert result.exit_code == 1
    assert "No job was created: deleted the uploaded file-0001 (train.jsonl) from the account." in (
        result.output.splitlines()
    )
    assert "file-0001" not in fake_ft.files
    assert fake_ft.calls("POST", "/v1/fine_tuning") == [] and jobs_in(database) == []


def test_a_timed_out_upload_openai_kept_is_used_not_sent_again(
    fake_ft: FakeOpenAI,
    ada: Path,
    train: Path,
    database: Database,
    quick_timeout: float,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Stored, answered too late: its id never came back. Sent again, it left a second copy
    # on the account. An older upload of the same file and one of another file are not it.
    fake_ft.files["file-0000"] = {
        "filename": "train.jsonl", "purpose": "fine-tune", "content": train.read_bytes(),
        "created_at": int(time.time()) - 3600,
    }  # fmt: skip
    fake_ft.files["file-9999"] = {**fake_ft.files["file-0000"], "created_at": int(time.time())}
    fake_ft.files["file-9999"]["filename"] = "other.jsonl"
    monkeypatch.setattr(ft, "MAX_RETRIES", 1)
    fake_ft.stall("POST", "/v1/files", quick_timeout)
    result = start(train)
    assert result.exit_code == 0, result.output
    assert (
        "Note: OpenAI's answer was lost, but it kept train.jsonl as file-0001: using it rather "
        "than uploading it again."
    ) in result.output.splitlines()
    assert len(fake_ft.calls("POST", "/v1/files")) == 1 and fake_ft.calls("DELETE") == []
    assert sorted(fake_ft.files) == ["file-0000", "file-0001", "file-9999"]
    assert stored_job(database)["training_file_id"] == "file-0001"


def test_an_upload_whose_answer_was_lost_leaves_no_second_copy(
    fake_ft: FakeOpenAI, ada: Path, train: Path, database: Database
) -> None:
    # The SDK's own retry uploaded it again after the connection closed unanswered: the
    # first copy stayed on the account, named nowhere.
    fake_ft.reset("POST", "/v1/files")
    result = start(train)
    assert result.exit_code == 0, result.output
    assert "Uploaded train.jsonl (2,092 bytes) as file-0001" in result.output.splitlines()
    assert list(fake_ft.files) == ["file-0001"]
    assert fake_ft.calls("POST", "/v1/fine_tuning/jobs")[0].json()["training_file"] == "file-0001"


def test_an_upload_found_beside_another_copy_names_the_other(
    fake_ft: FakeOpenAI, ada: Path, train: Path, database: Database
) -> None:
    # A copy uploaded just before may be another `finetune start`'s: named, not deleted.
    fake_ft.files["file-0000"] = {
        "filename": "train.jsonl", "purpose": "fine-tune", "content": train.read_bytes(),
        "created_at": int(time.time()),
    }  # fmt: skip
    fake_ft.reset("POST", "/v1/files")
    result = start(train)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[lines.index("Uploaded train.jsonl (2,092 bytes) as file-0001") - 1] == (
        "Also file-0000 on the account has its name and size and was uploaded just now: unless "
        f"another `finetune start` uploaded it, delete it with DELETE {fake_ft.base_url}/files/ID."
    )
    assert sorted(fake_ft.files) == ["file-0000", "file-0001"] and fake_ft.calls("DELETE") == []


def test_a_timed_out_upload_openai_kept_nothing_of_says_where_to_look(
    fake_ft: FakeOpenAI, ada: Path, train: Path, database: Database, quick_timeout: float
) -> None:
    fake_ft.drop("GET", "/v1/files")  # the account's files cannot be listed either
    fake_ft.stall("POST", "/v1/files", quick_timeout)
    result = start(train)
    assert result.exit_code == 1
    assert result.output.splitlines()[-2] == (
        "OpenAI answered too late, but may have kept train.jsonl: if it shows up in the "
        "account's files, delete it there."
    )


def test_a_job_created_by_a_timed_out_request_is_recorded(
    fake_ft: FakeOpenAI,
    ada: Path,
    train: Path,
    database: Database,
    quick_timeout: float,
    sleeps: list[float],
) -> None:
    fake_ft.default_script = list(SUCCESS_SCRIPT)
    fake_ft.stall("POST", "/v1/fine_tuning/jobs", quick_timeout)  # created, answered late
    result = start(train)
    assert result.exit_code == 0, result.output
    (job_id,) = fake_ft.jobs
    assert f"Note: OpenAI's answer was lost, but it created the job {job_id}." in result.output
    assert f"Started fine-tuning job {job_id} (validating_files)." in result.output
    assert list(fake_ft.files) == ["file-0001"] and fake_ft.calls("DELETE") == []
    assert stored_job(database)["training_file_id"] == "file-0001"
    # Recorded like any job: its success switches the persona.
    assert run("finetune", "status", job_id, "--wait").exit_code == 0
    assert persona_row(database).model == FT_MODEL


def test_a_timed_out_job_request_without_a_job_keeps_the_upload_and_says_so(
    fake_ft: FakeOpenAI, ada: Path, train: Path, database: Database, quick_timeout: float
) -> None:
    fake_ft.fail("POST", "/v1/fine_tuning/jobs", 503, "overloaded")
    fake_ft.stall("POST", "/v1/fine_tuning/jobs", quick_timeout)
    result = start(train)
    assert result.exit_code == 1
    assert result.output.splitlines()[-2:] == [
        "Kept the uploaded file-0001 (train.jsonl) on the account: OpenAI may still create the "
        "job. If `phischer finetune list` shows no job reading it in a few minutes, delete it "
        "and start again.",
        f"Error: cannot reach {fake_ft.base_url}/ while creating the fine-tuning job (Request "
        "timed out.): check your network or OPENAI_BASE_URL",
    ]
    assert list(fake_ft.files) == ["file-0001"] and jobs_in(database) == []


# `phischer finetune start` in a process of its own, on the date the fake_ft fixture pins.
START_PINNED = (
    "import datetime as dt, sys; from phischer.finetune import common; "
    "common._today = lambda: dt.date(2026, 11, 22); from phischer.cli import main; "
    "sys.argv[0] = 'phischer'; main()"
)


def ctrl_c_start(
    fake: FakeOpenAI,
    pending: str,
    *args: str,
    body: bytes = b"",
    sig: int = signal.SIGINT,
    again_at: str = "",
) -> tuple[int, str, str]:
    """`finetune start ARGS` in a real process, `sig` (Ctrl-C) once OpenAI got the `pending`
    request (POST /v1/files or /v1/fine_tuning/jobs with `body` in it, held back by a stall),
    and Ctrl-C twice more once it GETs `again_at` (if given); (exit code, out, err)."""
    env = {**os.environ, "OPENAI_BASE_URL": fake.base_url, "OPENAI_API_KEY": VALID_KEY}
    command = [sys.executable, "-c", START_PINNED, "finetune", "start", *args]
    proc = subprocess.Popen(command, env=env, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not any(body in call.body for call in fake.calls("POST", pending)):
            assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
            time.sleep(0.05)
        proc.send_signal(sig)
        while again_at and not fake.calls("GET", again_at):
            assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
            time.sleep(0.05)
        for _ in range(2 if again_at else 0):
            time.sleep(0.3)  # one signal at a time: two pending ones are handled as one
            proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return proc.returncode, out, err


# SIGTERM (`kill`, `timeout`) and SIGHUP killed it outright: the training upload was left.
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_ctrl_c_during_the_validation_upload_deletes_the_training_upload(
    fake_ft: FakeOpenAI, ada: Path, train: Path, validation: Path, database: Database, sig: int
) -> None:
    fake_ft.stall("POST", "/v1/files", 60, body=b'filename="val.jsonl"')
    code, out, err = ctrl_c_start(
        fake_ft, "/v1/files", str(train), "--persona", "ada", "--validation", str(validation),
        body=b'filename="val.jsonl"', sig=sig,
    )  # fmt: skip
    assert code == 130, out + err
    assert out.splitlines()[-1] == (
        "No job was created: deleted the uploaded file-0001 (train.jsonl) from the account."
    )
    assert err == (
        "Interrupted while uploading val.jsonl: no job was created; if val.jsonl shows up in "
        "the account's files all the same, delete it there.\n"
    )  # not click's "Aborted!", nor a traceback
    # The validation upload reached the fake whole; its id never came back to be deleted.
    assert [f["filename"] for f in fake_ft.files.values()] == ["val.jsonl"]
    assert fake_ft.calls("POST", "/v1/fine_tuning") == [] and jobs_in(database) == []


NOT_FOUND_AFTER_CTRL_C = (
    "Interrupted while OpenAI was creating the job, and no job reading the upload was found: if "
    "OpenAI makes it all the same, it is not recorded here and switches no persona (`phischer "
    "finetune list` shows it, `phischer finetune cancel JOB` stops it).\n"
)


@pytest.mark.parametrize("quit_at_once", [False, True])
def test_ctrl_c_during_the_job_request_keeps_the_upload_and_says_so(
    fake_ft: FakeOpenAI, ada: Path, train: Path, database: Database, quit_at_once: bool
) -> None:
    # No job was made (yet): the answer, a 503, is held back.
    fake_ft.reply("POST", "/v1/fine_tuning/jobs", 503, {"error": {"message": "busy"}})
    fake_ft.stall("POST", "/v1/fine_tuning/jobs", 60)
    if quit_at_once:  # the look for the job hangs: a Ctrl-C after "Still stopping" ends it
        fake_ft.stall("GET", "/v1/fine_tuning/jobs", 60)
    again_at = "/v1/fine_tuning/jobs" if quit_at_once else ""
    began = time.monotonic()
    code, out, err = ctrl_c_start(
        fake_ft, "/v1/fine_tuning/jobs", str(train), "--persona", "ada", again_at=again_at
    )
    assert code == 130, out + err
    assert time.monotonic() - began < 30  # neither stall was waited out
    assert out.splitlines()[-1] == (
        "Kept the uploaded file-0001 (train.jsonl) on the account: OpenAI may still create the "
        "job. If `phischer finetune list` shows no job reading it in a few minutes, delete it "
        "and start again."
    )
    still = (
        "Still stopping (deleting the uploads, or looking for the job OpenAI may have made); "
        "press Ctrl-C again to quit at once.\n"
    )
    assert err == (still if quit_at_once else "") + NOT_FOUND_AFTER_CTRL_C
    assert len(fake_ft.calls("GET", "/v1/fine_tuning/jobs")) == 1  # looked once
    assert list(fake_ft.files) == ["file-0001"] and fake_ft.calls("DELETE") == []
    assert fake_ft.jobs == {} and jobs_in(database) == []


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_job_made_by_a_request_ctrl_c_cut_short_is_recorded(
    fake_ft: FakeOpenAI, ada: Path, train: Path, database: Database, sleeps: list[float], sig: int
) -> None:
    # OpenAI made it, its answer held back: it was left unrecorded, switching no persona.
    fake_ft.default_script = list(SUCCESS_SCRIPT)
    fake_ft.stall("POST", "/v1/fine_tuning/jobs", 60)
    code, out, err = ctrl_c_start(
        fake_ft, "/v1/fine_tuning/jobs", str(train), "--persona", "ada", sig=sig
    )
    assert code == 130, out + err
    (job_id,) = fake_ft.jobs
    assert err == (
        f"Interrupted while OpenAI was creating the job: it did, as {job_id}, recorded here like "
        f"any start. Follow it with: phischer finetune status {job_id} --wait (`phischer "
        f"finetune cancel {job_id}` stops it).\n"
    )
    assert "Kept the uploaded" not in out and fake_ft.calls("DELETE") == []
    assert stored_job(database)["training_file_id"] == "file-0001"
    assert run("finetune", "status", job_id, "--wait").exit_code == 0
    assert persona_row(database).model == FT_MODEL


def test_a_job_request_whose_answer_is_lost_makes_one_job_and_records_it(
    fake_ft: FakeOpenAI, ada: Path, train: Path, database: Database, sleeps: list[float]
) -> None:
    # OpenAI made the job, then the connection was reset: the SDK sent the request again
    # (a second paid job, then a third), recorded none and deleted the file they train on.
    fake_ft.reset("POST", "/v1/fine_tuning/jobs", times=3)
    result = start(train)
    assert result.exit_code == 0, result.output
    (job_id,) = fake_ft.jobs
    assert len(fake_ft.calls("POST", "/v1/fine_tuning/jobs")) == 1
    assert f"Note: OpenAI's answer was lost, but it created the job {job_id}." in result.output
    assert stored_job(database)["job_id"] == job_id
    assert list(fake_ft.files) == ["file-0001"] and fake_ft.calls("DELETE") == []


PROXY_PAGE = b"<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>"


def test_a_garbled_answer_to_the_job_request_is_retried_once_no_job_came_of_it(
    fake_ft: FakeOpenAI, ada: Path, train: Path, database: Database, sleeps: list[float]
) -> None:
    fake_ft.reply("POST", "/v1/fine_tuning/jobs", 200, PROXY_PAGE)  # the job was not made
    result = start(train)
    assert result.exit_code == 0, result.output
    (job_id,) = fake_ft.jobs
    assert stored_job(database)["job_id"] == job_id
    assert "answered something that is not OpenAI's API while creating the fine-tuning job" in (
        result.output
    )
    assert sleeps == [0.5] and "Traceback" not in result.output


@pytest.mark.parametrize(
    "body", [PROXY_PAGE, b'{"id": "ftjob-0002", "status": ', b"[1, 2]", b'{"id": "x"}']
)
def test_a_garbled_answer_to_a_status_check_is_one_line_and_keeps_the_job(
    fake_ft: FakeOpenAI, ada: Path, train: Path, database: Database, body: bytes
) -> None:
    job_id = start_job(train)
    before = stored_job(database)
    fake_ft.reply("GET", f"/v1/fine_tuning/jobs/{job_id}", 200, body)
    result = run("finetune", "status", job_id)
    assert result.exit_code == 1
    assert result.output.splitlines() == [
        f"Error: {fake_ft.base_url} answered something that is not OpenAI's API while checking "
        f"{job_id} (a proxy's error page, or a cut-off answer): try again, or check "
        "OPENAI_BASE_URL"
    ]
    assert stored_job(database) == before


def test_list_with_a_garbled_account_listing_still_shows_the_stored_jobs(
    fake_ft: FakeOpenAI, ada: Path, train: Path
) -> None:
    job_id = start_job(train)
    fake_ft.reply("GET", "/v1/fine_tuning/jobs", 200, PROXY_PAGE)
    result = run("finetune", "list")
    assert result.exit_code == 0
    assert job_id in result.output.splitlines()[1]
    assert result.output.splitlines()[-1].startswith("(remote OpenAI jobs not listed: ")


def test_events_a_server_garbled_are_shown_without_a_traceback(
    fake_ft: FakeOpenAI, ada: Path, train: Path
) -> None:
    bad_step = {"step": "3", "total_steps": None, "train_loss": "low"}
    fake_ft.default_script = [
        Step("running", [{"message": "odd numbers", "type": "metrics", "data": bad_step},
                         {"message": "a list", "data": [1, 2]},
                         {"message": "no level", "level": None}]),
    ]  # fmt: skip
    job_id = start_job(train)
    result = run("finetune", "status", job_id)
    assert result.exit_code == 0, result.output
    shown = [line.split(" ", 4)[-1] for line in result.output.splitlines()[1:4]]
    assert shown == ["odd numbers", "a list", "no level"]
    assert result.output.splitlines()[-1] == f"{job_id}: running"


def test_an_upload_openai_could_not_process_is_deleted_and_refused(
    fake_ft: FakeOpenAI, ada: Path, train: Path, database: Database
) -> None:
    fake_ft.upload_status = ("error", "Invalid file format: line 3 is not JSON")
    result = start(train)
    assert result.exit_code == 1
    assert result.output.splitlines()[-2:] == [
        "No job was created: deleted the uploaded file-0001 (train.jsonl) from the account.",
        "Error: OpenAI could not process train.jsonl: Invalid file format: line 3 is not JSON",
    ]
    assert fake_ft.files == {} and fake_ft.jobs == {} and jobs_in(database) == []


def test_an_upload_that_cannot_be_deleted_is_named(
    fake_ft: FakeOpenAI, ada: Path, train: Path, database: Database
) -> None:
    fake_ft.fail("POST", "/v1/fine_tuning/jobs", 400, "no such model")
    fake_ft.fail("DELETE", "/v1/files/", 500, "storage down", times=3)  # the SDK retries twice
    result = start(train)
    assert result.exit_code == 1
    assert result.output.splitlines()[-2:] == [
        "Could not delete the uploaded file-0001 (train.jsonl) from the account (OpenAI "
        "answered 500 while deleting it: storage down): delete it yourself.",
        "Error: OpenAI answered 400 while creating the fine-tuning job: no such model",
    ]
    assert list(fake_ft.files) == ["file-0001"]


def test_local_only_flags_are_refused_for_openai(
    fake_ft: FakeOpenAI, ada: Path, train: Path, database: Database, tmp_path: Path
) -> None:
    options = ("--lora-rank", "8", "--output-dir", str(tmp_path / "out"))
    result = refused_before_upload(fake_ft, database, train, *options)
    assert result.output.splitlines() == [
        "Error: --lora-rank, --output-dir only apply to --provider local, not openai"
    ]
    # The same values left at their defaults are not "given": the job starts.
    assert start_job(train, "--provider", "openai")


# The notice once new jobs are refused: "retires" the models, or "retired" from that day.
STOPPED_NOTICE = (
    "Note: OpenAI stopped new fine-tuning jobs on 2027-01-06 and {} fine-tuned "
    "gpt-4o/gpt-4.1 models on 2027-01-14: use `--provider local`."
)


@pytest.mark.parametrize(
    ("today", "notice"),
    [
        (
            dt.date(2027, 1, 5),
            "Note: OpenAI stops accepting new fine-tuning jobs on 2027-01-06 and retires "
            "fine-tuned gpt-4o/gpt-4.1 models on 2027-01-14: train a LoRA you can keep serving "
            "with `--provider local`.",
        ),
        (dt.date(2027, 1, 6), STOPPED_NOTICE.format("retires")),
        (dt.date(2027, 1, 13), STOPPED_NOTICE.format("retires")),
        # The retirement is still news after the day: said in the past tense, not dropped.
        (dt.date(2027, 1, 14), STOPPED_NOTICE.format("retired")),
        (dt.date(2027, 2, 1), STOPPED_NOTICE.format("retired")),
    ],
)
def test_deadline_notice_follows_the_date(today: dt.date, notice: str) -> None:
    assert common.deadline_notice(today) == notice


def test_start_refuses_before_uploading_from_the_day_openai_stops_jobs(
    fake_ft: FakeOpenAI,
    ada: Path,
    train: Path,
    database: Database,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(common, "_today", lambda: dt.date(2027, 1, 5))
    start_job(train)  # the last day OpenAI takes new jobs: uploaded and created
    assert len(fake_ft.files) == 1 and len(fake_ft.jobs) == 1
    requests, stored = len(fake_ft.requests), jobs_in(database)
    for today, retirement in [
        (dt.date(2027, 1, 6), "retires"),  # the first day without new jobs
        (dt.date(2027, 1, 13), "retires"),
        (dt.date(2027, 1, 14), "retired"),  # the models are gone too
        (dt.date(2028, 3, 1), "retired"),
    ]:
        monkeypatch.setattr(common, "_today", lambda today=today: today)
        result = start(train)
        assert result.exit_code == 1
        assert result.output.splitlines() == [
            "Error: OpenAI stopped accepting new fine-tuning jobs on 2027-01-06 and "
            f"{retirement} fine-tuned gpt-4o/gpt-4.1 models on 2027-01-14: train a LoRA you "
            "keep with --provider local --base-model MODEL; nothing was uploaded"
        ]
    assert len(fake_ft.requests) == requests and len(jobs_in(database)) == len(stored)


@pytest.mark.parametrize(
    ("name", "suffix"),
    [
        ("Ada Lovelace", "ada-lovelace"),
        ("Zoë:Çelik", "zoe-celik"),
        ("bob_2", "bob_2"),
        ("x" * 80, "x" * 64),
        ("  --Ünïcode--  ", "unicode"),
    ],
)
def test_sanitize_suffix(name: str, suffix: str) -> None:
    assert common.sanitize_suffix(name) == suffix


def test_sanitize_suffix_refuses_names_without_letters() -> None:
    with pytest.raises(common.FineTuneError, match="pass --suffix"):
        common.sanitize_suffix("李雷")


# -- status --------------------------------------------------------------------------------


def success_events(job_id: str) -> list[str]:
    """The event messages a job run by SUCCESS_SCRIPT shows, in order."""
    return [
        f"Created fine-tuning job: {job_id}",
        "Fine-tuning job started",
        "Step 1/3: training loss=2.10",
        "Step 3/3: training loss=0.90",
        "New fine-tuned model created",
        "The job has successfully completed",
    ]


SUCCESS_SCRIPT = [
    Step(
        "running",
        [
            "Fine-tuning job started",
            {
                "message": "Step 1/3: training loss=2.10",
                "data": {"step": 1, "total_steps": 3, "train_loss": 2.1},
            },
        ],
    ),
    Step(
        "running",
        [
            {
                "message": "Step 3/3: training loss=0.90",
                "data": {"step": 3, "total_steps": 3, "train_loss": 0.9},
            }
        ],
    ),
    Step(
        "succeeded",
        ["New fine-tuned model created", "The job has successfully completed"],
        fine_tuned_model=FT_MODEL,
        trained_tokens=4321,
    ),
]


def test_wait_polls_with_backoff_and_switches_the_persona(
    fake_ft: FakeOpenAI, ada: Path, train: Path, database: Database, sleeps: list[float]
) -> None:
    fake_ft.default_script = list(SUCCESS_SCRIPT)
    job_id = start_job(train)
    result = run("finetune", "status", job_id, "--wait")
    assert result.exit_code == 0, result.output

    assert sleeps == [5.0, 7.5]  # three polls: backoff x1.5 between them
    messages = success_events(job_id)
    positions = [result.output.index(m) for m in messages]
    assert positions == sorted(positions)
    assert all(result.output.count(m) == 1 for m in messages)  # each event shown once
    assert f"{job_id}: succeeded, 4,321 trained tokens, model {FT_MODEL}" in result.output
    assert f"Persona Ada Lovelace now answers with {FT_MODEL}." in result.output

    p = persona_row(database)
    assert (p.backend, p.model, p.base_url) == ("openai", FT_MODEL, None)
    (row,) = jobs_in(database)
    assert row.status == "succeeded" and row.fine_tuned_model == FT_MODEL
    assert row.trained_tokens == 4321 and row.finished_at is not None
    assert row.last_event_id == fake_ft.events[job_id][0]["id"]

    # Asking again shows no old events and does not switch the persona a second time.
    again = run("finetune", "status", job_id)
    assert again.exit_code == 0
    assert again.output.strip().splitlines() == [
        f"{job_id}: succeeded, 4,321 trained tokens, model {FT_MODEL}"
    ]


def test_two_waits_on_one_job_each_show_every_event_and_the_switch(
    fake_ft: FakeOpenAI,
    ada: Path,
    train: Path,
    database: Database,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Two terminals wait on the job: the second starts waiting between the first's polls
    # and sees the job through (its events stored, the persona switched) before it polls again.
    fake_ft.default_script = list(SUCCESS_SCRIPT)
    job_id = start_job(train)
    other: list[Result] = []

    def other_terminal_waits(seconds: float) -> None:
        monkeypatch.setattr(ft, "_sleep", lambda s: None)  # once: not for its own sleeps
        other.append(run("finetune", "status", job_id, "--wait"))

    monkeypatch.setattr(ft, "_sleep", other_terminal_waits)
    first = run("finetune", "status", job_id, "--wait")
    (second,) = other
    assert first.exit_code == 0 and second.exit_code == 0, first.output + second.output
    messages = success_events(job_id)
    shown = [m for line in first.output.splitlines() for m in messages if line.endswith(m)]
    assert shown == messages  # each once, in order, though the other wait stored them too
    assert "Step 3/3" in second.output and "Fine-tuning job started" not in second.output
    outcome = [
        f"{job_id}: succeeded, 4,321 trained tokens, model {FT_MODEL}",
        f"Persona Ada Lovelace now answers with {FT_MODEL}.",
    ]
    assert first.output.splitlines()[-2:] == outcome and second.output.splitlines()[-2:] == outcome
    assert persona_row(database).model == FT_MODEL
    assert jobs_in(database)[0].last_event_id == fake_ft.events[job_id][0]["id"]


def test_status_of_a_job_whose_persona_was_removed_says_how_to_serve_its_model(
    fake_ft: FakeOpenAI, ada: Path, train: Path, database: Database, sleeps: list[float]
) -> None:
    fake_ft.default_script = list(SUCCESS_SCRIPT)
    job_id = start_job(train)
    assert run("persona", "remove", "ada").exit_code == 0
    result = run("finetune", "status", job_id, "--wait")
    assert result.exit_code == 0, result.output  # the job succeeded: only the persona is gone
    assert result.output.splitlines()[-1] == (
        f"Its persona was removed while {job_id} trained: {FT_MODEL} is not served; point a "
        f"persona at it with `phischer persona edit NAME --backend openai --model {FT_MODEL}` "
        "(or a new one: `phischer persona add NAME --keyword WORD --backend openai --model "
        f"{FT_MODEL}`)"
    )
    (row,) = jobs_in(database)
    assert row.status == "succeeded" and row.persona_id is None
    again = run("finetune", "status", job_id)  # said once, as a switch is made once
    assert again.output.strip().splitlines() == [
        f"{job_id}: succeeded, 4,321 trained tokens, model {FT_MODEL}"
    ]


def test_a_success_named_without_its_model_switches_the_persona_once_it_has_one(
    fake_ft: FakeOpenAI, ada: Path, train: Path, database: Database, sleeps: list[float]
) -> None:
    # The first check that said "succeeded" had no model: no later check switched the persona.
    fake_ft.default_script = [Step("succeeded")]
    job_id = start_job(train)
    waited = run("finetune", "status", job_id, "--wait")
    assert waited.exit_code == 1
    assert error_lines(waited) == [
        f"Error: {job_id} succeeded, but OpenAI named no model (persona unchanged): check "
        f"again later with: phischer finetune status {job_id}"
    ]
    assert persona_row(database).backend == "retrieval"
    fake_ft.jobs[job_id]["fine_tuned_model"] = FT_MODEL
    later = run("finetune", "status", job_id)
    assert later.exit_code == 0
    assert later.output.splitlines()[-1] == f"Persona Ada Lovelace now answers with {FT_MODEL}."
    assert persona_row(database).model == FT_MODEL
    assert "Persona" not in run("finetune", "status", job_id).output  # switched once


def test_a_second_start_warns_and_an_older_jobs_success_keeps_the_newer_model(
    fake_ft: FakeOpenAI, ada: Path, train: Path, database: Database
) -> None:
    # Two jobs for one persona: whichever succeeded last set its model, the older one too.
    fake_ft.default_script = [Step("running"), Step("succeeded", fine_tuned_model="ft:older")]
    older = start_job(train)
    fake_ft.default_script = [Step("succeeded", fine_tuned_model=FT_MODEL)]
    second = start(train)
    assert second.exit_code == 0, second.output
    assert (
        f"Warning: Ada Lovelace already has a fine-tuning job that has not ended: {older} "
        "(validating_files when last checked). If this new job succeeds, the persona answers "
        "with its model, whichever ends first (an older job's success does not switch it "
        f"back); `phischer finetune cancel {older}` stops it."
    ) in second.output.splitlines()
    newer = second.output.splitlines()[-2].split()[3]
    assert run("finetune", "status", newer).output.splitlines()[-1] == (
        f"Persona Ada Lovelace now answers with {FT_MODEL}."
    )
    assert run("finetune", "status", older).exit_code == 0  # running
    result = run("finetune", "status", older)
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[-2:] == [
        f"{older}: succeeded, model ft:older",
        f"Persona Ada Lovelace keeps {FT_MODEL} of {newer}, started after {older}: to answer "
        "with this one, `phischer persona edit 'Ada Lovelace' --backend openai --model "
        "ft:older --base-url '' --api-key-env ''`.",
    ]
    assert persona_row(database).model == FT_MODEL
    assert "already has" not in start(train).output  # both ended: nothing to warn of


def test_status_without_wait_shows_new_events_once(
    fake_ft: FakeOpenAI, ada: Path, train: Path, database: Database
) -> None:
    fake_ft.default_script = list(SUCCESS_SCRIPT)
    job_id = start_job(train)
    first = run("finetune", "status", job_id)
    assert first.exit_code == 0
    assert first.output.splitlines()[-1] == f"{job_id}: running"
    assert "Fine-tuning job started" in first.output
    second = run("finetune", "status", job_id)
    assert "Fine-tuning job started" not in second.output
    assert "Step 3/3: training loss=0.90" in second.output
    assert jobs_in(database)[0].status == "running"
    assert persona_row(database).backend == "retrieval"


def test_failed_job_prints_the_error_and_changes_nothing(
    fake_ft: FakeOpenAI, ada: Path, train: Path, database: Database, sleeps: list[float]
) -> None:
    reason = "The job failed due to an invalid training file. Example 3 has no assistant message."
    fake_ft.default_script = [
        Step("running"),
        Step(
            "failed",
            [{"message": reason, "level": "error"}],
            error={"code": "invalid_training_file", "message": reason, "param": "training_file"},
        ),
    ]
    job_id = start_job(train)
    result = run("finetune", "status", job_id, "--wait")
    assert result.exit_code == 1
    assert f"ERROR {reason}" in result.output
    assert error_lines(result) == [f"Error: {job_id} failed: {reason} (persona unchanged)"]
    p = persona_row(database)
    assert (p.backend, p.model) == ("retrieval", None)
    (row,) = jobs_in(database)
    assert row.status == "failed" and row.error == reason and row.fine_tuned_model is None


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        # OpenAI's message quoting the lines of the file it refused: the `Error:` line ran
        # over several lines.
        ({"code": "invalid_training_file", "param": "training_file",
          "message": "The file has problems:\n  line 3: no assistant message\n\nline 7: empty"},
         "The file has problems: line 3: no assistant message line 7: empty"),
        # No message, only the code: it said "no reason given".
        ({"code": "invalid_training_file", "message": "", "param": "training_file"},
         "OpenAI gave no message, only the code invalid_training_file (training_file)"),
        ({"code": "server_error", "message": "  ", "param": None},
         "OpenAI gave no message, only the code server_error"),
        # A server behind OPENAI_BASE_URL sending the error as a bare string: a traceback.
        ("CUDA out of memory\nTried to allocate 2 GiB", "CUDA out of memory Tried to allocate 2 GiB"),
    ],
)  # fmt: skip
def test_a_failed_jobs_error_is_one_line_whatever_its_shape(
    fake_ft: FakeOpenAI,
    ada: Path,
    train: Path,
    database: Database,
    sleeps: list[float],
    error: Any,
    reason: str,
) -> None:
    fake_ft.default_script = [Step("failed", error=error)]
    job_id = start_job(train)
    for result in (run("finetune", "status", job_id, "--wait"), run("finetune", "status", job_id)):
        assert result.exit_code == 1
        assert result.output.splitlines()[-1] == (
            f"Error: {job_id} failed: {reason} (persona unchanged)"
        )
    assert jobs_in(database)[0].error == reason
    assert persona_row(database).backend == "retrieval"


def test_a_key_or_token_in_a_jobs_error_is_neither_stored_nor_printed(
    fake_ft: FakeOpenAI, ada: Path, train: Path, database: Database, sleeps: list[float]
) -> None:
    # A server behind OPENAI_BASE_URL quoting what it was sent in the job's error.
    reason = f"Upstream refused key {VALID_KEY} (Authorization: Bearer tok_0123456789abcdef)"
    fake_ft.default_script = [Step("failed", error={"code": "x", "message": reason})]
    job_id = start_job(train)
    result = run("finetune", "status", job_id, "--wait")
    assert result.exit_code == 1
    clean = "Upstream refused key <OPENAI_API_KEY> (Authorization: Bearer ***)"
    assert error_lines(result) == [f"Error: {job_id} failed: {clean} (persona unchanged)"]
    assert jobs_in(database)[0].error == clean
    again = run("finetune", "status", job_id)  # what is stored, shown later
    assert VALID_KEY not in again.output and "tok_0123" not in again.output


def test_cancel_then_wait_ends_cancelled(
    fake_ft: FakeOpenAI, ada: Path, train: Path, database: Database, sleeps: list[float]
) -> None:
    fake_ft.default_script = [Step("running")] * 5
    job_id = start_job(train)
    # A 400 while the job runs is OpenAI's reason, as it gave it.
    fake_ft.fail("POST", f"/v1/fine_tuning/jobs/{job_id}/cancel", 400, "not now")
    refused = run("finetune", "cancel", job_id)
    assert refused.exit_code == 1
    assert error_lines(refused) == [
        f"Error: OpenAI answered 400 while cancelling {job_id}: not now"
    ]
    result = run("finetune", "cancel", job_id)
    assert result.exit_code == 0
    assert result.output.strip() == f"{job_id}: cancelled"
    assert len(fake_ft.calls("POST", f"/v1/fine_tuning/jobs/{job_id}/cancel")) == 2
    assert jobs_in(database)[0].status == "cancelled"
    waited = run("finetune", "status", job_id, "--wait")
    assert waited.exit_code == 0
    assert "Fine-tuning job cancelled" in waited.output
    assert sleeps == []
    assert persona_row(database).backend == "retrieval"
    # Cancelling a finished job is OpenAI's 400: said as the job's state, which is kept.
    again = run("finetune", "cancel", job_id)
    assert again.exit_code == 0, again.output
    assert again.output.splitlines()[-1] == f"{job_id} already cancelled; nothing to cancel"
    assert jobs_in(database)[0].status == "cancelled"


@pytest.mark.parametrize(
    ("ended", "said", "model"),
    [
        (Step("succeeded", fine_tuned_model=FT_MODEL, trained_tokens=4321), "succeeded", FT_MODEL),
        (Step("failed", error={"code": "x", "message": "bad file"}), "failed (bad file)", None),
    ],
)
def test_cancelling_a_job_that_ended_unseen_records_how_it_ended(
    fake_ft: FakeOpenAI,
    ada: Path,
    train: Path,
    database: Database,
    ended: Step,
    said: str,
    model: str | None,
) -> None:
    # The job ended at OpenAI after the last `status`: the stored row still said running.
    fake_ft.default_script = [Step("running"), ended]
    job_id = start_job(train)
    assert run("finetune", "status", job_id).exit_code == 0
    fake_ft.advance(job_id)
    result = run("finetune", "cancel", job_id)
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[-1] == f"{job_id} already {said}; nothing to cancel"
    (row,) = jobs_in(database)
    assert row.status == ended.status and row.finished_at is not None
    # A success is stored as `status` stores it: the persona switches, as said.
    assert persona_row(database).model == model
    assert (f"Persona Ada Lovelace now answers with {FT_MODEL}." in result.output) == bool(model)
    assert "Persona" not in run("finetune", "status", job_id).output  # switched once


@pytest.mark.parametrize(
    ("status", "times", "expected"),
    [
        (
            401,
            1,
            "OpenAI rejected the API key while checking {job} (401: nope): "
            "check OPENAI_API_KEY in .env",
        ),
        # 429 and 5xx are retried by the SDK (MAX_RETRIES=2): three answers in all.
        (
            429,
            3,
            "OpenAI rate limit or quota hit while checking {job} (429: nope): "
            "wait a minute and retry, or check your plan's billing",
        ),
        (500, 3, "OpenAI answered 500 while checking {job}: nope"),
        # Started here, on this server: the account it asks has no such job.
        (
            404,
            1,
            "{job} was started here, but the account at {server} does not have it (404: "
            "nope): is OPENAI_API_KEY another account's now? `phischer finetune list` shows "
            "the account's recent jobs",
        ),
    ],
)
def test_api_errors_are_one_line_and_keep_the_job(
    fake_ft: FakeOpenAI,
    ada: Path,
    train: Path,
    database: Database,
    status: int,
    times: int,
    expected: str,
) -> None:
    job_id = start_job(train)
    before = stored_job(database)
    fake_ft.fail("GET", f"/v1/fine_tuning/jobs/{job_id}", status, "nope", times=times)
    result = run("finetune", "status", job_id)
    assert result.exit_code == 1
    expected = expected.format(job=job_id, server=fake_ft.base_url)
    assert result.output.strip().splitlines() == ["Error: " + expected]
    assert len(fake_ft.calls("GET", f"/v1/fine_tuning/jobs/{job_id}")) == times
    assert stored_job(database) == before


def test_retried_rate_limit_then_success(
    fake_ft: FakeOpenAI, ada: Path, train: Path, database: Database
) -> None:
    fake_ft.default_script = [Step("running", ["Fine-tuning job started"])]
    job_id = start_job(train)
    fake_ft.fail("GET", f"/v1/fine_tuning/jobs/{job_id}", 429, "slow down", times=2)
    result = run("finetune", "status", job_id)
    assert result.exit_code == 0
    assert result.output.splitlines()[-1] == f"{job_id}: running"


RATE_LIMITED = {"error": {"message": "slow down", "type": "requests", "code": "rate_limit"}}


@pytest.mark.parametrize("request_", ["upload", "status"])
def test_a_rate_limit_the_sdk_waits_out_is_said(
    fake_ft: FakeOpenAI, ada: Path, train: Path, database: Database, request_: str
) -> None:
    # The SDK waits out a Retry-After of up to 2 minutes per retry: it did so in silence.
    job_id = start_job(train) if request_ == "status" else "-"
    path = "/v1/files" if request_ == "upload" else f"/v1/fine_tuning/jobs/{job_id}"
    fake_ft.reply("POST" if request_ == "upload" else "GET", path, 429, RATE_LIMITED,
                  {"retry-after": "1"})  # fmt: skip
    result = start(train) if request_ == "upload" else run("finetune", "status", job_id)
    assert result.exit_code == 0, result.output
    assert "OpenAI is rate-limiting (429); waiting 1 s before trying again" in (
        result.output.splitlines()
    )


@pytest.mark.parametrize("path", ["/v1/fine_tuning/jobs/ftjob-0002", "/v1/fine_tuning/jobs"])
def test_a_rate_limit_asking_for_longer_than_two_minutes_says_how_long(
    fake_ft: FakeOpenAI, ada: Path, train: Path, database: Database, path: str
) -> None:
    # An HTTP date 10 minutes ahead: the SDK does not wait that long, and phischer said
    # "wait a minute". The job request (phischer's own retries) does not try again early.
    later = email.utils.formatdate(time.time() + 600, usegmt=True)
    method = "GET" if path.endswith("0002") else "POST"
    if method == "GET":
        start_job(train)
    fake_ft.reply(method, path, 429, RATE_LIMITED, {"retry-after": later})
    result = run("finetune", "status", "ftjob-0002") if method == "GET" else start(train)
    assert result.exit_code == 1
    doing = "checking ftjob-0002" if method == "GET" else "creating the fine-tuning job"
    assert error_lines(result) == [
        f"Error: OpenAI rate limit or quota hit while {doing} (429: slow down): OpenAI asks to "
        "wait 10 min before the next try"
    ]
    assert len(fake_ft.calls(method, path)) == 1  # not tried again


@pytest.mark.parametrize(
    ("status", "what"),
    [
        (502, "502 Bad Gateway while checking {job}: a gateway or proxy error (the API behind "
              "it did not answer): try again in a while, or check OPENAI_BASE_URL"),
        (403, "403 Forbidden while checking {job}, not as OpenAI's API answers (a proxy or "
              "another server): check OPENAI_BASE_URL"),
    ],
)  # fmt: skip
def test_an_error_page_says_who_answered_and_what_it_means(
    fake_ft: FakeOpenAI, ada: Path, train: Path, database: Database, status: int, what: str
) -> None:
    # It said only "Error code: 502"; the page itself is not shown.
    job_id = start_job(train)
    page = f"<html><title>{status}</title><body><h1>{status}</h1>nginx</body></html>".encode()
    fake_ft.reply("GET", f"/v1/fine_tuning/jobs/{job_id}", status, page, times=3)
    result = run("finetune", "status", job_id)
    assert result.exit_code == 1
    assert result.output.splitlines() == [
        f"Error: {fake_ft.base_url} answered " + what.format(job=job_id)
    ]


def test_connection_refused_is_one_line(
    ada: Path, train: Path, database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    # conftest points OPENAI_BASE_URL at the discard port: nothing listens there.
    monkeypatch.setattr(ft, "MAX_RETRIES", 0)
    monkeypatch.setattr(common, "_today", lambda: dt.date(2026, 11, 22))
    result = start(train)
    assert result.exit_code == 1
    assert error_lines(result) == [
        "Error: cannot reach http://127.0.0.1:9/v1/ while uploading train.jsonl "
        "(Connection error.): check your network or OPENAI_BASE_URL"
    ]
    assert jobs_in(database) == []


def test_network_down_while_waiting_gives_up_after_ten_checks_and_keeps_the_job(
    fake_ft: FakeOpenAI,
    ada: Path,
    train: Path,
    database: Database,
    monkeypatch: pytest.MonkeyPatch,
    sleeps: list[float],
) -> None:
    job_id = start_job(train)
    before = stored_job(database)
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")  # nothing listens there
    monkeypatch.setattr(ft, "MAX_RETRIES", 0)
    result = run("finetune", "status", job_id, "--wait")
    assert result.exit_code == 1
    unreachable = (
        f"cannot reach http://127.0.0.1:9/v1/ while checking {job_id} "
        "(Connection error.): check your network or OPENAI_BASE_URL"
    )
    *warnings, error = result.output.splitlines()
    assert warnings == [
        f"Warning: {unreachable}; checking again in {s:g} s" for s in sleeps
    ]  # said each time, on the usual backoff
    assert len(sleeps) == 9 and sleeps[-1] == 60.0
    assert error == (
        f"Error: {unreachable} (10 checks in a row failed: stopped waiting; {job_id} goes on "
        f"at OpenAI, wait again with: phischer finetune status {job_id} --wait)"
    )
    assert stored_job(database) == before
    assert persona_row(database).backend == "retrieval"


@pytest.mark.parametrize(
    ("status", "said"),
    [(429, "OpenAI rate limit or quota hit"), (503, "OpenAI answered 503"), (None, "cannot reach")],
)
def test_wait_rides_out_a_blip_and_still_switches_the_persona(
    fake_ft: FakeOpenAI,
    ada: Path,
    train: Path,
    database: Database,
    sleeps: list[float],
    status: int | None,
    said: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(ft, "MAX_RETRIES", 0)  # one failed check is one failed request
    fake_ft.default_script = list(SUCCESS_SCRIPT)
    job_id = start_job(train)
    first = run("finetune", "status", job_id)  # the first step's events are seen
    assert first.exit_code == 0
    polls = f"/v1/fine_tuning/jobs/{job_id}"
    if status is None:  # the connection drops
        fake_ft.drop("GET", polls)
    else:
        fake_ft.fail("GET", polls, status, "try later")
    result = run("finetune", "status", job_id, "--wait")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith(f"Warning: {said}") and "checking again in 5 s" in lines[0]
    assert sum(line.startswith("Warning:") for line in lines) == 1
    assert sleeps == [5.0, 7.5]  # the backoff goes on through the failed check
    assert result.output.count("Step 3/3: training loss=0.90") == 1
    assert "Fine-tuning job started" not in result.output  # shown by the first status
    assert f"Persona Ada Lovelace now answers with {FT_MODEL}." in result.output
    assert persona_row(database).model == FT_MODEL


@pytest.mark.parametrize(
    ("status", "asked", "waited", "said"),
    [
        (429, "600", 600.0, "10 min"),
        (503, "300", 300.0, "5 min"),
        (429, "86400", 3600.0, "60 min"),  # a day: an hour at most, then asked again
    ],
)
def test_wait_waits_as_long_as_a_retry_after_asks_then_goes_on(
    fake_ft: FakeOpenAI,
    ada: Path,
    train: Path,
    database: Database,
    sleeps: list[float],
    status: int,
    asked: str,
    waited: float,
    said: str,
) -> None:
    # Longer than the SDK waits (2 minutes): the next check came 5 s later all the same, under
    # a line saying OpenAI asked for 10 min, and a rate limit of 10 min ended the wait.
    fake_ft.default_script = list(SUCCESS_SCRIPT)
    job_id = start_job(train)
    body = {"error": {"message": "slow down", "type": "requests", "code": None}}
    fake_ft.reply("GET", f"/v1/fine_tuning/jobs/{job_id}", status, body, {"retry-after": asked})
    result = run("finetune", "status", job_id, "--wait")
    assert result.exit_code == 0, result.output
    first = result.output.splitlines()[0]
    assert first.startswith("Warning: ") and first.endswith(f"; checking again in {said}")
    assert sleeps == [waited, 7.5, 11.25]  # then the usual backoff, from where it was
    polls = [c for c in fake_ft.calls("GET") if c.path == f"/v1/fine_tuning/jobs/{job_id}"]
    assert len(polls) == 4  # the refused one (no retry sooner), then the three checks
    assert persona_row(database).model == FT_MODEL


def test_wait_stops_at_once_on_an_exhausted_quota(
    fake_ft: FakeOpenAI, ada: Path, train: Path, sleeps: list[float]
) -> None:
    job_id = start_job(train)
    fake_ft.fail(
        "GET", f"/v1/fine_tuning/jobs/{job_id}", 429, "You exceeded your current quota",
        times=3, code="insufficient_quota",
    )  # fmt: skip
    result = run("finetune", "status", job_id, "--wait")
    assert result.exit_code == 1
    assert error_lines(result) == [
        f"Error: OpenAI rate limit or quota hit while checking {job_id} (429: You exceeded "
        "your current quota): wait a minute and retry, or check your plan's billing"
    ]
    assert sleeps == [] and "Warning" not in result.output  # waiting would not pay the bill


@pytest.mark.parametrize("pause", ["paused", "pausing"])
def test_wait_follows_a_status_it_does_not_know_and_stops_on_paused(
    fake_ft: FakeOpenAI,
    ada: Path,
    train: Path,
    database: Database,
    sleeps: list[float],
    pause: str,
) -> None:
    fake_ft.default_script = [Step("running"), Step(pause), Step("cancelled")]
    job_id = start_job(train)
    result = run("finetune", "status", job_id, "--wait")
    assert result.exit_code == 0, result.output
    statuses = [line for line in result.output.splitlines() if line.startswith(job_id)]
    if pause == "paused":  # nothing happens until someone resumes it: say so and stop
        assert statuses == [f"{job_id}: running", f"{job_id}: paused"]
        assert result.output.splitlines()[-1] == (
            "  It trains again once resumed on OpenAI (its fine-tuning dashboard, or the API's "
            f"resume); then follow it with: phischer finetune status {job_id} --wait"
        )
        assert jobs_in(database)[0].status == "paused"
        assert jobs_in(database)[0].finished_at is None
    else:  # unknown: polled on as running, never taken for an end
        assert statuses == [f"{job_id}: running", f"{job_id}: {pause}", f"{job_id}: cancelled"]
        assert sleeps == [5.0, 7.5]


def test_status_shows_when_openai_expects_the_job_to_finish(
    fake_ft: FakeOpenAI, ada: Path, train: Path
) -> None:
    when = int(dt.datetime(2026, 11, 22, 15, 40, tzinfo=dt.UTC).timestamp())
    fake_ft.default_script = [Step("running", estimated_finish=when), *SUCCESS_SCRIPT[2:]]
    job_id = start_job(train)
    running = run("finetune", "status", job_id)
    assert running.output.splitlines()[-1] == (
        f"{job_id}: running, estimated to finish 2026-11-22 15:40 UTC"
    )
    done = run("finetune", "status", job_id)  # a finished job has no estimate to give
    assert f"{job_id}: succeeded, 4,321 trained tokens, model {FT_MODEL}\n" in done.output
    assert "estimated" not in done.output


def test_status_of_a_job_with_an_estimate_or_events_a_server_garbled_is_lines_as_usual(
    fake_ft: FakeOpenAI, ada: Path, train: Path
) -> None:
    # Milliseconds, not seconds: a traceback (year out of range). An event's message over
    # several lines tore the log's layout, and one of null printed "None".
    fake_ft.default_script = [
        Step("running", [{"message": "Validation failed:\n  line 3\n  line 7", "level": "warn"},
                         {"message": None}], estimated_finish=1_795_000_000_000),
    ]  # fmt: skip
    job_id = start_job(train)
    result = run("finetune", "status", job_id)
    assert result.exit_code == 0, result.output
    created, warned, empty, status = result.output.splitlines()
    assert warned.endswith(" WARN Validation failed: line 3 line 7")
    assert re.fullmatch(r"  \d{4}-\d\d-\d\d \d\d:\d\d:\d\d", empty)  # no "None"
    assert status == f"{job_id}: running"


def test_ctrl_c_while_waiting_says_the_job_goes_on(
    fake_ft: FakeOpenAI,
    ada: Path,
    train: Path,
    database: Database,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake_ft.default_script = [Step("running", [metrics_event(1, 9, 2.0)])] * 5
    job_id = start_job(train)

    def ctrl_c(seconds: float) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(ft, "_sleep", ctrl_c)  # Ctrl-C during the first wait between polls
    result = run("finetune", "status", job_id, "--wait")
    assert result.exit_code == 130
    assert result.stdout.splitlines()[-1] == f"{job_id}: running"
    assert result.stderr == (
        f"Stopped waiting: {job_id} keeps running on OpenAI (Ctrl-C does not cancel it). "
        f"Wait again with: phischer finetune status {job_id} --wait\n"
    )  # not click's bare "Aborted!"
    assert fake_ft.calls("POST", f"/v1/fine_tuning/jobs/{job_id}/cancel") == []
    assert jobs_in(database)[0].status == "running"


def test_kill_while_waiting_says_the_job_goes_on(
    fake_ft: FakeOpenAI, ada: Path, train: Path, database: Database
) -> None:
    # SIGTERM (`kill`, `timeout`) ends the wait as Ctrl-C does, in a process of its own.
    job_id = start_job(train)
    command = [sys.executable, "-m", "phischer", "finetune", "status", job_id, "--wait"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not fake_ft.calls("GET", f"/v1/fine_tuning/jobs/{job_id}/events"):
            assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)  # during the first 5 s between polls
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, (out, err)
    assert err == (
        f"Stopped waiting: {job_id} keeps running on OpenAI (Ctrl-C does not cancel it). "
        f"Wait again with: phischer finetune status {job_id} --wait\n"
    )
    assert fake_ft.calls("POST", f"/v1/fine_tuning/jobs/{job_id}/cancel") == []


def test_wait_backs_off_to_once_a_minute(
    fake_ft: FakeOpenAI, ada: Path, train: Path, sleeps: list[float]
) -> None:
    fake_ft.default_script = [Step("running")] * 9 + [Step("cancelled")]
    job_id = start_job(train)
    result = run("finetune", "status", job_id, "--wait")
    assert result.exit_code == 0, result.output
    # 5 s, x1.5 each time, never more than 60 s; no sleep after the final state.
    assert sleeps == [5.0, 7.5, 11.25, 16.875, 25.3125, 37.96875, 56.953125, 60.0, 60.0]
    assert result.output.splitlines()[-1] == f"{job_id}: cancelled"


def test_progress_bar_follows_step_metrics() -> None:
    bar = ft._progress(
        None,
        [
            event(1, "message"),
            event(2, "metrics", {"step": 1, "total_steps": 3, "train_loss": 2.1}),
        ],
    )
    assert bar is not None
    assert (bar.total, bar.n, bar.postfix) == (3, 1, "loss=2.100")
    same = ft._progress(
        bar, [event(3, "metrics", {"step": 3, "total_steps": 3, "train_loss": 0.9})]
    )
    assert same is bar and (bar.n, bar.postfix) == (3, "loss=0.900")
    bar.close()
    assert ft._progress(None, [event(4, "message")]) is None  # no steps yet: no bar


def job_on_account(fake: FakeOpenAI, train: Path, model: str) -> str:
    """A job created on the account directly, not by phischer (its own upload); its id."""
    client = openai.OpenAI(api_key=VALID_KEY, base_url=fake.base_url)
    uploaded = client.files.create(file=(train.name, train.read_bytes()), purpose="fine-tune")
    return client.fine_tuning.jobs.create(model=model, training_file=uploaded.id).id


def test_status_of_a_job_not_started_here_switches_nothing(
    fake_ft: FakeOpenAI, ada: Path, train: Path, database: Database, sleeps: list[float]
) -> None:
    fake_ft.default_script = list(SUCCESS_SCRIPT)
    other = job_on_account(fake_ft, train, "gpt-4.1-mini-2025-04-14")
    result = run("finetune", "status", other, "--wait")
    assert result.exit_code == 0, result.output
    assert f"{other}: succeeded, 4,321 trained tokens, model {FT_MODEL}" in result.output
    # Said once, not after every poll.
    assert result.output.count("(not started from here: no persona will be switched)") == 1
    # Nothing stored keeps its last event: each poll still shows only the new ones.
    for message in ("Fine-tuning job started", "Step 1/3", "New fine-tuned model created"):
        assert result.output.count(message) == 1
    assert "now answers with" not in result.output
    assert jobs_in(database) == []
    assert persona_row(database).backend == "retrieval"


def test_success_moves_the_persona_off_its_previous_server(
    fake_ft: FakeOpenAI, ada: Path, train: Path, database: Database, sleeps: list[float]
) -> None:
    # Ada was served from a local LoRA server with its own key variable before.
    with database.write() as session:
        row = session.scalar(sa.select(Persona).where(Persona.keyword == "ada"))
        row.backend, row.model = "openai", "ada-lovelace"
        row.base_url, row.api_key_env = "http://127.0.0.1:8000/v1", "VLLM_KEY"
    fake_ft.default_script = list(SUCCESS_SCRIPT)
    job_id = start_job(train)
    assert run("finetune", "status", job_id, "--wait").exit_code == 0
    p = persona_row(database)
    # The model lives on the account the job ran on: OPENAI_BASE_URL and OPENAI_API_KEY.
    assert (p.backend, p.model, p.base_url, p.api_key_env) == ("openai", FT_MODEL, None, None)


def test_two_servers_numbering_their_jobs_alike_keep_both(
    fake_ft: FakeOpenAI,
    ada: Path,
    train: Path,
    database: Database,
    sleeps: list[float],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    first = start_job(train)
    with FakeOpenAI() as other:
        other.valid_key, other.default_script = VALID_KEY, list(SUCCESS_SCRIPT)
        monkeypatch.setenv("OPENAI_BASE_URL", other.base_url)
        result = start(train)
        assert result.exit_code == 0, result.output
        assert "earlier one" not in result.output  # another server: nothing is shadowed
        assert list(other.jobs) == [first]  # the second server numbered its job alike
        stored = {(r.job_id, r.server, r.status) for r in jobs_in(database)}
        assert stored == {
            (first, fake_ft.base_url, "validating_files"),
            (first, other.base_url, "validating_files"),
        }
        # Status and cancel reach the job on the server OPENAI_BASE_URL names, and its row.
        assert run("finetune", "status", first, "--wait").exit_code == 0
        statuses = {r.server: r.status for r in jobs_in(database)}
        assert statuses == {fake_ft.base_url: "validating_files", other.base_url: "succeeded"}
        assert persona_row(database).model == FT_MODEL
        listed = run("finetune", "list").output.splitlines()
    # Newest first; the job on the other server says where it lives.
    assert listed[1].split()[0] == first and listed[1].endswith(FT_MODEL)
    assert listed[2].split()[0] == first and listed[2].endswith(f"  at {fake_ft.base_url}")
    monkeypatch.setenv("OPENAI_BASE_URL", fake_ft.base_url)
    assert run("finetune", "cancel", first).exit_code == 0
    statuses = {r.server: r.status for r in jobs_in(database)}
    assert statuses == {fake_ft.base_url: "cancelled", other.base_url: "succeeded"}


@pytest.mark.parametrize("command", ["status", "cancel"])
def test_a_job_the_account_does_not_have_says_so_and_names_finetune_list(
    fake_ft: FakeOpenAI, database: Database, command: str
) -> None:
    # It said only "OpenAI answered 404 while checking ftjob-nope: No such object: …".
    result = run("finetune", command, "ftjob-nope")
    assert result.exit_code == 1
    path = "/v1/fine_tuning/jobs/ftjob-nope" + ("/cancel" if command == "cancel" else "")
    assert error_lines(result) == [
        f"Error: ftjob-nope is not a fine-tuning job of the account at {fake_ft.base_url} "
        f"(404: No such object: {path}): `phischer finetune list` shows the jobs started "
        "here and the account's recent ones"
    ]


@pytest.mark.parametrize("command", ["status", "cancel"])
def test_a_job_of_the_server_openai_base_url_named_before_says_how_to_reach_it(
    fake_ft: FakeOpenAI, ada: Path, train: Path, database: Database,
    monkeypatch: pytest.MonkeyPatch, command: str,
) -> None:  # fmt: skip
    # It said only "OpenAI answered 404 …: No such object".
    job_id = start_job(train)
    with FakeOpenAI() as other:
        other.valid_key = VALID_KEY
        monkeypatch.setenv("OPENAI_BASE_URL", other.base_url)
        result = run("finetune", command, job_id)
    assert result.exit_code == 1
    assert error_lines(result) == [
        f"Error: {job_id} was started on {fake_ft.base_url}, not on {other.base_url} (where "
        f"OPENAI_BASE_URL points now): to reach it, set OPENAI_BASE_URL={fake_ft.base_url} and "
        "that account's OPENAI_API_KEY (in .env, or before the command)"
    ]
    assert stored_job(database)["status"] == "validating_files"


def test_a_restarted_server_reusing_a_job_id_keeps_both_and_follows_the_new_job(
    fake_ft: FakeOpenAI, ada: Path, train: Path, database: Database, sleeps: list[float]
) -> None:
    first = start_job(train)
    fake_ft.restart()
    fake_ft.default_script = list(SUCCESS_SCRIPT)
    result = start(train)
    assert result.exit_code == 0, result.output
    assert list(fake_ft.jobs) == [first]
    (note,) = [line for line in result.output.splitlines() if line.startswith("Note: http")]
    assert note.startswith(
        f"Note: {fake_ft.base_url} gave this job the id of an earlier one stored here "
        "(validating_files, started "
    )
    assert note.endswith(
        f"`finetune status {first}` follows the new one; `finetune list` shows both."
    )
    assert f"Started fine-tuning job {first} (validating_files)." in result.output
    assert run("finetune", "status", first, "--wait").exit_code == 0
    older, newer = sorted(jobs_in(database), key=lambda r: r.id)
    assert (older.status, newer.status) == ("validating_files", "succeeded")
    assert persona_row(database).model == FT_MODEL


LOCAL_JOB = "local-20261122-101010"


def test_local_jobs_are_never_sent_to_openai(
    fake_ft: FakeOpenAI, ada: Path, database: Database, tmp_path: Path
) -> None:
    record_local_job(
        database,
        LOCAL_JOB,
        tmp_path / "adapter",
        "running",
        persona_id=persona_row(database).id,
        training_file=str(tmp_path / "train.jsonl"),
    )
    with training_lock(tmp_path / "adapter"):  # its run trains there now
        status = run("finetune", "status", "local-20261122-101010")
    assert status.exit_code == 0
    assert status.output.splitlines() == [
        f"local-20261122-101010: running (local LoRA in {tmp_path / 'adapter'})"
    ]
    cancel = run("finetune", "cancel", "local-20261122-101010")
    assert cancel.exit_code == 1
    assert cancel.output.splitlines() == [
        "Error: local-20261122-101010 is a local job: stop it with Ctrl-C where it runs"
    ]
    assert fake_ft.requests == []
    assert jobs_in(database)[0].status == "running"


def test_cancelling_a_local_job_needs_no_api_key(
    ada: Path, database: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY")
    record_local_job(database, LOCAL_JOB, tmp_path / "adapter", "running")
    cancel = run("finetune", "cancel", "local-20261122-101010")
    assert cancel.exit_code == 1
    assert cancel.output.splitlines() == [
        "Error: local-20261122-101010 is a local job: stop it with Ctrl-C where it runs"
    ]


@pytest.mark.parametrize("status", ["succeeded", "failed", "cancelled"])
def test_cancelling_a_finished_local_job_says_it_is_finished(
    ada: Path, database: Database, tmp_path: Path, status: str
) -> None:
    record_local_job(database, LOCAL_JOB, tmp_path / "adapter", status)
    cancel = run("finetune", "cancel", "local-20261122-101010")
    assert cancel.exit_code == 1
    # Not "stop it with Ctrl-C where it runs": it runs nowhere.
    assert cancel.output.splitlines() == [
        f"Error: local-20261122-101010 is a local job that already {status}"
    ]
    assert jobs_in(database)[0].status == status


def test_status_of_a_stopped_local_job(ada: Path, database: Database, tmp_path: Path) -> None:
    adapter = tmp_path / "adapter"
    for job_id, status, error in [
        (
            "local-20261122-101010",
            "cancelled",
            "interrupted: rerun the same command to resume from checkpoint-10 (step 10)",
        ),
        ("local-20261122-111111", "failed", "CUDA out of memory"),
    ]:
        record_local_job(database, job_id, adapter, status, error=error)
    cancelled = run("finetune", "status", "local-20261122-101010")
    assert cancelled.exit_code == 0  # as an OpenAI job cancelled: a state, not an error
    assert cancelled.output.splitlines() == [
        f"local-20261122-101010: cancelled (local LoRA in {adapter})",
        "  interrupted: rerun the same command to resume from checkpoint-10 (step 10)",
    ]
    failed = run("finetune", "status", "local-20261122-111111")
    assert failed.exit_code == 1
    assert failed.output.splitlines() == [
        f"local-20261122-111111: failed (local LoRA in {adapter})",
        "Error: local-20261122-111111 failed: CUDA out of memory",
    ]


# -- list ----------------------------------------------------------------------------------


def test_list_shows_stored_and_remote_jobs(fake_ft: FakeOpenAI, ada: Path, train: Path) -> None:
    job_id = start_job(train)
    other = job_on_account(fake_ft, train, "gpt-4o-mini-2024-07-18")
    result = run("finetune", "list")
    assert result.exit_code == 0
    lines = result.output.splitlines()
    # One header, in the columns of the rows under it (the account's jobs too).
    assert lines[0].split() == ["JOB", "PROVIDER", "STATUS", "PERSONA", "BASE", "MODEL", "RESULT"]
    assert lines[1].split() == [
        job_id,
        "openai",
        "validating_files",
        "Ada",
        "Lovelace",
        "gpt-4.1-mini-2025-04-14",
    ]
    for line in (lines[1], lines[3]):
        assert [line.find(word) for word in ("openai", "validating_files")] == [
            lines[0].find(word) for word in ("PROVIDER", "STATUS")
        ]
    assert lines[2] == "On the OpenAI account (not started here):"
    assert lines[3].split() == [
        other,
        "openai",
        "validating_files",
        "-",
        "gpt-4o-mini-2024-07-18",
    ]
    assert len(lines) == 4


def test_list_lines_up_columns_however_long_a_base_model_or_persona_is(
    fake_ft: FakeOpenAI, database: Database, tmp_path: Path, train: Path
) -> None:
    # Fixed widths let a long cell push the rest of its line along: a local model folder
    # under BASE MODEL moved RESULT, a persona over 16 characters moved BASE MODEL.
    data = write_jsonl(tmp_path / "d.jsonl", [example("hi", "Hello, dear.")])
    with database.write() as session:
        spec = PersonaSpec(name="Marguerite Okafor-Lindqvist", keyword="m", dataset=str(data))
        persona_id = add_persona(session, spec).id
    long_base = "/home/someone/models/Meta-Llama-3.1-8B-Instruct"
    record_local_job(database, "local-1", tmp_path / "a1", base_model=long_base)
    record_local_job(database, "local-2", tmp_path / "a2", persona_id=persona_id)
    job_on_account(fake_ft, train, "gpt-4o-mini-2024-07-18")
    lines = run("finetune", "list").output.splitlines()
    header, rows = lines[0], [line for line in lines[1:] if not line.startswith("On the")]
    assert len(rows) == 3
    for column, cell in (("BASE MODEL", "/models/tiny"), ("RESULT", str(tmp_path / "a1"))):
        starts = {row.find(cell) for row in rows if cell in row}
        assert starts == {header.index(column)}, column
    assert rows[2].index("gpt-4o-mini") == header.index("BASE MODEL")


def test_list_of_account_jobs_only_has_its_header(fake_ft: FakeOpenAI, train: Path) -> None:
    other = job_on_account(fake_ft, train, "gpt-4o-mini-2024-07-18")
    lines = run("finetune", "list").output.splitlines()
    assert lines[:2] == [
        "No fine-tuning jobs yet: `phischer finetune start TRAIN.jsonl --persona NAME`.",
        "On the OpenAI account (not started here):",
    ]
    assert lines[2].split() == ["JOB", "PROVIDER", "STATUS", "PERSONA", "BASE", "MODEL", "RESULT"]
    assert lines[3].split()[0] == other and len(lines) == 4


def test_list_says_when_the_account_has_older_jobs_than_it_read(
    fake_ft: FakeOpenAI, ada: Path, train: Path
) -> None:
    started = start_job(train)
    others = [job_on_account(fake_ft, train, "gpt-4o-mini-2024-07-18") for _ in range(20)]
    lines = run("finetune", "list").output.splitlines()
    # One page of 20, newest first: the job started here is the 21st, not on it.
    assert [line.split()[0] for line in lines[1:2] + lines[3:-1]] == [started, *others[::-1]]
    assert lines[-1] == (
        "(only the account's 20 most recent jobs were read; it has older ones: "
        "`phischer finetune status JOB` shows any job)"
    )


def test_list_api_error_is_a_note_after_the_stored_jobs(
    fake_ft: FakeOpenAI, ada: Path, train: Path
) -> None:
    job_id = start_job(train)
    fake_ft.fail("GET", "/v1/fine_tuning/jobs", 401, "Incorrect API key provided")
    result = run("finetune", "list")
    assert result.exit_code == 0  # the jobs stored here were listed
    lines = result.output.splitlines()
    assert lines[0].split()[0] == "JOB" and lines[1].split()[0] == job_id
    assert lines[2:] == [
        "(remote OpenAI jobs not listed: OpenAI rejected the API key while listing fine-tuning "
        "jobs (401: Incorrect API key provided): check OPENAI_API_KEY in .env)"
    ]


def test_list_with_the_account_unreachable_still_shows_the_stored_jobs(
    fake_ft: FakeOpenAI, ada: Path, train: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    job_id = start_job(train)
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")  # nothing listens there
    monkeypatch.setattr(ft, "MAX_RETRIES", 0)
    result = run("finetune", "list")
    assert result.exit_code == 0
    header, stored, note = result.output.splitlines()
    assert header.split()[0] == "JOB" and stored.split()[0] == job_id
    assert note == (
        "(remote OpenAI jobs not listed: cannot reach http://127.0.0.1:9/v1/ while listing "
        "fine-tuning jobs (Connection error.): check your network or OPENAI_BASE_URL)"
    )


def test_a_key_the_server_quotes_back_is_not_printed(
    fake_ft: FakeOpenAI, ada: Path, train: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = "sk-proj-wrongKey0123456789abcdef"
    monkeypatch.setenv("OPENAI_API_KEY", key)
    fake_ft.echo_key = True
    result = start(train)
    assert error_lines(result) == [
        "Error: OpenAI rejected the API key while uploading train.jsonl (401: Incorrect API "
        "key provided: <OPENAI_API_KEY>): check OPENAI_API_KEY in .env"
    ]
    assert key not in result.output


def test_list_does_not_print_a_key_the_server_quotes_back(
    fake_ft: FakeOpenAI, tmp_path: Path
) -> None:
    # The refusal is a note on stdout, not an `Error:` line: as `phischer` prints it.
    key = "wrongKey0123456789abcdefghij"
    fake_ft.echo_key = True
    done = subprocess.run(
        [sys.executable, "-m", "phischer", "finetune", "list"],
        env={**os.environ, "OPENAI_API_KEY": key},
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "(401: Incorrect API key provided: <OPENAI_API_KEY>)" in done.stdout
    assert key not in done.stdout + done.stderr


def test_list_without_key_shows_only_stored_jobs(
    fake_ft: FakeOpenAI, database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY")
    result = run("finetune", "list")
    assert result.exit_code == 0
    assert result.output.splitlines() == [
        "No fine-tuning jobs yet: `phischer finetune start TRAIN.jsonl --persona NAME`.",
        "(remote OpenAI jobs not listed: no OPENAI_API_KEY)",
    ]
    assert fake_ft.requests == []


def test_list_without_key_marks_no_job_of_this_server_as_elsewhere(
    fake_ft: FakeOpenAI, ada: Path, train: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    job_id = start_job(train)
    monkeypatch.delenv("OPENAI_API_KEY")
    result = run("finetune", "list")
    assert result.exit_code == 0
    line = next(x for x in result.output.splitlines() if x.startswith(job_id))
    assert line.endswith("gpt-4.1-mini-2025-04-14")  # not "… at http://127.0.0.1:…/v1"
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")  # another server: named
    moved = run("finetune", "list")
    assert f"gpt-4.1-mini-2025-04-14  at {fake_ft.base_url}" in moved.output


def test_list_lines_up_jobs_of_cjk_and_accented_personas_by_terminal_columns(
    database: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY")
    data = write_jsonl(tmp_path / "d.jsonl", [example("hi", "Hello, dear.")])
    for i, name in enumerate(("李小龍", "Zoe\u0308 Çelik", "Ada")):
        with database.write() as session:
            added = add_persona(session, PersonaSpec(name=name, keyword=f"p{i}", dataset=str(data)))
            persona_id = added.id
        record_local_job(database, f"local-{i}", tmp_path / f"a{i}", persona_id=persona_id)
    header, *rows, _no_key = run("finetune", "list").output.splitlines()
    assert len(rows) == 3
    for line in rows:
        assert display_width(line[: line.index("/models/tiny")]) == header.index("BASE MODEL")


# -- end to end: the next text reaches the new model ---------------------------------------


def test_signed_sms_reaches_the_fine_tuned_model(
    fake_ft: FakeOpenAI,
    ada: Path,
    train: Path,
    database: Database,
    sleeps: list[float],
    make_app: Any,
    twilio_post: Any,
) -> None:
    app = make_app(openai_base_url=fake_ft.base_url)

    def text(body: str) -> list[str]:
        response = twilio_post(body, "+15550123", target=app)
        assert response.status_code == 200
        return response.replies

    before = text("hi")  # the retrieval persona answers from its dataset
    assert before == ["Hello, dear."]
    assert fake_ft.calls("POST", "/v1/chat/completions") == []

    fake_ft.default_script = list(SUCCESS_SCRIPT)
    job_id = start_job(train)
    assert run("finetune", "status", job_id, "--wait").exit_code == 0

    # Same running app, no restart. The webhook re-reads personas at most once a second;
    # expire that cache instead of sleeping through it.
    app.extensions["phischer"].sms.personas.invalidate()
    after = text("how are you?")
    assert after == [f"hey it's {FT_MODEL}"]
    (chat,) = fake_ft.calls("POST", "/v1/chat/completions")
    body = chat.json()
    assert body["model"] == FT_MODEL
    assert body["messages"][-1] == {"role": "user", "content": "how are you?"}


@pytest.mark.parametrize("answer", [404, 405, 501])
def test_a_server_without_events_still_reports_the_status_and_switches(
    fake_ft: FakeOpenAI,
    ada: Path,
    train: Path,
    database: Database,
    sleeps: list[float],
    answer: int,
) -> None:
    # An OpenAI-compatible server without the events endpoint failed every `status`: a
    # succeeded job never switched the persona.
    fake_ft.default_script = list(SUCCESS_SCRIPT)
    fake_ft.events_status = answer
    job_id = start_job(train)
    result = run("finetune", "status", job_id, "--wait")
    assert result.exit_code == 0, result.output
    note = f"  ({fake_ft.base_url} gives no events for its jobs: only the status is shown)"
    assert result.output.splitlines().count(note) == 1
    assert f"{job_id}: succeeded, 4,321 trained tokens, model {FT_MODEL}" in result.output
    assert result.output.splitlines()[-1] == f"Persona Ada Lovelace now answers with {FT_MODEL}."
    assert persona_row(database).model == FT_MODEL
    (row,) = jobs_in(database)
    assert row.status == "succeeded" and row.trained_tokens == 4321
    # Asked once in the wait (a 501 retried by the SDK as any 5xx), not at every poll.
    tries = 3 if answer >= 500 else 1
    assert len(fake_ft.calls("GET", f"/v1/fine_tuning/jobs/{job_id}/events")) == tries


def test_events_listed_out_of_order_are_each_shown_once(
    fake_ft: FakeOpenAI, ada: Path, train: Path, database: Database, sleeps: list[float]
) -> None:
    fake_ft.default_script = [Step("running", ["one", "two", "three"])] + [Step("running")] * 5
    job_id = start_job(train)
    first = run("finetune", "status", job_id)
    assert [m for m in ("one", "two", "three") if f" {m}\n" in first.output] == [
        "one",
        "two",
        "three",
    ]
    listed = fake_ft.events[job_id]  # newest first
    # "two" and "three" of one second swap places; "late" is listed below the newest one
    # shown (an earlier created_at), and "four" comes on top.
    listed[0], listed[1] = listed[1], listed[0]
    fake_ft.add_event(job_id, "late")
    listed.insert(2, listed.pop(0))
    fake_ft.add_event(job_id, "four")
    second = run("finetune", "status", job_id)
    assert second.exit_code == 0, second.output
    shown = [line.split(" ", 4)[-1] for line in second.output.splitlines()[:-1]]
    assert shown == ["late", "four"]
    assert run("finetune", "status", job_id).output.splitlines() == [f"{job_id}: running"]
    # A wait compares with what it showed itself, the same way.
    fake_ft.default_script = []
    fake_ft.add_event(job_id, "five")
    listed.insert(3, listed.pop(0))
    fake_ft.jobs[job_id]["status"] = "cancelled"
    waited = run("finetune", "status", job_id, "--wait")
    assert waited.exit_code == 0, waited.output
    assert waited.output.splitlines() == [waited.output.splitlines()[0], f"{job_id}: cancelled"]
    assert waited.output.splitlines()[0].endswith(" five")


def test_new_events_span_several_pages(
    fake_ft: FakeOpenAI, ada: Path, train: Path, database: Database
) -> None:
    # The events endpoint pages newest-first 50 at a time; 120 new events need three pages.
    steps = [f"Step {i}/120: training loss=1.00" for i in range(1, 121)]
    fake_ft.default_script = [Step("running", steps)]
    job_id = start_job(train)
    result = run("finetune", "status", job_id)
    assert result.exit_code == 0
    shown = [line.split(" ", 4)[-1] for line in result.output.splitlines() if "Step " in line]
    assert shown == steps
    pages = fake_ft.calls("GET", f"/v1/fine_tuning/jobs/{job_id}/events")
    assert [p.query.get("after") is not None for p in pages] == [False, True, True]


def test_more_new_events_than_shown_says_the_older_ones_were_cut(
    fake_ft: FakeOpenAI, ada: Path, train: Path
) -> None:
    steps = [f"Step {i}/250: training loss=1.00" for i in range(1, 251)]
    fake_ft.default_script = [Step("running", steps), Step("running", ["Checkpoint created"])]
    job_id = start_job(train)
    first = run("finetune", "status", job_id).output.splitlines()
    assert first[0] == "  (older events not shown, the latest 200 follow: --plot reads all)"
    assert [line.split(" ", 4)[-1] for line in first[1:-1]] == steps[-200:]
    second = run("finetune", "status", job_id).output.splitlines()
    assert second[0].endswith(" Checkpoint created") and len(second) == 2  # no note: all new


# -- status --plot ---------------------------------------------------------------------------


METRICS_SCRIPT = [
    Step(
        "running",
        [
            "Fine-tuning job started",
            metrics_event(1, 4, 2.5),
            metrics_event(2, 4, 2.0, valid_loss=2.25),
        ],
    ),
    Step(
        "running",
        [
            metrics_event(3, 4, 1.5),
            "Checkpoint created at step 3",
            metrics_event(4, 4, 1.25, valid_loss=1.75),
        ],
    ),
    Step(
        "succeeded",
        ["New fine-tuned model created", "The job has successfully completed"],
        fine_tuned_model=FT_MODEL,
        trained_tokens=4321,
    ),
]


@pytest.fixture
def drawn(monkeypatch: pytest.MonkeyPatch) -> list[tuple[tuple[Any, ...], plots.Plotted]]:
    """Every loss curve drawn during the test: (arguments, what it drew)."""
    calls: list[tuple[tuple[Any, ...], plots.Plotted]] = []
    real = plots.loss_curve

    def spy(*args: Any) -> plots.Plotted:
        result = real(*args)
        calls.append((args, result))
        return result

    monkeypatch.setattr(plots, "loss_curve", spy)
    return calls


def event(i: int, type_: str, data: dict[str, Any] | None = None) -> FineTuningJobEvent:
    """An SDK event object, as list_events yields them."""
    return FineTuningJobEvent(
        id=f"ftevent-{i}",
        object="fine_tuning.job.event",
        created_at=1_700_000_000 + i,
        level="info",
        message=f"event {i}",
        type=type_,
        data=data,
    )


def test_loss_series_takes_steps_and_losses_from_metrics_events_only() -> None:
    events = [
        event(1, "message"),
        event(2, "message", {"step": 99, "train_loss": 9.0}),  # not a metrics event
        event(3, "metrics", {"step": 2, "train_loss": 1.5, "total_steps": 3}),
        event(4, "metrics", {"step": 1, "train_loss": 2.0, "valid_loss": 2.5, "total_steps": 3}),
        event(5, "metrics", {"step": 3, "train_loss": 1.0, "train_mean_token_accuracy": 0.7}),
        event(6, "metrics", {"step": 3, "train_loss": 0.75, "valid_loss": 1.25}),  # last wins
        event(7, "metrics", {"total_steps": 3}),  # no step: nothing to place
    ]
    assert ft.loss_series(events) == plots.LossSeries(
        steps=[1, 2, 3], train_loss=[2.0, 1.5, 0.75], valid_loss=[2.5, None, 1.25]
    )
    no_validation = ft.loss_series(events[:3])
    assert no_validation == plots.LossSeries(steps=[2], train_loss=[1.5], valid_loss=None)
    assert ft.loss_series(events[:2]) == plots.LossSeries([], [], None)


def test_status_plot_draws_every_metrics_event_of_the_job(
    fake_ft: FakeOpenAI,
    ada: Path,
    train: Path,
    sleeps: list[float],
    drawn: list[Any],
    tmp_path: Path,
) -> None:
    fake_ft.default_script = list(METRICS_SCRIPT)
    job_id = start_job(train)
    first = run("finetune", "status", job_id)  # shows steps 1-2 and remembers them as seen
    assert "Step 2/4: training loss=2.00, validation loss=2.25" in first.output
    out = tmp_path / "plots" / "loss.png"
    result = run("finetune", "status", job_id, "--wait", "--plot", str(out))
    assert result.exit_code == 0, result.output
    assert "Step 2/4" not in result.output  # events already shown are not printed again...
    lines = result.output.splitlines()
    assert lines[-1] == f"Loss curve: {out}"
    head = lines.index(f"{job_id}: succeeded, 4,321 trained tokens, model {FT_MODEL}")
    assert head < len(lines) - 1  # the plot comes after the final status
    assert_png(out)
    ((args, plotted),) = drawn  # ...but the curve has every step of the job
    assert plotted.series == {
        "training loss": ([1.0, 2.0, 3.0, 4.0], [2.5, 2.0, 1.5, 1.25]),
        "validation loss": ([2.0, 4.0], [2.25, 1.75]),
    }
    assert args[3] == out and args[4] == f"{job_id} (succeeded)"


def test_status_plot_without_metrics_events_writes_nothing(
    fake_ft: FakeOpenAI, ada: Path, train: Path, drawn: list[Any], tmp_path: Path
) -> None:
    job_id = start_job(train)  # the default script: running, no training step yet
    out = tmp_path / "loss.png"
    result = run("finetune", "status", job_id, "--plot", str(out))
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[-2:] == [
        f"{job_id}: running",
        f"No loss curve: {job_id} has no metrics events yet (nothing written to {out}).",
    ]
    assert not out.exists() and drawn == []


def test_status_plot_reads_every_page_of_events(
    fake_ft: FakeOpenAI, ada: Path, train: Path, drawn: list[Any], tmp_path: Path
) -> None:
    losses = [round(3.0 - i / 50, 2) for i in range(1, 121)]
    fake_ft.default_script = [
        Step("running", [metrics_event(i, 120, loss) for i, loss in enumerate(losses, 1)])
    ]
    job_id = start_job(train)
    out = tmp_path / "loss.png"
    result = run("finetune", "status", job_id, "--plot", str(out))
    assert result.exit_code == 0, result.output
    ((_, plotted),) = drawn
    assert plotted.series == {"training loss": ([float(i) for i in range(1, 121)], losses)}
    # Three pages for the new events shown, three more for the whole history plotted.
    pages = fake_ft.calls("GET", f"/v1/fine_tuning/jobs/{job_id}/events")
    assert [p.query.get("after") is not None for p in pages] == [False, True, True] * 2
    assert_png(out)


def test_status_plot_without_matplotlib_fails_before_polling(
    fake_ft: FakeOpenAI,
    ada: Path,
    train: Path,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    job_id = start_job(train)
    before = len(fake_ft.requests)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    result = run("finetune", "status", job_id, "--wait", "--plot", str(tmp_path / "l.png"))
    assert result.exit_code == 1
    assert result.output == "Error: plots need matplotlib: pip install -e '.[plot]'\n"
    assert len(fake_ft.requests) == before  # nothing polled
    assert not (tmp_path / "l.png").exists()


@pytest.mark.parametrize("command", ["status", "cancel"])
def test_an_unknown_local_job_is_not_looked_up_on_openai(
    ada: Path, database: Database, fake_ft: Any, command: str
) -> None:
    # A key is set and the fake OpenAI answers: the error must still come from here.
    result = run("finetune", command, "local-20261122-999999")
    assert result.exit_code == 1
    assert result.output.splitlines() == [
        "Error: no fine-tuning job 'local-20261122-999999' here (see `phischer finetune list`)"
    ]
    assert fake_ft.requests == []
