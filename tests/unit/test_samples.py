"""The sample generator: deterministic by seed, and its injection log matches the files."""

import hashlib
import io
import json
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from jobs.config import load_config
from jobs.samples import make_cancer, make_digits


def tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): (str(p.readlink()) if p.is_symlink() else hashlib.sha256(p.read_bytes()).hexdigest())
        for p in sorted(root.rglob("*"))
        if p.is_file() or p.is_symlink()
    }


def load_log(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "injections.jsonl").read_text().splitlines()]


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path, sample_dir):
    make_cancer(tmp_path / "a", seed=7)
    make_digits(tmp_path / "a", seed=7)
    assert tree_digest(tmp_path / "a" / "cancer") == tree_digest(sample_dir / "cancer")
    digits_a = {k: v for k, v in tree_digest(tmp_path / "a" / "digits").items() if not k.endswith(".yaml")}
    digits_b = {k: v for k, v in tree_digest(sample_dir / "digits").items() if not k.endswith(".yaml")}
    assert digits_a == digits_b
    make_cancer(tmp_path / "b", seed=8)
    assert tree_digest(tmp_path / "b" / "cancer") != tree_digest(sample_dir / "cancer")


def test_sample_configs_are_valid(sample_dir):
    cancer = load_config(sample_dir / "cancer" / "cancer.yaml")
    digits = load_config(sample_dir / "digits" / "digits.yaml")
    assert cancer.kind == "tabular" and digits.kind == "images"
    assert Path(cancer.resolve(cancer.source.path)).is_file()
    assert Path(digits.resolve(digits.images.root)).is_dir()


def test_cancer_log_matches_the_csv(sample_dir):
    folder = sample_dir / "cancer"
    df = pd.read_csv(folder / "cancer.csv", keep_default_na=True).set_index("record_id")
    entries = load_log(folder)
    kinds = {e["kind"] for e in entries}
    assert kinds >= {"exact_duplicate", "near_duplicate", "label_flip", "label_variant", "null", "out_of_range",
                     "class_imbalance"}  # fmt: skip
    numeric = [c for c in df.columns if c.startswith("mean_")]
    for e in entries:
        rid = e["record_id"]
        if e["kind"] == "exact_duplicate":
            assert df.loc[rid].equals(df.loc[e["of"]])
        elif e["kind"] == "near_duplicate":
            a, b = df.loc[rid, numeric].astype(float), df.loc[e["of"], numeric].astype(float)
            assert ((a - b).abs() <= 0.0021 * b.abs() + 1e-5).all() and not a.equals(b)
        elif e["kind"] in ("label_flip", "label_variant"):
            assert df.loc[rid, "diagnosis"] == e["injected"] != e["original"]
        elif e["kind"] == "null":
            assert pd.isna(df.loc[rid, e["column"]])
        elif e["kind"] == "out_of_range":
            assert df.loc[rid, e["column"]] == pytest.approx(e["injected"], rel=1e-5)
    counts = df["diagnosis"].str.strip().str.lower().value_counts()
    assert counts["benign"] > 3 * counts["malignant"]  # imbalanced


def test_digits_log_matches_the_files(sample_dir):
    folder = sample_dir / "digits"
    root = folder / "images"
    manifest = pd.read_csv(folder / "manifest.csv", dtype=str).set_index("record_id")
    entries = load_log(folder)
    assert {e["kind"] for e in entries} >= {
        "exact_duplicate", "near_duplicate", "label_flip", "label_variant", "corrupt_file", "format_mismatch",
        "missing_file", "path_escape", "decompression_bomb", "class_imbalance",
    }  # fmt: skip
    path = lambda rid: root / manifest.loc[rid, "path"]  # noqa: E731
    for e in entries:
        rid = e["record_id"]
        if e["kind"] == "exact_duplicate":
            assert path(rid).read_bytes() == path(e["of"]).read_bytes()
        elif e["kind"] == "near_duplicate":
            assert path(rid).read_bytes() != path(e["of"]).read_bytes()
            assert Image.open(path(rid)).size == Image.open(path(e["of"])).size
        elif e["kind"] in ("label_flip", "label_variant"):
            assert manifest.loc[rid, "label"] == e["injected"] != e["original"]
        elif e["kind"] == "corrupt_file":
            with pytest.raises((OSError, SyntaxError)):  # Pillow's errors for broken files
                Image.open(path(rid)).load()
        elif e["kind"] == "format_mismatch":
            assert path(rid).suffix == ".png" and Image.open(path(rid)).format == "JPEG"
        elif e["kind"] == "missing_file":
            assert not path(rid).exists()
        elif e["kind"] == "path_escape":
            resolved = (root / manifest.loc[rid, "path"]).resolve()
            assert resolved.exists() and root.resolve() not in resolved.parents
        elif e["kind"] == "decompression_bomb":
            assert path(rid).stat().st_size < 1_000_000
            with pytest.raises(Image.DecompressionBombError):
                Image.open(io.BytesIO(path(rid).read_bytes()))
    clean = manifest.drop(index=[e["record_id"] for e in entries if e["record_id"] != "*"])
    img = Image.open(root / clean["path"].iloc[0])
    assert img.size == (32, 32) and img.mode == "L"
