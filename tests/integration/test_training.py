"""Training from gold on real local Ray (Ray Data, Ray Train, Ray Tune) and real PyTorch, tiny data."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from training import data
from training.cv import Settings, cross_validate, plan_concurrency, run_fold
from training.gold import Gold, GoldError

pytestmark = [pytest.mark.spark, pytest.mark.ray]


@pytest.fixture(scope="module")
def cancer_gold(spark, curated, tmp_path_factory):
    """The cancer sample re-split into 2 folds, oversampled (smotenc): the gold table's path."""
    import shutil

    from jobs import curate, io, oversample

    cfg = curated["cancer"]
    root = tmp_path_factory.mktemp("gold-lake")
    shutil.copytree(cfg.lake_dir, root / cfg.dataset)
    cfg = cfg.model_copy(update={"lake_root": str(root), "split": cfg.split.model_copy(update={"folds": 2})})
    curate.run(spark, cfg, "c-2")
    oversample.run(spark, cfg, "o-2")
    return io.Lake(cfg.lake_dir).path("gold")


def _rows(path: str) -> dict[str, dict]:
    from deltalake import DeltaTable

    return {r["sample_id"]: r for r in DeltaTable(path).to_pyarrow_table().to_pylist()}


def test_fold_batches_hold_exactly_the_contracts_rows(ray_local, cancer_gold):
    gold = Gold.open(cancer_gold)
    rows = _rows(cancer_gold)
    assert gold.folds == 2 and gold.classes == ("benign", "malignant") and gold.kind == "tabular"
    for f in range(gold.folds + 1):
        train, val, width = data.fold_datasets(gold, f)
        assert width == len(gold.numeric) + 3  # texture_grade one-hot: low, mid, high
        seen_train = [i for b in train.iter_batches(batch_size=64, batch_format="numpy") for i in b["sample_id"]]
        seen_val = [i for b in val.iter_batches(batch_size=64, batch_format="numpy") for i in b["sample_id"]]
        for sid in seen_train:
            r = rows[sid]
            if r["synthetic_for"] is None:
                assert r["fold"] not in (f, -1), r
            else:
                assert r["synthetic_for"] == f, r  # no synthetic row made for another fold
        for sid in seen_val:  # real rows of this fold only (for the final model: the test part)
            assert rows[sid]["synthetic_for"] is None and rows[sid]["fold"] == (f if f < gold.folds else -1)
        assert len(seen_val) == len(set(seen_val))
        expected = {s for s, r in rows.items() if r["synthetic_for"] is None and r["fold"] == (f if f < 2 else -1)}
        assert set(seen_val) == expected  # every validation row, exactly once
        batch = next(iter(train.iter_batches(batch_size=1000, batch_format="numpy")))
        assert batch["x"].dtype == np.float32 and abs(batch["x"][:, 0].mean()) < 0.2  # standardised on train


def test_cross_validation_learns_and_scores_every_real_row_once(ray_local, cancer_gold, tmp_path):
    from deltalake import DeltaTable

    gold = Gold.open(cancer_gold)
    summary = cross_validate(gold, Settings(epochs=3, batch_size=32, patience=5, warmup_steps=2), tmp_path / "cv")
    assert summary["delta_version"] == gold.version and len(summary["per_fold"]) == 2
    for f in range(2):
        history = json.loads((tmp_path / "cv" / f"fold-{f}.json").read_text())["history"]
        assert history[-1]["train_loss"] < history[0]["train_loss"], history
        assert history[-1]["val_rows"] == summary["per_fold"][f]["val_rows"]
    assert summary["mean"]["roc_auc"] > 0.8
    oof = DeltaTable(summary["predictions"]["path"]).to_pyarrow_table().to_pylist()
    real = {s for s, r in _rows(cancer_gold).items() if r["synthetic_for"] is None and r["fold"] >= 0}
    assert sorted(r["sample_id"] for r in oof) == sorted(real)  # every real non-test row, exactly once
    assert all(len(r["probabilities"]) == 2 and abs(sum(r["probabilities"]) - 1) < 1e-5 for r in oof)
    weights = torch.load(tmp_path / "cv" / "model.pt", weights_only=True)
    assert any(k.endswith("weight") for k in weights)
    assert summary["final"]["test_rows"] > 0
    for plot in ("fold_metrics.png", "learning_curves.png", "confusion.png"):
        assert (tmp_path / "cv" / plot).is_file()


def test_a_killed_worker_resumes_from_its_checkpoint(ray_local, cancer_gold, tmp_path):
    gold = Gold.open(cancer_gold)
    s = Settings(epochs=3, batch_size=64, patience=10, warmup_steps=2, crash_at_epoch=1, max_failures=1)
    result = run_fold(gold, s, 0, tmp_path, cpus_per_worker=0.5)
    assert (tmp_path / "crashed-0").read_text() == "1"  # the worker process really died at epoch 1
    assert result["resumed"]
    assert [h["epoch"] for h in result["history"]] == [0, 1, 2]  # epoch 0 from the first worker, not redone
    assert [h["resumed_from"] for h in result["history"]] == [None, 1, 1]


def test_concurrency_is_planned_before_starting():
    assert plan_concurrency(5, 1, 0.5, 8, 0, False) == 5
    assert plan_concurrency(5, 2, 1.0, 8, 0, False) == 3
    assert plan_concurrency(5, 1, 1.0, 16, 2, True) == 2
    with pytest.raises(RuntimeError, match="one fold needs 8 CPUs"):
        plan_concurrency(5, 8, 1.0, 4, 0, False)
    with pytest.raises(RuntimeError, match="GPU"):
        plan_concurrency(5, 2, 1.0, 16, 1, True)


def test_a_table_that_is_not_gold_is_refused(tmp_path):
    with pytest.raises(GoldError, match="no Delta table"):
        Gold.open(str(tmp_path / "nothing"))
