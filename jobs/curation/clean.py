"""Clean: one class map for labels, numeric coercion, PII, missing values and outliers.

``clean(df, cfg)`` returns the cleaned rows, the rejected rows (as they came in, with
``reasons`` and ``reason``) and a report holding every statistic it computed
(imputation values, outlier bounds, label spellings folded). Statistics are computed on
the rows that no earlier check rejected, from the data itself.
"""

from __future__ import annotations

import logging
import os
import re
import time
from typing import Any

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from jobs.config import PipelineConfig
from jobs.errors import ConfigError
from jobs.stage import StageReport, StageResult

log = logging.getLogger(__name__)

STAGE = "clean"
ORIGINAL = "__original"
REASONS = "__reasons"
RELABELLED = "__relabelled"
QUANTILE_ACCURACY = 10_000  # percentile_approx: rank error at most 1/10,000 of the rows


def fold_label(col: Column) -> Column:
    """Case and whitespace folding: ' Benign ' and 'BENIGN' both become 'benign'."""
    return F.lower(F.trim(F.regexp_replace(col, r"\s+", " ")))


def label_key(col: Column) -> Column:
    """What two spellings of one label share: case, whitespace and the separators ``_`` and ``-`` folded, so
    'Class_1', 'class 1' and ' CLASS-1' all have the key 'class 1'."""
    return F.trim(F.regexp_replace(F.lower(col), r"[\s_\-]+", " "))


def _fold(text: str) -> str:
    return " ".join(text.split()).lower()


def _key(text: str) -> str:
    return " ".join(re.split(r"[\s_\-]+", text.lower())).strip()


def _add_reason(df: DataFrame, name: str | Column, when: Column) -> DataFrame:
    """Append ``name`` to the row's reasons where ``when`` holds. REASONS is referenced once, so the
    expression Spark collapses the chained projections into grows linearly with the checks (a
    when/otherwise naming it twice doubles it per check: 2^n with n per-column checks)."""
    tag = name if isinstance(name, Column) else F.lit(name)
    return df.withColumn(REASONS, F.concat(F.col(REASONS), F.when(when, F.array(tag)).otherwise(F.array().cast("array<string>"))))


MAX_SPELLINGS = 10_000  # distinct label keys collected to pick each key's spelling when no class map is given


def normalise_labels(df: DataFrame, cfg: PipelineConfig) -> tuple[DataFrame, dict[str, Any]]:
    """One spelling per class: labels are matched on ``label_key`` (case, whitespace, ``_`` and ``-`` folded)
    to the class map's own spelling (case/space-folded, as before), synonyms matched the same way; a label
    still outside the map is tagged ``label_unknown``, its nearest class named (Spark's Levenshtein distance
    over the keys) and, with ``clean.labels.fuzzy``, mapped to it when that class is the only one within
    ``clean.labels.fuzzy_distance`` edits. Without a class map, each key takes its most frequent spelling."""
    label, labels = cfg.columns.label, cfg.clean.labels
    raw = F.col(label).cast("string")
    key = label_key(raw)
    info: dict[str, Any] = {"classes": labels.classes}
    if labels.classes:
        canonical = {_key(c): _fold(c) for c in labels.classes}
    else:  # the data's own spellings: per key, the commonest (ties: the first in sort order)
        spellings = (df.where(raw.isNotNull()).groupBy(key.alias("k"), fold_label(raw).alias("s")).count()
                     .limit(MAX_SPELLINGS * 4).collect())  # fmt: skip
        best: dict[str, tuple[int, str]] = {}
        for r in spellings:
            if r["k"] not in best or (-r["count"], r["s"]) < (-best[r["k"]][0], best[r["k"]][1]):
                best[r["k"]] = (r["count"], r["s"])
        canonical = {k: v[1] for k, v in best.items()} if len(best) <= MAX_SPELLINGS else {}
    synonyms = {_key(k): canonical.get(_key(v), _fold(v)) for k, v in labels.synonyms.items()}
    table = {**canonical, **synonyms}  # a synonym named in the config wins over a class's own key
    info["synonyms"] = synonyms

    def mapped_by(entries: dict[str, str]) -> Column:
        if not entries:
            return F.lit(None).cast("string")
        return F.element_at(F.create_map(*[F.lit(x) for kv in entries.items() for x in kv]), key)

    mapped = mapped_by(table)
    if labels.classes:
        suggestions = nearest_classes(df.where(raw.isNotNull() & mapped.isNull()).select(key.alias("k"),
                                                                                         fold_label(raw).alias("s")),
                                      canonical)  # fmt: skip
        mapped_fuzzy = {}
        for spelling, s in suggestions.items():
            s["mapped"] = bool(labels.fuzzy and s["unique"] and s["distance"] <= labels.fuzzy_distance)
            if s["mapped"]:
                mapped_fuzzy[_key(spelling)] = s["class"]
            log.warning("label %r is not a class: nearest %r (%d edit(s)%s); %s", spelling, s["class"], s["distance"],
                        "" if s["unique"] else ", tied", "mapped to it (clean.labels.fuzzy)" if s["mapped"] else
                        "quarantined as label_unknown; map it with clean.labels.synonyms or clean.labels.fuzzy: true")  # fmt: skip
        info["unknown"] = suggestions
        if mapped_fuzzy:
            mapped = F.coalesce(mapped, mapped_by(mapped_fuzzy))
        df = df.withColumn(label, F.coalesce(mapped, fold_label(raw)))
        df = _add_reason(df, "label_unknown", F.col(label).isNull() | ~F.col(label).isin(list(canonical.values())))
    else:
        df = df.withColumn(label, F.coalesce(mapped, fold_label(raw)))
        df = _add_reason(df, "label_missing", F.col(label).isNull() | (F.col(label) == ""))
    return df, info


