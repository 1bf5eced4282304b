"""Ingest on real local Spark + Delta: ids, idempotency, formats, schema errors, run ledger."""

import shutil

import pandas as pd
import pytest
import yaml

from jobs import ingest
from jobs.config import load_config
from jobs.errors import SchemaMismatchError, SourceError
from jobs.lakehouse import tables

pytestmark = pytest.mark.spark


def pipeline(tmp_path, source: dict, columns: dict | None = None, **extra) -> "object":
    cfg = {
        "dataset": "toy", "kind": "tabular", "lake_root": "lake", "source": source,
        "columns": columns or {"label": "y", "features": ["a", "b"]}, **extra,
    }  # fmt: skip
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return load_config(path)


TOY = pd.DataFrame({"a": [1.0, 2.0, 2.0, 3.0], "b": [0.1, 0.2, 0.2, None], "y": ["x", "y", "y", "x"]})


def bronze(spark, cfg):
    return tables.read(spark, tables.Lake(cfg.lake_dir).path("bronze")).toPandas()


def test_ingest_twice_adds_no_rows_and_ids_are_stable(spark, tmp_path):
    TOY.to_csv(tmp_path / "toy.csv", index=False)
    cfg = pipeline(tmp_path, {"path": "toy.csv", "format": "csv", "options": {"header": True, "inferSchema": True}})
    first = ingest.run(spark, cfg, "run-1")
    assert (first.rows_in, first.rows_out) == (4, 4)
    again = ingest.run(spark, cfg, "run-2")
    assert (again.rows_in, again.rows_out) == (4, 0)
    b = bronze(spark, cfg)
    assert len(b) == 4 and b["sample_id"].is_unique  # the repeated row kept two distinct ids
    assert set(b["ingest_run_id"]) == {"run-1"}
    # Same rows in another order, in a fresh lake: the same ids.
    TOY.iloc[::-1].to_csv(tmp_path / "toy.csv", index=False)
    shutil.rmtree(tmp_path / "lake")
    ingest.run(spark, cfg, "run-3")
    assert sorted(bronze(spark, cfg)["sample_id"]) == sorted(b["sample_id"])


def test_new_rows_are_added_once(spark, tmp_path):
    TOY.to_csv(tmp_path / "toy.csv", index=False)
    cfg = pipeline(tmp_path, {"path": "toy.csv", "format": "csv", "options": {"header": True, "inferSchema": True}})
    ingest.run(spark, cfg, "r1")
    pd.concat([TOY, TOY.iloc[[0]]]).to_csv(tmp_path / "toy.csv", index=False)  # one more copy of row 0
    assert ingest.run(spark, cfg, "r2").rows_out == 1
    assert len(bronze(spark, cfg)) == 5


def _ingested_with_ids(spark, tmp_path):
    """TOY with an id column, ingested once: (source frame, config, sample_id by id)."""
    df = TOY.assign(rid=["r1", "r2", "r3", "r4"])
    df.to_parquet(tmp_path / "toy.parquet")
    cfg = pipeline(tmp_path, {"path": "toy.parquet", "format": "parquet"},
                   {"id": "rid", "label": "y", "features": ["a", "b"]})  # fmt: skip
    ingest.run(spark, cfg, "r1")
    return df, cfg, bronze(spark, cfg).set_index("rid")["sample_id"]


def test_id_column_drives_the_sample_id(spark, tmp_path):
    df, cfg, first = _ingested_with_ids(spark, tmp_path)
    assert first.is_unique and len(first) == 4  # rows 1 and 2 are identical but for their ids
    # The same rows, reordered, under ids renamed: the ids follow the id column, not the position.
    df.iloc[::-1].assign(rid=["q4", "q3", "q2", "q1"]).to_parquet(tmp_path / "toy.parquet")
    assert ingest.run(spark, cfg, "r2").rows_out == 4
    assert not set(bronze(spark, cfg).query("rid.str.startswith('q')")["sample_id"]) & set(first)


def test_a_grown_source_with_repeated_ids_inserts_exactly_the_new_rows(spark, tmp_path):
    """4 rows, then 29 more rows that reuse existing ids: bronze holds 33 distinct rows, old ids unchanged."""
    df, cfg, first = _ingested_with_ids(spark, tmp_path)
    grown = pd.DataFrame({"a": [float(10 + i) for i in range(29)], "b": [0.5] * 29, "y": ["x"] * 29,
                          "rid": [f"r{1 + i % 4}" for i in range(29)]})  # fmt: skip
    pd.concat([df, grown], ignore_index=True).to_parquet(tmp_path / "toy.parquet")
    assert ingest.run(spark, cfg, "r2").rows_out == 29
    b = bronze(spark, cfg)
    assert len(b) == 33 and b["sample_id"].is_unique
    assert len(b.drop_duplicates(["rid", "a", "b", "y"])) == 33  # every source row once, none twice
    old = b[b["ingest_run_id"] == "r1"].set_index("rid")["sample_id"]
    assert old.sort_index().equals(first.sort_index())
    assert ingest.run(spark, cfg, "r3").rows_out == 0  # and the grown source again adds nothing


