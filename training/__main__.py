"""``python -m training --table PATH [--version N] ...``: k-fold cross-validation of a gold table.

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

from training.cv import Settings


def parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training", description=__doc__.split("\n\n")[0], add_help=add_help,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)  # fmt: skip
    p.add_argument("--table", required=True, help="gold Delta table (path or URI)")
    p.add_argument("--version", type=int, default=None, help="Delta version to read (default: latest)")
    p.add_argument("--out", default="train-out", help="folder for the report, plots, model and checkpoints")
    p.add_argument("--address", default=None, help="Ray cluster to join (RAY_ADDRESS wins)")
    p.add_argument("--num-cpus", type=int, default=None, help="logical CPUs of a local Ray instance")
    defaults = Settings()
    for f in fields(Settings):
        value = getattr(defaults, f.name)
        flag = "--" + f.name.replace("_", "-")
        if isinstance(value, bool):
            p.add_argument(flag, type=lambda v: v.lower() in ("1", "true", "yes"), default=value)
        elif isinstance(value, tuple):
            p.add_argument(flag, type=lambda v: tuple(int(x) for x in v.split(",")), default=value,
                           help="comma-separated")  # fmt: skip
        elif value is None:
            kind = {"use_gpu": lambda v: v.lower() in ("1", "true", "yes"), "cpus_per_worker": float}.get(f.name, str)
            if f.name in ("concurrency", "crash_at_epoch"):
                kind = int
            p.add_argument(flag, type=kind, default=None)
        else:
            p.add_argument(flag, type=type(value), default=value)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings(**{f.name: getattr(args, f.name) for f in fields(Settings)})
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
    runtime.init_ray(address=args.address, num_cpus=args.num_cpus)
    try:
        summary = cross_validate(gold, settings, args.out)
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    finally:
        runtime.shutdown()
    print_summary(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