def nearest_classes(unknown: DataFrame, canonical: dict[str, str], limit: int = 100) -> dict[str, dict[str, Any]]:
    """For each distinct unknown spelling (column ``s``, key ``k``; at most ``limit``): the class whose key is
    the fewest edits away (``levenshtein``), that distance, and whether no other class is as near."""
    if not canonical:
        return {}
    classes = unknown.sparkSession.createDataFrame(list(canonical.items()), "ck string, cls string")
    pairs = (unknown.distinct().limit(limit).crossJoin(F.broadcast(classes))
             .withColumn("d", F.levenshtein("k", "ck")).collect())  # fmt: skip
    out: dict[str, dict[str, Any]] = {}
    for r in sorted(pairs, key=lambda r: (r["s"], r["d"], r["cls"])):
        s = out.get(r["s"])
        if s is None:
            out[r["s"]] = {"class": r["cls"], "distance": int(r["d"]), "unique": True}
        elif r["d"] == s["distance"] and r["cls"] != s["class"]:
            s["unique"] = False
    return out


def apply_label_issues(df: DataFrame, cfg: PipelineConfig, issues: DataFrame | None) -> DataFrame:
    """``clean.label_issues``: quarantine the audited rows (``label_issue``) or give them the suggested
    label, where a row's label is still the one it was flagged with (a source fix wins)."""
    label, policy = cfg.columns.label, cfg.clean.label_issues
    df = df.withColumn(RELABELLED, F.lit(False))
    if issues is None or policy == "report":
        return df
    if "actionable" in issues.columns:  # an audit that abstained, or flags past its noise-rate cap: reported only
        issues = issues.where(F.col("actionable"))
    flagged = issues.select("sample_id", F.col("given_class").alias("_given"), F.col("suggested_class").alias("_to"))
    df = df.join(flagged, "sample_id", "left")
    hit = F.coalesce(F.col("_given").isNotNull() & (F.col(label) == F.col("_given")), F.lit(False))
    if policy == "drop":
        df = _add_reason(df, "label_issue", hit)
    else:
        df = df.withColumn(RELABELLED, hit).withColumn(label, F.when(hit, F.col("_to")).otherwise(F.col(label)))
    return df.drop("_given", "_to")


def coerce(df: DataFrame, numeric: list[str]) -> DataFrame:
    """Numeric features become double; a value that does not parse is tagged ``uncoercible_<column>``."""
    types = dict(df.dtypes)
    for c in numeric:
        cast = F.col(c).try_cast(T.DoubleType())
        if types[c] == "string":
            df = _add_reason(df, f"uncoercible_{c}", F.col(c).isNotNull() & (F.trim(F.col(c)) != "") & cast.isNull())
        df = df.withColumn(c, cast)
    return df


def protect_pii(df: DataFrame, cfg: PipelineConfig) -> DataFrame:
    """Drop PII columns, or replace them by SHA-256 of salt + value (the salt comes from the environment)."""
    pii = cfg.clean.pii
    hashed = [c for c, how in pii.columns.items() if how == "hash"]
    missing = sorted(set(pii.columns) - set(df.columns))
    if missing:
        raise ConfigError(f"clean.pii names columns the data lacks: {missing}", fix=f"columns are {df.columns}")
    salt = os.environ.get(pii.salt_env)
    if hashed and not salt:
        raise ConfigError(f"clean.pii hashes {hashed} but ${pii.salt_env} is not set",
                          fix=f"export {pii.salt_env}=<a secret salt> (the same salt gives the same hashes)")  # fmt: skip
    for c, how in pii.columns.items():
        if how == "drop":
            df = df.drop(c)
        else:
            df = df.withColumn(c, F.sha2(F.concat(F.lit(salt), F.col(c).cast("string")), 256))
    return df


