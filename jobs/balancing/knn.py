"""k nearest neighbours for SMOTE, ADASYN and SMOTE-NC, run inside one Arrow UDF per bucket.

Plain numpy and faiss, no Spark: ``jobs/balancing/engine.py`` calls these on the rows of one
bucket (a (pool, class) group, or one cell of a group too large for one task).

- ``encode``: standardised numeric features, plus each categorical feature one-hot and scaled
  by sqrt(mismatch / 2), so that a category mismatch adds ``mismatch`` to the squared L2
  distance (SMOTE-NC's rule) and one L2 index serves both kinds.
- ``search``: the k nearest other rows of the asked rows. Exact (faiss ``IndexFlatL2``: BLAS
  distances and a heap per query) up to ``exact_rows`` candidates; above, an HNSW graph
  (``IndexHNSWFlat``), built on one thread so the graph, and so the answer, is the same on every
  run. Its recall against exact neighbours is measured, not assumed (the stage report and
  ``bench_oversample.py``).
- ``train_cells`` / ``nearest_cells``: k-means centroids (faiss, seeded) from a sample, which cut
  a group larger than one bucket into cells; a row is a query in its nearest cell and a
  candidate in its ``probes`` nearest, so neighbours across a cell boundary are still found.

Rows come sorted by ``sample_id``, so exact ties are broken by ``sample_id`` and the answer
does not depend on partitioning.
"""

from __future__ import annotations

import numpy as np

HNSW_M = 16  # graph degree: recall@5 0.98 at 100k rows x 20 features (measured; M 12 gave 0.93 at 500k)
HNSW_EF_CONSTRUCTION = 24  # 40 was 25 % slower to build for +0.004 recall
HNSW_EF_SEARCH = 32


def _faiss():
    import faiss

    return faiss


def encode(z: np.ndarray, codes: np.ndarray | None = None, mismatch: float = 1.0) -> np.ndarray:
    """float32 vectors: ``z`` (n x d, NaN read as 0, the mean) and one-hot ``codes`` (n x c integer codes,
    -1 for null, which is a value of its own) scaled so that a mismatch costs ``mismatch`` in squared L2."""
    z = np.nan_to_num(np.asarray(z, dtype=np.float64), nan=0.0)
    parts = [z]
    if codes is not None and codes.size:
        scale = np.sqrt(mismatch / 2.0)
        for j in range(codes.shape[1]):
            values, inverse = np.unique(codes[:, j], return_inverse=True)
            hot = np.zeros((len(z), len(values)))
            hot[np.arange(len(z)), inverse] = scale
            parts.append(hot)
    out = np.hstack(parts) if len(parts) > 1 else z
    if out.shape[1] == 0:  # no features at all: every row is as near as any other
        out = np.zeros((len(z), 1))
    return np.ascontiguousarray(out, dtype=np.float32)


def search(vectors: np.ndarray, asked: np.ndarray, k: int, exact_rows: int) -> tuple[np.ndarray, np.ndarray, bool]:
    """The k nearest other rows of the rows ``asked`` (indices into ``vectors``), nearest first.

    Returns (indices q x kk, valid q x kk, exact) with kk = min(k, n - 1); ``valid`` is False where an
    approximate search found fewer than kk others."""
    n = len(vectors)
    kk = max(0, min(k, n - 1))
    asked = np.asarray(asked, dtype=np.int64)
    if kk == 0 or len(asked) == 0:
        return np.zeros((len(asked), kk), np.int64), np.zeros((len(asked), kk), bool), True
    faiss = _faiss()
    exact = n <= exact_rows
    threads = faiss.omp_get_max_threads()
    if exact:
        index = faiss.IndexFlatL2(vectors.shape[1])
        index.add(vectors)
    else:
        index = faiss.IndexHNSWFlat(vectors.shape[1], HNSW_M)
        index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        faiss.omp_set_num_threads(1)  # one thread: nodes join the graph in the same order on every run
        try:
            index.add(vectors)
        finally:
            faiss.omp_set_num_threads(threads)
        index.hnsw.efSearch = max(HNSW_EF_SEARCH, 2 * (kk + 1))
    _, found = index.search(vectors[asked], kk + 1)  # each query on its own: any thread count, one answer
    others = (found != asked[:, None]) & (found >= 0)
    order = np.argsort(~others, axis=1, kind="stable")[:, :kk]  # drop the row itself, keep the order
    return np.take_along_axis(found, order, 1), np.take_along_axis(others, order, 1), exact


def train_cells(sample: np.ndarray, cells: int, seed: int) -> np.ndarray:
    """``cells`` k-means centroids of ``sample`` (already encoded), seeded."""
    faiss = _faiss()
    sample = np.ascontiguousarray(sample, dtype=np.float32)
    cells = max(1, min(cells, len(sample)))
    km = faiss.Kmeans(sample.shape[1], cells, niter=20, seed=int(seed) % (2**31), verbose=False,
                      max_points_per_centroid=256)  # fmt: skip
    km.train(sample)
    return km.centroids.copy()


def nearest_cells(vectors: np.ndarray, centroids: np.ndarray, probes: int) -> np.ndarray:
    """The ``probes`` nearest centroids of each row, nearest (its home cell) first."""
    faiss = _faiss()
    index = faiss.IndexFlatL2(centroids.shape[1])
    index.add(np.ascontiguousarray(centroids, dtype=np.float32))
    _, cells = index.search(np.ascontiguousarray(vectors, dtype=np.float32), min(probes, len(centroids)))
    return cells


def recall(found: dict[str, set[str]], truth: dict[str, set[str]]) -> float:
    """Mean share of each row's true k nearest that were found (recall@k)."""
    shares = [len(found.get(r, set()) & t) / len(t) for r, t in truth.items() if t]
    return float(np.mean(shares)) if shares else float("nan")
