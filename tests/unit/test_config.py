from pathlib import Path

import pytest
import yaml

from jobs.config import load_config, parse_config
from jobs.errors import ConfigError

BASE = {
    "dataset": "toy",
    "kind": "tabular",
    "source": {"path": "data.csv", "format": "csv"},
    "columns": {"label": "y", "features": ["a", {"name": "b", "kind": "categorical"}]},
}


def write(tmp_path: Path, cfg: dict) -> Path:
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_valid_config_resolves_paths_against_the_yaml(tmp_path):
    cfg = load_config(write(tmp_path, BASE))
    assert cfg.resolve("data.csv") == str(tmp_path / "data.csv")
    assert cfg.lake_dir == str(tmp_path / "lake") + "/toy"
    assert [f.kind for f in cfg.columns.features] == ["numeric", "categorical"]
    assert cfg.resolve("s3a://bucket/x") == "s3a://bucket/x"
    assert cfg.source_columns == ["y", "a", "b"]


def test_unknown_key_is_named_with_allowed_keys(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, {**BASE, "source": {**BASE["source"], "fromat": "csv"}}))
    text = str(err.value)
    assert "source.fromat: unknown key" in text
    assert "path, format, options, version" in text


def test_wrong_type_names_key_and_value(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, {**BASE, "seed": "abc"}))
    assert "seed:" in str(err.value) and "'abc'" in str(err.value)


def test_bad_choice_lists_allowed_values():
    with pytest.raises(ConfigError) as err:
        parse_config({**BASE, "kind": "video"})
    assert "kind:" in str(err.value) and "'tabular'" in str(err.value) and "'images'" in str(err.value)


def test_images_kind_needs_images_section():
    with pytest.raises(ConfigError, match="needs an images section"):
        parse_config({**BASE, "kind": "images"})


def test_version_only_for_delta_sources():
    with pytest.raises(ConfigError, match="only valid with format: delta"):
        parse_config({**BASE, "source": {"path": "x", "format": "csv", "version": 3}})


def test_missing_required_key_and_label_as_feature():
    with pytest.raises(ConfigError, match="columns: required key is missing"):
        parse_config({k: v for k, v in BASE.items() if k != "columns"})
    with pytest.raises(ConfigError, match="also listed as a feature"):
        parse_config({**BASE, "columns": {"label": "a", "features": ["a"]}})


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("dataset: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_overrides_apply_before_validation(tmp_path):
    cfg = load_config(write(tmp_path, BASE), {"spark.master": "spark://h:7077", "seed": 3})
    assert cfg.spark.master == "spark://h:7077" and cfg.seed == 3
    with pytest.raises(ConfigError, match="spark.nope: unknown key"):
        load_config(write(tmp_path, BASE), {"spark.nope": 1})


def test_config_error_exit_code_is_usage():
    assert ConfigError("x").exit_code == 2


def test_curate_sections_have_defaults_and_name_bad_values():
    cfg = parse_config(BASE)
    assert (cfg.clean.outliers.method, cfg.clean.outliers.k, cfg.split.folds, cfg.dedup.near.action) == (
        "iqr", 1.5, 5, "remove")  # fmt: skip
    assert parse_config({**BASE, "clean": {"outliers": {"method": "mad"}}}).clean.outliers.k == 3.5
    with pytest.raises(ConfigError, match=r"clean\.outliers\.method.*'median'"):
        parse_config({**BASE, "clean": {"outliers": {"method": "median"}}})
    with pytest.raises(ConfigError, match=r"split\.folds"):
        parse_config({**BASE, "split": {"folds": 1}})
    with pytest.raises(ConfigError, match=r"dedup\.near\.tolrance: unknown key; allowed here: enabled, tolerance"):
        parse_config({**BASE, "dedup": {"near": {"tolrance": 0.1}}})


@pytest.mark.parametrize("verify, message", [
    ({"measure": "ssim"}, r"dedup\.near\.verify\.measure.*'ssim'"),
    ({"threshold": 1.5}, r"dedup\.near\.verify\.threshold"),
    ({"threshold": "loose"}, r"dedup\.near\.verify\.threshold"),
    ({"ratio": 1}, r"dedup\.near\.verify\.ratio"),
    ({"max_shift": 9}, r"dedup\.near\.verify\.max_shift"),
    ({"bucket_rows": 10}, r"dedup\.near\.verify\.bucket_rows"),
])  # fmt: skip
def test_image_near_duplicate_verification_names_bad_values(verify, message):
    near = parse_config(BASE).dedup.near
    assert (near.conflicts, near.verify.measure, near.verify.threshold, near.verify.ratio) == ("per_label", "ncc",
                                                                                            "auto", 9.0)  # fmt: skip
    assert parse_config({**BASE, "dedup": {"near": {"verify": {"threshold": 0.95}}}}).dedup.near.verify.threshold == 0.95
    with pytest.raises(ConfigError, match=message):
        parse_config({**BASE, "dedup": {"near": {"verify": verify}}})
