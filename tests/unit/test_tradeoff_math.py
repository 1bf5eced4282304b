"""The trade-off's curves and conclusion on literal grids whose answers are computed by hand."""

from __future__ import annotations

import math

import pytest

from jobs.analysis.tradeoff import conclude, curves, fit_log
from jobs.config import TradeoffConfig

B = 0.1 / math.log(10)  # +0.1 of the metric per 10x the rows


def _pts(*pairs):
    return [{"fraction": i + 1, "rows": n, "mean": m, "std": 0.0} for i, (n, m) in enumerate(pairs)]


def test_fit_log_recovers_a_log_linear_curve():
    a, b = fit_log(_pts((100, 0.4 + B * math.log(100)), (1000, 0.4 + B * math.log(1000)), (300, 0.4 + B * math.log(300))))
    assert (a, b) == (pytest.approx(0.4), pytest.approx(B))
    assert fit_log(_pts((100, 0.5))) is None


def test_cleaning_beats_ten_times_the_data_and_raw_needs_four_times_its_rows():
    # raw: 0.6 at 100 rows, 0.7 at 1,000 -> metric = 0.4 + B ln(n); clean reaches 0.76 at 900 rows.
    grid = {"raw": _pts((100, 0.6), (1000, 0.7)), "clean": _pts((90, 0.71), (900, 0.76))}
    c = conclude(grid, "macro_f1")
    assert c["best"] == "clean"
    assert c["steps"][0]["gain"] == pytest.approx(0.06)
    assert c["more_data"]["gain"] == pytest.approx(0.05)
    assert c["top"]["to"] == "clean"  # +0.06 from cleaning beats +0.05 from 10x the rows
    # 0.4 + B ln(n) = 0.76  ->  n = 10^3.6 = 3,981 rows, 3.98x raw's 1,000
    assert c["raw_needs"]["rows"] == pytest.approx(10**3.6, rel=1e-6)
    assert c["raw_needs"]["factor"] == pytest.approx(3.981, abs=1e-3)
    assert any("≈ 4.0× its 1,000 training rows" in line for line in c["text"])


def test_a_flat_raw_curve_is_not_extrapolated():
    c = conclude({"raw": _pts((100, 0.70), (1000, 0.69)), "clean": _pts((90, 0.75), (900, 0.80))}, "accuracy")
    assert c["raw_needs"]["rows"] is None
    assert any("flat or falling" in line for line in c["text"])
    # raw -> clean at full size is +0.11, 10x the clean rows +0.05: cleaning wins
    assert c["top"]["to"] == "clean" and c["top"]["gain"] == pytest.approx(0.11)
    assert c["text"][0].startswith("The step that bought the most accuracy is cleaned + deduplicated")


def test_raw_that_already_matches_needs_nothing():
    c = conclude({"raw": _pts((100, 0.8), (1000, 0.9)), "clean": _pts((90, 0.8), (900, 0.85))}, "macro_f1")
    assert c["best"] == "raw" and c["raw_needs"] is None
    assert c["steps"][0]["gain"] == pytest.approx(-0.05)


def test_curves_average_folds_and_take_rows_from_the_table_counts():
    trials = [{"level": "raw", "fraction": f, "fold": k, "train_rows": 10 * k + int(100 * f),
               "metrics": {"macro_f1": m}} for f, k, m in [(0.5, 0, 0.6), (0.5, 1, 0.8), (1.0, 0, 0.9), (1.0, 1, 0.9)]]  # fmt: skip
    rows = {"raw": {0.5: [40, 60], 1.0: [90, 110]}}
    c = curves(trials, rows, "macro_f1")["raw"]
    assert [p["fraction"] for p in c] == [0.5, 1.0]
    assert c[0]["mean"] == pytest.approx(0.7) and c[0]["std"] == pytest.approx(0.1) and c[0]["rows"] == 50
    assert c[1]["mean"] == pytest.approx(0.9) and c[1]["std"] == 0 and c[1]["rows"] == 100
    assert c[0]["rows_with_synthetic"] == 55


def test_config_orders_levels_and_refuses_a_single_fraction():
    cfg = TradeoffConfig(levels=["oversampled", "raw"], fractions=[1, 0.25, 0.25, 0.5])
    assert cfg.levels == ["raw", "oversampled"] and cfg.fractions == [0.25, 0.5, 1.0]
    with pytest.raises(ValueError, match="at least two distinct"):
        TradeoffConfig(fractions=[1.0, 1])
    with pytest.raises(ValueError, match="at least two distinct"):
        TradeoffConfig(fractions=[0, 1])
    with pytest.raises(ValueError, match="distinct and not empty"):
        TradeoffConfig(levels=[])


def test_the_page_shows_how_gold_was_balanced_when_auto_chose(tmp_path):
    import io

    from PIL import Image

    from jobs.analysis.tradeoff import write_page
    from jobs.config import parse_config
    from tests.html_report import parse

    buf = io.BytesIO()
    Image.new("RGB", (2, 2)).save(buf, "PNG")
    (tmp_path / "tradeoff.png").write_bytes(buf.getvalue())
    cfg = parse_config({"dataset": "t", "kind": "tabular", "source": {"path": "x", "format": "csv"},
                        "columns": {"label": "y", "features": ["a"]}})  # fmt: skip
    balancing = {"metric": "macro_f1", "chosen": "random", "reason": "the highest mean 0.900",
                 "candidates": [{"name": "none", "mean": 0.8, "std": 0.01, "brier": 0.1, "ece": 0.05, "train_rows": 90},
                                {"name": "random", "mean": 0.9, "std": 0.02, "brier": 0.12, "ece": 0.06,
                                 "train_rows": 120}]}  # fmt: skip
    result = {"info": {"gold_version": 3, "folds": [0, 1], "left_out": {}, "balancing": balancing}, "trials": [],
              "seconds": 1.0, "metric": "macro_f1", "conclusion": {"text": ["x"]}, "curves": {}}  # fmt: skip
    page = parse(write_page(tmp_path, cfg, "r-1", result))
    assert page.sections == ["conclusion", "curves", "balancing", "levels"]
    words = " ".join(page.text)
    assert "random (chosen)" in words and "the highest mean 0.900" in words and "0.1200" in words
    result["info"]["balancing"] = None  # a method named in the config: no such section
    assert parse(write_page(tmp_path, cfg, "r-2", result)).sections == ["conclusion", "curves", "levels"]
