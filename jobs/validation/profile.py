"""Suggest a starter suite from the data, like Deequ's constraint suggestion.

One aggregation profiles every column (null fraction, approximate distinct count, and for
numbers min/max and approximate quartiles); a second collects the value sets of the
low-cardinality columns. The rules: complete columns must stay complete (drop), mostly
complete ones mostly so (warn); numbers stay within a range from robust statistics (drop,
see ``numeric_range``); low-cardinality columns stay within their value set (warn: clean
normalises spellings); columns whose values are all distinct stay unique (warn); the
table keeps at least half its rows (fail). A person then edits it.

Why not the observed minimum and maximum: an outlier in the profiled data widens its own
range, so the suite never catches it. Quartiles are not moved by a few outliers.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql.types import ArrayType, BinaryType, MapType, StructType

from jobs.ingest import LINEAGE_COLUMNS, NUMERIC_TYPES
from jobs.validation.probe import PROBE_FIELDS

LOW_CARDINALITY = 20
RANGE_MARGIN = 0.1  # of the observed range, on each side: the fallback when quartiles cannot be trusted
FENCE = 4.0  # fences at Q1 - 4 IQR and Q3 + 4 IQR (6 standard deviations on normal data): beyond Tukey's "far out" 3
MIN_ROBUST_ROWS = 20  # fewer non-null values: the observed range (quartiles of a handful of rows mean little)
ZERO_SHARE = 0.25  # at least this share of zeros (the middle half starts at 0): the non-zero values get the fences
FEW_NONZERO = 0.05  # fewer non-zero values than this share of a mostly-zero column: their observed range
QUANTILE_ACCURACY = 10_000  # percentile_approx's accuracy: rank error about 1 / 10,000 of the rows
NESTED_TYPES = (ArrayType, MapType, StructType, BinaryType)


def profile(df: DataFrame) -> dict[str, dict[str, Any]]:
    """Per-column facts in one aggregation (plus one for the small value sets)."""
    numeric = {f.name for f in df.schema.fields if isinstance(f.dataType, NUMERIC_TYPES)}
    # Nested and binary columns get null counts only: a struct, list or map is not one value to range over,
    # list in a set, or count distinct (Spark cannot even compare maps).
    scalar = {f.name for f in df.schema.fields if not isinstance(f.dataType, NESTED_TYPES)}
    cols = [c for c in df.columns if c not in LINEAGE_COLUMNS]
    aggs = [F.count(F.lit(1)).alias("__rows")]
    for c in cols:
        q = F.col(f"`{c}`")
        aggs.append(F.count(q).alias(f"{c}__nonnull"))
        if c in scalar:
            aggs.append(F.approx_count_distinct(q).alias(f"{c}__distinct"))
        if c in numeric:
            nz = F.when(q != 0, q)  # the non-zero values, for a column that is mostly zeros (see numeric_range)
            aggs += [F.min(q).alias(f"{c}__min"), F.max(q).alias(f"{c}__max"),
                     F.percentile_approx(q.cast("double"), [0.01, 0.25, 0.5, 0.75], QUANTILE_ACCURACY).alias(f"{c}__q"),
                     F.count(nz).alias(f"{c}__nz"), F.min(nz).alias(f"{c}__nzmin"), F.max(nz).alias(f"{c}__nzmax"),
                     F.percentile_approx(nz.cast("double"), [0.01, 0.25, 0.5, 0.75], QUANTILE_ACCURACY).alias(f"{c}__nzq")]  # fmt: skip
    row = df.agg(*aggs).first()
    rows = row["__rows"]
    facts = {c: {"numeric": c in numeric, "rows": rows, "null_fraction": 1 - row[f"{c}__nonnull"] / max(rows, 1),
                 "nonnull": row[f"{c}__nonnull"], "distinct": row[f"{c}__distinct"] if c in scalar else None,
                 "min": row[f"{c}__min"] if c in numeric else None, "max": row[f"{c}__max"] if c in numeric else None,
                 "quartiles": list(row[f"{c}__q"]) if c in numeric and row[f"{c}__q"] else None}
             for c in cols}  # fmt: skip
    for c in numeric & set(cols):
        if row[f"{c}__nz"]:
            facts[c]["nonzero"] = {"nonnull": row[f"{c}__nz"], "min": row[f"{c}__nzmin"], "max": row[f"{c}__nzmax"],
                                   "quartiles": list(row[f"{c}__nzq"]) if row[f"{c}__nzq"] else None}  # fmt: skip
    small = [c for c in cols if c in scalar and c not in numeric and 0 < facts[c]["distinct"] <= LOW_CARDINALITY]
    if small:
        sets = df.agg(*[F.collect_set(F.col(f"`{c}`")).alias(c) for c in small]).first()
        for c in small:
            facts[c]["value_set"] = sorted(sets[c])
    return facts


def metric_exprs(df: DataFrame, columns: list[str], run_id: str | None = None) -> dict[str, Column]:
    """The metric history's column profile as aggregates (to ride in the fused validation pass): per column
    the null fraction and a distinct count estimate; for numbers also mean, stdev and approximate quartiles.
    With ``run_id``, the same for the batch this run ingested (``batch.*``: rows whose ``ingest_run_id`` is
    the run's; bronze keeps every earlier batch, so a drift in tonight's rows shows there undiluted)."""
    types = {f.name: f.dataType for f in df.schema.fields}
    exprs: dict[str, Column] = {}
    new = F.col("ingest_run_id") == F.lit(run_id) if run_id and "ingest_run_id" in types else None
    if new is not None:
        exprs["batch.rows"] = F.count_if(new)
    for c in columns:
        if c not in types:
            continue
        q = F.col(f"`{c}`")
        exprs[f"null_fraction.{c}"] = F.count_if(q.isNull()) / F.greatest(F.count(F.lit(1)), F.lit(1))
        if not isinstance(types[c], NESTED_TYPES):
            exprs[f"distinct.{c}"] = F.approx_count_distinct(q)
        numeric = isinstance(types[c], NUMERIC_TYPES)
        if numeric:
            exprs[f"mean.{c}"] = F.mean(q)
            exprs[f"stdev.{c}"] = F.stddev_samp(q)
            exprs[f"quartiles.{c}"] = F.percentile_approx(q.cast("double"), [0.25, 0.5, 0.75], QUANTILE_ACCURACY)
        if new is not None:
            exprs[f"batch.null_fraction.{c}"] = F.count_if(new & q.isNull()) / F.greatest(F.count_if(new), F.lit(1))
            if numeric:
                exprs[f"batch.mean.{c}"] = F.mean(F.when(new, q))
                exprs[f"batch.stdev.{c}"] = F.stddev_samp(F.when(new, q))
    return exprs


def metric_values(values: dict[str, Any]) -> dict[str, float]:
    """``metric_exprs``' results as named numbers (quartiles become p25, p50, p75); no ``batch.*`` figure when
    this run ingested no row."""
    out: dict[str, float] = {}
    if not values.get("batch.rows"):
        values = {k: v for k, v in values.items() if not k.startswith("batch.")}
    for name, v in values.items():
        if v is None:
            continue
        if name.startswith("quartiles."):
            for p, x in zip(("p25", "p50", "p75"), v, strict=False):
                out[f"{p}.{name.split('.', 1)[1]}"] = float(x)
        else:
            out[name] = float(v)
    return out


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
            low, high, how = numeric_range(f)
            exp = _exp("expect_column_values_to_be_between",
                       {"column": col, "min_value": round(low, 6), "max_value": round(high, 6)},
                       f"{col}_in_range", "drop")  # fmt: skip
            exp["meta"]["range_from"] = how
            exps.append(exp)
        if "value_set" in f:
            policy = "warn" if col == label else "drop"
            exps.append(_exp("expect_column_values_to_be_in_set", {"column": col, "value_set": f["value_set"]},
                             f"{col}_known", policy))  # fmt: skip
        if f["distinct"] is not None and f["distinct"] >= rows * 0.99 and not f["numeric"] and rows > 0:
            exps.append(_exp("expect_column_values_to_be_unique", {"column": col}, f"{col}_unique", "warn"))
    return {"name": name, "meta": {"notes": f"suggested by `fulcrum suite init` from {rows} rows; edit before use"},
            "expectations": exps}  # fmt: skip


def numeric_range(f: dict[str, Any]) -> tuple[float, float, str]:
    """(low, high, how) for a numeric column's range check, from ``profile``'s facts (min, max, and the 1st,
    25th, 50th and 75th percentiles).

    - ``log quartiles``, for a column that is not negative (its 1st percentile is at least 0: a stray negative
      outlier does not decide) whose quartiles are more symmetric on the log scale, log(x + d), than on the
      plain one (Bowley's skewness, (Q3 + Q1 - 2 Q2) / (Q3 - Q1), nearer 0; d = 0 when the 1st percentile is
      positive, else Q1, or IQR / 4 when Q1 is 0 too): fences at Q1 - 4 IQR and Q3 + 4 IQR on the log scale,
      the lower bound never below 0. Measures, sizes, counts and prices are right-skewed: on the plain scale
      the fences would cut their legitimate tail (on scikit-learn's breast cancer table, 119 of 17,070 values;
      on the log scale, none). The lower bound is never above the 1st percentile: the log scale stretches small
      values, so a column whose quartiles sit high but whose long low tail is real lands outside (the 1996
      American National Election Study's income code, 1-24 with quartiles 14 / 17 / 21: a log fence at 2.77
      quarantined the 31 respondents, 3.3 %, in its two lowest brackets). A fence that cuts more than 1 % of the
      profiled rows is not an outlier fence.
    - ``quartiles``, for a signed column, or a non-negative one as symmetric on the plain scale (a bounded score,
      a pixel intensity): the fences on the plain scale, the lower one never below 0 for a non-negative column.
      On the log scale a left-skewed column's rare low values fall outside (on scikit-learn's digits as a
      table, the 12 zeros of one pixel column, 0.7 % of the rows, were quarantined by a suite profiled from
      that very table), and a symmetric one's fences land far beyond its values (a pixel's non-zero values,
      1 to 16 with Q1 = 2 and Q3 = 12: an upper fence of 15,552 that no outlier reached). The rule before
      2026-12-04 took the log scale for any column not skewed to the left.
    - ``quartiles`` also for a column of at most 20 distinct values (a code, a rating scale) whose plain fences
      already hold every profiled value: the log scale's fences are for a long right tail, and around a 0-6 party
      code (ANES 1996) they reached 485, so a "don't know" code of 99 in a later batch passed; the plain ones
      end at 21. A few outliers that the plain fences do not hold leave the choice to the rules above.
    - ``observed``: the observed minimum and maximum widened by 10 % of the range, when there are fewer than 20
      values or the quartiles coincide (a column that is mostly one value).
    - ``… of the non-zero values``: for a column at least a quarter zeros, one of the rules above on its non-zero
      values (``observed`` when they are fewer than 5 % of the values, or 20: percentiles of a few rare values
      are set by whatever noise sits among them), the range then widened to take in 0. Sparse features,
      counts and amounts are mostly zero; their quartiles say little about their other values. On
      scikit-learn's digits as a table with defects injected (``bench_quality.py``), the middle half of one
      pixel column was 0 to 0.006 (zeros and near-duplicate noise) and its fences quarantined every row where
      that pixel was lit: 337 rows of 1,348 (all columns: 363 rows, 10 of the 21 injected outliers).

    A few outliers move neither the percentiles nor the fences, so the suite quarantines outliers that are in
    the very data it was profiled from.
    """
    nonzero = f.get("nonzero")
    nonnull = f.get("nonnull", f.get("rows", 0))
    if nonzero and nonnull and 1 - nonzero["nonnull"] / nonnull >= ZERO_SHARE:
        few = nonzero["nonnull"] < max(MIN_ROBUST_ROWS, FEW_NONZERO * nonnull)  # their observed range
        low, high, how = numeric_range({**nonzero, "quartiles": None} if few else nonzero)
        return min(0.0, low), max(0.0, high), f"{how} of the non-zero values"
    lo, hi = float(f["min"]), float(f["max"])
    q = f.get("quartiles")
    if not q or nonnull < MIN_ROBUST_ROWS or q[-1] <= q[-3]:
        pad = (hi - lo) * RANGE_MARGIN
        low = lo - pad if lo < 0 else max(0.0, lo - pad)  # non-negative data stays non-negative
        return low, hi + pad, "observed"
    p01, q1, q2, q3 = map(float, q)
    iqr = q3 - q1
    plain = (max(0.0, q1 - FENCE * iqr) if p01 >= 0 else q1 - FENCE * iqr), q3 + FENCE * iqr
    distinct = f.get("distinct")
    if distinct is not None and distinct <= LOW_CARDINALITY and plain[0] <= lo and hi <= plain[1]:
        return *plain, "quartiles"  # a code or a rating scale: its plain fences already hold every value
    if p01 >= 0:
        d = 0.0 if p01 > 0 else (q1 if q1 > 0 else iqr / 4)
        l1, l2, l3 = (math.log(v + d) for v in (q1, q2, q3))
        if abs(l3 + l1 - 2 * l2) / (l3 - l1) < abs(q3 + q1 - 2 * q2) / iqr:  # Bowley's skewness nearer 0 on logs
            spread = l3 - l1
            low = min(max(0.0, math.exp(l1 - FENCE * spread) - d), p01)  # never above the 1st percentile
            return low, math.exp(l3 + FENCE * spread) - d, "log quartiles"
    return *plain, "quartiles"


def range_rules(suite: dict[str, Any]) -> dict[str, int]:
    """How many of ``suite``'s range checks each ``numeric_range`` rule gave (``meta.range_from``), most first."""
    from collections import Counter

    counts = Counter(r for e in suite.get("expectations", []) if (r := (e.get("meta") or {}).get("range_from")))
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


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
