"""phischer.plots and the flags that use it: `dataset check --plot`, local `loss.png`."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from phischer import dataset_check, plots
from phischer.db import Database
from phischer.finetune import jobs
from phischer.finetune.loss_plot import copy_loss_plot, write_loss_plot
from phischer.finetune.train_result import TrainResult
from tests.conftest import record_local_job, run
from tests.plot_helpers import assert_png

DATA = Path(__file__).parent / "fixtures" / "datasets"
HINT = "plots need matplotlib: pip install -e '.[plot]'"


@pytest.fixture
def no_matplotlib(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make `import matplotlib` fail as it does when the plot extra is not installed."""
    monkeypatch.setitem(sys.modules, "matplotlib", None)


@pytest.fixture
def drawn(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, tuple[Any, ...], plots.Plotted]]:
    """Every plot drawn during the test: (function, arguments, what it drew)."""
    calls: list[tuple[str, tuple[Any, ...], plots.Plotted]] = []
    for name in ("token_histogram", "loss_curve"):
        real = getattr(plots, name)

        def spy(*args: Any, _real: Any = real, _name: str = name) -> plots.Plotted:
            result = _real(*args)
            calls.append((_name, args, result))
            return result

        monkeypatch.setattr(plots, name, spy)
    return calls


# -- the plot functions --------------------------------------------------------------------


def test_token_histogram_marks_limit_median_p95_and_counts_over_limit(tmp_path: Path) -> None:
    values = [10, 20, 20, 30, 40, 50, 60, 70, 80, 500]
    out = tmp_path / "sub" / "tokens.png"
    drawn = plots.token_histogram(values, 60, out, "t")
    assert drawn.path == out
    assert_png(out)
    # median of 10 values: (40 + 50) / 2; p95: 80 + 0.55 * (500 - 80) = 311 (numpy's rule).
    assert drawn.markers == pytest.approx({"median": 45.0, "p95": 311.0, "limit": 60.0})
    assert drawn.legend == [
        "10 examples",
        "median 45",
        "p95 311",
        "limit 60 tokens: 3 examples over",
    ]
    edges, counts = drawn.series["examples"]
    assert sum(counts) == len(values) and len(edges) == len(counts) + 1
    assert (edges[0], edges[-1]) == (10.0, 500.0)
    assert drawn.xscale == "linear"  # the limit is among the data: a linear axis shows it


def test_token_histogram_uses_a_log_axis_when_the_limit_is_far_away(tmp_path: Path) -> None:
    drawn = plots.token_histogram([21, 33, 45, 57, 129], 65_536, tmp_path / "h.png", "t")
    assert_png(tmp_path / "h.png")
    assert drawn.xscale == "log"
    assert drawn.legend[-1] == "limit 65,536 tokens: 0 examples over"
    assert sum(drawn.series["examples"][1]) == 5


def test_token_histogram_labels_are_whole_like_the_report(tmp_path: Path) -> None:
    # median (51 + 52) / 2 = 51.5, p95 51 + 0.95 = 51.95: the lines stand where the values
    # are, the legend reads them rounded as `dataset check` prints them (halves up).
    drawn = plots.token_histogram([51, 52], 65_536, tmp_path / "h.png", "t")
    assert drawn.markers == pytest.approx({"median": 51.5, "p95": 51.95, "limit": 65_536.0})
    assert drawn.legend[1:3] == ["median 52", "p95 52"]


def test_token_histogram_of_one_value(tmp_path: Path) -> None:
    drawn = plots.token_histogram([7], 7, tmp_path / "one.png", "t")
    assert_png(tmp_path / "one.png")
    assert drawn.legend == ["1 example", "median 7", "p95 7", "limit 7 tokens: 0 examples over"]
    with pytest.raises(plots.PlotError, match="no examples to plot"):
        plots.token_histogram([], 7, tmp_path / "none.png", "t")
    assert not (tmp_path / "none.png").exists()


def test_loss_curve_draws_exactly_the_given_points(tmp_path: Path) -> None:
    out = tmp_path / "loss.png"
    drawn = plots.loss_curve(
        [1, 2, 3, 4, 5], [2.5, 2.0, None, 1.25, 1.0], [None, 2.75, None, None, 1.5], out, "job"
    )
    assert_png(out)
    assert drawn.series == {
        "training loss": ([1.0, 2.0, 4.0, 5.0], [2.5, 2.0, 1.25, 1.0]),
        "validation loss": ([2.0, 5.0], [2.75, 1.5]),
    }
    assert drawn.legend == ["training loss", "validation loss"]


