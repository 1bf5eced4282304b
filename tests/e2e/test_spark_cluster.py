"""The Spark stages through `spark-submit` against a real standalone master and worker on 127.0.0.1
(started with `spark-class` from the installed pyspark, stopped even on failure)."""

import json
import subprocess

import pytest
from deltalake import DeltaTable

from jobs.lakehouse.session import submit_args
from jobs.samples import make_samples
from tests.clusters import BIN, _spark_json, spark_standalone
from tests.html_report import decode, parse

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


def submit(cluster, *args: str) -> tuple[subprocess.CompletedProcess, list[dict]]:
    cmd = [str(BIN / "spark-submit"), "--master", cluster.master, "--driver-memory", "1g",
           "--executor-memory", "2g", *submit_args(), *args]  # fmt: skip
    result = subprocess.run(cmd, env=cluster.env, capture_output=True, text=True, timeout=600)
    # spark-submit's PythonRunner merges the driver's stderr into its own stdout
    lines = (result.stdout + result.stderr).splitlines()
    events = [json.loads(line) for line in lines if line.startswith('{"event": "stage"')]
    return result, events


def test_spark_stages_through_spark_submit_on_a_standalone_cluster(tmp_path):
    config = str(make_samples(tmp_path, seed=7)[0])  # cancer
    lake = tmp_path / "lake" / "cancer"
    with spark_standalone(cores=2, memory="3g") as cluster:
        # The Spark stages only: the label audit's models train on Ray (tests/e2e/test_ray_job.py).
        result, events = submit(cluster, "run", config, "--until", "oversample", "--set", "split.folds=2",
                                "--set", "audit.enabled=false", "--set", "oversample.method=smotenc",
                                "--run-id", "s1")  # fmt: skip
        assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
        apps = _spark_json(cluster.ui)["completedapps"]
    # The application ran on the standalone cluster's executor (not in a local master).
    assert len(apps) == 1 and apps[0]["state"] == "FINISHED" and apps[0]["cores"] == 2
    assert [e["stage"] for e in events] == ["ingest", "validate", "curate", "oversample"]
    assert all(e["status"] == "succeeded" and e["run_id"] == "s1" for e in events)
    assert [o["table"] for e in events for o in e["outputs"]] == ["bronze", "quarantine", "silver", "quarantine",
                                                                   "gold"]  # fmt: skip

    # The Delta tables, read by delta-rs (not Spark): one commit per write, each stage's rows once.
    bronze = DeltaTable(str(lake / "bronze"))
    assert bronze.to_pyarrow_table().num_rows == events[0]["rows_out"] == events[0]["rows_in"] > 0
    silver = DeltaTable(str(lake / "silver")).to_pyarrow_table()
    assert silver.num_rows == events[2]["rows_out"]
    assert len(set(silver.column("sample_id").to_pylist())) == silver.num_rows
    gold = DeltaTable(str(lake / "gold"))
    assert gold.version() == 0 and gold.metadata().configuration["fulcrum.run_id"] == "s1"
    assert gold.to_pyarrow_table().num_rows == events[3]["counts"]["gold_rows"]
    runs = DeltaTable(str(lake / "runs")).to_pyarrow_table().to_pylist()
    assert sorted(r["stage"] for r in runs) == ["curate", "ingest", "oversample", "validate"]

    page = parse(lake / "reports" / "s1" / "report.html")
    balance = [src for alt, src in page.images if alt.startswith("class balance")]
    assert len(balance) == 1 and decode(balance[0]).size[0] > 100
