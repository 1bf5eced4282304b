"""What the terminal shows: the engine log, the engines' output captured from child processes, the progress
lines, the Ray side's output split between the log and the terminal, and deprecated calls failing the tests."""

import json
import subprocess
import sys
import time
import warnings

import pytest

from jobs import console, launch
from jobs.console import EngineLog, Progress, describe_epoch, slot_state


def wait_for(predicate, seconds: float = 10.0) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def test_engine_log_keeps_lines_written_before_a_run_and_switches_between_runs(tmp_path):
    log = EngineLog()
    log.write("before any run (the JVM's start)")
    first = log.use(tmp_path / "run-1" / "engine.log")
    log.write("during run 1")
    log.use(tmp_path / "run-2" / "engine.log")
    log.write("during run 2\n")
    assert first.read_text().splitlines() == ["before any run (the JVM's start)", "during run 1"]
    assert (tmp_path / "run-2" / "engine.log").read_text() == "during run 2\n"
    log.use(first)  # a re-run of the same run id appends
    log.write("again")
    assert first.read_text().splitlines()[-1] == "again"
    assert list(log.recent)[-1] == "again\n"


def test_processes_started_inside_engine_output_write_to_the_log_not_the_terminal(tmp_path, capfd):
    console.ENGINE.use(tmp_path / "engine.log")
    code = "import sys; print('from the child, stdout'); print('from the child, stderr', file=sys.stderr)"
    with console.engine_output("test-child"):
        child = subprocess.Popen([sys.executable, "-c", code])
    child.wait()
    print("fulcrum's own line")
    assert wait_for(lambda: "stderr" in (tmp_path / "engine.log").read_text())
    text = (tmp_path / "engine.log").read_text()
    assert "from the child, stdout" in text and "from the child, stderr" in text
    seen = capfd.readouterr()
    assert "from the child" not in seen.out + seen.err and "fulcrum's own line" in seen.out


def test_verbose_echoes_the_engines_lines(tmp_path, capfd):
    log = EngineLog()
    log.use(tmp_path / "engine.log")
    log.set_verbose(True)
    log.write("an engine line")
    log.set_verbose(False)
    log.write("a quiet line")
    assert "an engine line" in capfd.readouterr().err
    assert (tmp_path / "engine.log").read_text().splitlines() == ["an engine line", "a quiet line"]


EPOCH = {"label": "cancer train", "epoch": 3, "epochs": 8, "metric": "macro_f1",
         "slots": [{"name": "fold-0", "value": 0.91, "best": 0.93, "stopped": False},
                   {"name": "fold-1", "value": 0.87, "best": 0.87, "stopped": False},
                   {"name": "fold-2", "value": 0.80, "best": 0.85, "stopped": True}]}  # fmt: skip


def test_an_epoch_in_one_line_and_a_slot_in_a_few_words():
    assert describe_epoch(EPOCH) == ("cancer train: epoch 3/8, 2 of 3 slot(s) training, val macro_f1 0.870–0.910; "
                                     "stopped early: fold-2")  # fmt: skip
    one = {**EPOCH, "slots": EPOCH["slots"][:1]}
    assert describe_epoch(one) == "cancer train: epoch 3/8, 1 of 1 slot(s) training, val macro_f1 0.910"
    assert slot_state(EPOCH["slots"][0], "macro_f1") == "val macro_f1 0.910 (best epoch: 0.930)"
    assert slot_state(EPOCH["slots"][1], "macro_f1") == "val macro_f1 0.870"
    assert slot_state(EPOCH["slots"][2], "macro_f1").endswith(", stopped early")


@pytest.mark.parametrize("mode", ["lines", "json", "none"])
def test_progress_modes(mode, capsys):
    progress = Progress()
    progress.configure(mode)
    with progress.stage("cancer", "train"):
        progress.event(EPOCH)
    err = capsys.readouterr().err.strip()
    if mode == "lines":
        assert err == describe_epoch(EPOCH)
    elif mode == "json":
        event = json.loads(err)
        assert event["event"] == "progress" and event["epoch"] == 3 and len(event["slots"]) == 3
    else:
        assert err == ""
    with pytest.raises(ValueError, match="use one of bars, lines, json, none"):
        progress.configure("fancy")


def test_bars_draw_one_bar_per_slot():
    from rich.console import Console

    screen = Console(record=True, force_terminal=True, width=120)
    progress = Progress()
    progress.configure("bars", screen)
    with progress.stage("cancer", "train"):
        progress.event(EPOCH)
        progress.event({**EPOCH, "epoch": 4})
        tasks = {t.description.strip(): t for t in progress._live.tasks}
    assert set(tasks) == {"cancer: train", "cancer train fold-0", "cancer train fold-1", "cancer train fold-2"}
    assert tasks["cancer train fold-0"].completed == 4 and tasks["cancer train fold-0"].total == 8
    assert tasks["cancer train fold-2"].completed == 8  # stopped early: its bar is full
    assert "stopped early" in tasks["cancer train fold-2"].fields["state"]


