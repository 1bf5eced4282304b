"""Oversampling per fold into gold, on real local Spark and Delta, from the cancer sample."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from jobs import curate, ingest, io, oversample, validate
from jobs.config import load_config

pytestmark = pytest.mark.spark


@pytest.fixture(scope="module")
def cancer_lake(spark, sample_dir, tmp_path_factory):
    cfg = load_config(sample_dir / "cancer" / "cancer.yaml", {"lake_root": str(tmp_path_factory.mktemp("lake"))})
    ingest.run(spark, cfg, "i-1")
    validate.run(spark, cfg, "v-1")
    curate.run(spark, cfg, "c-1")
    return cfg


def test_gold_is_balanced_per_fold_without_leaking(spark, cancer_lake):
    cfg = cancer_lake
    report = oversample.run(spark, cfg, "o-1")
    path = io.Lake(cfg.lake_dir).path("gold")
    gold = io.read(spark, path).collect()
    k = cfg.split.folds
    real = {r["sample_id"]: r for r in gold if r["synthetic_for"] is None}
    fake = [r for r in gold if r["synthetic_for"] is not None]
    assert fake and {r["synthetic_for"] for r in fake} == set(range(k + 1))
    for r in fake:  # made only from the training part of the fold it serves
        source = real[r["synthetic_of"]]
        assert source["fold"] != -1 and source["fold"] != r["synthetic_for"], r
        assert source["label"] == r["label"] and source["mean_radius"] == r["mean_radius"]
        assert r["augment"] is False  # tabular copies are not augmented
    for f, counts in report.details["balance"]["after"].items():  # every training set reaches the target
        assert len(set(counts.values())) == 1, (f, counts)
    props = io.properties(spark, path)
    assert json.loads(props["fulcrum.classes"]) == ["benign", "malignant"]
    assert props["fulcrum.folds"] == str(k) and props["fulcrum.kind"] == "tabular"
    assert {r["label"] for r in gold} == {0, 1} and {r["class_name"] for r in gold} == {"benign", "malignant"}
    assert Path(cfg.reports_dir, "o-1", "class_balance.png").is_file()


def test_oversampling_is_deterministic_and_respects_the_ratio(spark, cancer_lake):
    cfg = cancer_lake
    oversample.run(spark, cfg, "o-1")
    path = io.Lake(cfg.lake_dir).path("gold")
    first = sorted(r["sample_id"] for r in io.read(spark, path).select("sample_id").collect())
    oversample.run(spark, cfg, "o-2")
    assert sorted(r["sample_id"] for r in io.read(spark, path).select("sample_id").collect()) == first
    half = cfg.model_copy(update={"oversample": cfg.oversample.model_copy(update={"target_ratio": 0.5})})
    report = oversample.run(spark, half, "o-3")
    for counts in report.details["balance"]["after"].values():
        assert counts["malignant"] == -(-counts["benign"] // 2)  # ceil(0.5 x majority)
    none = cfg.model_copy(update={"oversample": cfg.oversample.model_copy(update={"method": "none"})})
    oversample.run(spark, none, "o-4")
    assert io.read(spark, path).where("synthetic_for IS NOT NULL").count() == 0
