"""The `fulcrum` command end to end: exit codes, messages, samples, ingest, demo."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from jobs.cli import main
from tests.html_report import decode, parse

ROOT = Path(__file__).resolve().parents[2]


def fulcrum(*args: str, cwd: Path = ROOT, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "jobs", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)  # fmt: skip


def test_help_lists_commands_with_examples(capsys):
    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    for command in ("samples", "ingest", "validate", "curate", "oversample", "train", "runs", "metrics", "demo", "audit",
                    "tradeoff"):
        assert command in text
    assert main(["ingest", "--help"]) == 0
    assert "Example: fulcrum ingest" in capsys.readouterr().out
    assert main(["tradeoff", "--help"]) == 0
    assert "Example: fulcrum tradeoff" in capsys.readouterr().out


def test_usage_errors_exit_2(tmp_path, capsys):
    assert main(["nosuchcommand"]) == 2
    assert main(["ingest", str(tmp_path / "missing.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"dataset": "x", "kind": "tabular", "source": {"path": "a", "format": "xls"},
                                   "columns": {"label": "y", "features": ["a"]}}))  # fmt: skip
    assert main(["ingest", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "source.format" in err and "'csv'" in err and "fix:" in err


@pytest.mark.spark
def test_samples_ingest_runs_in_process(spark, tmp_path, capsys):
    assert main(["samples", str(tmp_path)]) == 0
    cfg = str(tmp_path / "cancer" / "cancer.yaml")
    assert main(["ingest", cfg]) == 0
    out = capsys.readouterr().out
    assert "ingest" in out and "already_in_bronze=0" in out
    assert main(["ingest", cfg, "--set", "source.path=missing.csv"]) == 2
    assert "source not found" in capsys.readouterr().err
    assert main(["runs", cfg]) == 0
    out = capsys.readouterr().out
    assert "succeeded" in out and "failed" in out and "bronze@v0" in out


@pytest.mark.spark
def test_validate_exit_codes_and_summary(spark, tmp_path, capsys):
    assert main(["samples", str(tmp_path)]) == 0
    cfg = str(tmp_path / "cancer" / "cancer.yaml")
    assert main(["ingest", cfg]) == 0
    assert main(["validate", cfg]) == 0
    out = capsys.readouterr().out
    assert "mean_texture_in_range" in out and "Data Docs:" in out
    # A fail policy on an expectation the data breaks: exit 1, the summary still shown.
    assert main(["validate", cfg, "--set", "validate.policies.diagnosis_canonical=fail"]) == 1
    captured = capsys.readouterr()
    assert "diagnosis_canonical" in captured.out and "policy fail did not pass" in captured.err
    assert main(["suite", "init", cfg, "--out", str(tmp_path / "s.json")]) == 0
    said = capsys.readouterr().out
    assert "number ranges from log quartiles (" in said and "meta.range_from" in said  # which rule made the ranges
    assert main(["suite", "init", cfg, "--out", str(tmp_path / "s.json")]) == 2  # exists, no --force
    assert main(["validate", cfg, "--set", f"suite={tmp_path / 's.json'}"]) == 0
    capsys.readouterr()
    assert main(["validate", cfg, "--set", "validate.policies.nope=drop"]) == 2
    assert "names expectations the suite lacks" in capsys.readouterr().err
    assert main(["curate", cfg]) == 0
    out = capsys.readouterr().out
    assert "class counts per fold" in out and "exact_duplicate 12" in out and "near_duplicate 12" in out
    assert main(["curate", cfg, "--set", "split.folds=1"]) == 2


# Lines only the engines write: Spark's JVM (log4j, Ivy), Ray's driver and workers, Ray Train and Tune.
ENGINE_LINES = ("log4j", " WARN ", "Ivy", ":: resolving", "RayTrainWorker", "Reporting training result",
                "Execution plan", "Failed to query Ray Train Controller", "(pid=", "Token authentication",
                "Started a local Ray", "NativeCodeLoader", "DeprecationWarning")  # fmt: skip


@pytest.mark.spark
@pytest.mark.slow
def test_demo_runs_end_to_end_in_a_fresh_process(tmp_path):
    result = fulcrum("demo", "--out", str(tmp_path / "demo"), "--epochs", "1", "--set", "split.folds=2", timeout=840)
    assert result.returncode == 0, result.stderr[-3000:]
    # What a user sees: fulcrum's lines only, tables at full width (not a terminal: never cut), one progress
    # line per training epoch; the engines' output in each run's engine.log.
    seen = result.stdout + result.stderr
    assert not [marker for marker in ENGINE_LINES if marker in seen], [
        line for line in seen.splitlines() if any(m in line for m in ENGINE_LINES)][:10]  # fmt: skip
    assert "…" not in seen
    # (cancer: the search's best trial trained both folds, so the CV reuses them and trains the final model)
    assert "cancer train, search trial lr " in result.stderr
    assert "cancer train, final model: epoch 1/1, 1 of 1 slot(s) training, val macro_f1" in result.stderr
    assert "digits audit CV: epoch 1/1, 2 of 2 slot(s) training" in result.stderr
    assert "digits train: epoch 1/1, 2 of 2 slot(s) training" in result.stderr
    for dataset in ("cancer", "digits"):
        (log,) = (tmp_path / "demo" / "lake" / dataset / "reports").glob("*/engine.log")
        text = log.read_text()
        assert "Reporting training result" in text  # the Ray side, workers too
        # Every Ray-side run of the command joins the one local instance its first run started (the audit's
        # verdicts are measured by one more run when they would change a row).
        (audit_json,) = (tmp_path / "demo" / "lake" / dataset / "reports").glob("*/audit.json")
        measured = 1 if json.loads(audit_json.read_text()).get("verified") else 0
        assert text.count("joined Ray cluster at ") == (3 if dataset == "cancer" else 2) + measured
    (first,) = (tmp_path / "demo" / "lake" / "cancer" / "reports").glob("*/engine.log")
    assert "log4j" in first.read_text()  # the JVM's start, in the first run's log
    assert first.read_text().count("started local Ray") == 1  # the shared instance's start
    assert "cancer: stages" in result.stdout and "digits: stages" in result.stdout
    assert "image_undecodable" in result.stdout and "validate" in result.stdout
    assert (tmp_path / "demo" / "lake" / "cancer" / "bronze" / "_delta_log").is_dir()
    assert (tmp_path / "demo" / "lake" / "digits" / "quarantine" / "_delta_log").is_dir()
    assert (tmp_path / "demo" / "lake" / "digits" / "reports" / "data_docs" / "index.html").is_file()
    assert "class counts per fold" in result.stdout
    assert "training sets: class counts before -> after" in result.stdout
    for dataset in ("cancer", "digits"):
        assert (tmp_path / "demo" / "lake" / dataset / "silver" / "_delta_log").is_dir()
        assert (tmp_path / "demo" / "lake" / dataset / "gold" / "_delta_log").is_dir()
    # Training: both samples cross-validated on Ray twice, the CV table printed each time: the audit's models on
    # silver's real rows (audit/gold), then gold's; predictions beside gold.
    assert result.stdout.count("cross-validation:") == 4 and "mean ± std" in result.stdout
    assert result.stdout.count("/audit/gold v0") == 2
    for dataset in ("cancer", "digits"):
        assert (tmp_path / "demo" / "lake" / dataset / "predictions" / "_delta_log").is_dir()
        assert list((tmp_path / "demo" / "lake" / dataset / "reports").glob("*/train/model.pt"))
        # The run report: CV per fold with mean ± std, learning curves and confusion matrix embedded.
        (html,) = (tmp_path / "demo" / "lake" / dataset / "reports").glob("*/report.html")
        page = parse(html)
        assert "mean ± std" in page.text and "Training did not run in this run." not in page.text
        for plot in ("CV metrics per fold", "learning curves", "confusion matrix (out-of-fold predictions)",
                     "calibration: reliability diagram (CV out-of-fold rows and the test part)",
                     "label audit: confident joint and noise matrix"):
            assert [decode(src) for alt, src in page.images if alt == plot]
        # The label audit ran last: its table beside gold and its section in the report.
        assert (tmp_path / "demo" / "lake" / dataset / "label_issues" / "_delta_log").is_dir()
        assert "audit" in page.sections and "The label audit did not run in this run." not in page.text
        words = " ".join(" ".join(page.text).split())
        assert "Applied to silver before gold was built" in words  # the audit acted before oversampling
        if dataset == "cancer":  # the cancer sample balances by measurement (oversample.method auto)
            assert "compared 4 ways to balance on the split's folds" in words
    assert result.stdout.count("label audit (prune_by_noise_rate)") == 2
    # The cancer sample searches hyperparameters first (train.search): its best configuration is the CV's.
    assert result.stdout.count("hyperparameter search: 3 random trials over 2 fold(s)") == 1
    (folder,) = (tmp_path / "demo" / "lake" / "cancer" / "reports").glob("*/train")
    search, cv = (json.loads((folder / name).read_text()) for name in ("search/search.json", "cv.json"))
    # One epoch per trial (--epochs 1): ASHA has no rung to compare at, every trial trains both folds.
    assert len(search["results"]) == 3 and search["rungs"] == [] and (folder / "search" / "search.png").is_file()
    best = next(t for t in search["results"] if t["best"])
    assert len(best["scores"]) == 2 and best["config"] == search["best"]["config"] == cv["search"]["best"]["config"]
    assert {k: cv["settings"][k] for k in best["config"]} == best["config"]
    # It scored both folds at the training's epochs: its folds are the CV's, not trained twice.
    assert cv["folds_from_search"] and [f["macro_f1"] for f in cv["per_fold"]] == best["scores"]
    # Calibration beside the other metrics, and the reliability diagram's bins over every out-of-fold row.
    assert all(0 <= f["brier"] <= 1 and 0 <= f["ece"] <= 1 for f in cv["per_fold"])
    assert sum(cv["calibration"]["out_of_fold"]["rows"]) == sum(f["val_rows"] for f in cv["per_fold"])
    assert sum(cv["calibration"]["test"]["rows"]) == cv["final"]["test_rows"] and "brier" in result.stdout
    assert all(len(t["scores"]) == 2 and not t["stopped_early"] for t in search["results"])
    page = parse(next((tmp_path / "demo" / "lake" / "cancer" / "reports").glob("*/report.html")))
    assert "stopped early by ASHA" in " ".join(page.text)
    assert [alt for alt, _ in page.images if alt.startswith("hyperparameter search")]


@pytest.mark.spark
def test_train_before_gold_exists_is_a_usage_error_and_is_recorded(spark, tmp_path, capsys):
    assert main(["samples", str(tmp_path)]) == 0
    cfg = str(tmp_path / "cancer" / "cancer.yaml")
    assert main(["ingest", cfg]) == 0
    capsys.readouterr()
    assert main(["train", cfg]) == 2
    err = capsys.readouterr().err
    assert "gold does not exist yet" in err and "fulcrum oversample" in err
    assert main(["tradeoff", cfg]) == 2
    err = capsys.readouterr().err
    assert "gold does not exist yet" in err and "fulcrum run" in err
    assert main(["tradeoff", cfg, "--set", "tradeoff.fractions=[1]"]) == 2
    assert "at least two distinct values" in capsys.readouterr().err
    assert main(["runs", cfg]) == 0
    out = capsys.readouterr().out
    assert "train" in out and "failed" in out and "tradeoff" in out


@pytest.mark.spark
def test_a_warm_machine_starts_spark_offline_and_verbose_shows_the_engines(spark, tmp_path):
    """After one start has resolved the Delta jars (the session's, or `make warm`), Spark starts without asking a
    repository: here the only one it could ask is unreachable. The warm-up writes the driver's class archive and
    that start maps it (with ``-Xshare:on`` the JVM would not start otherwise). Without the recorded jars (and with
    a damaged archive, which the JVM ignores), the same start fails with the resolver's error and the fix."""
    import shutil

    from jobs.lakehouse.session import jar_manifest

    (tmp_path / "ivy.xml").write_text(
        '<ivysettings><settings defaultResolver="unreachable"/><resolvers><ibiblio name="unreachable" '
        'm2compatible="true" root="http://127.0.0.1:9/maven2/"/></resolvers></ivysettings>')  # fmt: skip
    cache = tmp_path / "cache"
    cache.mkdir()
    shutil.copy(jar_manifest(), cache / "spark-jars.json")  # the jars the session's start resolved
    env = {**os.environ, "PYTHONPATH": str(ROOT), "FULCRUM_CACHE": str(cache)}
    warmed = subprocess.run([sys.executable, "-m", "jobs.lakehouse.session"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=600)  # fmt: skip
    assert warmed.returncode == 0 and "class archive written" in warmed.stdout, warmed.stdout + warmed.stderr[-3000:]
    (archive,) = cache.glob("spark-classes-*.jsa")
    assert fulcrum("samples", str(tmp_path / "s")).returncode == 0
    config = str(tmp_path / "s" / "cancer" / "cancer.yaml")
    conf = {"spark.jars.ivySettings": str(tmp_path / "ivy.xml"), "spark.jars.ivy": str(tmp_path / "ivy-cache")}
    unreachable = "spark.conf=" + json.dumps(conf)
    mapped = "spark.conf=" + json.dumps({**conf, "spark.driver.extraJavaOptions": "-Xshare:on"})
    warm = subprocess.run([sys.executable, "-m", "jobs", "--verbose", "runs", config, "--set", mapped], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert warm.returncode == 0, warm.stderr[-3000:]
    assert "no runs recorded yet" in warm.stdout
    assert "log4j" in warm.stderr  # --verbose: the JVM's lines on the terminal too
    assert "log4j" in (tmp_path / "s" / "lake" / "cancer" / "reports" / "engine.log").read_text()
    (tmp_path / "empty").mkdir()  # no recorded jars; a damaged archive under the name a start would map
    (tmp_path / "empty" / archive.name).write_bytes(b"not an archive")
    cold = subprocess.run([sys.executable, "-m", "jobs", "runs", config, "--set", unreachable], cwd=ROOT,
                          env={**env, "FULCRUM_CACHE": str(tmp_path / "empty")},
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert cold.returncode == 3  # the JVM started despite the damaged archive; the resolver failed
    assert "Spark could not start" in cold.stderr and "127.0.0.1:9" in cold.stderr and "make warm" in cold.stderr
    assert "log4j" not in cold.stderr.split("error:")[0]  # not verbose: nothing of the JVM's before the error