def test_json_and_delta_sources(spark, tmp_path):
    TOY.to_json(tmp_path / "toy.json", orient="records", lines=True)
    cfg = pipeline(tmp_path, {"path": "toy.json", "format": "json"})
    assert ingest.run(spark, cfg, "r1").rows_out == 4
    src = str(tmp_path / "src_delta")
    tables.overwrite(spark.createDataFrame(TOY.fillna(0.0)), src, "r0", "test")
    tables.overwrite(spark.createDataFrame(TOY.fillna(0.0).head(2)), src, "r0b", "test")
    cfg2 = pipeline(tmp_path, {"path": "src_delta", "format": "delta", "version": 0}, lake_root="lake2")
    report = ingest.run(spark, cfg2, "r2")
    assert report.rows_out == 4  # read at version 0, not the latest (2 rows)


def test_schema_mismatch_names_the_columns(spark, tmp_path):
    TOY.rename(columns={"b": "bee"}).to_csv(tmp_path / "toy.csv", index=False)
    cfg = pipeline(tmp_path, {"path": "toy.csv", "format": "csv", "options": {"header": True}})
    with pytest.raises(SchemaMismatchError) as err:
        ingest.run(spark, cfg, "r1")
    assert "['b']" in str(err.value) and "bee" in str(err.value)
    assert not tables.exists(spark, tables.Lake(cfg.lake_dir).path("bronze"))  # nothing written
    runs = tables.read(spark, tables.Lake(cfg.lake_dir).path("runs")).collect()
    assert [(r["stage"], r["status"]) for r in runs] == [("ingest", "failed")]
    assert "source lacks configured columns" in runs[0]["error"]


def test_wrong_types_and_reserved_names(spark, tmp_path):
    spark.createDataFrame([(True, 1.0, "x")], "a boolean, b double, y string").write.parquet(str(tmp_path / "p"))
    cfg = pipeline(tmp_path, {"path": "p", "format": "parquet"})
    with pytest.raises(SchemaMismatchError, match=r"a \(boolean\)"):
        ingest.run(spark, cfg, "r1")
    TOY.assign(sample_id="s").to_csv(tmp_path / "toy.csv", index=False)
    cfg = pipeline(tmp_path, {"path": "toy.csv", "format": "csv", "options": {"header": True}})
    with pytest.raises(SchemaMismatchError, match="lineage columns"):
        ingest.run(spark, cfg, "r1")


def test_missing_and_empty_sources(spark, tmp_path):
    cfg = pipeline(tmp_path, {"path": "nope.csv", "format": "csv"})
    with pytest.raises(SourceError, match="source not found"):
        ingest.run(spark, cfg, "r1")
    (tmp_path / "empty.csv").write_text("a,b,y\n")
    cfg = pipeline(tmp_path, {"path": "empty.csv", "format": "csv", "options": {"header": True}})
    with pytest.raises(SourceError, match="has no rows"):
        ingest.run(spark, cfg, "r1")


def test_runs_table_records_inputs_outputs_counts(spark, tmp_path):
    TOY.to_csv(tmp_path / "toy.csv", index=False)
    cfg = pipeline(tmp_path, {"path": "toy.csv", "format": "csv", "options": {"header": True, "inferSchema": True}})
    ingest.run(spark, cfg, "run-a")
    ingest.run(spark, cfg, "run-b")
    lake = tables.Lake(cfg.lake_dir)
    runs = {r["run_id"]: r for r in tables.read(spark, lake.path("runs")).collect()}
    assert runs["run-a"]["status"] == "succeeded"
    assert runs["run-a"]["outputs"][0]["name"] == "bronze" and runs["run-a"]["outputs"][0]["version"] == 0
    assert runs["run-a"]["counts"]["rows_out"] == 4 and runs["run-b"]["counts"]["rows_out"] == 0
    assert runs["run-a"]["inputs"][0]["path"].endswith("toy.csv")
    # The re-run changed nothing, so it made no bronze commit: v0 is still run-a's.
    assert runs["run-b"]["outputs"][0]["version"] == 0 and runs["run-b"]["counts"]["rows_in"] == 4
    assert tables.last_commit(spark, lake.path("bronze"))["user_metadata"]["run_id"] == "run-a"


def test_sample_datasets_ingest(spark, sample_dir, tmp_path):
    for name in ("cancer", "digits"):
        cfg = load_config(sample_dir / name / f"{name}.yaml", {"lake_root": str(tmp_path / "lake")})
        report = ingest.run(spark, cfg, "r1")
        raw = pd.read_csv(sample_dir / name / ("cancer.csv" if name == "cancer" else "manifest.csv"))
        assert report.rows_out == len(raw) == report.rows_in
