"""A worker's rows of the gold table, read once and turned into tensors once.

Each worker reads its share of the pinned snapshot's Parquet files (the file list comes from
delta-rs at the pinned version, ``Gold.files``; worker r of W takes files r, r+W, ...) with
pyarrow, only the columns training needs and, for a trade-off table, only the levels asked
for (a filter pushed into the scan, skipping row groups by their statistics). The rows
become tensors once: tabular features one float32 matrix (numeric columns as read, NaN where
missing, then every categorical one-hot over the categories of the rows read), images uint8
``N×C×H×W`` decoded by ``torchvision.io`` from the PNG bytes gold embeds (files under the
image root through ``safe_join``, 16-bit ones scaled to 8 bits). Training never reads
``sample_id``: the ids are read from the same files (same filter, same row order) only when the
validation rows' ids are first asked for, after the first epoch's training steps.

Per-slot standardisation (mean and standard deviation of each slot's own training rows,
categories seen there) is computed from the same tensors in one pass (``slot_statistics``)
and lives in each slot's model (``engine.SlotInput``), so one shared batch feeds every slot.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from training.contract import as_mode, safe_join
from training.gold import Gold

CONTRACT = ("label", "fold", "synthetic_for", "dropped_for", "augment")


@dataclass
class Rows:
    """One worker's rows: features (or images) as a tensor, labels, and the gold columns the slots'
    masks read. ``ids`` holds the sample ids of the rows some slot validates on (else None)."""

    x: torch.Tensor  # float32 N×D (tabular) or uint8 N×C×H×W (images)
    y: torch.Tensor  # int64 N
    contract: pa.Table  # fold, synthetic_for, dropped_for (+ level, u): what the masks read
    read_ids: Callable[[], pa.ChunkedArray]  # every row's sample id, in row order, read on first use
    numeric: int = 0  # the first ``numeric`` columns of x are numeric, the rest one-hot
    augment: torch.Tensor | None = None  # bool N: the rows gold flags for augmentation
    categories: dict[str, list[str]] | None = None
    _ids: pa.ChunkedArray | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.y)

    def ids_of(self, mask: np.ndarray) -> np.ndarray:
        """The sample ids of the rows ``mask`` selects, as a string array (the column is read on the first
        call and kept in Arrow: only the selected rows become strings)."""
        if self._ids is None:
            self._ids = self.read_ids()
            if len(self._ids) != len(self.y):
                raise RuntimeError(f"the sample ids read again are {len(self._ids)} rows, the rows are {len(self.y)}: "
                                   "the snapshot's files changed under the run")  # fmt: skip
        return np.asarray(self._ids.take(pa.array(np.flatnonzero(mask))).to_pylist(), dtype=np.str_)

    def extend(self, more: Rows) -> Rows:
        """These rows followed by ``more`` (read with the same categories): one copy of each tensor, the
        contract tables chained, the ids read from both in the same order when first asked for."""
        if len(more) == 0:
            return self
        if len(self) == 0:
            return more
        first, then = self.read_ids, more.read_ids

        def ids() -> pa.ChunkedArray:
            return pa.chunked_array([*first().cast(pa.string()).chunks, *then().cast(pa.string()).chunks], pa.string())

        contract = pa.concat_tables([self.contract, more.contract.cast(self.contract.schema)])
        augment = None if self.augment is None else torch.cat([self.augment, more.augment])
        return Rows(x=torch.cat([self.x, more.x]), y=torch.cat([self.y, more.y]), contract=contract, read_ids=ids,
                    numeric=self.numeric, augment=augment, categories=self.categories)  # fmt: skip


def shard_files(files: list[str], rank: int, world: int) -> tuple[list[str], tuple[int, int] | None]:
    """Worker ``rank``'s files, and (rank, world) when there are fewer files than workers (then every
    worker reads them all and keeps rows rank, rank+world, ...)."""
    if world <= 1:
        return files, None
    if len(files) >= world:
        return files[rank::world], None
    return files, (rank, world)


def scan(gold: Gold, rank: int = 0, world: int = 1, levels: list[str] | None = None,
         columns: list[str] | None = None, part: str | None = None) -> tuple[int, Iterator[pa.RecordBatch]]:  # fmt: skip
    """This worker's share of the pinned snapshot as record batches, and how many rows they hold: ``parts``
    one after the other. The same arguments give the same rows in the same order."""
    pieces = parts(gold, rank, world, levels, columns, part)
    return sum(n for n, _ in pieces), (b for _, batches in pieces for b in batches())


VIEWS = {"string_view": pa.string(), "binary_view": pa.binary()}


def open_dataset(files: list[str]):
    """The snapshot's Parquet files as one pyarrow dataset (local paths or URIs pyarrow resolves, s3://…), with
    string and binary columns as plain ``string``/``binary`` whichever way each file was written: delta-rs
    (a ``DELETE``, ``OPTIMIZE`` or ``MERGE`` on gold) and Polars write Arrow's view types, which pyarrow's
    ``take`` and friends do not all accept, and a table can mix both kinds of file."""
    import pyarrow.dataset as pads

    dataset = pads.dataset(files, format="parquet")
    schema = dataset.schema
    if not any(str(f.type) in VIEWS for f in schema):
        return dataset
    plain = pa.schema([f.with_type(VIEWS.get(str(f.type), f.type)) for f in schema], metadata=schema.metadata)
    return pads.dataset(files, format="parquet", schema=plain)


BATCH_ROWS = 16_384  # rows per record batch while converting: one batch's float32 block stays in cache


def parts(gold: Gold, rank: int = 0, world: int = 1, levels: list[str] | None = None,
          columns: list[str] | None = None,
          part: str | None = None) -> list[tuple[int, Callable[[], Iterable[pa.RecordBatch]]]]:  # fmt: skip
    """This worker's share of the pinned snapshot as independent parts, each (its row count, a function that
    streams its record batches): ``columns`` (default: the training columns, without ``sample_id``), the
    levels asked for. One part per file of the share (counted from the file's metadata, or a scan of
    ``level`` alone for a filtered trade-off table), each read with the dataset's schema; when the worker
    keeps every ``world``-th row of shared files, one part. The parts in order are the rows in file and row
    order, so they can be converted concurrently into their own ranges of one array (``_convert_parts``).
    ``part``: the snapshot's ``train`` or ``test`` files only (``Gold.files``), each shared out the same way."""

    columns = columns if columns is not None else [c for c in gold.columns if c != "sample_id"]
    files, stride = shard_files(gold.files(part), rank, world)
    if not files:
        return []
    dataset = open_dataset(files)
    where = pc.field("level").isin(levels) if levels is not None and gold.levels is not None else None
    if stride is None:
        return [(fragment.count_rows(filter=where) if where is not None else fragment.metadata.num_rows,
                 lambda f=fragment: f.to_batches(schema=dataset.schema, columns=columns, filter=where,
                                                 batch_size=BATCH_ROWS))
                for fragment in dataset.get_fragments()]  # fmt: skip
    first, step = stride
    total = dataset.count_rows(filter=where)

    def strided() -> Iterator[pa.RecordBatch]:  # rows first, first + step, ... of the whole share
        seen = 0
        for b in dataset.to_batches(columns=columns, filter=where):  # in file and row order
            index = np.arange((first - seen) % step, b.num_rows, step)
            seen += b.num_rows
            if len(index):
                yield b.take(pa.array(index))

    return [(len(range(first, total, step)), strided)]


