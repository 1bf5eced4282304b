"""The gold table as the Ray side sees it: a pinned Delta version and its ``fulcrum.*`` properties.

The Ray side's one owner of Delta access: the table's properties and the pinned snapshot's file
list (delta-rs; ``training.data`` reads the files), and the out-of-fold predictions written beside it.
Which rows train and which validate each fold is the gold contract (see the README):

- training set of fold f: real rows with ``fold`` not in {f, -1} and f not in
  ``dropped_for``, plus the rows with ``synthetic_for = f``;
- validation set of fold f: real rows with ``fold = f``;
- final model (f = k): real rows with ``fold != -1`` (and k not in ``dropped_for``) plus
  ``synthetic_for = k``; its evaluation set is the test part, ``fold = -1``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


class GoldError(ValueError):
    """The table is not a gold table fulcrum can train from; the message says why and what to do."""


@dataclass(frozen=True)
class Gold:
    path: str
    version: int
    kind: str
    classes: tuple[str, ...]
    features: tuple[tuple[str, str], ...]  # (name, numeric | categorical)
    folds: int
    run_id: str
    image_size: int | None = None
    image_channels: int | None = None
    image_column: str | None = None
    image_root: str | None = None
    image_embedded: bool = False
    # The trade-off table (``fulcrum tradeoff``) holds one gold-contract copy per quality level (its
    # ``level`` column) and a per-group draw ``u`` that fractions of the training rows are cut by.
    levels: tuple[str, ...] | None = None
    @classmethod
    def open(cls, path: str, version: int | None = None, storage_options: dict | None = None) -> Gold:
        from deltalake import DeltaTable
        from deltalake.exceptions import TableNotFoundError

        if "://" not in path:  # a local path: Ray's workers run in another working directory
            path = os.path.abspath(path)
        try:
            table = DeltaTable(path, version=version, storage_options=storage_options)
        except TableNotFoundError as exc:
            raise GoldError(f"no Delta table at {path}: run `fulcrum oversample CONFIG` first") from exc
        props = table.metadata().configuration
        missing = [k for k in ("fulcrum.kind", "fulcrum.classes", "fulcrum.folds") if k not in props]
        if missing:
            raise GoldError(f"{path} has no {', '.join(missing)} table properties: it was not written by "
                            "`fulcrum oversample`")  # fmt: skip
        features = tuple((f["name"], f["kind"]) for f in json.loads(props.get("fulcrum.features", "[]")))
        image = props["fulcrum.kind"] == "images"
        return cls(
            path=path,
            version=table.version(),
            kind=props["fulcrum.kind"],
            classes=tuple(json.loads(props["fulcrum.classes"])),
            features=features,
            folds=int(props["fulcrum.folds"]),
            run_id=props.get("fulcrum.run_id", ""),
            image_size=int(props["fulcrum.image_size"]) if image else None,
            image_channels=int(props["fulcrum.image_channels"]) if image else None,
            image_column=props.get("fulcrum.image_column") if image else None,
            image_root=props.get("fulcrum.image_root") if image else None,
            image_embedded=props.get("fulcrum.image_embedded") == "true",
            levels=tuple(json.loads(props["fulcrum.tradeoff_levels"])) if "fulcrum.tradeoff_levels" in props else None,
            storage_options=storage_options,
        )

    storage_options: dict | None = None

    def files(self, part: str | None = None) -> list[str]:
        """The Parquet files of the pinned snapshot, sorted (the same order on every worker). ``part="test"``:
        only the files whose every row is in the test part (``fold = -1`` by the Delta log's per-file
        statistics, read without opening a data file); ``part="train"``: all the others. ``oversample``
        writes the test part into files of its own, so cross-validation, which never reads a test row,
        skips them; a file without statistics, or one mixing both parts, counts as ``train``."""
        from deltalake import DeltaTable

        table = DeltaTable(self.path, version=self.version, storage_options=self.storage_options)
        uris = table.file_uris()
        if part is None:
            return sorted(uris)
        test = test_only_files(table, uris)
        return sorted(u for u, t in zip(uris, test, strict=True) if t == (part == "test"))

    @property
    def numeric(self) -> list[str]:
        return [n for n, k in self.features if k == "numeric"]

    @property
    def categorical(self) -> list[str]:
        return [n for n, k in self.features if k == "categorical"]

    @property
    def columns(self) -> list[str]:
        """Columns training reads: the contract's, then the features or the image."""
        base = ["sample_id", "label", "fold", "synthetic_for", "dropped_for", "augment"]
        if self.levels is not None:
            base += ["level", "u"]
        if self.kind == "images":
            return base + (["image"] if self.image_embedded else [self.image_column])
        return base + [n for n, _ in self.features]


def test_only_files(table, uris: list[str]) -> list[bool]:
    """For each of ``uris`` (``table.file_uris()``, in its order): whether the Delta log's statistics say every
    row of that file has ``fold = -1``. False where a file has no statistics for ``fold``, or where the log's
    add actions do not line up with ``uris`` (then nothing is skipped)."""
    from urllib.parse import unquote

    actions = pa.table(table.get_add_actions(flatten=True))
    names = {"min.fold", "max.fold", "null_count.fold"}
    if actions.num_rows != len(uris) or not names <= set(actions.column_names):
        return [False] * len(uris)
    paths = actions.column("path").to_pylist()
    if any(not unquote(u).endswith(unquote(p).rsplit("/", 1)[-1]) for u, p in zip(uris, paths, strict=True)):
        return [False] * len(uris)
    low, high = actions.column("min.fold").to_pylist(), actions.column("max.fold").to_pylist()
    nulls = actions.column("null_count.fold").to_pylist()
    return [lo == -1 and hi == -1 and n == 0 for lo, hi, n in zip(low, high, nulls, strict=True)]


