"""Fused validation: evaluate a GX suite's row-level and simple aggregate expectations in one Spark pass.

GX's Spark engine asks each column-map expectation for its partial unexpected list with
``filter(condition).limit(k)``; for an expectation that passes, no row matches and that
query scans the whole batch, so a suite of N map expectations costs about N+1 scans.
Here every metric GX would ask for (row count, null counts, unexpected counts, mean,
stdev, min, max, sum, the column list) is compiled into one ``DataFrame.agg`` together
with the quarantine counts; a partial unexpected list is fetched only for an expectation
that found unexpected values, where ``limit(k)`` stops early. The metrics then go through
GX's own ``Expectation.metrics_validate``, so success, ``mostly`` and the result format
are GX's, and Data Docs render the results like any other. Expectations whose metrics are
not compiled here (uniqueness, quantiles, row conditions, …) are handed to GX's engine.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from jobs.validation.suites import Rule

NUMERIC = (T.ByteType, T.ShortType, T.IntegerType, T.LongType, T.FloatType, T.DoubleType, T.DecimalType)
INTEGRAL = (T.ByteType, T.ShortType, T.IntegerType, T.LongType)
BITMAP_BITS = 32768  # values per bucket of Spark's bitmap functions (a 4 KiB bitmap each)
_AGGREGATES = {  # GX metric name -> Spark aggregate, as GX's Spark providers compute it
    "column.mean": (F.mean, True),
    "column.standard_deviation": (F.stddev_samp, True),
    "column.sum": (F.sum, True),
    "column.max": (F.max, False),
    "column.min": (F.min, False),
}
_MAP_SUFFIXES = ("unexpected_count", "unexpected_values", "unexpected_index_list", "unexpected_index_query")


@dataclass
class Plan:
    """Which expectations are fused (with the metric configurations GX wants for each) and which go to GX."""

    fused: list[tuple[Any, Rule, list]] = field(default_factory=list)  # (expectation, rule, [MetricConfiguration])
    gx: list[tuple[Any, Rule]] = field(default_factory=list)


def runtime_configuration(partial: int) -> dict:
    return {"result_format": {"result_format": "SUMMARY", "partial_unexpected_count": partial}}


def plan(df: DataFrame, suite, rules: list[Rule], partial: int = 20) -> Plan:
    """Split the suite: an expectation is fused when every metric it depends on compiles here."""
    out = Plan()
    types = {f.name: f.dataType for f in df.schema.fields}
    for exp, rule in zip(suite.expectations, rules, strict=True):
        deps = exp.get_validation_dependencies(
            execution_engine=None, runtime_configuration=runtime_configuration(partial)
        )
        configs = list(deps.metric_configurations.values())
        if all(_compiles(mc, rule, types) for mc in configs):
            out.fused.append((exp, rule, configs))
        else:
            out.gx.append((exp, rule))
    return out


def _compiles(mc, rule: Rule, types: dict) -> bool:
    domain = mc.metric_domain_kwargs
    if domain.get("row_condition") or set(domain) - {
        "batch_id",
        "table",
        "column",
        "row_condition",
        "condition_parser",
    }:
        return False
    column = domain.get("column")
    if column is not None and column not in types:
        return False  # let GX report the missing column in its own words
    name = mc.metric_name
    if name in ("table.row_count", "table.columns", "column_values.nonnull.unexpected_count"):
        return True
    if name in _AGGREGATES:
        numeric_only = _AGGREGATES[name][1]
        return not mc.metric_value_kwargs and (not numeric_only or isinstance(types[column], NUMERIC))
    base, _, suffix = name.rpartition(".")
    if suffix not in _MAP_SUFFIXES or "row_condition" in rule.kwargs:
        return False
    if rule.row_level:
        return base in ("column_values.nonnull", _map_metric(rule))
    return base == "column_values.unique" and rule.type == "expect_column_values_to_be_unique"


def _map_metric(rule: Rule) -> str | None:
    from great_expectations.expectations.registry import get_expectation_impl

    return getattr(get_expectation_impl(rule.type), "map_metric", None)


def _null_count(column: str) -> Column:
    return F.count_if(F.col(f"`{column}`").isNull())


@dataclass
class Evaluation:
    """Outcome of the fused pass: GX results for the fused expectations, and quarantine counts."""

    results: dict[str, Any]  # rule name -> ExpectationValidationResult
    rows_in: int
    rejected: int
    dropped: dict[str, int]
    limit_reads: int  # partial-unexpected-list queries (each stops after k rows)
    group_passes: int  # passes over the data for uniqueness (a bitmap count, a group-by)
    rejected_rows: DataFrame | None = None  # lazy: the rows failing a drop expectation, with reasons
    extra: dict[str, Any] = field(default_factory=dict)  # the caller's own aggregates, computed in the same pass


def any_failure(drops: list[Rule]) -> Column:
    """True where a row fails at least one ``drop`` expectation."""
    fails = F.lit(False)
    for r in drops:
        fails = fails | r.fails()
    return fails


def tag(df: DataFrame, drops: list[Rule], empty: bool = False) -> DataFrame:
    """The rows failing a ``drop`` expectation, with ``reasons`` (names, suite order) and ``reason`` (the first).

    ``empty``: the count is known to be zero, so no row needs to be read (``limit(0)``).
    """
    failing = df.limit(0) if empty else df.filter(any_failure(drops))  # the array is built for failing rows only
    tags = F.array(*[F.when(r.fails(), F.lit(r.name)) for r in drops]) if drops else F.array().cast("array<string>")
    failing = failing.withColumn("reasons", F.filter(tags, lambda x: x.isNotNull()))
    return failing.withColumn("reason", F.get("reasons", 0))


def evaluate(df: DataFrame, the_plan: Plan, rules: list[Rule], partial: int = 20,
             extra: dict[str, Column] | None = None) -> Evaluation:  # fmt: skip
    """Every fused metric and the quarantine counts in one ``agg`` over ``df``, then GX's validation logic;
    ``extra`` aggregates (the metric history's column profile) ride in the same ``agg``.

    The rejected rows come back lazy, so a caller can check the ``fail`` expectations
    before anything is written.
    """
    exprs: dict[str, Column] = {"__rows": F.count(F.lit(1))}
    exprs.update({f"x:{k}": e for k, e in (extra or {}).items()})
    drops = [r for r in rules if r.policy == "drop"]
    if drops:
        exprs["__rejected"] = F.count_if(any_failure(drops))
    key_of: dict[Any, str] = {}
    for _, rule, configs in the_plan.fused:
        for mc in configs:
            if mc.id in key_of:
                continue
            expr = _aggregate(mc, rule)
            if expr is None:
                continue
            key_of[mc.id] = f"m{len(key_of)}"
            exprs[key_of[mc.id]] = expr
    for r in drops:  # the quarantine count per reason is the rule's unexpected count
        exprs.setdefault(f"drop:{r.name}", F.count_if(r.fails()))
    types = {f.name: f.dataType for f in df.schema.fields}
    unique = sorted({rule.column for _, rule, configs in the_plan.fused
                     if any(mc.metric_name == "column_values.unique.unexpected_count" for mc in configs)})  # fmt: skip
    for column in unique:  # what decides how uniqueness is counted rides in the same pass
        col = F.col(f"`{column}`")
        exprs[f"u:n:{column}"] = F.count(col)
        if isinstance(types.get(column), INTEGRAL):
            exprs[f"u:min:{column}"], exprs[f"u:max:{column}"] = F.min(col), F.max(col)
    row = df.agg(*[e.alias(k) for k, e in exprs.items()]).first().asDict()
    values = {mc_id: row[k] for mc_id, k in key_of.items()}
    groups = 0
    duplicated: dict[str, int] = {}
    for _, rule, configs in the_plan.fused:  # uniqueness: bitmaps or a hash group-by, not GX's sort-based window
        for mc in configs:
            if mc.metric_name == "column_values.unique.unexpected_count" and mc.id not in values:
                column = rule.column
                if column not in duplicated:
                    duplicated[column], passes = _duplicated_rows(
                        df, column, row[f"u:n:{column}"], row.get(f"u:min:{column}"), row.get(f"u:max:{column}"))
                    groups += passes
                values[mc.id] = duplicated[column]

    results, reads = {}, 0
    columns = list(df.columns)
    for exp, rule, configs in the_plan.fused:
        metrics = {}
        for mc in configs:
            if mc.id in values:
                metrics[mc.id] = values[mc.id]
            elif mc.metric_name == "table.columns":
                metrics[mc.id] = columns
            else:  # unexpected_values / index list / index query of a map metric
                metrics[mc.id], read = _map_extra(df, mc, rule, configs, values, partial)
                reads += read
        results[rule.name] = exp.metrics_validate(metrics, runtime_configuration=runtime_configuration(partial))
    dropped = {r.name: int(row[f"drop:{r.name}"] or 0) for r in drops}
    rejected = int(row["__rejected"] or 0) if drops else 0
    return Evaluation(results=results, rows_in=int(row["__rows"]), rejected=rejected,
                      dropped={k: v for k, v in dropped.items() if v}, limit_reads=reads,
                      group_passes=groups, rejected_rows=tag(df, drops, empty=not rejected),
                      extra={k: row[f"x:{k}"] for k in extra or {}})  # fmt: skip


def _aggregate(mc, rule: Rule) -> Column | None:
    name, column = mc.metric_name, mc.metric_domain_kwargs.get("column")
    if name == "table.row_count":
        return F.count(F.lit(1))
    if name == "column_values.nonnull.unexpected_count":
        return _null_count(column)
    if name in _AGGREGATES:
        return _AGGREGATES[name][0](F.col(f"`{column}`"))
    if name == "column_values.unique.unexpected_count":
        return None  # a group-by of its own
    if name.endswith(".unexpected_count"):
        return F.count_if(rule.fails())
    return None


def _map_extra(df: DataFrame, mc, rule: Rule, configs, values: dict, partial: int) -> tuple[Any, int]:
    """A map metric's partial unexpected values (a ``limit`` query only when there are any); no index columns."""
    if not mc.metric_name.endswith(".unexpected_values"):
        return None, 0  # index list and query: GX gives None without unexpected_index_column_names
    base = mc.metric_name.rsplit(".", 1)[0]
    count = next(values[c.id] for c in configs if c.metric_name == f"{base}.unexpected_count") or 0
    if count == 0:
        return [], 0
    if base == "column_values.nonnull":  # the unexpected values of a null check are the nulls
        return [None] * min(count, partial), 0
    column = rule.column
    fails = _duplicated(column) if base == "column_values.unique" else rule.fails()
    flagged = df.withColumn("__unexpected", fails).filter(F.col("__unexpected"))  # windows cannot sit in a filter
    rows = flagged.select(F.col(f"`{column}`").alias(column)).limit(partial).collect()
    return [r[column] for r in rows], 1


def _duplicated(column: str) -> Column:
    """GX's uniqueness condition on Spark: a non-null value that occurs more than once."""
    from pyspark.sql import Window

    col = F.col(f"`{column}`")
    return col.isNotNull() & (F.count(F.lit(1)).over(Window.partitionBy(col)) > 1)


def _duplicated_rows(df: DataFrame, column: str, present: int | None = None, low: int | None = None,
                     high: int | None = None) -> tuple[int, int]:  # fmt: skip
    """Rows whose (non-null) value in ``column`` occurs more than once, and the passes over ``df`` that took.

    ``present`` (non-null values), ``low`` and ``high`` (an integer column's range) come from the fused pass.
    With none or one value no row can repeat. An integer column whose range is dense enough (a 4 KiB bitmap per
    32,768 values costs no more than the group-by's rows) first counts its distinct values exactly with Spark's
    bitmap functions: the bitmaps are aggregated where the data is and only a few of them are shuffled. When that
    count equals ``present`` (the usual night: the ids are unique) the answer is 0; otherwise, and for every
    other type, the exact count comes from one hash aggregation over the values.
    """
    if present is not None and present <= 1:
        return 0, 0
    col = F.col(f"`{column}`")
    passes = 0
    if present is not None and low is not None and high is not None:
        buckets = (int(high) - int(low)) // BITMAP_BITS + 2
        if buckets * 4096 <= present * 16:
            position = col.cast("long")
            distinct = (df.filter(col.isNotNull()).groupBy(F.bitmap_bucket_number(position).alias("__bucket"))
                        .agg(F.bitmap_count(F.bitmap_construct_agg(F.bitmap_bit_position(position))).alias("__n"))
                        .agg(F.sum("__n")).first()[0])  # fmt: skip
            passes += 1
            if int(distinct or 0) == present:
                return 0, passes
    counts = df.filter(col.isNotNull()).groupBy(col).count().filter(F.col("count") > 1)
    return int(counts.agg(F.sum("count")).first()[0] or 0), passes + 1
