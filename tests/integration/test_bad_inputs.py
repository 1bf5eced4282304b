"""Bad input, table-driven: every case gets a clear error (exit code + a message naming the problem and
the fix) or a quarantine reason, and afterwards every row is accounted for.

Each case builds its files in a fresh folder and runs the Spark stages (ingest → validate → curate) in this
process on the session's shared Spark, as `fulcrum run --until curate` would. After each case, whatever it
ended in: bronze holds every source row once; bronze = silver + quarantine (validate, clean, dedup), with
no row in two places; each table got at most one commit per stage; a stage that failed wrote nothing after
it. Row-level defects share one source (a manifest of broken images, a CSV of broken rows), run once, and
each row is a case of its own.
"""

from __future__ import annotations

import io as bytes_io
import json
import os
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image
from pyspark.sql import functions as F

from jobs import ingest
from jobs.config import load_config
from jobs.curation import curate
from jobs.errors import FulcrumError
from jobs.lakehouse import tables
from jobs.samples import _bomb_png
from jobs.validation import validate
from jobs.validation.profile import probe_expectations

pytestmark = pytest.mark.spark
STAGES = (ingest, validate, curate)

# ---------------------------------------------------------------- the harness


@dataclass
class Outcome:
    code: int  # the exit code the CLI gives (0: every stage ran)
    message: str
    cfg: object | None


def run_stages(spark, config: Path, run_id: str = "bad-1") -> Outcome:
    """Load the config and run the Spark stages in order; a FulcrumError ends the run as the CLI would."""
    cfg = None
    try:
        cfg = load_config(config)
        for stage in STAGES:
            stage.run(spark, cfg, run_id)
    except FulcrumError as exc:  # anything else is a crash: the test fails with its traceback
        return Outcome(exc.exit_code, str(exc), cfg)
    return Outcome(0, "", cfg)


def account(spark, cfg, source_rows: int | None = None) -> dict[str, int]:
    """Every table's rows accounted for; returns the counts."""
    lake = tables.Lake(cfg.lake_dir)
    counts = {}
    for table in ("bronze", "silver", "quarantine"):
        if tables.exists(spark, lake.path(table)):
            stages = [r[0] for r in spark.sql(f"DESCRIBE HISTORY delta.`{lake.path(table)}`")
                      .select(F.get_json_object("userMetadata", "$.stage")).collect()]  # fmt: skip
            assert all(stages.count(s) == 1 for s in set(stages)), (table, stages)  # one commit per stage
    if not tables.exists(spark, lake.path("bronze")):
        assert not tables.exists(spark, lake.path("silver")) and not tables.exists(spark, lake.path("quarantine"))
        return counts
    bronze = tables.read(spark, lake.path("bronze"))
    counts["bronze"] = bronze.count()
    assert bronze.select("sample_id").distinct().count() == counts["bronze"]  # nothing duplicated
    if source_rows is not None:
        assert counts["bronze"] == source_rows  # nothing lost on the way in
    q = tables.read(spark, lake.path("quarantine")) if tables.exists(spark, lake.path("quarantine")) else None
    if q is not None:
        counts["quarantine"] = q.count()
        assert q.select("sample_id").distinct().count() == counts["quarantine"]  # one stage quarantines a row
        assert q.join(bronze, "sample_id", "left_anti").isEmpty()
    if tables.exists(spark, lake.path("silver")):
        silver = tables.read(spark, lake.path("silver"))
        counts["silver"] = silver.count()
        assert silver.select("sample_id").distinct().count() == counts["silver"]
        assert counts["silver"] + counts.get("quarantine", 0) == counts["bronze"]  # bronze = silver + quarantine
        if q is not None:
            assert silver.join(q, "sample_id", "left_semi").isEmpty()
    return counts