RAY_SIDE = """
import json, sys
print("2026-12-02 17:22:22,070 INFO training.runtime: started local Ray with 4 logical CPUs", file=sys.stderr)
print("(RayTrainWorker pid=1) Reporting training result 1: TrainingReport(...)")
print("@fulcrum " + json.dumps({"run": "final model", "epoch": 1, "epochs": 2, "metric": "macro_f1",
      "slots": [{"name": "final", "value": 0.5, "best": 0.5, "stopped": False}]}))
print("2026-12-02 17:22:23,000 WARNING training.cv: a warning of fulcrum's own", file=sys.stderr)
print("error: the training failed", file=sys.stderr)
sys.exit(3)
"""


def test_the_ray_sides_output_goes_to_the_log_its_progress_and_warnings_to_the_terminal(tmp_path, capsys, caplog):
    console.ENGINE.use(tmp_path / "engine.log")
    console.PROGRESS.configure("lines")
    try:
        with caplog.at_level("WARNING", logger="jobs"):
            code = launch.run_foreground([sys.executable, "-c", RAY_SIDE], "cancer train")
    finally:
        console.PROGRESS.configure("none")
    assert code == 3
    log = (tmp_path / "engine.log").read_text()
    assert "Reporting training result" in log and "started local Ray" in log and "@fulcrum" not in log
    # The progress line comes first and alone (a CLI test run earlier may have left fulcrum's console handler,
    # which then prints the warning and the failure below it).
    assert capsys.readouterr().err.strip().splitlines()[0] == ("cancer train, final model: epoch 1/2, 1 of 1 slot(s) "
                                                               "training, val macro_f1 0.500")  # fmt: skip
    messages = [r.getMessage() for r in caplog.records]
    assert "a warning of fulcrum's own" in messages  # at once, on the terminal
    failed = next(m for m in messages if m.startswith("cancer train exited with code 3"))
    assert "error: the training failed" in failed and str(tmp_path / "engine.log") in failed
    assert "Reporting training result" in failed  # the last lines, whatever they were


REFUSED_THEN_RUNS = """
import pathlib, sys
tries = pathlib.Path(sys.argv[1])
tries.write_text(tries.read_text() + "x" if tries.exists() else "x")
if len(tries.read_text()) <= 2:  # what `ray job submit` prints when the head's job agent is not up yet
    print("RuntimeError: Request failed with status code 500: No available agent to submit job, please try again "
          "later..", file=sys.stderr)
    sys.exit(1)
print("Job 'x' succeeded")
"""


def test_a_submission_refused_before_the_job_agent_is_up_is_made_again_and_other_failures_are_not(
        tmp_path, monkeypatch, caplog):  # fmt: skip
    """A Jobs API up before its agent refuses the job (nothing submitted): fulcrum submits again after a wait
    (the DAG's audit failed this way on a loaded machine). Any other failure ends the run at once."""
    console.ENGINE.use(tmp_path / "engine.log")
    monkeypatch.setattr(launch, "SUBMIT_WAITS_S", (0, 0, 0))  # the waits, not the rule, are shortened
    with caplog.at_level("INFO", logger="jobs"):
        code = launch.run_foreground([sys.executable, "-c", REFUSED_THEN_RUNS, str(tmp_path / "tries")], "audit CV")
    assert code == 0 and (tmp_path / "tries").read_text() == "xxx"
    assert sum("job agent is not up yet" in r.getMessage() for r in caplog.records) == 2
    assert "succeeded" in (tmp_path / "engine.log").read_text()
    code = launch.run_foreground([sys.executable, "-c", RAY_SIDE], "cancer train")  # exits 3, another reason
    assert code == 3 and sum("job agent is not up yet" in r.getMessage() for r in caplog.records) == 2
    monkeypatch.setattr(launch, "SUBMIT_WAITS_S", (0,))  # refused every time: the refusal stands
    (tmp_path / "tries").write_text("")
    code = launch.run_foreground([sys.executable, "-c", REFUSED_THEN_RUNS.replace("<= 2", "<= 9"),
                                  str(tmp_path / "tries")], "audit CV")  # fmt: skip
    assert code == 1 and (tmp_path / "tries").read_text() == "xx"
    assert any("--dashboard-agent-listen-port" in r.getMessage() for r in caplog.records)  # what to do about it


