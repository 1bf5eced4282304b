"""The Ray-free core of training: the gold contract's row selection, the models, the loop."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

from training import loop, models
from training.gold import training_mask, validation_mask


def gold_rows() -> pa.Table:
    # id, fold, synthetic_for, dropped_for
    rows = [
        ("a", 0, None, None), ("b", 1, None, None), ("c", 2, None, [1]), ("d", -1, None, None),
        ("s0", 1, 0, None), ("s1", 0, 1, None), ("s3", 2, 3, None), ("e", 2, None, [0, 3]),
    ]  # fmt: skip
    return pa.table({
        "sample_id": [r[0] for r in rows],
        "fold": pa.array([r[1] for r in rows], pa.int32()),
        "synthetic_for": pa.array([r[2] for r in rows], pa.int32()),
        "dropped_for": pa.array([r[3] for r in rows], pa.list_(pa.int32())),
    })  # fmt: skip


def chosen(mask, table) -> set[str]:
    return {sid for sid, m in zip(table.column("sample_id").to_pylist(), mask, strict=True) if m}


def test_training_and_validation_sets_follow_the_gold_contract():
    t = gold_rows()
    assert chosen(training_mask(t, 0, 3), t) == {"b", "c", "s0"}  # e is undersampled out of fold 0
    assert chosen(training_mask(t, 1, 3), t) == {"a", "e", "s1"}  # c is undersampled out of fold 1
    assert chosen(training_mask(t, 2, 3), t) == {"a", "b"}
    assert chosen(training_mask(t, 3, 3), t) == {"a", "b", "c", "s3"}  # final: every non-test real row
    assert chosen(validation_mask(t, 0, 3), t) == {"a"}
    assert chosen(validation_mask(t, 2, 3), t) == {"c", "e"}  # cut rows still validate their fold
    assert chosen(validation_mask(t, 3, 3), t) == {"d"}  # the final model is scored on the test part
    for f in range(3):  # no synthetic row validates, no validation row trains
        assert not (training_mask(t, f, 3) & validation_mask(t, f, 3)).any()
        assert not chosen(validation_mask(t, f, 3), t) & {"s0", "s1", "s3"}


def test_models_fit_their_inputs():
    mlp = models.build("tabular", inputs=7, classes=3)
    assert mlp(torch.randn(4, 7)).shape == (4, 3)
    net = models.build("images", classes=10, channels=1, size=16)
    assert net(torch.randn(2, 1, 16, 16)).shape == (2, 10)
    assert models.build("images", classes=2, channels=3, size=64)(torch.randn(2, 3, 64, 64)).shape == (2, 2)
    with pytest.raises(ValueError, match="resnet18 needs an image table"):
        models.build("tabular", inputs=3, classes=2, name="resnet18")


def test_the_loop_learns_a_separable_problem_and_evaluates_every_row():
    torch.manual_seed(0)
    x = torch.randn(256, 4)
    y = (x[:, 0] + x[:, 1] > 0).long()
    batches = [(x[i : i + 32], y[i : i + 32]) for i in range(0, 256, 32)]
    model = models.build("tabular", inputs=4, classes=2, hidden=(16,), dropout=0.0)
    opt = loop.make_optimizer(model, lr=1e-2, weight_decay=1e-4)
    sched = loop.cosine_with_warmup(opt, warmup_steps=8, total_steps=8 * 10)
    device = torch.device("cpu")
    losses = [loop.train_epoch(model, batches, opt, sched, device) for _ in range(10)]
    assert losses[-1] < losses[0] * 0.6
    ids = [f"r{i}" for i in range(256)]
    ev = loop.evaluate(model, [(x[i : i + 50], y[i : i + 50], ids[i : i + 50]) for i in range(0, 256, 50)],
                       device, classes=2)  # fmt: skip
    assert ev.ids == ids and ev.probabilities.shape == (256, 2)
    assert ev.metrics["accuracy"] > 0.9 and ev.metrics["roc_auc"] > 0.95
    assert np.allclose(ev.probabilities.sum(1), 1, atol=1e-5)
    assert sum(map(sum, ev.confusion)) == 256


@pytest.mark.parametrize("rows", [1, 2, 33, 64 + 1, 64 * 3 + 1])
def test_every_training_set_size_trains_including_a_last_batch_of_one_row(rows):
    """64·k + 1 rows end with a batch of one, which batch norm refuses in training mode."""
    torch.manual_seed(0)
    x, y = torch.randn(rows, 3), torch.randint(0, 2, (rows,))
    batches = [(x[i : i + 64], y[i : i + 64]) for i in range(0, rows, 64)]
    model = models.build("tabular", inputs=3, classes=2, hidden=(8,))
    with pytest.raises(ValueError, match="more than 1 value per channel"):  # what crashed real runs
        model.train()(torch.randn(1, 3))
    opt = loop.make_optimizer(model, 1e-2, 0.0)
    assert np.isfinite(loop.train_epoch(model, batches, opt, None, torch.device("cpu")))
    merged = list(loop.without_single_rows(batches))
    assert all(len(b[1]) > 1 for b in merged)
    assert sum(len(b[1]) for b in merged) == (rows if rows > 1 else 2)  # no row lost; a lone row repeated


def test_schedule_warms_up_then_decays_to_zero():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = loop.cosine_with_warmup(opt, warmup_steps=4, total_steps=20)
    lrs = []
    for _ in range(20):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.25) and lrs[3] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[3:], lrs[4:], strict=False)) and lrs[-1] < 0.02


def test_metrics_and_early_stopping():
    y = np.array([0, 1, 1, 0])
    p = np.array([[0.9, 0.1], [0.2, 0.8], [0.4, 0.6], [0.3, 0.7]])
    m = loop.metrics(y, p, 2)
    assert m["accuracy"] == 0.75 and m["roc_auc"] == 0.75  # positive-negative pairs ranked right: 3 of 4
    assert m["log_loss"] == pytest.approx(-np.mean(np.log([0.9, 0.8, 0.6, 0.3])))
    stop = loop.EarlyStopping(patience=2)
    assert stop.step(1.0, 0) and not stop.step(1.1, 1) and not stop.stop
    assert not stop.step(1.2, 2) and stop.stop and stop.best_epoch == 0


def test_checkpoints_restore_the_run_exactly(tmp_path):
    torch.manual_seed(0)
    model = models.build("tabular", inputs=3, classes=2, hidden=(8,))
    opt = loop.make_optimizer(model, 1e-2, 0.01)
    sched = loop.cosine_with_warmup(opt, 2, 10)
    stop = loop.EarlyStopping(patience=3)
    batches = [(torch.randn(16, 3), torch.randint(0, 2, (16,)))]
    loop.train_epoch(model, batches, opt, sched, torch.device("cpu"))
    stop.step(0.5, 0)
    state = loop.checkpoint_state(model, opt, sched, 0, stop, {"lr": 1e-2, "hidden": [8]}, version=7)
    path = tmp_path / "state.pt"
    torch.save(state, path)
    state = torch.load(path, weights_only=True)  # no pickle: a checkpoint is plain tensors and values
    twin = models.build("tabular", inputs=3, classes=2, hidden=(8,))
    opt2 = loop.make_optimizer(twin, 1e-2, 0.01)
    sched2 = loop.cosine_with_warmup(opt2, 2, 10)
    stop2 = loop.EarlyStopping(patience=3)
    assert loop.restore_state(state, twin, opt2, sched2, stop2) == 1
    for a, b in zip(model.state_dict().values(), twin.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert sched2.last_epoch == sched.last_epoch and stop2.best == 0.5 and state["delta_version"] == 7


def test_the_entry_point_parses_settings_and_refuses_a_table_that_is_not_gold(tmp_path, capsys):
    from training.__main__ import main, parser

    args = parser().parse_args(["--table", "t", "--epochs", "3", "--hidden", "32,16", "--use-gpu", "false",
                                "--concurrency", "2", "--lr", "0.01"])  # fmt: skip
    assert (args.epochs, args.hidden, args.use_gpu, args.concurrency, args.lr) == (3, (32, 16), False, 2, 0.01)
    assert main(["--table", str(tmp_path / "nothing")]) == 2
    assert "no Delta table" in capsys.readouterr().err


def test_fulcrum_train_passes_the_config_train_section_as_flags(tmp_path):
    from jobs.config import parse_config
    from jobs.launch import command as training_command
    from training.__main__ import parser
    from training.contract import from_flags

    cfg = parse_config({"dataset": "d", "kind": "tabular", "lake_root": str(tmp_path), "source": {"path": "x",
                        "format": "csv"}, "columns": {"label": "y", "features": ["a"]},
                        "train": {"epochs": 3, "hidden": [32], "use_gpu": False, "mix": None, "lr": 0.01},
                        "ray": {"num_cpus": 6}})  # fmt: skip
    cmd = training_command(cfg, "r-1", version=4)
    assert cmd[1:3] == ["-m", "training"]
    args = parser().parse_args(cmd[3:])
    assert args.table == str(tmp_path / "d" / "gold") and args.version == 4 and args.num_cpus == 6
    s = from_flags(args)
    assert (s.epochs, s.hidden, s.use_gpu, s.lr, s.mix, s.cache) == (3, (32,), False, 0.01, None, True)
    assert s == cfg.train  # the flags carry the validated section whole
    assert args.out.endswith("r-1/train")
    # ray.address naming the Jobs API: the same entry point, submitted as a Ray job that joins that cluster.
    jobs_cfg = cfg.model_copy(update={"ray": cfg.ray.model_copy(update={"address": "http://head:8265"})})
    cmd = training_command(jobs_cfg, "r-1", version=4)
    split = cmd.index("--")
    assert cmd[1:5] == ["job", "submit", "--address", "http://head:8265"] and cmd[5] == "--submission-id"
    assert cmd[6].startswith("r-1-training-") and cmd[split + 1 : split + 4] == ["python", "-m", "training"]
    args = parser().parse_args(cmd[split + 4 :])
    assert args.address is None and args.version == 4 and args.out.endswith("r-1/train")  # RAY_ADDRESS is the job's