def read_rows(gold: Gold, rank: int = 0, world: int = 1, levels: list[str] | None = None,
              columns: list[str] | None = None, part: str | None = None) -> pa.Table:  # fmt: skip
    """``scan``'s rows as one table."""
    columns = columns if columns is not None else [c for c in gold.columns if c != "sample_id"]
    _, batches = scan(gold, rank, world, levels, columns, part)
    batches = list(batches)
    if not batches:  # no file of this part (a small gold mixes its parts in one file): no row, typed as the table
        every = gold.files()
        schema = open_dataset(every).schema if every else pa.schema([])
        return pa.table({c: pa.array([], schema.field(c).type if c in schema.names else pa.null()) for c in columns})
    return pa.Table.from_batches(batches)


def vocabulary(gold: Gold) -> dict[str, list[str]]:
    """Every categorical column's categories over the whole snapshot (sorted), so every worker one-hot
    encodes alike; reads those columns only."""

    if not gold.categorical:
        return {}
    table = open_dataset(gold.files()).to_table(columns=gold.categorical)
    return {c: sorted(pc.unique(pc.cast(table.column(c), pa.string())).drop_null().to_pylist()) for c in gold.categorical}


def width(gold: Gold, categories: dict[str, list[str]]) -> int:
    """Input values per row: the pixels, or the numeric columns plus every one-hot column."""
    if gold.kind == "images":
        return gold.image_channels * gold.image_size**2
    return len(gold.numeric) + sum(len(v) for v in categories.values())


