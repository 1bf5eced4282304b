"""Oversampling per fold into gold, on real local Spark and Delta, from the cancer sample."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from pyspark.sql import functions as F

from jobs.balancing import oversample
from jobs.config import load_config
from jobs.errors import ConfigError
from jobs.lakehouse import tables

pytestmark = pytest.mark.spark

NUMERIC = ["mean_radius", "mean_texture", "mean_perimeter", "mean_area", "mean_smoothness", "mean_compactness",
           "mean_concavity", "mean_concave_points", "mean_symmetry", "mean_fractal_dimension"]  # fmt: skip


@pytest.fixture
def cancer_lake(curated, lake_copy):
    return lake_copy(curated["cancer"])


def _with(cfg, **oversample_keys):
    data = cfg.model_dump(by_alias=True)
    data["oversample"].update(oversample_keys)
    return type(cfg).model_validate({**data, "base_dir": cfg.base_dir})


def _numeric_only(cfg, **oversample_keys):
    data = cfg.model_dump(by_alias=True)
    data["columns"]["features"] = [{"name": c, "kind": "numeric"} for c in NUMERIC]
    data["oversample"].update(oversample_keys)
    return type(cfg).model_validate({**data, "base_dir": cfg.base_dir})


def _gold(spark, cfg):
    return tables.read(spark, tables.Lake(cfg.lake_dir).path("gold")).collect()


def _check_segments(gold, k):
    """Every interpolated row lies between its source and its neighbour: same class, both real rows of the
    training part of the fold it serves; the categorical value is one the class has there."""
    real = {r["sample_id"]: r for r in gold if r["synthetic_for"] is None}
    fake = [r for r in gold if r["synthetic_for"] is not None]
    assert fake and {r["synthetic_for"] for r in fake} == set(range(k + 1))
    for r in fake:
        f = r["synthetic_for"]
        src, nb = real[r["synthetic_of"]], real[r["synthetic_with"]]
        for parent in (src, nb):
            assert parent["fold"] not in (-1, f) and parent["label"] == r["label"], (r, parent)
        a = np.array([src[c] for c in NUMERIC])
        b = np.array([nb[c] for c in NUMERIC])
        x = np.array([r[c] for c in NUMERIC])
        span = b - a
        moving = np.abs(span) > 1e-12
        gaps = (x[moving] - a[moving]) / span[moving]
        assert np.all(gaps >= -1e-9) and np.all(gaps <= 1 + 1e-9), r
        assert np.allclose(gaps, gaps[0], atol=1e-7), r  # one gap for every feature: on the segment
        assert np.allclose(x[~moving], a[~moving])
    return real, fake


def test_smotenc_rows_lie_on_segments_of_their_folds_training_part(spark, cancer_lake):
    cfg = cancer_lake
    assert cfg.oversample.method == "smotenc"  # the sample's own config
    report = oversample.run(spark, cfg, "o-1")
    gold = _gold(spark, cfg)
    real, fake = _check_segments(gold, cfg.split.folds)
    for r in fake:  # categorical values stay within what that class has in that training part
        seen = {x["texture_grade"] for x in real.values() if x["fold"] not in (-1, r["synthetic_for"])
                and x["label"] == r["label"]}  # fmt: skip
        assert r["texture_grade"] in seen
        assert r["augment"] is False  # tabular rows are not augmented
    for f, counts in report.details["balance"]["after"].items():  # every training set reaches the target
        assert len(set(counts.values())) == 1, (f, counts)
    knn = report.details["knn"]  # every group is one small bucket: exact neighbours
    assert knn["approximate_groups"] == 0 and knn["exact_groups"] > 0 and knn["recall_at_k"] == 1.0
    path = tables.Lake(cfg.lake_dir).path("gold")
    props = tables.properties(spark, path)
    assert json.loads(props["fulcrum.classes"]) == ["benign", "malignant"]
    assert props["fulcrum.folds"] == str(cfg.split.folds) and props["fulcrum.kind"] == "tabular"
    assert props["fulcrum.oversample"] == "smotenc"
    assert props["delta.enableDeletionVectors"] == "false"
    assert {r["label"] for r in gold} == {0, 1} and {r["class_name"] for r in gold} == {"benign", "malignant"}
    assert len({r["sample_id"] for r in gold}) == len(gold)
    assert Path(cfg.reports_dir, "o-1", "class_balance.png").is_file()


def test_smote_is_deterministic_and_respects_the_ratio(spark, cancer_lake):
    cfg = _numeric_only(cancer_lake, method="smote", target_ratio=0.5)
    path = tables.Lake(cfg.lake_dir).path("gold")
    report = oversample.run(spark, cfg, "o-2")
    for counts in report.details["balance"]["after"].values():
        assert counts["malignant"] == -(-counts["benign"] // 2)  # ceil(0.5 x majority)
    first = sorted((r["sample_id"], r["mean_area"]) for r in tables.read(spark, path).collect())
    _check_segments(_gold(spark, cfg), cfg.split.folds)
    oversample.run(spark, cfg, "o-3")
    assert sorted((r["sample_id"], r["mean_area"]) for r in tables.read(spark, path).collect()) == first
    oversample.run(spark, _with(cancer_lake, method="none"), "o-4")
    assert tables.read(spark, path).where("synthetic_for IS NOT NULL").count() == 0


def test_adasyn_makes_rows_where_other_classes_are_near(spark, cancer_lake):
    cfg = _numeric_only(cancer_lake, method="adasyn")
    report = oversample.run(spark, cfg, "o-5")
    gold = _gold(spark, cfg)
    real, fake = _check_segments(gold, cfg.split.folds)
    for counts in report.details["balance"]["after"].values():
        assert len(set(counts.values())) == 1
    # Brute force on fold 0's training part: every ADASYN source has another class among its 5 nearest.
    pool = [r for r in real.values() if r["fold"] not in (-1, 0)]
    x = np.array([[r[c] for c in NUMERIC] for r in pool])
    z = (x - x.mean(0)) / x.std(0)
    labels = np.array([r["label"] for r in pool])
    index = {r["sample_id"]: i for i, r in enumerate(pool)}
    sources = {r["synthetic_of"] for r in fake if r["synthetic_for"] == 0}
    for sid in sources:
        i = index[sid]
        d = ((z - z[i]) ** 2).sum(1)
        d[i] = np.inf
        assert (labels[np.argsort(d)[:5]] != labels[i]).any(), sid
    minority = [r for r in pool if r["class_name"] == "malignant"]
    assert len(sources) < len(minority)  # rows deep inside their class make none


def test_a_class_too_small_for_knn_falls_back_to_random_with_a_warning(spark, cancer_lake, caplog):
    cfg = _with(cancer_lake, k_neighbors=100)  # malignant has fewer than 101 rows in every training part
    with caplog.at_level(logging.WARNING, logger="jobs.balancing.oversample"):
        report = oversample.run(spark, cfg, "o-6")
    assert "oversampled at random instead of by smotenc" in caplog.text
    assert {x["class"] for x in report.details["fallback"]} == {"malignant"}
    gold = _gold(spark, cfg)
    real = {r["sample_id"]: r for r in gold if r["synthetic_for"] is None}
    fake = [r for r in gold if r["synthetic_for"] is not None]
    assert fake and all(r["synthetic_with"] is None for r in fake)
    assert all(r["mean_area"] == real[r["synthetic_of"]]["mean_area"] for r in fake)


def test_undersampling_cuts_each_training_part_and_keeps_validation_whole(spark, cancer_lake):
    cfg = _with(cancer_lake, method="undersample")
    report = oversample.run(spark, cfg, "o-7")
    gold = _gold(spark, cfg)
    assert all(r["synthetic_for"] is None for r in gold)
    silver = tables.read(spark, tables.Lake(cfg.lake_dir).path("silver")).count()
    assert len(gold) == silver  # cut rows stay in gold: they still validate their own fold
    k = cfg.split.folds
    for f in range(k + 1):
        train = [r for r in gold if r["fold"] not in (-1, f) and f not in (r["dropped_for"] or [])]
        counts = {c: sum(r["class_name"] == c for r in train) for c in ("benign", "malignant")}
        assert counts["benign"] == counts["malignant"] == report.details["balance"]["after"][str(f)]["benign"]
    assert all(f != r["fold"] for r in gold for f in (r["dropped_for"] or []))
    both = _with(cancer_lake, method="smotenc", undersample=0.5)
    report = oversample.run(spark, both, "o-8")
    for f, counts in report.details["balance"]["after"].items():
        before = report.details["balance"]["before"][f]
        assert counts["benign"] == -(-before["malignant"] // 0.5) == counts["malignant"]


def test_oversample_needs_silver(spark, sample_dir, tmp_path):
    cfg = load_config(sample_dir / "cancer" / "cancer.yaml", {"lake_root": str(tmp_path / "lake")})
    with pytest.raises(ConfigError, match="silver does not exist"):
        oversample.run(spark, cfg, "o-9")
    assert not tables.exists(spark, tables.Lake(cfg.lake_dir).path("gold"))


def test_groups_larger_than_a_bucket_are_cut_into_cells_with_exact_counts_and_measured_recall(spark):
    """bucket_rows 120 cuts each minority group (~400 rows) into k-means cells, knn_exact_rows 60 makes the search
    inside them HNSW: counts stay exact, rows stay on segments of their own pool and class, the result is the
    same on a re-run, and the recall@5 the stage reports is measured against brute force."""
    from sklearn.datasets import make_classification

    from jobs.balancing import engine
    from jobs.config import parse_config

    x, y = make_classification(n_samples=3000, n_features=6, n_informative=4, weights=[0.8, 0.2], random_state=4)
    rows = [(f"r{i:05d}", str(y[i]), i % 3, *map(float, x[i])) for i in range(len(y))]
    feats = [f"f{j}" for j in range(6)]
    silver = spark.createDataFrame(rows, "sample_id string, y string, fold int, " + ", ".join(f"{f} double" for f in feats))
    cfg = parse_config({"dataset": "cells", "kind": "tabular", "source": {"path": "x.parquet", "format": "parquet"},
                        "columns": {"label": "y", "features": feats},
                        "oversample": {"method": "smote", "bucket_rows": 120, "knn_exact_rows": 60}})  # fmt: skip
    counts = {f: {c: int(((np.arange(3000) % 3 == f) & (y.astype(str) == c)).sum()) for c in ("0", "1")} for f in range(3)}
    plan = oversample.plan_pools(counts, cfg, folds=3)
    made = oversample.synthesize(silver, cfg, 3, plan).cache()
    got = {(r["synthetic_for"], r["y"]): r["count"] for r in made.groupBy("synthetic_for", "y").count().collect()}
    assert got == {(f, c): p["make"] for f, per in plan.items() for c, p in per.items() if p["make"]}
    real = {r[0]: (r[1], r[2], np.array(r[3:])) for r in rows}
    out = made.collect()
    assert len({r["sample_id"] for r in out}) == len(out)
    for r in out:
        for parent in (r["synthetic_of"], r["synthetic_with"]):
            assert real[parent][0] == r["y"] and real[parent][1] not in (r["synthetic_for"], -1)
        a, b, v = real[r["synthetic_of"]][2], real[r["synthetic_with"]][2], np.array([r[f] for f in feats])
        t = (v - a) / np.where(np.abs(b - a) > 1e-12, b - a, np.nan)
        assert np.nanmax(t) - np.nanmin(t) < 1e-6 and -1e-9 <= np.nanmin(t) and np.nanmax(t) <= 1 + 1e-9
    again = oversample.synthesize(silver, cfg, 3, plan)
    assert sorted((r["sample_id"], r["f0"]) for r in again.collect()) == sorted((r["sample_id"], r["f0"]) for r in out)
    gold = made.withColumnRenamed("y", "class_name")
    est = engine.recall_estimate(gold, silver, cfg, 3, plan, sample=300)
    assert est["approximate_groups"] == 4 and est["sampled"] == 300
    assert 0.6 <= est["recall_at_k"] <= 1.0, est
    exact_cfg = parse_config({**cfg.model_dump(by_alias=True), "oversample": {"method": "smote"}})
    assert engine.recall_estimate(gold, silver, exact_cfg, 3, plan)["recall_at_k"] == 1.0  # one exact bucket


def test_digits_gold_embeds_images_at_the_training_size(spark, curated, lake_copy):
    from io import BytesIO

    from PIL import Image

    cfg = lake_copy(curated["digits"])
    oversample.run(spark, cfg, "o-1")
    gold = tables.read(spark, tables.Lake(cfg.lake_dir).path("gold"))
    props = tables.properties(spark, tables.Lake(cfg.lake_dir).path("gold"))
    assert props["fulcrum.image_embedded"] == "true" and props["fulcrum.image_size"] == str(cfg.images.size)
    fake = gold.where("synthetic_for IS NOT NULL")
    assert fake.count() > 0 and fake.where("NOT augment").count() == 0
    assert gold.where("synthetic_for IS NULL AND augment").count() == 0
    pairs = gold.alias("s").join(gold.alias("r"), F.col("s.synthetic_of") == F.col("r.sample_id"))
    assert pairs.where("s.image != r.image").count() == 0  # a copy carries its source's pixels
    for row in gold.select("image").limit(5).collect():
        with Image.open(BytesIO(row["image"])) as img:
            assert img.size == (cfg.images.size, cfg.images.size) and img.mode == "L"


def test_integer_features_nulls_and_tiny_classes_keep_exact_counts_and_types(spark):
    """Data unlike the samples: an integer feature and a double with nulls, a categorical with nulls, a class of
    14 rows and one of 6 (fewer than k + 1 in some training parts: random there)."""
    from jobs.config import parse_config

    rng = np.random.default_rng(0)
    rows = []
    for i in range(120):
        cls = "a" if i < 100 else ("b" if i < 114 else "c")
        rows.append((f"s{i:04d}", cls, i % 3, None if i % 17 == 0 else int(rng.integers(0, 50)),
                     float(rng.normal()) if i % 11 else None, None if i % 13 == 0 else str(rng.choice(["x", "y"]))))  # fmt: skip
    silver = spark.createDataFrame(rows, "sample_id string, y string, fold int, n1 int, n2 double, c1 string")
    real = {r[0]: r for r in rows}
    for method in ("smotenc", "adasyn"):
        feats = [{"name": "n1", "kind": "numeric"}, {"name": "n2", "kind": "numeric"}]
        feats += [{"name": "c1", "kind": "categorical"}] if method == "smotenc" else []
        cfg = parse_config({"dataset": "odd", "kind": "tabular", "source": {"path": "x.parquet", "format": "parquet"},
                            "columns": {"label": "y", "features": feats}, "oversample": {"method": method}})  # fmt: skip
        counts = {f: {c: sum(1 for r in rows if r[2] == f and r[1] == c) for c in "abc"} for f in range(3)}
        plan = oversample.plan_pools(counts, cfg, folds=3)
        assert any(p["method"] == "random" for per in plan.values() for p in per.values() if p["make"])
        made = oversample.synthesize(silver, cfg, 3, plan).collect()
        got: dict = {}
        for r in made:
            got[(r["synthetic_for"], r["y"])] = got.get((r["synthetic_for"], r["y"]), 0) + 1
            assert r["n1"] is None or isinstance(r["n1"], int)
            src = real[r["synthetic_of"]]
            if r["synthetic_with"] is None:  # random: an exact copy
                assert (r["n1"], r["n2"]) == (src[3], src[4])
            elif src[3] is not None and real[r["synthetic_with"]][3] is not None:
                lo, hi = sorted((src[3], real[r["synthetic_with"]][3]))
                assert lo <= r["n1"] <= hi
        assert got == {(f, c): p["make"] for f, per in plan.items() for c, p in per.items() if p["make"]}
        assert len({r["sample_id"] for r in made}) == len(made)