def outlier_bounds(df: DataFrame, columns: list[str], cfg: PipelineConfig) -> dict[str, dict[str, tuple]]:
    """Bounds per column (and per class with ``per_class``) from the non-null values: {group: {col: (lo, hi)}}."""
    o = cfg.clean.outliers
    if o.method == "none" or not columns:
        return {}
    keys = [cfg.columns.label] if o.per_class else []
    grouped = df.groupBy(*keys)
    if o.method == "zscore":
        aggs = [F.struct(F.mean(c).alias("a"), F.stddev_samp(c).alias("b")).alias(c) for c in columns]
        rows = grouped.agg(*aggs).collect()
        centre_spread = {_group(r, keys): {c: (r[c]["a"], r[c]["b"]) for c in columns} for r in rows}
    elif o.method == "iqr":
        aggs = [F.percentile_approx(c, [0.25, 0.75], QUANTILE_ACCURACY).alias(c) for c in columns]
        rows = grouped.agg(*aggs).collect()
        return {_group(r, keys): {c: _iqr(r[c], o.k) for c in columns} for r in rows}
    else:  # mad: the median, then the median absolute deviation around it (scaled to a stdev)
        medians = {_group(r, keys): r for r in grouped.agg(*[F.percentile_approx(c, 0.5, QUANTILE_ACCURACY).alias(c)
                                                              for c in columns]).collect()}  # fmt: skip
        centred = df
        for c in columns:
            per = F.lit(None).cast("double")
            for g, r in medians.items():
                per = F.when(_is_group(keys, g), F.lit(r[c])).otherwise(per) if keys else F.lit(r[c])
            centred = centred.withColumn(c, F.abs(F.col(c) - per))
        mads = centred.groupBy(*keys).agg(*[F.percentile_approx(c, 0.5, QUANTILE_ACCURACY).alias(c) for c in columns])
        centre_spread = {_group(r, keys): {c: (medians[_group(r, keys)][c], None if r[c] is None else 1.4826 * r[c])
                                           for c in columns} for r in mads.collect()}  # fmt: skip
    return {g: {c: _around(*cs[c], o.k) for c in columns} for g, cs in centre_spread.items()}


def _iqr(q: list | None, k: float) -> tuple:
    if not q or q[0] is None:
        return (None, None)
    spread = q[1] - q[0]
    return (q[0] - k * spread, q[1] + k * spread)


def _around(centre, spread, k: float) -> tuple:
    if centre is None or spread is None:
        return (None, None)
    return (centre - k * spread, centre + k * spread)


def _group(row, keys: list[str]) -> str:
    return str(row[keys[0]]) if keys else "*"


def _is_group(keys: list[str], group: str) -> Column:
    return F.col(keys[0]).cast("string") == F.lit(group)


def _bound(bounds: dict, keys: list[str], c: str, side: int) -> Column:
    """The lower (side 0) or upper (1) bound of column ``c`` for each row's group."""
    expr = F.lit(None).cast("double")
    for g, per in bounds.items():
        value = F.lit(per[c][side]).cast("double")
        expr = F.when(_is_group(keys, g), value).otherwise(expr) if keys else value
    return expr


def impute_values(df: DataFrame, cfg: PipelineConfig, numeric: list[str], categorical: list[str]) -> dict[str, Any]:
    """The value each imputed column gets, computed on the data (median/mean/mode) or configured (constant)."""
    m = cfg.clean.missing
    policy = {c: m.columns.get(c, m.default) for c in numeric + categorical}
    values: dict[str, Any] = {}
    aggs = []
    for c, how in policy.items():
        if how == "median" and c in numeric:
            aggs.append(F.percentile_approx(c, 0.5, QUANTILE_ACCURACY).alias(c))
        elif how == "mean" and c in numeric:
            aggs.append(F.mean(c).alias(c))
        elif how in ("median", "mean"):
            raise ConfigError(f"clean.missing: {how} imputation needs a numeric column; {c} is categorical",
                              fix="use mode or constant for categorical columns")  # fmt: skip
        elif how == "constant":
            if c not in m.constants:
                raise ConfigError(f"clean.missing: {c} is imputed with a constant but clean.missing.constants has none",
                                  fix=f"add clean.missing.constants.{c}")  # fmt: skip
            values[c] = m.constants[c]
    if aggs:
        values.update(df.agg(*aggs).first().asDict())
    for c, how in policy.items():
        if how == "mode":  # most frequent non-null value; ties broken by the smallest value
            top = df.where(F.col(c).isNotNull()).groupBy(c).count().orderBy(F.desc("count"), F.asc(c)).first()
            values[c] = None if top is None else top[c]
    return {"policy": policy, "values": values}