def reasons_by(spark, cfg, column: str) -> dict[str, list[str]]:
    """{source value of ``column``: quarantine reasons} for every quarantined row."""
    q = tables.read(spark, tables.Lake(cfg.lake_dir).path("quarantine"))
    return {r[column]: list(r["reasons"]) for r in q.select(column, "reasons").collect()}


# ---------------------------------------------------------------- files

TABULAR = pd.DataFrame({
    "a": [1.0, 2.5, 3.1, 4.7, 5.2, 6.9, 7.4, 8.8, 9.3, 10.6, 11.2, 12.9],
    "b": [0.3, 1.7, 2.2, 3.9, 4.1, 5.6, 6.8, 7.5, 8.0, 9.4, 10.7, 11.1],
    "y": ["x", "z"] * 6,
})  # fmt: skip
TABULAR_SUITE = {"name": "bad", "expectations": [
    {"type": "expect_table_row_count_to_be_between", "kwargs": {"min_value": 1}, "meta": {"name": "has_rows", "policy": "fail"}},
    {"type": "expect_column_values_to_be_between", "kwargs": {"column": "a", "min_value": -1000, "max_value": 1000},
     "meta": {"name": "a_in_range", "policy": "drop"}},
]}  # fmt: skip


def tabular_config(folder: Path, **overrides) -> dict:
    cfg = {"dataset": "bad", "kind": "tabular", "lake_root": "lake", "suite": "suite.json",
           "source": {"path": "src.csv", "format": "csv", "options": {"header": True, "inferSchema": True}},
           "columns": {"label": "y", "features": ["a", "b"]}, "split": {"folds": 2},
           "dedup": {"near": {"enabled": False}}, "validate": {"data_docs": False}}  # fmt: skip
    (folder / "suite.json").write_text(json.dumps(TABULAR_SUITE))
    for key, value in overrides.items():
        node = cfg
        *parents, last = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    return cfg


def write_config(folder: Path, cfg: dict | str) -> Path:
    path = folder / "pipeline.yaml"
    path.write_text(cfg if isinstance(cfg, str) else yaml.safe_dump(cfg))
    return path


def csv_text(df: pd.DataFrame) -> str:
    return df.to_csv(index=False)


# Each builder writes the case's files into the folder and returns (config path, source rows or None).
Builder = Callable[[Path], tuple[Path, int | None]]


def with_csv(text: str | bytes, rows: int | None, **overrides) -> Builder:
    def build(folder: Path):
        (folder / "src.csv").write_bytes(text if isinstance(text, bytes) else text.encode())
        return write_config(folder, tabular_config(folder, **overrides)), rows

    return build


def with_config(mutate: Callable[[dict, Path], dict | str]) -> Builder:
    def build(folder: Path):
        (folder / "src.csv").write_text(csv_text(TABULAR))
        return write_config(folder, mutate(tabular_config(folder), folder)), None

    return build


def with_suite(suite: object) -> Builder:
    def build(folder: Path):
        (folder / "src.csv").write_text(csv_text(TABULAR))
        cfg = tabular_config(folder)
        (folder / "suite.json").write_text(suite if isinstance(suite, str) else json.dumps(suite))
        return write_config(folder, cfg), None

    return build


def _drop(cfg: dict, key: str) -> dict:
    cfg.pop(key)
    return cfg


def _lake_is_a_file(cfg: dict, folder: Path) -> dict:
    (folder / "lakefile").write_text("not a folder")
    return {**cfg, "lake_root": "lakefile"}


def _one_class(df: pd.DataFrame) -> pd.DataFrame:
    return df.assign(y="x")


