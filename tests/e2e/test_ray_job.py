"""`ray job submit` of `python -m training` against a real `ray start --head` on 127.0.0.1: the whole
cross-validation of a gold table as a cluster job, and what it leaves behind."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.clusters import BIN, ray_head

pytestmark = [pytest.mark.cluster, pytest.mark.spark, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]


def test_cross_validation_runs_as_a_ray_job_and_scores_every_real_row_once(cancer_gold, tmp_path):
    import torch
    from deltalake import DeltaTable

    out = tmp_path / "cv"
    with ray_head(num_cpus=4) as head:
        cmd = [str(BIN / "ray"), "job", "submit", "--address", head.dashboard, "--working-dir", str(ROOT),
               "--", "python", "-m", "training", "--table", cancer_gold, "--out", str(out),
               "--epochs", "3", "--batch-size", "32", "--warmup-steps", "2", "--patience", "5"]  # fmt: skip
        job = subprocess.run(cmd, cwd=ROOT, env=head.env, capture_output=True, text=True, timeout=600)
        assert job.returncode == 0, (job.stdout[-4000:], job.stderr[-2000:], head.log.read_text()[-2000:])
    assert "succeeded" in job.stdout and "mean ± std" in job.stdout  # the job's CV table, streamed back
    assert "joined Ray cluster" in job.stdout  # it ran on the head, not on a private local instance

    summary = json.loads((out / "cv.json").read_text())
    gold = DeltaTable(cancer_gold)
    assert summary["delta_version"] == gold.version() and len(summary["per_fold"]) == 2
    for f in range(2):
        history = json.loads((out / f"fold-{f}.json").read_text())["history"]
        assert history[-1]["train_loss"] < history[0]["train_loss"], history  # it learns
        assert history[-1]["val_rows"] == summary["per_fold"][f]["val_rows"]
    assert summary["mean"]["roc_auc"] > 0.8
    rows = gold.to_pyarrow_table(columns=["sample_id", "fold", "synthetic_for"]).to_pylist()
    real = sorted(r["sample_id"] for r in rows if r["synthetic_for"] is None and r["fold"] >= 0)
    oof = DeltaTable(summary["predictions"]["path"]).to_pyarrow_table().to_pylist()
    assert sorted(r["sample_id"] for r in oof) == real  # every real non-test row, exactly once
    assert all(len(r["probabilities"]) == 2 and abs(sum(r["probabilities"]) - 1) < 1e-5 for r in oof)
    weights = torch.load(out / "model.pt", weights_only=True)
    assert any(k.endswith("weight") for k in weights) and summary["final"]["test_rows"] > 0
    for plot in ("fold_metrics.png", "learning_curves.png", "confusion.png"):
        assert (out / plot).is_file()