def test_a_deprecated_call_from_fulcrums_own_modules_fails_the_tests():
    with pytest.raises(DeprecationWarning):
        warnings.warn_explicit("an old API", DeprecationWarning, "jobs/cli.py", 1, module="jobs.cli")
    with pytest.raises(DeprecationWarning):
        warnings.warn_explicit("an old API", DeprecationWarning, "training/cv.py", 1, module="training.cv")
    warnings.warn_explicit("a library's own", DeprecationWarning, "ray/x.py", 1, module="ray.x")  # ignored


@pytest.mark.parametrize("classes", [["benign", "malignant"], ["a", "bb", "class_c", "d"],
                                     [f"digit_{i}" for i in range(10)]])  # fmt: skip
def test_the_audit_heat_maps_read_at_a_glance(classes, tmp_path):
    """Checked as a picture: no two labels overlap, nothing leaves the figure, every number is legible
    (white on dark cells), for two classes as for ten."""
    import numpy as np

    from jobs import plots

    k = len(classes)
    joint = (np.full((k, k), 3) + np.diag(np.linspace(40, 400, k).astype(int))).tolist()
    noise = (np.asarray(joint) / np.asarray(joint).sum(0, keepdims=True)).tolist()
    fig = plots.audit_figure({"classes": classes, "confident_joint": joint, "noise_matrix": noise})
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    page = fig.bbox
    for ax in fig.axes:
        labels = [t for t in [ax.title, ax.xaxis.label, ax.yaxis.label, *ax.get_xticklabels(), *ax.get_yticklabels()]
                  if t.get_text()]  # fmt: skip
        boxes = [t.get_window_extent(renderer) for t in labels]
        for i, a in enumerate(boxes):
            assert page.x0 - 1 <= a.x0 and a.x1 <= page.x1 + 1 and page.y0 - 1 <= a.y0 and a.y1 <= page.y1 + 1, labels[i]
            for j in range(i + 1, len(boxes)):
                assert not a.overlaps(boxes[j]), (labels[i].get_text(), labels[j].get_text())
        cells = [t for t in ax.texts]
        assert len(cells) == k * k
        # The diagonal (the darkest cells) is written in white, the rest in black; numbers fit their cells.
        assert {c.get_color() for c in cells[:: k + 1]} == {"white"}
        width = ax.get_window_extent(renderer).width / k
        assert max(c.get_window_extent(renderer).width for c in cells) < width
    others = [a.get_tightbbox(renderer) for a in fig.axes]  # with their titles and labels
    assert not others[0].overlaps(others[1])
    plots.save(fig, tmp_path / "audit.png")
    assert (tmp_path / "audit.png").stat().st_size > 0


def test_a_bad_log_format_is_a_usage_error(tmp_path, capsys):
    from jobs.cli import main

    assert main(["--log-format", "yaml", "samples", str(tmp_path / "s")]) == 2
    assert "--log-format 'yaml'" in capsys.readouterr().err and not (tmp_path / "s").exists()


def test_the_audit_says_whether_its_verdicts_were_measured_and_what_came_of_it():
    from jobs import cli
    from jobs.stage import StageReport

    est = {"classes": ["a", "b"], "counts": [10, 12], "thresholds": [0.7, 0.6], "noise_rate": [0.1, 0.0]}
    base = {"method": "prune_by_noise_rate", "ranking": "normalized_margin", "estimate": est, "pairs": {"a -> b": 1},
            "top": [], "applied": {"policy": "drop", "dropped": 1, "relabelled": 0}}  # fmt: skip
    acted = {"rows": 1, "seconds": 17.6, "act": True, "reason": "on the folds, mean macro_f1 0.810 with the verdicts "
             "applied against 0.800 on the labels as given (+0.010; audit.tolerance 0.01)"}  # fmt: skip
    with cli.out.capture() as seen:
        cli.print_audit(StageReport(stage="audit", details={**base, "verified": acted}))
    text = " ".join(seen.get().split())
    assert "the verdicts measured before they acted (1 rows, 18 s): on the folds, mean macro_f1 0.810" in text
    assert "applied before oversampling (drop): 1 rows dropped" in text
    withheld = {**acted, "act": False, "reason": "on the folds, …: the verdicts would make the model worse"}
    details = {**base, "verified": withheld, "abstained": withheld["reason"],
               "applied": {"policy": "drop", "dropped": 0, "relabelled": 0}}  # fmt: skip
    with cli.out.capture() as seen:
        cli.print_audit(StageReport(stage="audit", details=details))
    text = " ".join(seen.get().split())
    assert ("verdicts withheld after measuring them on the folds (1 rows, 18 s): on the folds, …: the verdicts would "
            "make the model worse") in text and "abstained" not in text  # fmt: skip
    assert "measured before they acted" not in text and "rows dropped" not in text