BOM_CSV = "\ufeff" + csv_text(TABULAR)
QUOTED_NEWLINE = "a,b,y,note\n" + "".join(f'{r.a},{r.b},{r.y},"line one\nline two"\n' for r in TABULAR.itertuples())
RAGGED = csv_text(TABULAR) + "13.5,12.2,x,surplus\n14.1\n"
DUP_HEADER = "a,a,y\n" + "".join(f"{r.a},{r.b},{r.y}\n" for r in TABULAR.itertuples())
LINEAGE = csv_text(TABULAR.assign(sample_id=range(12)))
NAMES_COLLIDE = csv_text(TABULAR.assign(b_value=TABULAR.b).rename(columns={"b": "b value"}))  # both become b_value
ALL_NULL_LABEL = csv_text(TABULAR.assign(y=None))
ONE_ROW = csv_text(TABULAR.head(1))
CLASS_OF_ONE = csv_text(pd.concat([TABULAR, pd.DataFrame({"a": [6.0], "b": [6.0], "y": ["w"]})]))
NUMBERS_AS_TEXT = csv_text(TABULAR)  # read without inferSchema: every column a string, features coerced

# (case id, builder, expected exit code, regex the message must match)
FAILING: list[tuple[str, Builder, int, str]] = [
    # config
    ("yaml_tab_indent", with_config(lambda c, f: "dataset: bad\nsource:\n\tpath: src.csv\n"), 2, "not valid YAML"),
    ("yaml_not_a_mapping", with_config(lambda c, f: "- a\n- b\n"), 2, "must hold a mapping"),
    ("yaml_empty", with_config(lambda c, f: ""), 2, "dataset: required key is missing"),
    ("unknown_key", with_config(lambda c, f: {**c, "colums": {}}), 2, "colums: unknown key; allowed here"),
    ("missing_columns", with_config(lambda c, f: _drop(c, "columns")), 2, "columns: required key is missing"),
    ("one_fold", with_config(lambda c, f: {**c, "split": {"folds": 1}}), 2, "split.folds"),
    ("test_fraction_one", with_config(lambda c, f: {**c, "split": {"folds": 2, "test_fraction": 1.0}}), 2,
     "split.test_fraction"),
    ("dataset_name_escapes", with_config(lambda c, f: {**c, "dataset": "../other"}), 2, "dataset"),
    ("wrong_type", with_config(lambda c, f: {**c, "seed": "many"}), 2, "seed: .*got 'many'"),
    ("unknown_format", with_config(lambda c, f: {**c, "source": {**c["source"], "format": "xlsx"}}), 2,
     "source.format"),
    ("lake_root_is_a_file", with_config(_lake_is_a_file), 2, "lakefile is a file"),
    ("suite_missing", with_config(lambda c, f: {**c, "suite": "nope.json"}), 2, "suite not found"),
    ("suite_not_json", with_suite("{not json"), 2, "not valid JSON"),
    ("suite_without_expectations", with_suite({"name": "s"}), 2, "is not a GX suite"),
    ("suite_duplicated_name", with_suite({"name": "s", "expectations": [TABULAR_SUITE["expectations"][1]] * 2}), 2,
     r"expectation names repeat: \['a_in_range'\]"),
    ("suite_unknown_expectation", with_suite({"name": "s", "expectations": [
        {"type": "expect_column_to_be_lovely", "kwargs": {"column": "a"}}]}), 2, "expect_column_to_be_lovely"),
    ("suite_bad_policy", with_suite({"name": "s", "expectations": [
        {**TABULAR_SUITE["expectations"][1], "meta": {"name": "a_in_range", "policy": "explode"}}]}), 2,
     "policy 'explode' is not one of"),
    # source and schema
    ("source_missing", with_config(lambda c, f: {**c, "source": {**c["source"], "path": "gone.csv"}}), 2,
     "source not found"),
    ("source_zero_bytes", with_csv(b"", None), 2, "has no rows|cannot read"),
    ("source_header_only", with_csv("a,b,y\n", None), 2, "has no rows"),
    ("source_not_parquet", with_csv(csv_text(TABULAR), None, **{"source.format": "parquet", "source.options": {}}), 2,
     "cannot read .* as parquet"),
    ("source_not_delta", with_csv(csv_text(TABULAR), None, **{"source.format": "delta", "source.options": {}}), 2,
     "is not a Delta table"),
    ("duplicated_header", with_csv(DUP_HEADER, None), 2, r"the header repeats .a. \(Spark renamed the copies a0, a1\)"),
    ("lineage_column", with_csv(LINEAGE, None), 2, r"\['sample_id'\] collide with fulcrum's lineage columns"),
    ("column_names_collide_in_the_lake", with_csv(NAMES_COLLIDE, None, **{"columns.features": ["a", "b value"]}), 2,
     r"source columns \['b value', 'b_value'\] would all be named 'b_value' in the lake"),
    # data that cannot train
    ("label_all_null", with_csv(ALL_NULL_LABEL, 12), 1, "0 class"),
    ("one_class", with_csv(csv_text(_one_class(TABULAR)), 12), 1, r"1 class\(es\) \['x'\]; training needs at least two"),
    ("one_row", with_csv(ONE_ROW, 1), 1, "training needs at least two"),
    ("class_with_one_row", with_csv(CLASS_OF_ONE, 13), 1, r"fewer rows than folds \(2\): \{'w': 1\}"),
]


