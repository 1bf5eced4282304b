"""Sample datasets with injected defects, built from data that ships inside scikit-learn.

``cancer``: the Wisconsin breast-cancer table (sklearn), made imbalanced, plus a derived
categorical column. ``digits``: sklearn's bundled 8x8 digits, upscaled to 32x32 PNG files
with a manifest CSV. Every injected defect is logged in ``injections.jsonl`` beside the
data, as ground truth for the quality benchmarks. Same seed, same bytes.
"""

from __future__ import annotations

import io as _io
import json
import shutil
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from PIL import Image, ImageEnhance

from jobs.validation.suites import bundled

CANCER_FEATURES = [
    "mean radius", "mean texture", "mean perimeter", "mean area", "mean smoothness",
    "mean compactness", "mean concavity", "mean concave points", "mean symmetry", "mean fractal dimension",
]  # fmt: skip
DIGIT_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
IMAGE_SIZE = 32


@dataclass
class Injections:
    """The ground-truth log of every defect put into a sample."""

    entries: list[dict] = field(default_factory=list)

    def add(self, kind: str, record_id: str, **fields) -> None:
        self.entries.append({"kind": kind, "record_id": record_id, **fields})

    def write(self, path: Path) -> None:
        path.write_text("".join(json.dumps(e, sort_keys=True, default=_plain) + "\n" for e in self.entries))


def _plain(value):
    return value.item() if hasattr(value, "item") else str(value)


def _pick(rng: np.random.Generator, pool: list[int], n: int) -> list[int]:
    """Take n distinct indices out of pool (so every row gets at most one defect)."""
    chosen = sorted(rng.choice(len(pool), size=n, replace=False).tolist(), reverse=True)
    return sorted(pool.pop(i) for i in chosen)


def make_cancer(outdir: Path, seed: int = 7) -> Path:
    """Write cancer.csv, injections.jsonl and cancer.yaml under outdir/cancer; return the YAML."""
    from sklearn.datasets import load_breast_cancer

    rng = np.random.default_rng(seed)
    raw = load_breast_cancer(as_frame=True)
    df = raw.frame[CANCER_FEATURES].copy()
    df.columns = [c.replace(" ", "_") for c in CANCER_FEATURES]
    df["texture_grade"] = pd.qcut(df["mean_texture"], 3, labels=["low", "mid", "high"]).astype(str)
    df["diagnosis"] = [raw.target_names[t] for t in raw.target]
    # Class imbalance: keep 70 of 212 malignant rows (1 : 5).
    malignant = df.index[df["diagnosis"] == "malignant"].to_numpy()
    drop = rng.choice(malignant, size=len(malignant) - 70, replace=False)
    df = df.drop(index=drop).sample(frac=1.0, random_state=seed).reset_index(drop=True)
    df.insert(0, "record_id", [f"P{i:05d}" for i in range(len(df))])
    log, numeric = Injections(), list(df.columns[1:11])
    log.add("class_imbalance", "*", column="diagnosis", counts=df["diagnosis"].value_counts().to_dict())

    pool = list(range(len(df)))
    extra = []
    for kind, n in (("exact_duplicate", 12), ("near_duplicate", 12)):
        for i in _pick(rng, pool, n):
            copy = df.loc[i].copy()
            if kind == "near_duplicate":  # a re-measured record: every value moved by at most 0.2 %
                copy[numeric] = copy[numeric].astype(float) * (1 + rng.uniform(-0.002, 0.002, len(numeric)))
                copy[numeric] = copy[numeric].astype(float).round(6)
            copy["record_id"] = f"P{len(df) + len(extra):05d}"
            extra.append(copy)
            log.add(kind, copy["record_id"], of=df.loc[i, "record_id"])
    for i in _pick(rng, pool, 16):
        flipped = "benign" if df.loc[i, "diagnosis"] == "malignant" else "malignant"
        log.add(
            "label_flip", df.loc[i, "record_id"], column="diagnosis", original=df.loc[i, "diagnosis"], injected=flipped
        )
        df.loc[i, "diagnosis"] = flipped
    variants = {
        "benign": ["Benign", "BENIGN", " benign", "benign "],
        "malignant": ["Malignant", "MALIGNANT", "malignent"],
    }
    for i in _pick(rng, pool, 20):
        original = df.loc[i, "diagnosis"]
        spelled = variants[original][int(rng.integers(len(variants[original])))]
        df.loc[i, "diagnosis"] = spelled
        log.add("label_variant", df.loc[i, "record_id"], column="diagnosis", original=original, injected=spelled)
    for i in _pick(rng, pool, 15):
        column = numeric[int(rng.integers(len(numeric)))]
        log.add("null", df.loc[i, "record_id"], column=column, original=float(df.loc[i, column]))
        df.loc[i, column] = np.nan
    for i in _pick(rng, pool, 8):
        column = numeric[int(rng.integers(len(numeric)))]
        original = float(df.loc[i, column])
        injected = -abs(original) - 1.0 if rng.random() < 0.5 else original * 100 + 100
        df.loc[i, column] = injected
        log.add("out_of_range", df.loc[i, "record_id"], column=column, original=original, injected=injected)
    df = pd.concat([df, pd.DataFrame(extra)], ignore_index=True)

    folder = outdir / "cancer"
    folder.mkdir(parents=True, exist_ok=True)
    df.to_csv(folder / "cancer.csv", index=False, float_format="%.6g")
    log.write(folder / "injections.jsonl")
    config = {
        "dataset": "cancer", "kind": "tabular", "lake_root": "../lake", "seed": seed,
        "source": {"path": "cancer.csv", "format": "csv", "options": {"header": True, "inferSchema": True}},
        "columns": {"id": "record_id", "label": "diagnosis",
                    "features": numeric + [{"name": "texture_grade", "kind": "categorical"}]},
        "clean": {"labels": {"classes": ["benign", "malignant"], "synonyms": {"malignent": "malignant"}},
                  "missing": {"default": "median", "columns": {"texture_grade": "mode"}},
                  "outliers": {"method": "iqr", "threshold": 3.0, "action": "flag"}},
        "dedup": {"near": {"tolerance": 0.05}},
        "split": {"folds": 5, "test_fraction": 0.2},
        "oversample": {"method": "auto", "candidates": ["class_weight", "random", "smotenc"], "k_neighbors": 5},
        "train": {"epochs": 12, "batch_size": 32, "patience": 3, "hidden": [64, 32],
                  "search": {"trials": 3, "folds": 2}},
    }  # fmt: skip
    return _write_yaml(folder / "cancer.yaml", config, "cancer")


