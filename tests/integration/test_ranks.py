"""Ranks within large groups from many small windows equal one window over each group."""

import pytest
from pyspark.sql import Window
from pyspark.sql import functions as F

from jobs.lakehouse.ranks import rank_within

pytestmark = pytest.mark.spark


def test_ranks_by_a_quantised_score_equal_one_window_and_limit_keeps_the_first(spark):
    rows = spark.range(3000).select(
        F.format_string("s%05d", "id").alias("sample_id"), (F.col("id") % 3).alias("label"),
        # many ties (a score that takes 40 values), so the tie-break by sample_id decides
        (F.abs(F.xxhash64("id")) % 40 / F.lit(40.0)).alias("score"))  # fmt: skip
    order = [F.col("score"), F.col("sample_id")]
    got = rank_within(rows, ["label"], F.floor(F.col("score") * 8).cast("long"), order)
    want = rows.withColumn("_rank", F.row_number().over(Window.partitionBy("label").orderBy(*order)))
    cols = ["sample_id", "label", "score", "_rank"]
    assert sorted(got.select(cols).collect()) == sorted(want.select(cols).collect())
    limited = rank_within(rows.withColumn("n", F.col("label") * 7 + 1), ["label"],
                          F.floor(F.col("score") * 8).cast("long"), order, limit=F.col("n"))  # fmt: skip
    expected = want.where(F.col("_rank") <= F.col("label") * 7 + 1).select("sample_id", "_rank").collect()
    assert sorted(limited.select("sample_id", "_rank").collect()) == sorted(expected)
    assert limited.count() == 1 + 8 + 15
