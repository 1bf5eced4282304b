"""Ray Data: the gold table at a pinned version → per-fold training and validation datasets.

``ray.data.read_delta`` reads the Parquet files of the pinned snapshot (delta-rs gives
the file list). Per fold, a ``map_batches`` keeps the rows of that fold's training or
validation set (``gold.training_mask`` / ``validation_mask``) and turns them into
arrays: tabular rows become float32 features standardised with statistics computed on
that fold's training rows only (categoricals one-hot over the categories seen there);
images are decoded from the embedded PNG bytes or read from their paths under the
image root, as uint8 ``C×H×W``. Augmentation happens on the trainer (``augment.py``).
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from training.contract import as_mode, safe_join
from training.gold import Gold, read_dataset, training_mask, validation_mask


def _select(batch: pa.Table, fold: int, folds: int, part: str, level: str | None = None,
            fraction: float = 1.0) -> pa.Table:  # fmt: skip
    if level is not None:  # the trade-off table: this quality level's rows only
        batch = batch.filter(pc.equal(batch.column("level"), level))
    mask = training_mask(batch, fold, folds) if part == "train" else validation_mask(batch, fold, folds)
    if part == "train" and fraction < 1.0:
        mask &= batch.column("u").to_numpy(zero_copy_only=False) < fraction
    return batch.filter(pa.array(mask))


def rows_of(ds, gold: Gold, fold: int, part: str):
    """The rows of fold ``fold``'s training (``part='train'``) or validation set, still as gold columns."""
    return ds.map_batches(_select, fn_kwargs={"fold": fold, "folds": gold.folds, "part": part, "level": gold.level,
                                              "fraction": gold.fraction},
                          batch_format="pyarrow", zero_copy_batch=True)  # fmt: skip


@dataclass
class Encoder:
    """Tabular rows → float32 features; fitted on one fold's training rows only."""

    numeric: list[str]
    categorical: list[str]
    mean: list[float] = field(default_factory=list)
    std: list[float] = field(default_factory=list)
    categories: dict[str, list[str]] = field(default_factory=dict)

    @property
    def width(self) -> int:
        return len(self.numeric) + sum(len(v) for v in self.categories.values())

    def fit(self, ds) -> Encoder:
        """One pass: per-batch counts, sums and squares (and categories), summed here."""
        numeric, categorical = self.numeric, self.categorical

        def partial(batch: pa.Table) -> pa.Table:
            x = _matrix(batch, numeric)
            ok = ~np.isnan(x)
            x0 = np.where(ok, x, 0.0)
            cats = {c: sorted(pc.unique(pc.cast(batch.column(c), pa.string())).drop_null().to_pylist())
                    for c in categorical}  # fmt: skip
            return pa.table({"n": [ok.sum(0).tolist()], "s": [x0.sum(0).tolist()], "q": [(x0**2).sum(0).tolist()],
                             "cats": [repr(cats)]})  # fmt: skip

        parts = ds.map_batches(partial, batch_format="pyarrow").take_all()
        n = np.sum([p["n"] for p in parts], axis=0) if parts else np.zeros(len(numeric))
        s = np.sum([p["s"] for p in parts], axis=0) if parts else np.zeros(len(numeric))
        q = np.sum([p["q"] for p in parts], axis=0) if parts else np.zeros(len(numeric))
        mean = s / np.maximum(n, 1)
        std = np.sqrt(np.maximum(q / np.maximum(n, 1) - mean**2, 0.0))
        self.mean, self.std = mean.tolist(), np.where(std > 0, std, 1.0).tolist()
        import ast

        seen: dict[str, set[str]] = {c: set() for c in categorical}
        for p in parts:
            for c, values in ast.literal_eval(p["cats"]).items():
                seen[c].update(values)
        self.categories = {c: sorted(v) for c, v in seen.items()}
        return self

    def __call__(self, batch: pa.Table) -> dict[str, np.ndarray]:
        x = (_matrix(batch, self.numeric) - np.array(self.mean)) / np.array(self.std)
        blocks = [np.nan_to_num(x, nan=0.0)]  # a missing value sits at the training mean
        for c, cats in self.categories.items():
            values = pc.cast(batch.column(c), pa.string())
            index = pc.index_in(values, value_set=pa.array(cats, pa.string())).to_numpy(zero_copy_only=False)
            hot = np.zeros((batch.num_rows, len(cats)))
            seen = ~np.isnan(index.astype(np.float64))  # missing and unseen categories: all zeros
            hot[np.flatnonzero(seen), index[seen].astype(np.int64)] = 1.0
            blocks.append(hot)
        return {"x": np.concatenate(blocks, axis=1).astype(np.float32), "y": _labels(batch),
                "sample_id": batch.column("sample_id").to_numpy(zero_copy_only=False)}  # fmt: skip


def _matrix(batch: pa.Table, columns: list[str]) -> np.ndarray:
    if not columns:
        return np.zeros((batch.num_rows, 0))
    return np.column_stack([batch.column(c).to_numpy(zero_copy_only=False).astype(np.float64) for c in columns])


def _labels(batch: pa.Table) -> np.ndarray:
    return batch.column("label").to_numpy(zero_copy_only=False).astype(np.int64)


@dataclass
class ImageDecoder:
    """Image rows → uint8 arrays ``N×C×H×W`` at the training size, from embedded bytes or files."""

    size: int
    channels: int
    column: str | None = None
    root: str | None = None
    embedded: bool = True

    def load(self, value) -> np.ndarray:
        from PIL import Image

        if self.embedded:
            img = Image.open(io.BytesIO(value))
        else:
            img = Image.open(safe_join(self.root, value))
        with img:
            img = as_mode(img, "L" if self.channels == 1 else "RGB")
            if img.size != (self.size, self.size):
                img = img.resize((self.size, self.size), Image.Resampling.BILINEAR)
            arr = np.asarray(img, dtype=np.uint8)
        return arr[None] if self.channels == 1 else arr.transpose(2, 0, 1)

    def __call__(self, batch: pa.Table) -> dict[str, np.ndarray]:
        values = batch.column("image" if self.embedded else self.column).to_pylist()
        x = np.stack([self.load(v) for v in values]) if values else np.zeros((0, self.channels, self.size, self.size),
                                                                             np.uint8)  # fmt: skip
        return {"x": x, "y": _labels(batch), "augment": batch.column("augment").to_numpy(zero_copy_only=False),
                "sample_id": batch.column("sample_id").to_numpy(zero_copy_only=False)}  # fmt: skip


def fold_datasets(gold: Gold, fold: int, ds=None, cache: bool = True):
    """(training dataset, validation dataset, input width) for one fold, as arrays.

    With ``cache`` the fold's arrays are materialised once in Ray's object store (which
    spills to disk), so epochs do not re-read and re-decode the Delta files; without it
    every epoch streams from the table, for sets larger than the cluster's memory.
    """
    ds = ds if ds is not None else read_dataset(gold)
    train, val = rows_of(ds, gold, fold, "train"), rows_of(ds, gold, fold, "val")
    if gold.kind == "images":
        encode = ImageDecoder(gold.image_size, gold.image_channels, gold.image_column, gold.image_root,
                              gold.image_embedded)  # fmt: skip
        width = gold.image_channels * gold.image_size**2
    else:
        if cache:
            train = train.materialize()
        encode = Encoder(gold.numeric, gold.categorical).fit(train)
        width = encode.width
    train, val = train.map_batches(encode, batch_format="pyarrow"), val.map_batches(encode, batch_format="pyarrow")
    if cache:
        train, val = train.materialize(), val.materialize()
    return train, val, width