@pytest.mark.parametrize(("build", "code", "pattern"), [c[1:] for c in FAILING], ids=[c[0] for c in FAILING])
def test_a_bad_input_fails_clearly_and_loses_nothing(spark, tmp_path, build, code, pattern):
    import re

    config, rows = build(tmp_path)
    outcome = run_stages(spark, config)
    assert outcome.code == code, outcome.message
    if code:
        assert re.search(pattern, outcome.message), outcome.message
        assert "fix:" in outcome.message or "\n  - " in outcome.message, outcome.message  # how to mend it
    if outcome.cfg is not None:
        account(spark, outcome.cfg, rows)


# Files Spark reads with a quirk: the run goes on and the rows are accounted for.
QUIRKS: list[tuple[str, Builder, int]] = [
    ("csv_with_bom", with_csv(BOM_CSV.encode("utf-8"), 12), 12),
    ("csv_quoted_newline", with_csv(QUOTED_NEWLINE, 12, **{"source.options": {"header": True, "inferSchema": True,
                                                                              "multiLine": True}}), 12),
    ("csv_ragged_rows", with_csv(RAGGED, 14), 13),  # the short row's missing b is a null: clean drops it
    ("numbers_as_text", with_csv(NUMBERS_AS_TEXT, 12, **{"source.options": {"header": True}}), 12),
]


@pytest.mark.parametrize(("build", "silver"), [c[1:] for c in QUIRKS], ids=[c[0] for c in QUIRKS])
def test_a_quirky_file_is_read_whole(spark, tmp_path, build, silver):
    config, rows = build(tmp_path)
    outcome = run_stages(spark, config)
    assert outcome.code == 0, outcome.message
    assert account(spark, outcome.cfg, rows)["silver"] == silver


# ---------------------------------------------------------------- rows of one bad table

# The CSV's header is `row id,a (cm),b,y`: names Delta cannot hold, which ingest renames (row_id, a_cm); the
# config names `a (cm)` in the source's spelling, the suite and `columns.id` in the lake's.
BAD_ROWS = {  # row id -> ((a, b, y) as text in the CSV, the reason it is quarantined with (None: kept))
    "good": (("1.5", "1.0", "x"), None),
    "good_2": (("2.5", "1.0", "z"), None),
    "text_in_numeric": (("3.5", "abc", "x"), "uncoercible_b"),
    "empty_feature": (("", "1.0", "z"), "missing_a_cm"),
    "null_label": (("4.5", "1.0", None), "label_unknown"),  # with a class map, a missing label is not in it
    "unknown_label": (("5.5", "1.0", "q"), "label_unknown"),
    "out_of_range": (("99999", "1.0", "z"), "a_in_range"),  # the suite's drop expectation, at validate
    "label_with_spaces": (("6.5", "2.0", "  X "), None),  # case and spaces are folded into the class map
}


