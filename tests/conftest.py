"""Shared fixtures: one Spark session and one Ray instance per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
os.environ.setdefault("PYSPARK_PYTHON", os.sys.executable)


@pytest.fixture(scope="session")
def spark():
    """Real local Spark with Delta: local[2], UI off, few shuffle partitions."""
    from jobs.config import SparkConfig
    from jobs.lakehouse.session import build_spark

    session = build_spark(SparkConfig(master="local[2]", shuffle_partitions=2, app_name="fulcrum-tests"))
    yield session
    session.stop()


@pytest.fixture(scope="session")
def ray_local():
    """Real local Ray, sized like the CLI's default (more logical CPUs than cores)."""
    from training.runtime import init_ray, shutdown

    init_ray(num_cpus=4)
    yield
    shutdown()


@pytest.fixture(scope="session")
def sample_dir(tmp_path_factory) -> Path:
    """Both sample datasets, built once (read-only for tests: copy before changing)."""
    from jobs.samples import make_samples

    out = tmp_path_factory.mktemp("samples")
    make_samples(out, seed=7)
    return out


@pytest.fixture(scope="session")
def curated(spark, sample_dir, tmp_path_factory):
    """Both samples through ingest, validate and curate once: {dataset: config}. Treat these lakes as
    read-only; a test that writes takes its own copy with ``lake_copy``."""
    from jobs import ingest
    from jobs.config import load_config
    from jobs.curation import curate
    from jobs.validation import validate

    root = tmp_path_factory.mktemp("curated")
    out = {}
    for name in ("cancer", "digits"):
        # The cancer sample balances by measurement (auto); the fixtures pin the method auto picks there
        # (tests/integration/test_balance_auto.py measures auto itself).
        pinned = {"oversample.method": "smotenc"} if name == "cancer" else {}
        cfg = load_config(sample_dir / name / f"{name}.yaml", {"lake_root": str(root), **pinned})
        ingest.run(spark, cfg, "i-1")
        validate.run(spark, cfg, "v-1")
        curate.run(spark, cfg, "c-1")
        out[name] = cfg
    return out


@pytest.fixture
def lake_copy(tmp_path):
    """``lake_copy(cfg)``: the config pointed at a private copy of its lake (Delta tables copy as files)."""
    import shutil

    def copy(cfg):
        shutil.copytree(cfg.lake_dir, tmp_path / "lake" / cfg.dataset)
        return cfg.model_copy(update={"lake_root": str(tmp_path / "lake")})

    return copy


@pytest.fixture(scope="session")
def cancer_gold(spark, curated, tmp_path_factory):
    """The cancer sample re-split into 2 folds and oversampled (smotenc): the gold table's path (read-only)."""
    import shutil

    from jobs.balancing import oversample
    from jobs.curation import curate
    from jobs.lakehouse import tables

    cfg = curated["cancer"]
    root = tmp_path_factory.mktemp("gold-lake")
    shutil.copytree(cfg.lake_dir, root / cfg.dataset)
    cfg = cfg.model_copy(update={"lake_root": str(root), "split": cfg.split.model_copy(update={"folds": 2})})
    curate.run(spark, cfg, "c-2")
    oversample.run(spark, cfg, "o-2")
    return tables.Lake(cfg.lake_dir).path("gold")


@pytest.fixture(scope="session")
def audited(spark, curated, cancer_gold, tmp_path_factory):
    """The 2-fold cancer lake audited once: silver's real rows cross-validated on Ray (a `python -m training`
    process, as `fulcrum run` starts it), then confident learning; ``clean.label_issues: report``, so silver
    is left as it was (tests that apply verdicts take a ``lake_copy``)."""
    import shutil

    from jobs.analysis import audit

    root = tmp_path_factory.mktemp("audit-lake")
    shutil.copytree(Path(cancer_gold).parent, root / "cancer")
    base = curated["cancer"]
    train = base.train.model_copy(update={"epochs": 12, "batch_size": 32, "hidden": (64, 32), "patience": 4,
                                          "warmup_steps": 5, "tensorboard": False, "search": None})  # fmt: skip
    cfg = base.model_copy(update={"lake_root": str(root), "split": base.split.model_copy(update={"folds": 2}),
                                  "clean": base.clean.model_copy(update={"label_issues": "report"}), "train": train})  # fmt: skip
    report = audit.run(spark, cfg, "a-1")
    return cfg, report