class Contract:
    """The gold contract's columns of a worker's rows as NumPy arrays, converted once: every slot's masks
    are then a few vectorised comparisons (``training_mask``, ``validation_mask``, ``Slot.masks``)."""

    def __init__(self, table: pa.Table):
        def ints(name: str) -> np.ndarray:
            return pc.fill_null(table.column(name), -2).to_numpy(zero_copy_only=False).astype(np.int32, copy=False)

        self.rows = table.num_rows
        self.real = pc.is_null(table.column("synthetic_for")).to_numpy(zero_copy_only=False).astype(bool)
        self.synthetic_for = ints("synthetic_for")  # -2 on real rows
        self.fold = ints("fold")  # -1: the test part
        self._dropped: tuple[np.ndarray, np.ndarray] | None = None
        if "dropped_for" in table.column_names:
            lists = table.column("dropped_for").combine_chunks()
            folds = pc.fill_null(pc.list_flatten(lists), -2).to_numpy(zero_copy_only=False).astype(np.int64)
            self._dropped = (pc.list_parent_indices(lists).to_numpy(), folds)
        self.trainable = self.real & (self.fold != -1)  # real rows outside the test part: some fold trains on each
        self._level = table.column("level") if "level" in table.column_names else None
        self._levels: dict[str, np.ndarray] = {}
        self.u = table.column("u").to_numpy(zero_copy_only=False) if "u" in table.column_names else None

    @classmethod
    def of(cls, table: pa.Table | Contract) -> Contract:
        return table if isinstance(table, Contract) else cls(table)

    def dropped_rows(self, fold: int) -> np.ndarray:
        """The positions of the rows whose ``dropped_for`` lists ``fold`` (undersampled out of that training
        set); most tables have none, so no N-row mask is built for them."""
        if self._dropped is None:
            return np.zeros(0, dtype=np.int64)
        parents, folds = self._dropped
        return parents[folds == fold]

    def level(self, name: str) -> np.ndarray:
        """Rows of one trade-off level (computed once per level)."""
        if name not in self._levels:
            self._levels[name] = pc.equal(self._level, name).to_numpy(zero_copy_only=False).astype(bool)
        return self._levels[name]


def training_mask(table: pa.Table | Contract, fold: int, folds: int) -> np.ndarray:
    """Rows of the training set of ``fold`` (``folds``: the final model's)."""
    c = Contract.of(table)
    kept = c.trainable & (c.fold != fold)
    kept[c.dropped_rows(fold)] = False
    return kept | (c.synthetic_for == fold)  # -2 on every real row: only synthetic rows match


def validation_mask(table: pa.Table | Contract, fold: int, folds: int) -> np.ndarray:
    """Real rows of ``fold`` (for the final model: the held-out test part, ``fold = -1``)."""
    c = Contract.of(table)
    return c.real & (c.fold == (-1 if fold == folds else fold))


def write_predictions(gold: Gold, folds: Iterable[dict]) -> dict:
    """Out-of-fold probabilities of every real non-test row (and, where ``folds`` yields ``fold = -1``, the final
    model's of the test part), one overwrite commit beside gold. The folds'
    arrays stream into the write one fold at a time (no Python lists, no JSON, one fold in memory). ``folds``
    yields each fold's ``fold``, ``ids``, ``labels`` and ``probabilities``."""
    import pyarrow as pa
    from deltalake import CommitProperties, write_deltalake

    k = len(gold.classes)
    schema = pa.schema([("sample_id", pa.string()), ("fold", pa.int32()), ("label", pa.int32()),
                        ("probabilities", pa.list_(pa.float64()))])  # fmt: skip
    rows = 0

    def batches():
        nonlocal rows
        for f in folds:
            ids = f["ids"].astype(str)
            if len(np.unique(ids)) != len(ids):  # across folds rows cannot repeat: each has one `fold`
                raise RuntimeError(f"a row was scored twice in fold {f['fold']}: the validation set repeats rows")
            rows += len(ids)
            p = np.asarray(f["probabilities"], dtype=np.float64).reshape(len(ids), k)
            probabilities = pa.FixedSizeListArray.from_arrays(pa.array(p.ravel()), k).cast(pa.list_(pa.float64()))
            yield pa.record_batch([pa.array(ids, pa.string()), pa.array(np.full(len(ids), f["fold"], np.int32)),
                                   pa.array(np.asarray(f["labels"], np.int32)), probabilities], schema=schema)  # fmt: skip

    path = gold.path.rstrip("/").rsplit("/", 1)[0] + "/predictions"
    # delta-rs accepts only delta.* table properties: the lineage goes into the commit's metadata.
    lineage = {"fulcrum.classes": json.dumps(list(gold.classes)), "fulcrum.gold_version": str(gold.version),
               "fulcrum.gold_table": gold.path}  # fmt: skip
    write_deltalake(path, pa.RecordBatchReader.from_batches(schema, batches()), mode="overwrite",
                    schema_mode="overwrite", commit_properties=CommitProperties(custom_metadata=lineage))  # fmt: skip
    return {"path": path, "rows": rows}