@pytest.fixture(scope="module")
def bad_rows(spark, tmp_path_factory):
    folder = tmp_path_factory.mktemp("bad-rows")
    base = [(f"r{i}", str(float(10 + i)), str(float(i)), "xz"[i % 2]) for i in range(8)]
    rows = base + [(name, *values) for name, (values, _) in BAD_ROWS.items()]
    pd.DataFrame(rows, columns=["row id", "a (cm)", "b", "y"]).to_csv(folder / "src.csv", index=False)
    cfg = tabular_config(folder, **{"columns.id": "row_id", "columns.features": ["a (cm)", "b"],
                                    "clean.labels": {"classes": ["x", "z"]}})  # fmt: skip
    (folder / "suite.json").write_text(json.dumps(TABULAR_SUITE).replace('"column": "a"', '"column": "a_cm"'))
    outcome = run_stages(spark, write_config(folder, cfg))
    assert outcome.code == 0, outcome.message
    account(spark, outcome.cfg, len(rows))
    silver = tables.read(spark, tables.Lake(outcome.cfg.lake_dir).path("silver"))
    assert {"row_id", "a_cm", "b", "y"} <= set(silver.columns), silver.columns  # renamed at ingest
    return reasons_by(spark, outcome.cfg, "row_id")


@pytest.mark.parametrize("name", list(BAD_ROWS))
def test_a_bad_row_is_quarantined_with_its_reason(bad_rows, name):
    reason = BAD_ROWS[name][1]
    assert (bad_rows.get(name) or [None])[0] == reason, bad_rows.get(name)


# ---------------------------------------------------------------- a manifest of broken images


def _png(seed: int, size: int = 16) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size), dtype=np.uint8)
    out = bytes_io.BytesIO()
    Image.fromarray(pixels, "L").save(out, format="PNG")
    return out.getvalue()


def _bad_crc(data: bytes) -> bytes:
    at = data.index(b"IDAT") - 4
    length = struct.unpack(">I", data[at : at + 4])[0]
    crc_at = at + 8 + length
    return data[:crc_at] + struct.pack(">I", zlib.crc32(b"wrong")) + data[crc_at + 4 :]


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    out = bytes_io.BytesIO()
    img.save(out, format=fmt, **kw)
    return out.getvalue()


def _animated_gif(seed: int) -> bytes:
    frames = [Image.open(bytes_io.BytesIO(_png(seed + i))).convert("P") for i in range(3)]
    return _encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)


IMAGES = {  # manifest path -> (bytes written there or None, the reason it is quarantined with (None: kept))
    "ok_1.png": (_png(1), None),
    "ok_2.png": (_png(2), None),
    "zero_bytes.png": (b"", "image_undecodable"),
    "bad_crc.png": (_bad_crc(_png(3)), "image_undecodable"),
    "truncated.png": (_png(4)[:60], "image_undecodable"),
    "animated.gif": (_animated_gif(5), None),
    "sixteen_bit.png": (_encode(Image.fromarray(np.random.default_rng(6).integers(0, 65535, (16, 16), dtype=np.uint16)),
                                "PNG"), None),
    "cmyk.jpg": (_encode(Image.new("CMYK", (16, 16), (10, 200, 30, 0)), "JPEG"), None),
    "jpeg_named.png": (_encode(Image.open(bytes_io.BytesIO(_png(7))), "JPEG"), "image_format_mismatch"),
    "bomb.png": (_bomb_png(14_000), "image_too_large"),
    "missing.png": (None, "image_missing"),
    "a_folder": (None, "image_missing"),
    "sub/../inside.png": (None, None),  # written as inside.png: a `..` that stays inside the root
    "../outside.png": (None, "image_outside_root"),
    "/etc/hostname": (None, "image_outside_root"),
    "nul\x00byte.png": (None, "image_path_invalid"),
    "unknown_label.png": (_png(8), "label_unknown"),
}


