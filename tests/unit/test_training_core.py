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


def test_contract_arrays_give_the_same_masks_as_the_table_for_every_slot_level_and_fraction():
    """``Contract`` converts the contract's columns once; every slot's masks from it equal the masks
    computed from the table itself (levels and the fraction draw of a trade-off table included)."""
    from training.engine import Slot
    from training.gold import Contract

    base = gold_rows()
    t = pa.concat_tables([base, base]).append_column("level", pa.array(["raw"] * 8 + ["gold"] * 8))
    t = t.append_column("u", pa.array(np.linspace(0, 1, 16, dtype=np.float32)))
    c = Contract(t)
    slots = [Slot(f, lv, fr) for lv in ("raw", "gold") for fr in (0.5, 1.0) for f in range(3)] + [Slot(3, final=True)]
    for s in slots:
        for got, want in zip(s.masks(c, 3), s.masks(t, 3), strict=True):
            np.testing.assert_array_equal(got, want)
    assert chosen(Slot(0, "gold").masks(c, 3)[0], t) == {"b", "c", "s0"}  # the second copy's rows only
    assert Slot(0, "gold").masks(c, 3)[0][:8].sum() == 0


def test_tabular_features_are_float32_numeric_then_one_hot_across_record_batches():
    """One preallocated float32 matrix: numeric columns as read (NaN where missing, integers and booleans
    converted), then each categorical one-hot over its categories (unknown or missing: all zeros); a
    table of several record batches lands row for row."""
    from training import data

    part = pa.table({"a": pa.array([1.5, None, 3.0], pa.float64()), "b": pa.array([1, 2, None], pa.int32()),
                     "flag": [True, False, True], "colour": ["red", "blue", None]})  # fmt: skip
    other = pa.table({"a": pa.array([4.0], pa.float64()), "b": pa.array([7], pa.int32()),
                      "flag": [False], "colour": ["green"]})  # fmt: skip
    t = pa.concat_tables([part, other])
    assert len(t.to_batches()) == 2
    x, cats = data.tabular(t, ["a", "b", "flag"], {"colour": ["blue", "red"]})
    assert x.dtype == torch.float32 and x.shape == (4, 5) and cats == {"colour": ["blue", "red"]}
    nan = float("nan")
    want = torch.tensor([[1.5, 1, 1, 0, 1], [nan, 2, 0, 1, 0], [3, nan, 1, 0, 0], [4, 7, 0, 0, 0]])
    torch.testing.assert_close(x, want, equal_nan=True)
    empty, _ = data.tabular(t.slice(0, 0), ["a"], {"colour": ["blue"]})
    assert empty.shape == (0, 2)


def test_rows_that_do_not_match_the_files_count_stop_the_run_with_the_reason():
    """The float32 matrix is sized from the files' row counts, and the ids are read again later: if the
    files yield other rows than counted (the snapshot changed under the run), the run stops, not misaligns."""
    from training import data

    t = pa.table({"a": [1.0, 2.0, 3.0], "label": [0, 1, 0], "fold": [0, 1, -1]})
    x, y, contract = data._convert(t.to_batches(), 3, ["a"], {}, ["fold"])
    assert x[:, 0].tolist() == [1.0, 2.0, 3.0] and y.tolist() == [0, 1, 0] and contract.column("fold").to_pylist() == [0, 1, -1]
    for counted in (2, 4):
        with pytest.raises(RuntimeError, match="changed under the run"):
            data._convert(t.to_batches(), counted, ["a"], {}, ["fold"])
    # Parts converted by two threads land in their own ranges, in the parts' order; one miscounted part stops it.
    parts = [(2, lambda: t.slice(0, 2).to_batches()), (1, lambda: t.slice(2).to_batches())]
    px, py, pcontract = data._convert_parts(parts, ["a"], {}, ["fold"], threads=2)
    assert px.tolist() == x.tolist() and py.tolist() == y.tolist() and pcontract.equals(contract)
    with pytest.raises(RuntimeError, match="changed under the run"):
        data._convert_parts([parts[0], (2, parts[1][1])], ["a"], {}, ["fold"], threads=2)
    rows = data.Rows(x=x, y=y, contract=contract, read_ids=lambda: pa.chunked_array([["s1", "s2"]]))
    with pytest.raises(RuntimeError, match="changed under the run"):
        rows.ids_of(np.ones(3, bool))
    rows = data.Rows(x=x, y=y, contract=contract, read_ids=lambda: pa.chunked_array([["s1", "s2", "s3"]]))
    assert rows.ids_of(np.array([True, False, True])).tolist() == ["s1", "s3"]


