"""The run's JSON files are strict JSON (NaN and infinities as null) and read back with NaN where a number was
undefined (``training.contract.jsonio``)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from training.contract import jsonio


def _strict_parse(text: str):
    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


@pytest.mark.parametrize(("value", "written"), [
    (float("nan"), None),
    (float("inf"), None),
    (-float("inf"), None),
    (np.float32("nan"), None),
    (np.float64(0.25), 0.25),
    (np.float32(0.5), 0.5),
    (np.int64(3), 3),
    (True, True),
    (np.bool_(False), False),
    (np.array([1.0, np.nan]), [1.0, None]),
    ((1, float("nan")), [1, None]),
    ({"a": {"b": [float("nan"), 2]}}, {"a": {"b": [None, 2]}}),
    ({1: "x"}, {"1": "x"}),
    (None, None),
    ("nan", "nan"),
])  # fmt: skip
def test_strict_writes_what_a_strict_parser_reads(value, written):
    text = jsonio.dumps(value)
    assert _strict_parse(text) == written


def test_null_is_nan_again_only_where_a_number_was():
    summary = {
        "final": None,  # no final model: stays None
        "settings": {"model": None, "epochs": 3},  # unset settings stay None
        "mean": {"accuracy": float("nan"), "roc_auc": 0.9},
        "per_fold": [{"fold": 0, "roc_auc": float("nan"), "history": [{"val_macro_f1": float("nan"), "resumed_from": None}]}],
        "calibration": {"test": {"confidence": [float("nan"), 0.7], "accuracy": [float("nan"), 1.0], "ece": float("nan")}},
        "candidates": [{"name": "none", "mean": float("nan"), "brier": float("nan"), "vs_none": None}],
        "test_rows": 0,
    }  # fmt: skip
    back = jsonio.relaxed(_strict_parse(jsonio.dumps(summary)))
    assert back["final"] is None and back["settings"] == {"model": None, "epochs": 3}
    assert math.isnan(back["mean"]["accuracy"]) and back["mean"]["roc_auc"] == 0.9
    assert math.isnan(back["per_fold"][0]["roc_auc"]) and math.isnan(back["per_fold"][0]["history"][0]["val_macro_f1"])
    assert back["per_fold"][0]["history"][0]["resumed_from"] is None
    assert math.isnan(back["calibration"]["test"]["confidence"][0]) and back["calibration"]["test"]["accuracy"][1] == 1.0
    assert math.isnan(back["calibration"]["test"]["ece"])
    assert math.isnan(back["candidates"][0]["mean"]) and math.isnan(back["candidates"][0]["brier"])
    assert back["candidates"][0]["vs_none"] is None and back["test_rows"] == 0


def test_a_file_written_before_is_still_read(tmp_path):
    """Files of earlier runs hold NaN as Python wrote it; the reader still takes them."""
    path = tmp_path / "cv.json"
    path.write_text('{"mean": {"accuracy": NaN}}')
    assert math.isnan(jsonio.load(path)["mean"]["accuracy"])
    jsonio.dump({"mean": {"accuracy": float("nan")}}, path)
    assert _strict_parse(path.read_text()) == {"mean": {"accuracy": None}}
