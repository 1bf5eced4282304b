"""Training from gold on real local Ray (Ray Data, Ray Train, Ray Tune) and real PyTorch, tiny data."""

from __future__ import annotations

import numpy as np
import pytest

from training import data
from training.contract import TrainSettings as Settings
from training.cv import plan_concurrency, run_fold
from training.gold import Gold, GoldError

pytestmark = [pytest.mark.spark, pytest.mark.ray]


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


def test_a_workers_shard_is_kept_in_memory_after_the_first_epoch_when_it_fits(ray_local):
    import ray

    from training.worker import ShardCache

    n = 300
    ds = ray.data.from_items([{"x": np.full(4, i, np.float32), "y": i % 3, "sample_id": f"s{i}"} for i in range(n)])
    cache = ShardCache(ds, 64, limit_mb=1, shuffle=True, with_ids=True, seed=1)
    first = [b for b in cache.epoch(0)]
    assert cache.parts is not None and not cache.streaming
    second = [b for b in cache.epoch(1)]
    ids = lambda batches: [i for b in batches for i in b[2]]  # noqa: E731
    assert sorted(ids(first)) == sorted(ids(second)) == sorted(f"s{i}" for i in range(n))  # every row, once
    assert ids(second) != ids(list(cache.epoch(2)))  # reshuffled every epoch (seeded)
    for x, y, sid in second:  # rows stay whole: features, label and id move together
        assert all(int(x[r, 0]) == int(s[1:]) and int(y[r]) == int(s[1:]) % 3 for r, s in enumerate(sid))
    tiny = ShardCache(ds, 64, limit_mb=0.001, shuffle=False)
    assert sum(len(b[0]) for b in tiny.epoch(0)) == n and tiny.parts is None and tiny.streaming
    assert sum(len(b[0]) for b in tiny.epoch(1)) == n  # streamed again


def test_a_killed_worker_resumes_from_its_checkpoint(ray_local, cancer_gold, tmp_path):
    gold = Gold.open(cancer_gold)
    s = Settings(epochs=3, batch_size=64, patience=10, warmup_steps=2, max_failures=1)
    result = run_fold(gold, s, 0, tmp_path, cpus_per_worker=0.5, crash_at_epoch=1)
    assert (tmp_path / "crashed-0").read_text() == "1"  # the worker process really died at epoch 1
    assert result["resumed"]
    assert [h["epoch"] for h in result["history"]] == [0, 1, 2]  # epoch 0 from the first worker, not redone
    assert [h["resumed_from"] for h in result["history"]] == [None, 1, 1]
    # TensorBoard: rank 0's event files hold every epoch once, across the restart (the redone epoch purged).
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "tensorboard" / "fold-0")).Reload()
    assert {"train_loss", "val_loss", "val_accuracy", "val_macro_f1"} <= set(events.Tags()["scalars"])
    losses = events.Scalars("train_loss")
    assert [e.step for e in losses] == [0, 1, 2]
    assert [round(e.value, 4) for e in losses] == [round(h["train_loss"], 4) for h in result["history"]]


def test_a_training_set_that_ends_in_a_batch_of_one_row_trains(ray_local, cancer_gold, tmp_path):
    """A fold of batch_size·k + 1 rows (the 64k+1 crash on real data): the last row joins the batch before it."""
    gold = Gold.open(cancer_gold)
    rows = data.fold_datasets(gold, 0)[0].count()
    s = Settings(epochs=1, batch_size=rows - 1, patience=10, warmup_steps=1, tensorboard=False)
    assert rows % s.batch_size == 1
    result = run_fold(gold, s, 0, tmp_path, cpus_per_worker=0.5)
    assert result["train_rows"] == rows and np.isfinite(result["history"][0]["train_loss"])


def test_a_deterministic_error_in_the_training_function_is_not_retried(ray_local, cancer_gold, tmp_path):
    from training.cv import TrainingError
    from training.worker import read_error

    gold = Gold.open(cancer_gold)
    s = Settings(epochs=2, model="resnet18", max_failures=2, tensorboard=False)  # resnet18 on a tabular table
    with pytest.raises(TrainingError, match="fold-0: training failed with ValueError: model resnet18 needs an image"):
        run_fold(gold, s, 0, tmp_path, cpus_per_worker=0.5)
    error = read_error(tmp_path / "error-fold-0.json")
    assert error["attempts"] == 1 and "Traceback" in error["traceback"]  # one attempt of max_failures + 1


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


def test_a_search_that_cannot_run_is_refused_before_ray_starts(cancer_gold, capsys):
    from training.__main__ import main

    assert main(["--table", cancer_gold, "--search-trials", "3", "--search-folds", "3"]) == 2
    assert "search folds must be between 1 and the table's 2 folds" in capsys.readouterr().err
    assert main(["--table", cancer_gold, "--search-trials", "3", "--search-lr", "0.1,0.001"]) == 2
    assert "search lr must be a range" in capsys.readouterr().err
