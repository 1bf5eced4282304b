"""The NCC measure behind image near duplicates, checked against a direct Pearson correlation (numpy)."""

import numpy as np

from jobs.config import VerifyConfig
from jobs.curation import near_images as ni


def _pearson_best(a: np.ndarray, b: np.ndarray, m: int) -> float:
    """Brute force: the best Pearson correlation of b's central window with a's window at every shift (and the
    other way round)."""
    w = a.shape[0] - 2 * m
    best = -1.0
    for x, y in ((a, b), (b, a)):
        centre = y[m : m + w, m : m + w].ravel()
        for dy in range(2 * m + 1):
            for dx in range(2 * m + 1):
                best = max(best, float(np.corrcoef(x[dy : dy + w, dx : dx + w].ravel(), centre)[0, 1]))
    return best


def test_all_pairs_and_pair_scores_equal_brute_force_pearson():
    rng = np.random.default_rng(0)
    px = rng.integers(0, 256, (5, 32, 32)).astype(np.float32)
    px[1] = np.roll(px[0], (1, 2), axis=(0, 1)) * 0.8 + 20  # a shifted, darkened copy of 0
    scores = ni.all_pairs(px, 2)
    for i in range(5):
        for j in range(5):
            if i != j:
                assert abs(scores[i, j] - _pearson_best(px[i], px[j], 2)) < 1e-4
    assert scores[0, 1] > 0.999 and scores[0, 2] < 0.3
    pairs = ni.pair_scores(px[[0, 0, 3]], px[[1, 2, 4]], 2)
    assert np.allclose(pairs, [scores[0, 1], scores[0, 2], scores[3, 4]], atol=1e-5)


def test_flat_images_match_only_an_equally_grey_flat_image():
    px = np.stack([np.full((32, 32), 100.0), np.full((32, 32), 104.0), np.full((32, 32), 200.0),
                   np.random.default_rng(1).integers(0, 256, (32, 32)).astype(float)]).astype(np.float32)  # fmt: skip
    s = ni.all_pairs(px, 1)
    assert s[0, 1] == 1.0 and s[0, 2] == -1.0 and s[0, 3] == -1.0
    assert np.allclose(ni.pair_scores(px[[0, 0]], px[[1, 3]], 1), [1.0, -1.0])


def test_auto_threshold_is_ratio_times_closer_than_the_closest_random_pairs():
    rng = np.random.default_rng(2)
    px = rng.integers(0, 256, (60, 32, 32)).astype(np.float32)
    v = VerifyConfig()
    check = ni.calibrate(px, v)
    scores = ni.all_pairs(px, v.max_shift)[np.triu_indices(60, 1)]
    d = np.quantile(1 - scores, ni.RANDOM_QUANTILE)
    assert check["random_pairs"] == 1770 and abs(check["auto"] - max(v.floor, 1 - d / v.ratio)) < 1e-4
    assert check["accepted_share"] == 0.0 and not check["warned"]
    assert ni.calibrate(px[:10], v)["threshold"] == ni.SMALL_TABLE  # 45 pairs: too few to calibrate on


def test_the_self_check_reads_as_one_sentence():
    rng = np.random.default_rng(3)
    px = rng.integers(0, 256, (60, 32, 32)).astype(np.float32)
    auto = ni.calibrate(px, VerifyConfig())
    auto.update(images=60, exhaustive=True, verified_pairs=0, detached=0)
    line = ni.describe(auto)
    assert line.startswith(f"near duplicates by NCC >= {auto['threshold']:.4f} (auto: 9x closer than the closest 0.1 %")
    assert "1,770 random pairs" in line and "every pair compared" in line and "WARNING" not in line
    loose = ni.calibrate(px, VerifyConfig(threshold=-1.0))
    assert "configured" in ni.describe(loose) and ni.describe(loose).endswith("too many random pairs")
    assert "too few to calibrate" in ni.describe(ni.calibrate(px[:5], VerifyConfig()))
    assert ni.describe({"phash": {"hamming": 6, "accepted_share": 0.0004, "random_pairs": 100}}) == (
        "near duplicates by pHash <= 6 bits, which accepts 0.040 % of 100 random pairs")
