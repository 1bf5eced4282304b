"""``python -m training --table PATH [--version N] ...``: k-fold cross-validation of a gold table.

With ``--search-trials N`` (N >= 2) a hyperparameter search (Ray Tune, ASHA; see ``training.search``)
runs first and the cross-validation and final model use the best configuration it found.

Runs on a local Ray instance, or on the cluster named by ``RAY_ADDRESS`` / ``--address``,
which is what ``ray job submit --working-dir . -- python -m training --table ...`` does.
Exit codes: 0 ok, 2 usage or a table that is not gold, 3 runtime error.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from training.contract.settings import add_flags, from_flags


def run_flags(p: argparse.ArgumentParser) -> None:
    """What a run reads and where it writes (the settings' own flags come from ``training.contract``)."""
    p.add_argument("--table", required=True, help="gold Delta table (path or URI)")
    p.add_argument("--version", type=int, default=None, help="Delta version to read (default: latest)")
    p.add_argument("--out", default="train-out", help="folder for cv.json, the model, checkpoints and TensorBoard files")
    p.add_argument("--address", default=None, help="Ray cluster to join (RAY_ADDRESS wins)")
    p.add_argument("--num-cpus", type=int, default=None, help="logical CPUs of a local Ray instance")
    p.add_argument("--progress", action="store_true",
                   help="print each epoch's progress as one `@fulcrum {json}` line on stdout (what `fulcrum` reads)")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training", description=__doc__.split("\n\n")[0])
    run_flags(p)
    p.add_argument("--no-final-model", dest="final_model", action="store_false",
                   help="the folds only, for their out-of-fold predictions (what the label audit needs): no final "
                        "model trained, scored or saved")  # fmt: skip
    p.add_argument("--test-predictions", action="store_true",
                   help="add the final model's probabilities of the test part to the predictions table (fold -1): "
                        "what the label audit needs to judge the test part")  # fmt: skip
    p.add_argument("--members", type=int, default=1,
                   help="models per fold (and final model) trained in the same pass from different initial weights, "
                        "scored by the mean of their probabilities: out-of-fold predictions less bound to one random start, for the label "
                        "audit (default 1)")  # fmt: skip
    add_flags(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = from_flags(args)
        if not 1 <= args.members <= 16:
            raise ValueError(f"--members must be between 1 and 16, not {args.members}")
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    search = settings.search
    from training import runtime
    from training.cv import cross_validate

    if os.environ.get("FULCRUM_PARENT_PID"):  # started by `fulcrum train`: end with it
        runtime.die_with_parent(int(os.environ["FULCRUM_PARENT_PID"]))
    from training.contract.summary import print_summary
    from training.gold import Gold, GoldError

    try:
        gold = Gold.open(args.table, args.version)
    except GoldError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if search is not None:
        try:
            search.check_folds(gold.folds)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    runtime.init_ray(address=args.address, num_cpus=args.num_cpus)
    from training.progress import relay

    try:
        with relay(args.progress):
            found = None
            if search is not None:
                from training import search as searching

                settings, found = searching.run(gold, settings, search, Path(args.out) / "search")
            summary = cross_validate(gold, settings, args.out, search=found, final=args.final_model,
                                     test_predictions=args.test_predictions, members=args.members)
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    finally:
        runtime.shutdown()
    print_summary(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