def load(gold: Gold, rank: int = 0, world: int = 1, levels: list[str] | None = None,
         categories: dict[str, list[str]] | None = None, part: str | None = None) -> Rows:  # fmt: skip
    """Read and convert this worker's rows (see the module docstring). Tabular rows are converted as they
    stream in, record batch by record batch: no whole-table Arrow copy of the features is ever held.
    ``part``: only the snapshot's ``train`` (or ``test``) files (``Gold.files``); ``Rows.extend`` adds the
    others later."""

    def ids() -> pa.ChunkedArray:
        return read_rows(gold, rank, world, levels, columns=["sample_id"], part=part).column("sample_id")

    if gold.kind == "images":
        table = read_rows(gold, rank, world, levels, part=part)
        y = torch.from_numpy(table.column("label").to_numpy(zero_copy_only=False).astype(np.int64))
        keep = [c for c in (*CONTRACT, "level", "u") if c in table.column_names]
        decode = ImageDecoder(gold.image_size, gold.image_channels, gold.image_column, gold.image_root,
                              gold.image_embedded)  # fmt: skip
        x = decode(table.column("image" if gold.image_embedded else gold.image_column))
        flags = table.column("augment").fill_null(False).to_numpy(zero_copy_only=False).astype(bool)
        return Rows(x=x, y=y, contract=table.select(keep), read_ids=ids, augment=torch.from_numpy(flags))
    categories = categories if categories is not None else vocabulary(gold)
    keep = [c for c in (*CONTRACT, "level", "u") if c in gold.columns]
    x, y, contract = _convert_parts(parts(gold, rank, world, levels, part=part), gold.numeric, categories, keep,
                                    threads=torch.get_num_threads())  # fmt: skip
    return Rows(x=x, y=y, contract=contract, read_ids=ids, numeric=len(gold.numeric), categories=categories)


def tabular(table: pa.Table, numeric: list[str], categories: dict[str, list[str]]) -> tuple[torch.Tensor, dict]:
    """float32 ``N×D``: numeric columns as read (NaN where missing), then each categorical one-hot over
    ``categories`` (values outside them: all zeros); built once, never per batch (see ``_convert``)."""
    x, _, _ = _convert(table.to_batches(), table.num_rows, numeric, categories, [], labels=False)
    return x, categories


def _convert(batches: Iterable[pa.RecordBatch], rows: int, numeric: list[str], categories: dict[str, list[str]],
             keep: list[str], labels: bool = True) -> tuple[torch.Tensor, torch.Tensor, pa.Table]:  # fmt: skip
    """The features (``tabular``), the labels (int64) and the ``keep`` columns of ``rows`` rows arriving as
    record batches: each batch lands in one preallocated float32 array while it is in cache, then goes."""
    return _convert_parts([(rows, lambda: batches)], numeric, categories, keep, labels)


def _convert_parts(parts: list[tuple[int, Callable[[], Iterable[pa.RecordBatch]]]], numeric: list[str],
                   categories: dict[str, list[str]], keep: list[str], labels: bool = True,
                   threads: int = 1) -> tuple[torch.Tensor, torch.Tensor, pa.Table]:  # fmt: skip
    """``_convert`` over parts (``parts``), each converted into its own range of the arrays by up to ``threads``
    threads at once (pyarrow's decoding and NumPy's copies release the GIL). A part that yields more or fewer
    rows than it counts stops the run: the snapshot's files changed under it."""
    from concurrent.futures import ThreadPoolExecutor

    rows = sum(n for n, _ in parts)
    width = len(numeric) + sum(len(v) for v in categories.values())
    out = np.zeros((rows, width), np.float32)
    y = np.zeros(rows, np.int64)
    value_sets = {c: pa.array(cats, pa.string()) for c, cats in categories.items()}
    offsets = np.concatenate([[0], np.cumsum([n for n, _ in parts], dtype=np.int64)]).tolist()

    def fill(i: int) -> list[pa.RecordBatch]:
        start, end, kept = offsets[i], offsets[i + 1], []
        for batch in parts[i][1]():
            if start + batch.num_rows > end:
                raise RuntimeError(f"more rows arrived than the files' metadata counts ({end - offsets[i]}): the "
                                   "snapshot's files changed under the run")  # fmt: skip
            block = out[start : start + batch.num_rows]
            for j, c in enumerate(numeric):
                block[:, j] = batch.column(c).to_numpy(zero_copy_only=False)
            j = len(numeric)
            for c, value_set in value_sets.items():
                index = pc.index_in(pc.cast(batch.column(c), pa.string()), value_set=value_set)
                index = index.to_numpy(zero_copy_only=False)
                seen = ~np.isnan(index.astype(np.float64))
                block[np.flatnonzero(seen), j + index[seen].astype(np.int64)] = 1.0
                j += len(value_set)
            if labels:
                y[start : start + batch.num_rows] = batch.column("label").to_numpy(zero_copy_only=False)
            if keep:
                kept.append(batch.select(keep))
            start += batch.num_rows
        if start != end:
            raise RuntimeError(f"{start - offsets[i]} rows arrived, the files' metadata counts {end - offsets[i]}: "
                               "the snapshot's files changed under the run")  # fmt: skip
        return kept

    if threads > 1 and len(parts) > 1:
        with ThreadPoolExecutor(min(threads, len(parts))) as pool:
            kept = [b for part in pool.map(fill, range(len(parts))) for b in part]
    else:
        kept = [b for i in range(len(parts)) for b in fill(i)]
    contract = pa.Table.from_batches(kept) if kept else pa.table({c: pa.array([], pa.null()) for c in keep})
    return torch.from_numpy(out), torch.from_numpy(y), contract


