"""The Airflow DAG's own commands against real local clusters: the audit (through `spark-submit`) and the train
stage submit `python -m training` as Ray jobs to a real `ray start --head` on 127.0.0.1, and the run's report
is the one `fulcrum run` makes: the audit and the CV, recorded under the run id."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.clusters import dag_commands, ray_head

pytestmark = [pytest.mark.cluster, pytest.mark.spark, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]
RUN_ID = "airflow-20260101T020000"


def _config(sample_dir: Path, gold: str, tmp_path: Path) -> Path:
    """The cancer sample's config on a copy of the 2-fold gold lake, trained small (no search)."""
    shutil.copytree(Path(gold).parent, tmp_path / "lake" / "cancer")
    cfg = yaml.safe_load((sample_dir / "cancer" / "cancer.yaml").read_text())
    cfg["source"]["path"] = str(sample_dir / "cancer" / cfg["source"]["path"])
    cfg["suite"] = str(sample_dir / "cancer" / cfg["suite"])
    cfg["lake_root"] = str(tmp_path / "lake")
    cfg["split"]["folds"] = 2
    cfg["oversample"]["method"] = "smotenc"  # as the gold lake it copies (auto is measured elsewhere)
    cfg["train"].update({"epochs": 3, "batch_size": 32, "patience": 5, "search": None})
    path = tmp_path / "cancer.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_the_dags_commands_record_training_and_report_it_like_fulcrum_run(sample_dir, cancer_gold, tmp_path):
    import torch
    from deltalake import DeltaTable

    config = _config(sample_dir, cancer_gold, tmp_path)
    with ray_head(num_cpus=4) as head:
        dag = dag_commands(str(config), RUN_ID, {"ray_address": head.dashboard, "spark_master": "local[2]"})
        for task in ("AUDIT", "TRAIN", "REPORT"):  # SPARK_STAGES' `run --until curate` made silver
            done = subprocess.run(["bash", "-c", dag[task]], cwd=tmp_path, env=head.env, capture_output=True,
                                  text=True, timeout=900)  # fmt: skip
            assert done.returncode == 0, (task, done.stdout[-4000:], done.stderr[-3000:])
            if task in ("AUDIT", "TRAIN"):  # a Ray job on the head: its streamed output is in the run's engine log
                log = (tmp_path / "lake" / "cancer" / "reports" / RUN_ID / "engine.log").read_text()
                assert "succeeded" in log and "joined Ray cluster" in log
                assert "joined Ray cluster" not in done.stdout + done.stderr  # the engines' lines stay in the log

    lake = tmp_path / "lake" / "cancer"
    ledger = DeltaTable(str(lake / "runs")).to_pyarrow_table().to_pylist()
    stages = {r["stage"]: r["status"] for r in ledger if r["run_id"] == RUN_ID}
    assert stages == {"audit": "succeeded", "oversample": "succeeded", "train": "succeeded"}  # under the run id
    assert (lake / "audit" / "predictions" / "_delta_log").is_dir()  # the audit's models trained on the head
    out = lake / "reports" / RUN_ID / "train"  # where the run report looks
    summary = json.loads((out / "cv.json").read_text())
    gold = DeltaTable(str(lake / "gold"))  # oversample rewrote the copy's gold after the audit
    assert summary["delta_version"] == gold.version() and len(summary["per_fold"]) == 2
    for f in range(2):
        history = json.loads((out / f"fold-{f}.json").read_text())["history"]
        assert history[-1]["train_loss"] < history[0]["train_loss"], history  # it learns
    assert summary["mean"]["roc_auc"] > 0.8
    rows = gold.to_pyarrow_table(columns=["sample_id", "fold", "synthetic_for"]).to_pylist()
    real = sorted(r["sample_id"] for r in rows if r["synthetic_for"] is None and r["fold"] >= 0)
    oof = DeltaTable(summary["predictions"]["path"]).to_pyarrow_table().to_pylist()
    assert sorted(r["sample_id"] for r in oof) == real  # every real non-test row, exactly once
    weights = torch.load(out / "model.pt", weights_only=True)
    assert any(k.endswith("weight") for k in weights) and summary["final"]["test_rows"] > 0
    report = (lake / "reports" / RUN_ID / "report.html").read_text()
    assert "learning curves" in report and "mean ± std" in report and "label audit: confident joint" in report
