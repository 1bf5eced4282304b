"""The oversampling engine's pure parts: exact copy counts, quotas, the k-NN search (checked against brute
force and scikit-learn), SMOTE-NC's distance and vote."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.neighbors import NearestNeighbors

from jobs.balancing import engine, knn


@pytest.mark.parametrize(
    ("quota", "weights"),
    [(10, [1, 1, 1]), (7, [0.5, 0.0, 2.0, 1.0]), (1, [1] * 5), (1000, [0.1, 0.3]), (5, [0, 0, 0]), (0, [1, 2]),
     (3, [1e-9, 1e9])],
)  # fmt: skip
def test_exact_copies_sum_to_the_quota_and_follow_the_weights(quota, weights):
    w = np.array(weights, dtype=float)
    got = engine.exact_copies(quota, w, np.arange(len(w), dtype=np.uint64) * 7919)
    assert got.sum() == quota and (got >= 0).all()
    share = quota * (w / w.sum() if w.sum() > 0 else np.full(len(w), 1 / len(w)))
    assert (np.abs(got - share) < 1).all()  # floor or floor + 1 of its share


def test_exact_copies_break_ties_by_hash_not_by_position():
    a = engine.exact_copies(2, np.ones(4), np.array([9, 1, 5, 3], dtype=np.uint64))
    assert a.tolist() == [0, 1, 0, 1]  # the two smallest hashes get the remainder


def test_share_quota_splits_a_group_among_its_cells_exactly():
    got = engine.share_quota(101, {0: 10.0, 3: 20.0, 7: 70.0})
    assert sum(got.values()) == 101 and set(got) == {0, 3, 7} and got[7] in (70, 71)


def test_splitmix_is_a_fixed_function():
    h = np.array([0, 1, 2**63], dtype=np.uint64)
    assert engine.splitmix(h).tolist() == engine.splitmix(h.copy()).tolist()
    assert len(set(engine.splitmix(np.arange(10_000, dtype=np.uint64)).tolist())) == 10_000


def test_exact_search_equals_scikit_learn():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(800, 6))
    near, valid, exact = knn.search(knn.encode(x), np.arange(800), 5, exact_rows=10_000)
    truth = NearestNeighbors(n_neighbors=6).fit(x).kneighbors(x, return_distance=False)[:, 1:]
    assert exact and valid.all()
    assert (near == truth).mean() > 0.999  # float32 vs float64 may swap a near-tie


def test_hnsw_recall_at_5_is_high_and_the_graph_is_the_same_every_time():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(6000, 16))
    asked = np.arange(0, 6000, 7)
    a, valid, exact = knn.search(knn.encode(x), asked, 5, exact_rows=1000)
    b, _, _ = knn.search(knn.encode(x), asked, 5, exact_rows=1000)
    truth = NearestNeighbors(n_neighbors=6).fit(x).kneighbors(x[asked], return_distance=False)[:, 1:]
    assert not exact and valid.all() and (a == b).all()
    assert knn.recall({i: set(r) for i, r in enumerate(a)}, {i: set(r) for i, r in enumerate(truth)}) > 0.95
    assert not (a == asked[:, None]).any()  # never its own neighbour


def test_a_category_mismatch_adds_its_cost_to_the_squared_distance():
    z = np.zeros((3, 1))
    v = knn.encode(z, np.array([[0], [0], [1]]), mismatch=2.5)
    assert np.isclose(((v[0] - v[1]) ** 2).sum(), 0) and np.isclose(((v[0] - v[2]) ** 2).sum(), 2.5)
    near, _, _ = knn.search(knn.encode(np.zeros((5, 1)), np.array([[0], [0], [1], [1], [1]])), np.arange(5), 2, 100)
    assert near[0].tolist() == [1, 2] and near[2].tolist() == [3, 4]  # same category first, then by sample order


def test_tiny_buckets_and_no_features():
    near, valid, _ = knn.search(knn.encode(np.zeros((1, 3))), np.array([0]), 5, 100)
    assert near.shape == (1, 0) and valid.shape == (1, 0)
    near, valid, _ = knn.search(knn.encode(np.zeros((3, 0))), np.arange(3), 5, 100)
    assert near.shape == (3, 2) and valid.all()


def test_the_vote_takes_the_most_frequent_value_then_the_smallest():
    codes = np.array([[2, 1, 2, 0, 1], [3, 3, 1, 1, 0], [4, 4, 4, 4, 4]])
    pos = engine._mode_positions(codes)
    assert codes[np.arange(3), pos].tolist() == [1, 1, 4]
