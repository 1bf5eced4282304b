"""Suggest a starter suite from the data, like Deequ's constraint suggestion.

One aggregation profiles every column (null fraction, min/max and 1st/99th percentiles
of numbers, approximate distinct count); a second collects the value sets of the
low-cardinality columns. The rules: complete columns must stay complete (drop), mostly
complete ones mostly so (warn); numbers stay within their observed range widened by a
margin (drop); low-cardinality columns stay within their value set (warn: clean
normalises spellings); columns whose values are all distinct stay unique (warn); the
table keeps at least half its rows (fail). A person then edits it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from jobs.ingest import LINEAGE_COLUMNS, NUMERIC_TYPES
from jobs.validation.probe import PROBE_FIELDS

LOW_CARDINALITY = 20
RANGE_MARGIN = 0.1  # of the observed range, on each side


def profile(df: DataFrame) -> dict[str, dict[str, Any]]:
    """Per-column facts in one aggregation (plus one for the small value sets)."""
    numeric = {f.name for f in df.schema.fields if isinstance(f.dataType, NUMERIC_TYPES)}
    cols = [c for c in df.columns if c not in LINEAGE_COLUMNS]
    aggs = [F.count(F.lit(1)).alias("__rows")]
    for c in cols:
        q = F.col(f"`{c}`")
        aggs += [F.count(q).alias(f"{c}__nonnull"), F.approx_count_distinct(q).alias(f"{c}__distinct")]
        if c in numeric:
            aggs += [F.min(q).alias(f"{c}__min"), F.max(q).alias(f"{c}__max")]
    row = df.agg(*aggs).first()
    rows = row["__rows"]
    facts = {c: {"numeric": c in numeric, "rows": rows, "null_fraction": 1 - row[f"{c}__nonnull"] / max(rows, 1),
                 "distinct": row[f"{c}__distinct"], "min": row[f"{c}__min"] if c in numeric else None,
                 "max": row[f"{c}__max"] if c in numeric else None} for c in cols}  # fmt: skip
    small = [c for c in cols if c not in numeric and 0 < facts[c]["distinct"] <= LOW_CARDINALITY]
    if small:
        sets = df.agg(*[F.collect_set(F.col(f"`{c}`")).alias(c) for c in small]).first()
        for c in small:
            facts[c]["value_set"] = sorted(sets[c])
    return facts


def suggest(facts: dict[str, dict[str, Any]], name: str, label: str | None = None) -> dict[str, Any]:
    """A GX suite (as a JSON-ready dict) with fulcrum policies, from ``profile``'s facts."""
    rows = next(iter(facts.values()))["rows"] if facts else 0
    exps = [_exp("expect_table_row_count_to_be_between", {"min_value": max(1, rows // 2)}, "enough_rows", "fail")]
    for col, f in facts.items():
        if col in {n for n, _ in PROBE_FIELDS}:
            continue
        if f["null_fraction"] == 0:
            exps.append(_exp("expect_column_values_to_not_be_null", {"column": col}, f"{col}_present", "drop"))
        elif f["null_fraction"] < 0.5:
            mostly = round(max(0.0, 1 - 2 * f["null_fraction"]), 3)
            exps.append(_exp("expect_column_values_to_not_be_null", {"column": col, "mostly": mostly},
                             f"{col}_mostly_present", "warn"))  # fmt: skip
        if f["numeric"] and f["min"] is not None:
            lo, hi = float(f["min"]), float(f["max"])
            pad = (hi - lo) * RANGE_MARGIN
            low = lo - pad if lo < 0 else max(0.0, lo - pad)  # non-negative data stays non-negative
            exps.append(_exp("expect_column_values_to_be_between",
                             {"column": col, "min_value": round(low, 6), "max_value": round(hi + pad, 6)},
                             f"{col}_in_range", "drop"))  # fmt: skip
        if "value_set" in f:
            policy = "warn" if col == label else "drop"
            exps.append(_exp("expect_column_values_to_be_in_set", {"column": col, "value_set": f["value_set"]},
                             f"{col}_known", policy))  # fmt: skip
        if f["distinct"] >= rows * 0.99 and not f["numeric"] and rows > 0:
            exps.append(_exp("expect_column_values_to_be_unique", {"column": col}, f"{col}_unique", "warn"))
    return {"name": name, "meta": {"notes": f"suggested by `fulcrum suite init` from {rows} rows; edit before use"},
            "expectations": exps}  # fmt: skip


def _exp(exp_type: str, kwargs: dict[str, Any], name: str, policy: str) -> dict[str, Any]:
    slug = re.sub(r"[^a-z0-9_]+", "_", name.lower()).strip("_")
    return {"type": exp_type, "kwargs": kwargs, "meta": {"name": slug, "policy": policy}}


def probe_expectations() -> list[dict[str, Any]]:
    """The image checks on the probe's columns, each a quarantine reason."""
    in_true = "expect_column_values_to_be_in_set"
    return [
        _exp(in_true, {"column": "image_path_valid", "value_set": [True]}, "image_path_invalid", "drop"),
        _exp(in_true, {"column": "image_inside_root", "value_set": [True]}, "image_outside_root", "drop"),
        _exp(in_true, {"column": "image_exists", "value_set": [True]}, "image_missing", "drop"),
        _exp("expect_column_values_to_not_be_in_set",
             {"column": "image_error", "value_set": ["decompression_bomb", "too_large"]}, "image_too_large", "drop"),
        _exp(in_true, {"column": "image_decodable", "value_set": [True]}, "image_undecodable", "drop"),
        _exp(in_true, {"column": "image_ext_matches", "value_set": [True]}, "image_format_mismatch", "drop"),
    ]  # fmt: skip


def init_suite(spark, cfg, out: str | Path, force: bool = False) -> tuple[Path, int]:
    """Job: profile bronze and write a starter suite to ``out``; return the path and expectation count."""
    from jobs.errors import ConfigError
    from jobs.lakehouse import tables

    out = Path(out)
    if out.exists() and not force:
        raise ConfigError(f"{out} exists", fix="pass --force to overwrite it, or --out another path")
    bronze = tables.Lake(cfg.lake_dir).path("bronze")
    if not tables.exists(spark, bronze):
        raise ConfigError(f"bronze does not exist yet at {bronze}", fix="run `fulcrum ingest CONFIG` first")
    suite = suggest(profile(tables.read(spark, bronze)), cfg.dataset, cfg.columns.label)
    if cfg.kind == "images":
        suite["expectations"][1:1] = probe_expectations()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(suite, indent=2, default=str) + "\n")
    return out, len(suite["expectations"])