def _digit_png(pixels: np.ndarray) -> Image.Image:
    """An 8x8 sklearn digit (0..16) as a 32x32 grayscale image."""
    img = Image.fromarray(np.clip(pixels * 16, 0, 255).astype(np.uint8), mode="L")
    return img.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BILINEAR)


def _encode(img: Image.Image, fmt: str = "PNG") -> bytes:
    buf = _io.BytesIO()
    img.save(buf, format=fmt, **({"quality": 85} if fmt == "JPEG" else {"optimize": False}))
    return buf.getvalue()


def _bomb_png(side: int = 14_000) -> bytes:
    """A tiny PNG that claims side x side 1-bit pixels: more than Pillow's bomb limit allows."""
    chunk = lambda tag, data: struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))  # noqa: E731
    comp = zlib.compressobj(9)
    row = b"\x00" * (1 + side // 8)
    body = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


def make_digits(outdir: Path, seed: int = 7) -> Path:
    """Write images/, manifest.csv, injections.jsonl and digits.yaml under outdir/digits."""
    from sklearn.datasets import load_digits

    rng = np.random.default_rng(seed)
    digits = load_digits()
    keep = np.ones(len(digits.target), dtype=bool)
    for cls in (8, 9):  # class imbalance: 'eight' and 'nine' keep 40 images each
        idx = np.flatnonzero(digits.target == cls)
        keep[rng.choice(idx, size=len(idx) - 40, replace=False)] = False
    order = rng.permutation(np.flatnonzero(keep))
    folder, log = outdir / "digits", Injections()
    root = folder / "images"
    root.mkdir(parents=True, exist_ok=True)
    rows, blobs = [], {}
    for n, i in enumerate(order):
        rid = f"D{n:05d}"
        blobs[rid] = _encode(_digit_png(digits.images[i]))
        rows.append({"record_id": rid, "path": f"{rid}.png", "label": DIGIT_NAMES[digits.target[i]],
                     "scanner": f"s{int(rng.integers(1, 4))}"})  # fmt: skip
    log.add(
        "class_imbalance", "*", column="label", counts=pd.Series([r["label"] for r in rows]).value_counts().to_dict()
    )
    pool = list(range(len(rows)))
    next_id = len(rows)

    def add_row(of: dict, data: bytes, ext: str = "png") -> dict:
        nonlocal next_id
        rid = f"D{next_id:05d}"
        next_id += 1
        blobs[rid] = data
        row = {**of, "record_id": rid, "path": f"{rid}.{ext}"}
        rows.append(row)
        return row

    for i in _pick(rng, pool, 15):
        log.add("exact_duplicate", add_row(rows[i], blobs[rows[i]["record_id"]])["record_id"], of=rows[i]["record_id"])
    for i in _pick(rng, pool, 24):
        img = Image.open(_io.BytesIO(blobs[rows[i]["record_id"]]))
        variant = ("shifted", "brightened", "reencoded")[len(log.entries) % 3]
        if variant == "shifted":
            data = _encode(img.transform(img.size, Image.Transform.AFFINE, (1, 0, -1, 0, 1, -1)))
        elif variant == "brightened":
            data = _encode(ImageEnhance.Brightness(img).enhance(1.15))
        else:
            data = _encode(img.convert("L"), "JPEG")
        new = add_row(rows[i], data, "jpg" if variant == "reencoded" else "png")
        log.add("near_duplicate", new["record_id"], of=rows[i]["record_id"], variant=variant)
    for i in _pick(rng, pool, 30):
        original = rows[i]["label"]
        flipped = DIGIT_NAMES[(DIGIT_NAMES.index(original) + int(rng.integers(1, 10))) % 10]
        rows[i]["label"] = flipped
        log.add("label_flip", rows[i]["record_id"], column="label", original=original, injected=flipped)
    for i in _pick(rng, pool, 20):
        original = rows[i]["label"]
        spelled = [original.title(), original.upper(), f" {original}", str(DIGIT_NAMES.index(original))][
            int(rng.integers(4))
        ]
        rows[i]["label"] = spelled
        log.add("label_variant", rows[i]["record_id"], column="label", original=original, injected=spelled)
    for i in _pick(rng, pool, 4):
        rid = rows[i]["record_id"]
        blobs[rid] = blobs[rid][: len(blobs[rid]) // 2]
        log.add("corrupt_file", rid, defect="truncated")
    for i in _pick(rng, pool, 2):
        rid = rows[i]["record_id"]
        blobs[rid] = bytes(rng.integers(0, 256, 600, dtype=np.uint8))
        log.add("corrupt_file", rid, defect="random_bytes")
    for i in _pick(rng, pool, 2):
        rid = rows[i]["record_id"]
        blobs[rid] = _encode(Image.open(_io.BytesIO(blobs[rid])).convert("L"), "JPEG")
        log.add("format_mismatch", rid, defect="jpeg_named_png")
    for i in _pick(rng, pool, 3):
        del blobs[rows[i]["record_id"]]
        log.add("missing_file", rows[i]["record_id"])
    outside = folder / "outside"
    outside.mkdir(exist_ok=True)
    (outside / "secret.png").write_bytes(_encode(_digit_png(digits.images[0])))
    template = rows[0]
    for path, defect in (("../outside/secret.png", "dotdot"), ("/etc/hosts", "absolute"),
                         ("link.png", "symlink")):  # fmt: skip
        row = add_row(template, b"")
        del blobs[row["record_id"]]
        row["path"] = path
        log.add("path_escape", row["record_id"], path=path, defect=defect)
    link = root / "link.png"
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(Path("..") / "outside" / "secret.png")
    bomb = add_row(template, _bomb_png())
    log.add("decompression_bomb", bomb["record_id"], pixels=14_000 * 14_000)

    for rid, data in blobs.items():
        ext = "jpg" if rid in {r["record_id"] for r in rows if r["path"].endswith(".jpg")} else "png"
        (root / f"{rid}.{ext}").write_bytes(data)
    pd.DataFrame(rows).to_csv(folder / "manifest.csv", index=False)
    log.write(folder / "injections.jsonl")
    config = {
        "dataset": "digits", "kind": "images", "lake_root": "../lake", "seed": seed,
        "source": {"path": "manifest.csv", "format": "csv", "options": {"header": True}},
        "columns": {"id": "record_id", "label": "label", "features": []},
        # Training at 16 px: the digits are 8x8 at source, so nothing is lost, and a CPU epoch costs a
        # quarter of one at 32 px.
        "images": {"root": "images", "path_column": "path", "size": IMAGE_SIZE // 2, "channels": 1,
                   "embed": True},
        "clean": {"labels": {"classes": DIGIT_NAMES, "synonyms": {str(i): n for i, n in enumerate(DIGIT_NAMES)}}},
        "split": {"folds": 5, "test_fraction": 0.2},
        "oversample": {"method": "random"},
        # A compact CNN (train.model cnn), not ResNet-18: low-detail 16 px digits need no 11M-parameter
        # model, and a CPU epoch of the five folds and the final model takes seconds instead of minutes.
        "train": {"epochs": 8, "batch_size": 64, "patience": 3, "model": "cnn", "lr": 0.003},
    }  # fmt: skip
    return _write_yaml(folder / "digits.yaml", config, "digits")


def _write_yaml(path: Path, config: dict, suite: str) -> Path:
    """The pipeline YAML, with a copy of the repository's suite beside it."""
    shutil.copyfile(bundled(suite), path.parent / f"{suite}.suite.json")
    config["suite"] = f"{suite}.suite.json"
    path.write_text("# generated by `fulcrum samples`; paths are relative to this file\n"
                    + yaml.safe_dump(config, sort_keys=False))  # fmt: skip
    return path


def make_samples(outdir: str | Path, seed: int = 7) -> list[Path]:
    """Build both samples under outdir; return their pipeline YAMLs."""
    outdir = Path(outdir)
    return [make_cancer(outdir, seed), make_digits(outdir, seed)]
