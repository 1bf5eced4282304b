"""The wiring's own duties: stage events reach stderr when the pipeline is driven from Python."""

import io
import json
import sys
import types

import pytest


def test_the_pipeline_sets_up_stage_events_when_called_from_python(monkeypatch, tmp_path):
    from jobs import pipeline
    from jobs.lakehouse import ledger

    monkeypatch.delattr(ledger.events, "fulcrum_format", raising=False)  # no CLI ran in this process
    monkeypatch.setattr(pipeline, "STAGES", {"ingest": lambda spark, cfg, run_id: ledger.events.info(
        json.dumps({"event": "stage", "run_id": run_id})) or "ingested"})  # fmt: skip
    stderr = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stderr)
    cfg = types.SimpleNamespace(suite=None, dataset="d", reports_dir=str(tmp_path))
    try:
        assert list(pipeline.iter_pipeline(None, cfg, "r-1", ["ingest"])) == ["ingested"]
        assert (tmp_path / "r-1" / "engine.log").is_file()  # the run's engine log

        def events() -> list[dict]:  # the JSON lines (a CLI test may have left a log handler on stderr too)
            return [json.loads(line) for line in stderr.getvalue().splitlines() if line.startswith("{")]

        assert events() == [{"event": "stage", "run_id": "r-1"}]
        pipeline.setup_events("none")  # the CLI's --events none: nothing more is written
        ledger.events.info("{}")
        assert len(events()) == 1
        with pytest.raises(Exception, match="unknown event format 'yaml'"):
            pipeline.setup_events("yaml")
    finally:
        pipeline.setup_events("json", sys.__stderr__)