def test_loss_curve_without_validation_has_one_series(tmp_path: Path) -> None:
    drawn = plots.loss_curve([10, 20], [1.5, 0.5], None, tmp_path / "l.png", "job")
    assert drawn.series == {"training loss": ([10.0, 20.0], [1.5, 0.5])}
    assert drawn.legend == ["training loss"]


def test_loss_curve_refuses_nothing_to_draw_and_mismatched_lengths(tmp_path: Path) -> None:
    with pytest.raises(plots.PlotError, match="^no loss values to plot$"):
        plots.loss_curve([1, 2], [None, float("nan")], None, tmp_path / "l.png", "t")
    with pytest.raises(plots.PlotError, match="differ in length"):
        plots.loss_curve([1, 2], [1.0], None, tmp_path / "l.png", "t")
    assert not (tmp_path / "l.png").exists()


def test_unwritable_path_is_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a folder")
    target = blocker / "loss.png"
    with pytest.raises(plots.PlotError) as info:
        plots.loss_curve([1], [1.0], None, target, "t")
    assert str(info.value).startswith(f"cannot write {target}: ")
    assert "\n" not in str(info.value)


def test_missing_matplotlib_is_one_clear_line(no_matplotlib: None, tmp_path: Path) -> None:
    with pytest.raises(
        plots.PlotError, match=r"^plots need matplotlib: pip install -e '\.\[plot\]'$"
    ):
        plots.require_matplotlib()
    with pytest.raises(plots.PlotError, match="pip install"):
        plots.loss_curve([1], [1.0], None, tmp_path / "l.png", "t")
    assert not (tmp_path / "l.png").exists()


# -- dataset check --plot --------------------------------------------------------------------