@pytest.mark.parametrize("chunk", [1, loop.CHUNK_BYTES], ids=["batch-by-batch", "chunked"])
@pytest.mark.parametrize("shape", [(30_000, 20), (12_000, 3), (2_000, 1, 16, 16), (10,)], ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.uint8, torch.bool, torch.int64])
def test_batches_hold_the_rows_index_select_would_though_their_buffer_is_reused(shape, dtype, chunk):
    """Each shared batch holds exactly its span's rows of ``order`` (features, labels, S×B masks, flags),
    whatever the dtype and row shape, a last batch of one row included (it joins the batch before), gathered
    a batch at a time or several together; the features' buffer is reused, so a batch is read before the next
    is drawn, while its labels, masks and flags stay as they were; the source is left as it was."""
    g = torch.Generator().manual_seed(0)
    t = (torch.rand(shape, generator=g) * 200).to(dtype)
    before = t.clone()
    y = torch.randint(0, 5, (shape[0],), generator=g)
    masks = torch.rand(3, shape[0], generator=g) > 0.5
    flags = torch.rand(shape[0], generator=g) > 0.5
    order = loop.shuffled(torch.arange(shape[0])[: shape[0] * 3 // 4 + 1], 7)
    spans = loop.spans_of(len(order), 512 if shape[0] > 100 else 3)
    assert (spans[-1][1] - spans[-1][0]) > 1
    seen, kept = [], []
    for (a, b), (xb, yb, mb, fb) in zip(spans, loop.batches(t, y, masks, order, spans, flags, chunk), strict=True):
        index = order[a:b]
        assert xb.dtype == dtype and xb.shape == (b - a, *shape[1:]) and mb.shape == (3, b - a)
        assert torch.equal(xb, t[index]) and torch.equal(yb, y[index]) and torch.equal(mb, masks[:, index])
        assert torch.equal(fb, flags[index])
        seen.append(xb)
        kept.append((index, yb, mb, fb))
    assert torch.equal(t, before) and sorted(torch.cat([order[a:b] for a, b in spans]).tolist()) == sorted(order.tolist())
    for index, yb, mb, fb in kept:  # still the batch's own, every later batch drawn
        assert torch.equal(yb, y[index]) and torch.equal(mb, masks[:, index]) and torch.equal(fb, flags[index])
    if chunk == 1 and len(seen) > 1:  # one buffer: an earlier batch now shows a later batch's rows
        assert seen[0].data_ptr() == seen[1].data_ptr()
    starts = {x.data_ptr() for x in seen}
    assert len(starts) < len(seen) or len(seen) * 512 * t[0].numel() * t.element_size() <= chunk  # reused


def test_shuffled_orders_are_permutations_fixed_by_their_seed():
    rows = torch.arange(10, 1010)
    a, b, c = loop.shuffled(rows, (42, 0, 0)), loop.shuffled(rows, (42, 0, 0)), loop.shuffled(rows, (42, 1, 0))
    assert torch.equal(a, b) and not torch.equal(a, c) and not torch.equal(a, rows)
    assert sorted(a.tolist()) == rows.tolist() and a.dtype == rows.dtype
    assert torch.equal(loop.shuffled(rows, -3), loop.shuffled(rows, -3))  # a negative seed is a seed too
    assert len(loop.shuffled(torch.zeros(0, dtype=torch.long), 1)) == 0


def test_convolutional_models_hold_their_weights_channels_last_and_train_on_plain_batches():
    """cnn and resnet18 are built channels-last (faster convolutions and pooling on oneDNN and cuDNN); an
    ordinary NCHW batch still trains them, and their weights load into a model built NCHW."""
    for name in ("cnn", "resnet18"):
        net = models.build("images", classes=3, channels=1, size=16, name=name)
        convs = [m.weight for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
        assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
        loss = net(torch.randn(4, 1, 16, 16)).sum()
        loss.backward()
        plain = models.build("images", classes=3, channels=1, size=16, name=name).to(memory_format=torch.contiguous_format)
        plain.load_state_dict(net.state_dict())
        net.eval(), plain.eval()
        x = torch.randn(2, 1, 16, 16)
        torch.testing.assert_close(net(x), plain(x), rtol=1e-4, atol=1e-5)
    assert not any(p.dim() == 4 for p in models.build("tabular", inputs=3, classes=2).parameters())


def test_models_fit_their_inputs():
    mlp = models.build("tabular", inputs=7, classes=3)
    assert mlp(torch.randn(4, 7)).shape == (4, 3)
    net = models.build("images", classes=10, channels=1, size=16)
    assert net(torch.randn(2, 1, 16, 16)).shape == (2, 10)
    assert models.build("images", classes=2, channels=3, size=64)(torch.randn(2, 3, 64, 64)).shape == (2, 2)
    with pytest.raises(ValueError, match="resnet18 needs an image table"):
        models.build("tabular", inputs=3, classes=2, name="resnet18")
    cnn = models.build("images", classes=10, channels=1, size=16, name="cnn")
    assert cnn(torch.randn(2, 1, 16, 16)).shape == (2, 10) and cnn(torch.randn(2, 1, 40, 28)).shape == (2, 10)
    assert sum(p.numel() for p in cnn.parameters()) < sum(p.numel() for p in net.parameters()) / 100
    with pytest.raises(ValueError, match="cnn needs an image table"):
        models.build("tabular", inputs=3, classes=2, name="cnn")


def test_augmentation_draws_per_image_on_the_whole_batch_and_repeats_under_a_seed():
    from training import augment

    tf = augment.augmenter(16, 3)
    x = torch.randint(0, 256, (1, 3, 16, 16), dtype=torch.uint8).repeat(8, 1, 1, 1)  # eight copies of one image
    torch.manual_seed(3)
    a = tf(x)
    assert a.shape == (8, 3, 16, 16) and a.dtype == torch.float32 and a.min() >= -1 and a.max() <= 1
    assert len({tuple(img.flatten().tolist()) for img in a}) == 8  # each copy drew its own crop, turn and jitter
    torch.manual_seed(3)
    assert torch.equal(tf(x), a)  # a seeded epoch augments the same way
    assert torch.equal(augment.normalise(torch.tensor([0, 255], dtype=torch.uint8)), torch.tensor([-1.0, 1.0]))


def _slot(model, lr=1e-2, total=80) -> loop.SlotModel:
    opt = loop.make_optimizer(model, lr=lr, weight_decay=1e-4)
    return loop.SlotModel(model, opt, loop.cosine_with_warmup(opt, 8, total), loop.EarlyStopping(patience=3))


class Recorder(torch.nn.Module):
    """Records the row numbers (feature 0) it is trained on, then passes the other features on."""

    def __init__(self, net):
        super().__init__()
        self.net, self.seen = net, []

    def forward(self, x):
        if self.training:
            self.seen += x[:, 0].long().tolist()
        return self.net(x[:, 1:])


def test_each_slot_trains_on_exactly_its_masks_rows_of_the_shared_batches():
    """On a literal gold table: every slot (the folds, the final model) trains on its training mask's rows,
    each once per epoch, never a validation row or another fold's synthetic row."""
    from training.engine import Slot

    t = gold_rows()
    slots = [Slot(0), Slot(1), Slot(2), Slot(3, final=True)]
    masks = torch.from_numpy(np.stack([s.masks(t, 3)[0] for s in slots]))
    x = torch.cat([torch.arange(t.num_rows, dtype=torch.float32)[:, None], torch.randn(t.num_rows, 2)], dim=1)
    y = torch.randint(0, 2, (t.num_rows,))
    torch.manual_seed(0)
    models_ = [_slot(Recorder(models.build("tabular", inputs=2, classes=2, hidden=(4,)))) for _ in slots]
    order = masks.any(0).nonzero().squeeze(1)
    losses = loop.train_epoch(models_, x, y, masks, order[torch.randperm(len(order))], 3, torch.device("cpu"))
    ids = t.column("sample_id").to_pylist()
    for s, m, mask in zip(slots, models_, masks, strict=True):
        seen = sorted({ids[i] for i in m.model.seen})
        assert seen == sorted(chosen(mask.numpy(), t)), s  # e.g. fold 0: b, c, s0
        assert sorted(set(m.model.seen)) == sorted(mask.nonzero().squeeze(1).tolist())
    assert all(np.isfinite(losses))
    models_[1].stopped = True  # a stopped slot trains no more; the others go on
    before = [p.clone() for p in models_[1].model.parameters()]
    loop.train_epoch(models_, x, y, masks, order, 3, torch.device("cpu"))
    assert all(torch.equal(a, b) for a, b in zip(before, models_[1].model.parameters(), strict=True))


def test_grouped_batches_hold_one_level_each_and_every_row_once():
    """A trade-off table's levels: every batch holds rows of one level, each level's rows once, in batches of
    the full size (a last batch of one row joins the one before); ``counts`` caps a level's batches."""
    groups = [torch.arange(0, 70)[torch.randperm(70)], torch.arange(100, 133), torch.arange(200, 201)]
    order, spans = loop.grouped_order(groups, 16, torch.Generator().manual_seed(3))
    batches = [order[a:b].tolist() for a, b in spans]
    assert all(len({r // 100 for r in b}) == 1 for b in batches)
    assert sorted(order.tolist()) == sorted(torch.cat(groups).tolist())
    assert sorted(len(b) for b in batches if b[0] < 100) == [6, 16, 16, 16, 16]
    assert sorted(len(b) for b in batches if 100 <= b[0] < 200) == [16, 17]  # 33 rows: no batch of one
    levels = [b[0] // 100 for b in batches]
    assert levels != sorted(levels)  # the levels' batches interleave
    again, spans2 = loop.grouped_order(groups, 16, torch.Generator().manual_seed(3))
    assert torch.equal(order, again) and spans == spans2
    capped, cspans = loop.grouped_order(groups, 16, torch.Generator().manual_seed(3), counts=[2, 1, 0])
    assert len(cspans) == 3 and len(capped) == 48


def test_images_are_not_mirrored_unless_flips_are_asked_for():
    """A mirrored digit is another digit (or none): flips are off by default (on the digits they cost 0.19
    macro-F1) and on with ``train.flip``."""
    from training import augment
    from training.contract import TrainSettings

    assert TrainSettings().flip is False
    x = torch.zeros(64, 1, 16, 16, dtype=torch.uint8)
    x[..., :8] = 255  # bright on the left
    torch.manual_seed(0)

    def left_brighter(tf) -> torch.Tensor:
        out = tf(x)
        return out[..., :8].mean(dim=(1, 2, 3)) > out[..., 8:].mean(dim=(1, 2, 3))

    assert left_brighter(augment.augmenter(16, 1)).all()
    mirrored = ~left_brighter(augment.augmenter(16, 1, flip=True))
    assert 10 < int(mirrored.sum()) < 54  # about half


def test_only_the_flagged_rows_are_augmented_when_asked():
    x = torch.zeros(6, 1, 2, 2, dtype=torch.uint8)
    flags = torch.tensor([True, False, True, False, False, True])
    out = loop._transformed(x, lambda b: torch.full(b.shape, 7.0), flags, lambda b: b.float())
    assert out[:, 0, 0, 0].tolist() == [7.0, 0.0, 7.0, 0.0, 0.0, 7.0]
    assert loop._transformed(x, lambda b: torch.full(b.shape, 7.0), None, None).eq(7).all()  # augment: all


def test_the_loop_learns_a_separable_problem_and_evaluates_every_row():
    torch.manual_seed(0)
    x = torch.randn(256, 4)
    y = (x[:, 0] + x[:, 1] > 0).long()
    masks = torch.ones(1, 256, dtype=torch.bool)
    s = _slot(models.build("tabular", inputs=4, classes=2, hidden=(16,), dropout=0.0))
    device = torch.device("cpu")
    losses = [loop.train_epoch([s], x, y, masks, torch.randperm(256), 32, device)[0] for _ in range(10)]
    assert losses[-1] < losses[0] * 0.6
    val = torch.zeros(2, 256, dtype=torch.bool)
    val[0, :100], val[1, 50:] = True, True  # two slots' validation rows, overlapping
    p = loop.evaluate([s, s], x, val, 50, device, classes=2)
    assert p[0].shape == (100, 2) and p[1].shape == (206, 2) and np.allclose(p[0][50:], p[1][:50])
    ev = loop.score(y[50:].numpy(), p[1], 2)
    assert ev.metrics["accuracy"] > 0.9 and ev.metrics["roc_auc"] > 0.95
    assert np.allclose(p[1].sum(1), 1, atol=1e-5) and sum(map(sum, ev.confusion)) == 206


@pytest.mark.parametrize("rows", [1, 2, 33, 64 + 1, 64 * 3 + 1])
def test_every_training_set_size_trains_including_a_last_batch_of_one_row(rows):
    """64·k + 1 rows end with a batch of one, which batch norm refuses in training mode."""
    torch.manual_seed(0)
    x, y = torch.randn(rows, 3), torch.randint(0, 2, (rows,))
    model = models.build("tabular", inputs=3, classes=2, hidden=(8,))
    with pytest.raises(ValueError, match="more than 1 value per channel"):  # what crashed real runs
        model.train()(torch.randn(1, 3))
    loss = loop.train_epoch([_slot(model)], x, y, torch.ones(1, rows, dtype=torch.bool), torch.arange(rows), 64,
                            torch.device("cpu"))[0]  # fmt: skip
    assert np.isfinite(loss)
    batches = loop.batches_of(torch.arange(rows), 64)
    assert all(len(b) > 1 for b in batches) or rows == 1
    assert sum(len(b) for b in batches) == rows  # no row lost


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


def test_calibration_metrics_against_hand_computed_values():
    # Two classes, four rows. Top-class confidences 0.9, 0.8, 0.6, 0.7; right, right, wrong, wrong.
    y = np.array([0, 1, 1, 0])
    p = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    m = loop.metrics(y, p, 2)
    # Brier, two classes: mean squared error of the positive-class probability.
    assert m["brier"] == pytest.approx(np.mean([0.1**2, 0.2**2, 0.6**2, 0.7**2]))
    r = loop.reliability(y, p, bins=5)  # bins (0, .2], (.2, .4], (.4, .6], (.6, .8], (.8, 1]
    assert r["rows"] == [0, 0, 1, 2, 1]  # 0.6 | 0.8, 0.7 | 0.9: an edge belongs to the bin below
    assert r["confidence"][3] == pytest.approx(0.75) and r["accuracy"][3] == pytest.approx(0.5)
    # ECE = sum over bins of rows/N * |accuracy - confidence| = (1*|0-.6| + 2*|.5-.75| + 1*|1-.9|) / 4
    assert r["ece"] == pytest.approx((0.6 + 2 * 0.25 + 0.1) / 4) and m["ece"] == pytest.approx(loop.reliability(y, p)["ece"])
    # Three classes: the multi-class Brier score sums over the classes (range [0, 2]).
    y3, p3 = np.array([0, 2]), np.array([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]])
    expected = np.mean([(0.5 - 1) ** 2 + 0.3**2 + 0.2**2, 0.1**2 + 0.1**2 + (0.8 - 1) ** 2])
    assert loop.metrics(y3, p3, 3)["brier"] == pytest.approx(expected)
    perfect = loop.reliability(np.array([0, 1]), np.array([[1.0, 0.0], [0.0, 1.0]]))
    assert perfect["ece"] == 0 and perfect["rows"][-1] == 2  # confidence 1.0 falls in the last bin
    assert np.isnan(loop.metrics(np.array([], int), np.zeros((0, 2)), 2)["ece"])


@pytest.mark.filterwarnings("ignore:Only one class is present:sklearn.exceptions.UndefinedMetricWarning")
@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true:UserWarning")
@pytest.mark.parametrize(("classes", "rows", "absent"), [(2, 50, None), (3, 40, None), (5, 200, 3), (4, 7, 0), (2, 1, None)])
def test_metrics_equal_scikit_learns(classes, rows, absent):
    from sklearn.metrics import accuracy_score, brier_score_loss, confusion_matrix, f1_score, roc_auc_score

    rng = np.random.default_rng(classes * 100 + rows)
    y = rng.integers(0, classes, rows)
    if absent is not None:  # a class no row has (and, below, one no row is predicted as)
        y[y == absent] = (absent + 1) % classes
    p = rng.dirichlet(np.ones(classes), rows)
    m, labels = loop.metrics(y, p, classes), list(range(classes))
    assert m["accuracy"] == pytest.approx(accuracy_score(y, p.argmax(1)))
    assert m["macro_f1"] == pytest.approx(f1_score(y, p.argmax(1), average="macro", labels=labels, zero_division=0))
    assert m["brier"] == pytest.approx(brier_score_loss(y, p, labels=labels))
    assert loop.confusion(y, p, classes) == confusion_matrix(y, p.argmax(1), labels=labels).tolist()
    p = np.round(p, 1)  # tied scores too
    p /= p.sum(1, keepdims=True)
    try:
        want = roc_auc_score(y, p[:, 1]) if classes == 2 else roc_auc_score(y, p, multi_class="ovr", labels=labels)
    except ValueError:  # a class absent from y: scikit-learn refuses, fulcrum reports NaN
        want = float("nan")
    assert loop.metrics(y, p, classes)["roc_auc"] == pytest.approx(want, nan_ok=True)


def test_balanced_class_weights_match_scikit_learn_and_weigh_the_loss():
    from sklearn.utils.class_weight import compute_class_weight

    y = np.array([0] * 8 + [1] * 2 + [2] * 6)
    w = loop.balanced_weights(torch.bincount(torch.from_numpy(y), minlength=4))
    assert np.allclose(w[:3].numpy(), compute_class_weight("balanced", classes=np.arange(3), y=y) * 3 / 4)
    assert w[3] == 1.0  # (four classes: sklearn's figure for three scaled by 3/4; an absent class weighs 1)
    torch.manual_seed(0)
    s = _slot(models.build("tabular", inputs=3, classes=3, hidden=(8,)))
    x, yt = torch.randn(6, 3), torch.tensor([0, 0, 0, 1, 2, 2])
    s.model.eval()  # no dropout: the same logits twice
    logits = s.model(x).detach()
    s.class_weight = torch.tensor([0.5, 3.0, 1.0])
    got = loop.backward_sum(s, x, yt)
    per_row = torch.nn.functional.cross_entropy(logits, yt, reduction="none")
    assert got == pytest.approx(float((per_row * s.class_weight[yt]).sum()), rel=1e-5)


def test_balanced_weights_raise_the_minority_recall_of_an_imbalanced_slot():
    rng = np.random.default_rng(0)
    n0, n1 = 380, 20  # 19 : 1, overlapping classes: unweighted, the minority is mostly predicted as the majority
    x = torch.from_numpy(np.concatenate([rng.normal(0, 1, (n0, 2)), rng.normal(1.2, 1, (n1, 2))]).astype(np.float32))
    y = torch.tensor([0] * n0 + [1] * n1)
    recall = {}
    for weighted in (False, True):
        torch.manual_seed(1)
        s = _slot(models.build("tabular", inputs=2, classes=2, hidden=(16,), dropout=0.0), total=400)
        if weighted:
            s.class_weight = loop.balanced_weights(torch.bincount(y))
        for epoch in range(20):
            order = torch.randperm(len(y), generator=torch.Generator().manual_seed(epoch))
            loop.train_epoch([s], x, y, torch.ones(1, len(y), dtype=torch.bool), order, 32, torch.device("cpu"))
        s.model.eval()
        pred = s.model(x).argmax(1)
        recall[weighted] = float((pred[y == 1] == 1).float().mean())
    assert recall[True] > recall[False] + 0.3, recall


def test_checkpoints_restore_a_slot_exactly(tmp_path):
    torch.manual_seed(0)
    s = _slot(models.build("tabular", inputs=3, classes=2, hidden=(8,)), total=10)
    x, y = torch.randn(16, 3), torch.randint(0, 2, (16,))
    loop.train_epoch([s], x, y, torch.ones(1, 16, dtype=torch.bool), torch.arange(16), 8, torch.device("cpu"))
    s.stopper.step(0.5, 0)
    path = tmp_path / "state.pt"
    torch.save(s.state_dict(), path)
    state = torch.load(path, weights_only=True)  # no pickle: a checkpoint is plain tensors and values
    twin = _slot(models.build("tabular", inputs=3, classes=2, hidden=(8,)), total=10)
    twin.load_state_dict(state)
    for a, b in zip(s.model.state_dict().values(), twin.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert twin.scheduler.last_epoch == s.scheduler.last_epoch == 2 and twin.stopper.best == 0.5


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
    assert (s.epochs, s.hidden, s.use_gpu, s.lr, s.mix, s.amp) == (3, (32,), False, 0.01, None, True)
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


def test_weighted_slots_are_named_apart_and_grid_levels_can_weigh_their_loss():
    from training.engine import Slot, grid_slots

    assert Slot(0).name == "fold-0" and Slot(0, class_weight="balanced").name == "fold-0-balanced"
    cells = grid_slots(["none", "class_weight"], [1.0], [0, 1], weighted=["class_weight"])
    assert [(c.level, c.class_weight) for c in cells] == [("none", None), ("none", None),
                                                          ("class_weight", "balanced"), ("class_weight", "balanced")]
    assert len({c.name for c in cells}) == 4


def test_an_ensembles_members_are_slots_of_the_same_rows_named_apart_and_passed_as_a_flag(tmp_path, capsys):
    from jobs.config import AuditConfig, parse_config
    from jobs.launch import command as training_command
    from training.__main__ import main, parser
    from training.engine import Slot, cv_slots, ensemble_slots

    slots = ensemble_slots([*cv_slots(2), Slot(2, final=True)], 2)
    assert [x.name for x in slots] == ["fold-0", "fold-1", "final", "fold-0-m1", "fold-1-m1", "final-m1"]
    assert ensemble_slots(cv_slots(3), 1) == cv_slots(3)
    c = np.array([0, 1, 1, -1, 0])
    contract = pa.table({"fold": pa.array(c, pa.int32()), "synthetic_for": pa.array([None] * 5, pa.int32()),
                         "dropped_for": pa.array([None] * 5, pa.list_(pa.int32()))})  # fmt: skip
    for a, b in ((slots[0], slots[3]), (slots[2], slots[5])):  # a member's rows are its slot's
        assert all(np.array_equal(x, y) for x, y in zip(a.masks(contract, 2), b.masks(contract, 2), strict=True))
    assert (AuditConfig().members_for("tabular"), AuditConfig().members_for("images")) == (3, 1)
    assert AuditConfig(members=5).members_for("images") == 5
    with pytest.raises(ValueError):
        AuditConfig(members=0)
    cfg = parse_config({"dataset": "d", "kind": "tabular", "lake_root": str(tmp_path), "source": {"path": "x",
                        "format": "csv"}, "columns": {"label": "y", "features": ["a"]}})  # fmt: skip
    assert parser().parse_args(training_command(cfg, "r-1", members=3)[3:]).members == 3
    assert "--members" not in training_command(cfg, "r-1")
    assert main(["--table", str(tmp_path / "none"), "--members", "0"]) == 2
    assert "--members must be between 1 and 16" in capsys.readouterr().err