def slot_statistics(x: torch.Tensor, numeric: int, masks: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per slot (``masks``: bool S×N, each slot's training rows): the numeric columns' mean and standard
    deviation over its non-missing values, and which one-hot columns its rows ever set. One pass for all
    slots (sums as matrix products); every worker's sums are added before dividing (``combine``)."""
    m = masks.to(torch.float64)
    num = x[:, :numeric].to(torch.float64)
    ok = ~torch.isnan(num)
    num0 = torch.where(ok, num, torch.zeros((), dtype=torch.float64))
    return {"n": m @ ok.to(torch.float64), "s": m @ num0, "q": m @ num0**2,
            "seen": m @ x[:, numeric:].to(torch.float64)}  # fmt: skip


def finish_statistics(sums: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mean S×numeric, std S×numeric, one-hot keep S×C) from summed ``slot_statistics``."""
    n = sums["n"].clamp(min=1)
    mean = sums["s"] / n
    std = (sums["q"] / n - mean**2).clamp(min=0).sqrt()
    std = torch.where(std > 0, std, torch.ones_like(std))
    return mean.float(), std.float(), (sums["seen"] > 0).float()


@dataclass
class ImageDecoder:
    """Image values → uint8 ``N×C×H×W`` at the training size: PNG bytes embedded in gold by
    ``torchvision.io.decode_image``, files under the image root by Pillow (16-bit scaled to 8 bits)."""

    size: int
    channels: int
    column: str | None = None
    root: str | None = None
    embedded: bool = True

    def one(self, value) -> torch.Tensor:
        if self.embedded:
            from torchvision.io import ImageReadMode, decode_image

            mode = ImageReadMode.GRAY if self.channels == 1 else ImageReadMode.RGB
            img = decode_image(torch.frombuffer(bytearray(value), dtype=torch.uint8), mode=mode)
            if tuple(img.shape[1:]) != (self.size, self.size):
                from torchvision.transforms.v2.functional import resize

                img = resize(img, [self.size, self.size], antialias=True)
            return img
        from PIL import Image

        with Image.open(safe_join(self.root, value)) as img:
            img = as_mode(img, "L" if self.channels == 1 else "RGB")
            if img.size != (self.size, self.size):
                img = img.resize((self.size, self.size), Image.Resampling.BILINEAR)
            arr = np.asarray(img, dtype=np.uint8)
        return torch.from_numpy(np.ascontiguousarray(arr[None] if self.channels == 1 else arr.transpose(2, 0, 1)))

    def __call__(self, column: pa.ChunkedArray) -> torch.Tensor:
        values = column.to_pylist()
        if not values:
            return torch.zeros((0, self.channels, self.size, self.size), dtype=torch.uint8)
        return torch.stack([self.one(v) for v in values])


def png(array: np.ndarray) -> bytes:
    """uint8 ``H×W`` or ``H×W×C`` as PNG bytes (tests and benchmarks build image gold tables with it)."""
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(array).save(out, format="PNG")
    return out.getvalue()