def test_dataset_check_plot_draws_the_checked_token_counts(
    tmp_path: Path, drawn: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    counted: list[int] = []
    real_count = dataset_check.count_messages_tokens

    def count(messages: Any, model: Any = None) -> int:
        counted.append(len(messages))
        return real_count(messages, model)

    monkeypatch.setattr(dataset_check, "count_messages_tokens", count)
    out = tmp_path / "plots" / "tokens.png"
    result = run("dataset", "check", str(DATA / "stats.jsonl"), "--plot", str(out))
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[-1] == f"Token histogram: {out}"
    assert_png(out)
    # The counts `dataset check` printed (see test_dataset_check) are the ones drawn, and
    # every example was tokenized once: the plot reuses the check's counts.
    assert "Tokens per example:   min 21, median 45, p95 115, max 129" in result.output
    assert counted == [3, 5, 7, 9, 21]
    ((name, args, plotted),) = drawn
    assert name == "token_histogram"
    assert list(args[0]) == [21, 33, 45, 57, 129] and args[1] == 65_536
    assert args[3] == "stats.jsonl: tokens per example (gpt-4.1-mini-2025-04-14, o200k_base)"
    assert plotted.markers == pytest.approx({"median": 45.0, "p95": 114.6, "limit": 65_536.0})


def test_dataset_check_plot_follows_the_base_model_limit(tmp_path: Path, drawn: list[Any]) -> None:
    out = tmp_path / "t.png"
    result = run(
        "dataset",
        "check",
        str(DATA / "stats.jsonl"),
        "--base-model",
        "gpt-3.5-turbo-0613",
        "--plot",
        str(out),
    )
    assert result.exit_code == 0
    ((_, args, plotted),) = drawn
    assert args[1] == 4_096
    assert plotted.legend[-1] == "limit 4,096 tokens: 0 examples over"


def test_dataset_check_plot_with_errors_still_draws_valid_examples_and_exits_1(
    tmp_path: Path, drawn: list[Any]
) -> None:
    out = tmp_path / "t.png"
    result = run("dataset", "check", str(DATA / "errors.jsonl"), "--plot", str(out))
    assert result.exit_code == 1
    assert f"Token histogram: {out}" in result.output
    assert_png(out)
    ((_, args, _),) = drawn
    assert len(args[0]) == 3  # lines 1, 15 and 16 are the valid examples


def test_dataset_check_plot_with_no_valid_example_writes_nothing(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{oops\n[]\n", encoding="utf-8")
    out = tmp_path / "t.png"
    result = run("dataset", "check", str(bad), "--plot", str(out))
    assert result.exit_code == 1
    assert (
        f"No token histogram: no example without errors to count (nothing written to {out})."
        in result.output.splitlines()
    )
    assert not out.exists()


def test_dataset_check_plot_without_matplotlib_fails_before_checking(
    no_matplotlib: None, tmp_path: Path
) -> None:
    out = tmp_path / "t.png"
    result = run("dataset", "check", str(DATA / "stats.jsonl"), "--plot", str(out))
    assert result.exit_code == 1
    assert result.output == f"Error: {HINT}\n"
    assert not out.exists()
    # Without --plot the check does not need matplotlib at all.
    plain = run("dataset", "check", str(DATA / "stats.jsonl"))
    assert plain.exit_code == 0 and "Token histogram" not in plain.output


# -- local LoRA: loss.png --------------------------------------------------------------------


def result_with(loss: list[tuple[int, float]], evals: list[tuple[int, float]]) -> TrainResult:
    """A TrainResult carrying only a loss history."""
    return TrainResult(
        adapter_dir=Path("."),
        losses=[v for _, v in loss],
        global_step=loss[-1][0] if loss else 0,
        steps_this_run=len(loss),
        resumed_from=None,
        examples=4,
        dropped=0,
        tokens_seen=100,
        loss_history=loss,
        eval_history=evals,
    )


def test_local_loss_plot_has_training_steps_and_the_final_validation(
    tmp_path: Path, drawn: list[Any]
) -> None:
    out = tmp_path / "adapter" / "loss.png"
    line = write_loss_plot(
        result_with([(1, 3.0), (2, 2.5), (3, 2.25)], [(3, 2.75)]), out, "ada: LoRA"
    )
    assert line == f"Loss curve: {out}"
    assert_png(out)
    ((_, _, plotted),) = drawn
    assert plotted.series == {
        "training loss": ([1.0, 2.0, 3.0], [3.0, 2.5, 2.25]),
        "validation loss": ([3.0], [2.75]),
    }


def test_local_loss_plot_never_fails_the_job(tmp_path: Path, no_matplotlib: None) -> None:
    out = tmp_path / "loss.png"
    assert write_loss_plot(result_with([(1, 1.0)], []), out, "t") == f"No loss curve ({HINT})."
    assert not out.exists()


def test_local_loss_plot_with_no_logged_step(tmp_path: Path) -> None:
    out = tmp_path / "loss.png"
    line = write_loss_plot(result_with([], []), out, "t")
    assert line == "No loss curve (no loss values to plot)."
    assert not out.exists()


def test_status_plot_of_a_local_job_copies_its_loss_png(tmp_path: Path, database: Database) -> None:
    adapter = tmp_path / "adapter"
    plots.loss_curve([1, 2], [2.0, 1.0], None, adapter / "loss.png", "t")
    for job_id, folder in (("local-a", adapter), ("local-b", tmp_path / "empty")):
        record_local_job(
            database,
            job_id,
            folder,
            "succeeded",
            base_model="tiny",
            training_file="train.jsonl",
            hyperparameters=json.dumps({}),
        )
    with database.read() as session:
        row = jobs.get_job(session, "local-b")
        assert copy_loss_plot(row, tmp_path / "x.png").startswith("No loss curve")
    out = tmp_path / "copied" / "loss.png"
    result = run("finetune", "status", "local-a", "--plot", str(out))
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        f"local-a: succeeded (local LoRA in {adapter})",
        f"Loss curve: {out}",
    ]
    assert out.read_bytes() == (adapter / "loss.png").read_bytes()
    missing = run("finetune", "status", "local-b", "--plot", str(tmp_path / "b.png"))
    assert missing.exit_code == 0
    assert missing.output.splitlines()[-1] == (
        f"No loss curve: local-b wrote no {tmp_path / 'empty' / 'loss.png'} "
        f"(nothing written to {tmp_path / 'b.png'})."
    )
    assert not (tmp_path / "b.png").exists()


class _CutShort:
    """A figure whose save is stopped halfway (Ctrl-C or `kill` while the PNG is written)."""

    def savefig(self, fh: Any, **kwargs: Any) -> None:
        fh.write(b"\x89PNG\r\n\x1a\n" + b"\0" * 1000)
        raise KeyboardInterrupt


def test_a_plot_stopped_while_saved_leaves_no_cut_file(tmp_path: Path) -> None:
    from phischer.plots import _save

    target = tmp_path / "plots" / "tokens.png"
    with pytest.raises(KeyboardInterrupt):
        _save(_CutShort(), target)
    assert list(target.parent.iterdir()) == []
