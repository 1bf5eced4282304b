"""The training engine on a real gold table: real Delta files, real PyTorch, real local Ray Train."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from training import data
from training.contract import TrainSettings as Settings
from training.cv import plan_concurrency, run_slots, slot_config
from training.engine import Slot, cv_slots
from training.gold import Gold, GoldError
from training.worker import train_slots

pytestmark = [pytest.mark.spark, pytest.mark.ray]


def _rows(path: str) -> dict[str, dict]:
    from deltalake import DeltaTable

    return {r["sample_id"]: r for r in DeltaTable(path).to_pyarrow_table().to_pylist()}


def _in_process(gold: Gold, s: Settings, slots: list[Slot], out, final: bool = False, members: int = 1) -> dict:
    """The engine in this process, as a search trial runs it (no Ray Train; one worker, the CPU)."""
    reports = []
    results = train_slots(slot_config(gold, s, slots, out, final=final, members=members), report=reports.append)
    assert results is not None, (out / "error.json").read_text()
    return {**results, "reports": reports}


def test_a_relative_table_path_is_made_absolute(cancer_gold, monkeypatch):
    """Ray's workers run in a working directory of their own: ``python -m training --table lake/gold``
    given a relative path must hand them the absolute one (it failed with "no Delta table")."""
    import os

    monkeypatch.chdir(os.path.dirname(cancer_gold))
    gold = Gold.open(os.path.basename(cancer_gold))
    assert gold.path == os.path.abspath(cancer_gold) and os.path.isabs(gold.path)


def test_each_slots_rows_follow_the_contract_and_its_own_statistics(cancer_gold):
    gold = Gold.open(cancer_gold)
    rows = _rows(cancer_gold)
    assert gold.folds == 2 and gold.classes == ("benign", "malignant") and gold.kind == "tabular"
    loaded = data.load(gold)
    assert loaded.x.dtype == torch.float32 and len(loaded) == len(rows)
    assert loaded.x.shape[1] == data.width(gold, data.vocabulary(gold)) == len(gold.numeric) + 3  # texture: 3 one-hot
    for f in range(gold.folds + 1):
        train, val = Slot(f, final=f == gold.folds).masks(loaded.contract, gold.folds)
        for sid in loaded.ids_of(train):
            r = rows[sid]
            assert r["fold"] not in (f, -1) if r["synthetic_for"] is None else r["synthetic_for"] == f, r
        expected = {s for s, r in rows.items() if r["synthetic_for"] is None and r["fold"] == (f if f < 2 else -1)}
        assert sorted(loaded.ids_of(val)) == sorted(expected)  # every validation row, exactly once
    masks = torch.from_numpy(np.stack([Slot(f).masks(loaded.contract, 2)[0] for f in range(2)]))
    mean, std, keep = data.finish_statistics(data.slot_statistics(loaded.x, loaded.numeric, masks))
    from training.engine import SlotInput

    for f in range(2):  # each slot standardises with its own training rows' statistics
        seen = SlotInput(mean[f], std[f], keep[f])(loaded.x[masks[f]])[:, : loaded.numeric]
        assert seen.mean(0).abs().max() < 1e-3 and (seen.std(0) - 1).abs().max() < 0.05
        assert mean[0][0] != mean[1][0]


@pytest.mark.parametrize("world", [1, 2, 5])
def test_the_ids_read_after_the_rows_belong_to_those_rows_on_every_worker(cancer_gold, world):
    """Training reads no ``sample_id``; the ids read later (same files, same row order) line up with each
    worker's rows: label and fold as in the table, and the workers' rows together are every row once
    (world 5 is more workers than files: every worker reads them all and keeps every 5th row)."""
    gold = Gold.open(cancer_gold)
    rows = _rows(cancer_gold)
    assert "sample_id" not in data.read_rows(gold).column_names
    seen = []
    for rank in range(world):
        loaded = data.load(gold, rank, world)
        ids = loaded.ids_of(np.ones(len(loaded), bool))
        assert len(ids) == len(loaded)
        folds = loaded.contract.column("fold").to_pylist()
        for i, sid in enumerate(ids):
            assert rows[sid]["label"] == int(loaded.y[i]) and rows[sid]["fold"] == folds[i], sid
        seen += ids.tolist()
    assert sorted(seen) == sorted(rows)


def test_the_folds_skip_the_test_parts_files_and_the_final_model_scores_every_test_row(cancer_gold, tmp_path):
    """Oversample writes the test part into files of its own; the folds' read skips them by the Delta log's
    statistics (it reads no test row) and the final model's phase adds them: the rows are then every row of
    the table, each as a full read has it, and the final model is scored on every test row once."""
    import pyarrow.parquet as pq

    gold = Gold.open(cancer_gold)
    rows = _rows(cancer_gold)
    train, test = gold.files("train"), gold.files("test")
    assert test and train and sorted(train + test) == gold.files()
    assert all(set(pq.read_table(f, columns=["fold"]).column("fold").to_pylist()) == {-1} for f in test)
    assert all(-1 not in pq.read_table(f, columns=["fold"]).column("fold").to_pylist() for f in train)
    folds = data.load(gold, part="train")
    assert len(folds) == sum(r["fold"] != -1 for r in rows.values()) and -1 not in folds.contract["fold"].to_pylist()
    whole = folds.extend(data.load(gold, part="test", categories=folds.categories))
    every = data.load(gold)
    ids, all_ids = whole.ids_of(np.ones(len(whole), bool)), every.ids_of(np.ones(len(every), bool))
    assert sorted(ids) == sorted(all_ids) == sorted(rows)
    position = {sid: i for i, sid in enumerate(all_ids)}
    same = [position[sid] for sid in ids]
    assert torch.allclose(whole.x, every.x[same], equal_nan=True) and torch.equal(whole.y, every.y[same])
    s = Settings(epochs=2, batch_size=32, patience=5, warmup_steps=1, tensorboard=False)
    result = _in_process(gold, s, cv_slots(2), tmp_path, final=True)
    held = [i for i, r in rows.items() if r["synthetic_for"] is None and r["fold"] == -1]
    assert sorted(result["final"]["ids"]) == sorted(held)
    assert result["final"]["train_rows"] == sum(
        r["fold"] != -1 if r["synthetic_for"] is None else r["synthetic_for"] == 2 for r in rows.values())  # fmt: skip


def test_an_image_gold_whose_files_mix_both_parts_trains_the_folds_and_scores_the_final_model(spark, tmp_path):
    """A small gold can hold test and training rows in one file: no file is test-only, the folds read
    every file and the final model's phase finds no file to add (an image table's flags, typed, not null)."""
    import json

    from jobs.lakehouse import tables

    rng = np.random.default_rng(0)
    rows = [(f"s{i}", i % 2, i % 3 - 1, None, None, False, str(i % 2),
             data.png(rng.integers(0, 256, (8, 8), dtype=np.uint8))) for i in range(36)]  # fmt: skip
    schema = ("sample_id string, label int, fold int, synthetic_for int, dropped_for array<int>, augment boolean,"
              " class_name string, image binary")  # fmt: skip
    props = {"fulcrum.kind": "images", "fulcrum.classes": json.dumps(["0", "1"]), "fulcrum.folds": 2,
             "fulcrum.features": "[]", "fulcrum.image_size": 8, "fulcrum.image_channels": 1,
             "fulcrum.image_column": "path", "fulcrum.image_embedded": "true"}  # fmt: skip
    path = str(tmp_path / "gold")
    tables.overwrite(spark.createDataFrame(rows, schema).coalesce(1), path, "r-1", "test", props)
    gold = Gold.open(path)
    assert gold.files("test") == [] and len(gold.files("train")) == 1
    empty = data.load(gold, part="test")
    assert len(empty) == 0 and empty.x.shape == (0, 1, 8, 8) and empty.augment.dtype == torch.bool
    s = Settings(epochs=1, batch_size=8, patience=5, warmup_steps=1, tensorboard=False, model="cnn", amp=False)
    result = _in_process(gold, s, cv_slots(2), tmp_path / "out", final=True)
    assert sorted(result["final"]["ids"]) == sorted(r[0] for r in rows if r[2] == -1)
    assert {result[f"fold-{f}"]["train_rows"] for f in (0, 1)} == {len(result[f"fold-{f}"]["ids"]) for f in (0, 1)} == {12}


def test_slots_stop_on_their_own_and_a_fold_among_k_matches_it_alone(cancer_gold, tmp_path):
    gold = Gold.open(cancer_gold)
    s = Settings(epochs=14, batch_size=32, hidden=(32,), patience=2, warmup_steps=4, tensorboard=False)
    together = _in_process(gold, s, cv_slots(2), tmp_path / "k")
    for f in range(2):  # each slot stopped exactly when its own validation loss ran out of patience
        losses = [h["val_loss"] for h in together[f"fold-{f}"]["history"]]
        best, bad, stop = np.inf, 0, len(losses)
        for epoch, loss in enumerate(losses):
            best, bad = (loss, 0) if loss < best else (best, bad + 1)
            if bad >= s.patience:
                stop = epoch + 1
                break
        assert len(losses) == stop
    alone = _in_process(gold, s, [Slot(0)], tmp_path / "one")
    scores = [together[f"fold-{f}"]["metrics"]["accuracy"] for f in range(2)]
    spread = max(float(np.std(scores)), 0.02)
    assert abs(alone["fold-0"]["metrics"]["accuracy"] - scores[0]) <= spread  # within the folds' spread
    assert alone["fold-0"]["train_rows"] == together["fold-0"]["train_rows"]


def test_an_ensembles_members_train_on_the_same_rows_from_their_own_weights_and_are_averaged(cancer_gold, tmp_path):
    """``--members 3``: each fold and the final model are three slots of one pass, with the same rows and their own
    initial weights; the fold's result is the mean of its members' probabilities, scored again."""
    from training.cv import average
    from training.engine import ensemble_slots
    from training.loop import score

    gold = Gold.open(cancer_gold)
    s = Settings(epochs=2, batch_size=32, patience=5, warmup_steps=1, tensorboard=False)
    slots = ensemble_slots(cv_slots(2), 3)
    assert [x.name for x in slots] == ["fold-0", "fold-1", "fold-0-m1", "fold-1-m1", "fold-0-m2", "fold-1-m2"]
    result = _in_process(gold, s, slots, tmp_path, final=True, members=3)
    assert {"final", "final-m1", "final-m2"} <= set(result)
    for base in ("fold-0", "fold-1", "final"):
        members = [result[base], result[f"{base}-m1"], result[f"{base}-m2"]]
        assert len({r["train_rows"] for r in members}) == 1
        assert all(np.array_equal(members[0]["ids"], r["ids"]) for r in members)
        assert not np.allclose(members[0]["probabilities"], members[1]["probabilities"])  # their own weights
        mean = average(members, 2)
        assert np.allclose(mean["probabilities"], np.mean([r["probabilities"] for r in members], axis=0))
        assert mean["metrics"]["log_loss"] == pytest.approx(score(mean["labels"], mean["probabilities"], 2).loss)
        assert mean["metrics"]["epoch"] == members[0]["metrics"]["epoch"]
    other = dict(result["fold-0-m1"], ids=result["fold-1"]["ids"])
    with pytest.raises(RuntimeError, match="different rows"):
        average([result["fold-0"], other], 2)


def test_the_same_seed_and_gold_version_give_the_same_predictions(cancer_gold, tmp_path):
    """Deterministic on the CPU: two runs flag the same rows in the audit."""
    gold = Gold.open(cancer_gold)
    s = Settings(epochs=3, batch_size=32, patience=5, warmup_steps=2, tensorboard=False)
    a = _in_process(gold, s, cv_slots(2), tmp_path / "a")
    b = _in_process(gold, s, cv_slots(2), tmp_path / "b")
    for f in range(2):
        assert np.array_equal(a[f"fold-{f}"]["ids"], b[f"fold-{f}"]["ids"])
        assert np.array_equal(a[f"fold-{f}"]["probabilities"], b[f"fold-{f}"]["probabilities"])


def test_a_killed_worker_resumes_every_slot_from_the_checkpoint(ray_local, cancer_gold, tmp_path):
    gold = Gold.open(cancer_gold)
    s = Settings(epochs=3, batch_size=64, patience=10, warmup_steps=2, max_failures=1, checkpoint_seconds=0)
    results = run_slots(gold, s, cv_slots(2), tmp_path, final=True, cpus_per_worker=0.5, crash_at_epoch=1)
    assert (tmp_path / "crashed").read_text() == "1"  # the worker process really died at epoch 1
    final_epochs = results["final_epochs"]["epochs"]  # checkpoint_seconds 0: every epoch, the first worker's too
    assert results["checkpoints"] == [[0, 0], [0, 1], [0, 2], *([1, e] for e in range(final_epochs))]
    for name in ("fold-0", "fold-1"):
        r = results[name]
        assert r["resumed"]
        assert [h["epoch"] for h in r["history"]] == [0, 1, 2]  # epoch 0 from the first worker, not redone
        assert [h["resumed_from"] for h in r["history"]] == [None, 1, 1]
    assert [h["epoch"] for h in results["final"]["history"]] == list(range(results["final_epochs"]["epochs"]))
    assert "weights" in results["final"]
    # TensorBoard: rank 0's event files hold every epoch of each slot once, across the restart (purged, redone).
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for name in ("fold-0", "fold-1"):
        events = EventAccumulator(str(tmp_path / "tensorboard" / name)).Reload()
        assert {"train_loss", "val_loss", "val_accuracy", "val_macro_f1"} <= set(events.Tags()["scalars"])
        losses = events.Scalars("train_loss")
        assert [e.step for e in losses] == [0, 1, 2]
        assert [round(e.value, 4) for e in losses] == [round(h["train_loss"], 4) for h in results[name]["history"]]


def test_two_workers_score_every_validation_row_once_per_slot(ray_local, cancer_gold, tmp_path):
    gold = Gold.open(cancer_gold)
    rows = _rows(cancer_gold)
    s = Settings(epochs=2, batch_size=32, workers=2, warmup_steps=1, tensorboard=False, checkpoint_seconds=3600)
    results = run_slots(gold, s, cv_slots(2), tmp_path, cpus_per_worker=0.5)
    assert results["checkpoints"] == [[0, 1]]  # the phase's last epoch only, both workers reporting it together
    for f in range(2):
        ids = results[f"fold-{f}"]["ids"]
        expected = {i for i, r in rows.items() if r["synthetic_for"] is None and r["fold"] == f}
        assert len(ids) == len(set(ids)) and set(ids) == expected
        assert results[f"fold-{f}"]["train_rows"] == sum(
            (r["synthetic_for"] == f) if r["synthetic_for"] is not None else r["fold"] not in (f, -1)
            for r in rows.values())  # fmt: skip


def test_a_training_set_that_ends_in_a_batch_of_one_row_trains(cancer_gold, tmp_path):
    """Shared batches of batch_size·k + 1 rows (the 64k+1 crash on real data): the last row joins the batch
    before it; a slot with one row in a batch trains on it twice."""
    gold = Gold.open(cancer_gold)
    loaded = data.load(gold)
    union = int(np.stack([Slot(f).masks(loaded.contract, 2)[0] for f in range(2)]).any(0).sum())
    s = Settings(epochs=1, batch_size=union - 1, patience=10, warmup_steps=1, tensorboard=False)
    result = _in_process(gold, s, cv_slots(2), tmp_path)
    assert np.isfinite(result["fold-0"]["history"][0]["train_loss"])


def test_a_gold_table_edited_by_delta_rs_without_a_test_part_trains_and_says_so_in_strict_json(ray_local, cancer_gold,
                                                                                                 tmp_path):  # fmt: skip
    """A user deleted gold's test part with delta-rs: its rewritten file holds Arrow's string views beside
    Spark's plain strings, and training reads both. With no test part (`split.test_fraction` 0, the default)
    the final model has nothing to be scored on: the summary says so instead of printing NaN, and cv.json and
    the folds' files are strict JSON (an undefined metric is null; NaN is not JSON: JavaScript's and Go's
    parsers refuse it)."""
    import io
    import json
    import math
    import shutil

    from deltalake import DeltaTable
    from rich.console import Console

    from training.contract import print_summary, read_json
    from training.cv import cross_validate

    path = tmp_path / "gold"
    shutil.copytree(cancer_gold, path)
    # The test part (files of its own, removed whole) and two rows of fold 0 (their file is rewritten); the
    # synthetic rows (fold null) stay.
    two = [r["sample_id"] for r in DeltaTable(str(path)).to_pyarrow_table(columns=["sample_id", "fold"]).to_pylist()
           if r["fold"] == 0][:2]  # fmt: skip
    DeltaTable(str(path)).delete("fold = -1 OR sample_id IN ({})".format(", ".join(f"'{i}'" for i in two)))
    import pyarrow.parquet as pq

    kinds = {str(pq.read_schema(f).field("sample_id").type) for f in DeltaTable(str(path)).file_uris()}
    assert kinds == {"string_view", "string"}, kinds  # the file delta-rs rewrote, the files Spark wrote
    out = tmp_path / "out"
    summary = cross_validate(Gold.open(str(path)), Settings(epochs=1, batch_size=64, warmup_steps=1, tensorboard=False),
                             out)  # fmt: skip

    def refuse(constant):
        raise AssertionError(f"not JSON: {constant}")

    written = [out / "cv.json", *out.glob("fold-*.json"), *out.rglob("results.json"), *out.rglob("history.json")]
    assert len(written) >= 5  # the summary, two folds, a checkpoint's results and history
    for file in written:
        json.loads(file.read_text(), parse_constant=refuse)
    raw = json.loads((out / "cv.json").read_text())
    assert raw["final"]["test_rows"] == 0 and raw["final"]["test_macro_f1"] is None
    assert set(raw["calibration"]) == {"out_of_fold"}  # no test bins without a test part
    assert math.isnan(read_json(out / "cv.json")["final"]["test_macro_f1"]) and summary["final"]["train_rows"] > 0
    text = io.StringIO()
    print_summary(read_json(out / "cv.json"), Console(file=text, width=200))
    assert "final (no test part)" in text.getvalue() and "nan" not in text.getvalue()


def test_a_deterministic_error_in_the_training_function_is_not_retried(ray_local, cancer_gold, tmp_path):
    from training.cv import TrainingError
    from training.worker import read_error

    gold = Gold.open(cancer_gold)
    s = Settings(epochs=2, model="resnet18", max_failures=2, tensorboard=False)  # resnet18 on a tabular table
    with pytest.raises(TrainingError, match="fold-0: training failed with ValueError: model resnet18 needs an image"):
        run_slots(gold, s, [Slot(0)], tmp_path, cpus_per_worker=0.5)
    error = read_error(tmp_path / "error.json")
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
    assert "search.folds must be between 1 and the table's 2 folds" in capsys.readouterr().err
    assert main(["--table", cancer_gold, "--search-trials", "3", "--search-lr", "0.1,0.001"]) == 2
    assert "search.lr must be [low, high] with 0 < low <= high" in capsys.readouterr().err