def clean(df: DataFrame, cfg: PipelineConfig, label_issues: DataFrame | None = None) -> StageResult:
    """Clean ``df``; ``label_issues`` (the audit's table) is applied as ``clean.label_issues`` says."""
    start = time.perf_counter()
    features = cfg.columns.features
    numeric = [f.name for f in features if f.kind == "numeric"]
    categorical = [f.name for f in features if f.kind == "categorical"]
    df = df.withColumn(ORIGINAL, F.struct(*[F.col(f"`{c}`") for c in df.columns]))
    df = df.withColumn(REASONS, F.array().cast("array<string>"))
    df, label_info = normalise_labels(df, cfg)
    df = apply_label_issues(df, cfg, label_issues)
    df = coerce(df, numeric)
    df = protect_pii(df, cfg)
    ok = df.where(F.size(REASONS) == 0)

    o = cfg.clean.outliers
    checked = [c for c in (o.columns or numeric) if c in numeric]
    unknown = sorted(set(o.columns or []) - set(numeric))
    if unknown:
        raise ConfigError(f"clean.outliers.columns are not numeric features: {unknown}", fix=f"numeric: {numeric}")
    bounds = outlier_bounds(ok, checked, cfg)
    keys = [cfg.columns.label] if o.per_class else []
    flags = []
    for c in checked if bounds else []:
        lo, hi = _bound(bounds, keys, c, 0), _bound(bounds, keys, c, 1)
        outside = F.col(c).isNotNull() & ((F.col(c) < lo) | (F.col(c) > hi))
        if o.action == "drop":
            df = _add_reason(df, f"outlier_{c}", F.coalesce(outside, F.lit(False)))
        elif o.action == "clip":
            df = df.withColumn(c, F.when(F.col(c) < lo, lo).when(F.col(c) > hi, hi).otherwise(F.col(c)))
        else:
            flags.append(F.when(F.coalesce(outside, F.lit(False)), F.lit(c)))
    if o.action == "flag" and bounds:
        df = df.withColumn("outlier_columns", F.filter(F.array(*flags), lambda x: x.isNotNull()))

    imputation = impute_values(ok, cfg, numeric, categorical)
    for c, how in imputation["policy"].items():
        if how == "drop":  # null or blank as it came in; a value that did not parse is `uncoercible_<c>` only
            # (the test reads the original, never REASONS: see ``_add_reason``)
            given = F.col(f"{ORIGINAL}.`{c}`")
            df = _add_reason(df, f"missing_{c}", F.col(c).isNull() & (given.isNull() | (F.trim(given.cast("string")) == "")))
        elif how != "keep" and imputation["values"].get(c) is not None:
            df = df.withColumn(c, F.coalesce(F.col(c), F.lit(imputation["values"][c])))

    rejected = df.where(F.size(REASONS) > 0).select(f"{ORIGINAL}.*", F.col(REASONS).alias("reasons"))
    rejected = rejected.withColumn("reason", F.get("reasons", 0))
    kept = df.where(F.size(REASONS) == 0).drop(ORIGINAL, REASONS, RELABELLED)
    # One job for the reasons' counts and the rows' totals: each row is counted once, at its first reason
    # (position 0) or, without one, in the null group.
    first = F.col("pos").isNull() | (F.col("pos") == 0)
    per = (df.select(F.posexplode_outer(REASONS).alias("pos", "r"), F.col(RELABELLED).alias("rl")).groupBy("r")
           .agg(F.count(F.lit(1)).alias("count"), F.count_if(first).alias("rows"),
                F.count_if(F.col("rl") & F.col("r").isNull()).alias("relabelled")).collect())  # fmt: skip
    counts = [r for r in per if r["r"] is not None]
    totals = {"n": sum(r["rows"] for r in per), "bad": sum(r["rows"] for r in counts),
              "relabelled": sum(r["relabelled"] for r in per)}  # fmt: skip
    label_info["label_issues"] = {"policy": cfg.clean.label_issues, "relabelled": totals["relabelled"]}
    folded = df.where(F.col(f"{ORIGINAL}.`{cfg.columns.label}`").cast("string") != F.col(cfg.columns.label))
    spellings = folded.groupBy(
        F.col(f"{ORIGINAL}.`{cfg.columns.label}`").alias("was"), F.col(cfg.columns.label).alias("now")
    )
    label_info["folded"] = {f"{r['was']!r} -> {r['now']}": r["count"] for r in spellings.count().collect()}
    report = StageReport(stage=STAGE, rows_in=totals["n"], rows_out=totals["n"] - totals["bad"],
                         dropped={r["r"]: r["count"] for r in counts})  # fmt: skip
    report.details.update({
        "labels": label_info, "imputation": imputation,
        "outliers": {"method": o.method, "k": o.k, "action": o.action, "per_class": o.per_class,
                     "bounds": {g: {c: list(b) for c, b in per.items()} for g, per in bounds.items()}},
    })  # fmt: skip
    report.seconds = time.perf_counter() - start
    return StageResult(kept=kept, rejected=rejected, report=report)
