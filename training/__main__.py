"""``python -m training --table PATH [--version N] ...``: k-fold cross-validation of a gold table.

With ``--search-trials N`` a hyperparameter search (Ray Tune, ASHA; see ``training.search``)
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
from dataclasses import fields
from pathlib import Path

from training.cv import Settings
from training.search import Search


def parser(add_help: bool = True, search: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training", description=__doc__.split("\n\n")[0], add_help=add_help,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)  # fmt: skip
    p.add_argument("--table", required=True, help="gold Delta table (path or URI)")
    p.add_argument("--version", type=int, default=None, help="Delta version to read (default: latest)")
    p.add_argument("--out", default="train-out", help="folder for the report, plots, model and checkpoints")
    p.add_argument("--address", default=None, help="Ray cluster to join (RAY_ADDRESS wins)")
    p.add_argument("--num-cpus", type=int, default=None, help="logical CPUs of a local Ray instance")
    _add_flags(p, Settings())
    if search:
        _add_flags(p.add_argument_group("hyperparameter search (on when --search-trials > 0)"), Search(), "search")
    return p


def _add_flags(p, defaults, prefix: str = "") -> None:
    """One flag per dataclass field: ``--name`` (``--prefix-name``), typed from the default."""
    for f in fields(defaults):
        value, dest = getattr(defaults, f.name), f"{prefix}_{f.name}" if prefix else f.name
        flag = "--" + dest.replace("_", "-")
        if isinstance(value, bool):
            p.add_argument(flag, dest=dest, type=_bool, default=value)
        elif isinstance(value, tuple):
            kind = type(value[0]) if value else int
            p.add_argument(flag, dest=dest, type=lambda v, k=kind: tuple(k(x) for x in v.split(",")), default=value,
                           help="comma-separated")  # fmt: skip
        elif value is None:
            kind = {"use_gpu": _bool, "cpus_per_worker": float}.get(f.name, str)
            if f.name in ("concurrency", "crash_at_epoch", "folds", "epochs"):
                kind = int
            p.add_argument(flag, dest=dest, type=kind, default=None)
        else:
            p.add_argument(flag, dest=dest, type=type(value), default=value)


def _bool(v: str) -> bool:
    return v.lower() in ("1", "true", "yes")


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings(**{f.name: getattr(args, f.name) for f in fields(Settings)})
    search = Search(**{f.name: getattr(args, f"search_{f.name}") for f in fields(Search)})
    from training import runtime
    from training.cv import cross_validate

    if os.environ.get("FULCRUM_PARENT_PID"):  # started by `fulcrum train`: end with it
        runtime.die_with_parent(int(os.environ["FULCRUM_PARENT_PID"]))
    from training.gold import Gold, GoldError
    from training.report import print_summary

    try:
        gold = Gold.open(args.table, args.version)
    except GoldError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if search.trials:
        try:
            search.check(gold.folds)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    runtime.init_ray(address=args.address, num_cpus=args.num_cpus)
    try:
        found = None
        if search.trials:
            from training import search as searching

            settings, found = searching.run(gold, settings, search, Path(args.out) / "search")
        summary = cross_validate(gold, settings, args.out, search=found)
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    finally:
        runtime.shutdown()
    print_summary(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
