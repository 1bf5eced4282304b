"""The trade-off grid on Ray: cross-validation folds × data fractions × quality levels.

``python -m training.tradeoff --table PATH --levels raw,clean --fractions 0.25,1 ...``
reads the trade-off table that ``fulcrum tradeoff`` writes (one gold-contract copy of the
data per quality level, a ``level`` column, and ``u``: a uniform draw per duplicate
group), and trains one model per (level, fraction, fold), each a slot of one run of the
training engine (one pass over the rows per epoch, one worker group; slots that do not fit
one device together run as groups). Every level is scored on the same validation rows of each fold;
a fraction keeps the training rows whose group draws ``u`` < fraction, so the samples are
nested (the 25 % sample holds the 10 % one). No final model is trained.

Output: ``tradeoff.json`` under ``--out``: one entry per trial (level, fraction, fold,
training rows, validation metrics). Exit codes: 0 ok, 2 usage or not a trade-off table,
3 runtime error.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

from training import runtime
from training.contract import jsonio
from training.contract.settings import METRICS, TrainSettings, add_flags, from_flags
from training.cv import plan_resources, plan_slot_groups, run_slots
from training.engine import grid_slots
from training.gold import Gold, GoldError

log = logging.getLogger(__name__)


def grid(table: Gold, s: TrainSettings, levels: list[str], fractions: list[float], folds: list[int],
         out: str | Path, weighted: list[str] = ()) -> dict:  # fmt: skip
    """Train every (level, fraction, fold) cell of the grid, each a slot of one run (one pass over the rows
    per epoch; slots that do not fit one device together run as groups); returns and writes ``tradeoff.json``."""
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    cells = grid_slots(levels, fractions, folds, weighted)
    use_gpu, per_worker, _ = plan_resources(s, 1)
    groups = plan_slot_groups(table, s, len(cells), use_gpu)
    log.info("trade-off grid: %d level(s) × %d fraction(s) × %d fold(s) = %d models, %s", len(levels),
             len(fractions), len(folds), len(cells),
             "in one pass per epoch" if len(groups) == 1 else f"in {len(groups)} groups {groups}")  # fmt: skip
    start = time.perf_counter()
    results: dict[str, dict] = {}
    for g, group in enumerate(groups):
        results.update(run_slots(table, s, [cells[i] for i in group], out / f"group-{g}", levels=levels,
                                 use_gpu=use_gpu, cpus_per_worker=per_worker))  # fmt: skip
    trials = [{"level": c.level, "fraction": c.fraction, "fold": c.fold, "train_rows": results[c.name]["train_rows"],
               "val_rows": len(results[c.name]["ids"]), "metrics": results[c.name]["metrics"]} for c in cells]  # fmt: skip
    summary = {"table": table.path, "delta_version": table.version, "levels": levels, "fractions": fractions,
               "folds": folds, "metrics": list(METRICS), "concurrent": max(map(len, groups)), "use_gpu": use_gpu,
               "seconds": round(time.perf_counter() - start, 2), "settings": s.model_dump(mode="json", exclude={"search"}),
               "trials": trials}  # fmt: skip
    jsonio.dump(summary, out / "tradeoff.json")
    return summary


def parser() -> argparse.ArgumentParser:
    from training.__main__ import run_flags

    p = argparse.ArgumentParser(prog="python -m training.tradeoff", description=__doc__.split("\n\n")[0])
    run_flags(p)
    add_flags(p, search=False)
    p.add_argument("--levels", required=True, type=lambda v: v.split(","), help="comma-separated quality levels")
    p.add_argument("--fractions", required=True, type=lambda v: [float(x) for x in v.split(",")],
                   help="comma-separated fractions of the training rows, each in (0, 1]")  # fmt: skip
    p.add_argument("--folds", required=True, type=lambda v: [int(x) for x in v.split(",")],
                   help="comma-separated folds to train")  # fmt: skip
    p.add_argument("--weighted-levels", default=[], type=lambda v: [x for x in v.split(",") if x],
                   help="comma-separated levels trained with a class-balanced loss (oversample.method auto's "
                        "class_weight candidate)")  # fmt: skip
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = from_flags(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if os.environ.get("FULCRUM_PARENT_PID"):  # started by `fulcrum tradeoff`: end with it
        runtime.die_with_parent(int(os.environ["FULCRUM_PARENT_PID"]))
    try:
        table = Gold.open(args.table, args.version)
    except GoldError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    bad = [f for f in args.fractions if not 0 < f <= 1]
    if bad or table.levels is None:
        print(f"error: {args.table} is not a trade-off table written by `fulcrum tradeoff`"
              if not bad else f"error: fractions must be in (0, 1], got {bad}", file=sys.stderr)  # fmt: skip
        return 2
    runtime.init_ray(address=args.address, num_cpus=args.num_cpus)
    from training.progress import relay

    try:
        with relay(args.progress):
            grid(table, settings, args.levels, args.fractions, args.folds, args.out, args.weighted_levels)
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    finally:
        runtime.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