@pytest.fixture(scope="module")
def bad_images(spark, tmp_path_factory):
    folder = tmp_path_factory.mktemp("bad-images")
    root = folder / "images"
    (root / "a_folder").mkdir(parents=True)
    (root / "sub").mkdir()
    (root / "inside.png").write_bytes(_png(9))
    (folder / "outside.png").write_bytes(_png(10))
    for path, (data, _) in IMAGES.items():
        if data is not None:
            (root / path).write_bytes(data)
    extra = [(f"base_{i}.png", "one" if i % 2 else "two") for i in range(6)]
    for path, _ in extra:
        (root / path).write_bytes(_png(100 + len(path) + ord(path[5])))
    rows = [(p, "nine" if p == "unknown_label.png" else "one") for p in IMAGES] + extra + [(None, "one")]
    pd.DataFrame(rows, columns=["path", "label"]).to_parquet(folder / "manifest.parquet")  # parquet keeps the NUL
    (folder / "suite.json").write_text(json.dumps({"name": "bad-images", "expectations": probe_expectations()}))
    cfg = {"dataset": "imgs", "kind": "images", "lake_root": "lake", "suite": "suite.json",
           "source": {"path": "manifest.parquet", "format": "parquet"},
           "columns": {"label": "label", "features": []}, "split": {"folds": 2},
           "images": {"root": "images", "size": 16, "channels": 1},
           "clean": {"labels": {"classes": ["one", "two"]}}, "dedup": {"near": {"hamming": 2}}}  # fmt: skip
    outcome = run_stages(spark, write_config(folder, cfg))
    assert outcome.code == 0, outcome.message
    counts = account(spark, outcome.cfg, len(rows))
    reasons = reasons_by(spark, outcome.cfg, "path")
    return reasons, counts


@pytest.mark.parametrize("path", list(IMAGES), ids=[p.replace("\x00", "NUL") for p in IMAGES])
def test_a_broken_image_is_quarantined_with_its_reason(bad_images, path):
    reasons, _ = bad_images
    assert (reasons.get(path) or [None])[0] == IMAGES[path][1], reasons.get(path)


def test_a_manifest_row_without_a_path_is_quarantined(bad_images):
    reasons, counts = bad_images
    assert reasons[None][0] == "image_outside_root" and counts["bronze"] == len(IMAGES) + 7


def test_an_empty_manifest_and_a_missing_image_root_fail_clearly(spark, tmp_path):
    pd.DataFrame({"path": pd.Series([], dtype=str), "label": pd.Series([], dtype=str)}).to_parquet(tmp_path / "m.parquet")
    (tmp_path / "suite.json").write_text(json.dumps({"name": "s", "expectations": probe_expectations()}))
    cfg = {"dataset": "imgs", "kind": "images", "lake_root": "lake", "suite": "suite.json",
           "source": {"path": "m.parquet", "format": "parquet"}, "columns": {"label": "label", "features": []},
           "images": {"root": "images"}}  # fmt: skip
    outcome = run_stages(spark, write_config(tmp_path, cfg))
    assert outcome.code == 2 and "has no rows" in outcome.message
    account(spark, outcome.cfg)
    pd.DataFrame({"path": ["a.png"], "label": ["one"]}).to_parquet(tmp_path / "m.parquet")
    outcome = run_stages(spark, write_config(tmp_path, cfg))
    assert outcome.code == 2 and "the image root" in outcome.message and "is not a folder" in outcome.message
    account(spark, outcome.cfg, 1)


def test_the_number_of_bad_inputs_tried_is_in_the_readme():
    tried = len(FAILING) + len(QUIRKS) + len(BAD_ROWS) + len(IMAGES) + 3
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert f"{tried} bad inputs" in readme, tried
    assert os.path.basename(__file__) in readme
