"""Train stage: cross-validation of the gold table on Ray, recorded in the run ledger.

The Ray side (``training/``) never imports ``jobs/``: this stage runs it as its own
process, ``python -m training`` with the config's ``train`` section as flags, pinned to
gold's current version, and reads back its ``cv.json``. With ``ray.address`` (or
``RAY_ADDRESS``) naming a Ray Jobs API (``http://head:8265``), the same command is a
``ray job submit`` to that cluster. Its summary table goes straight to the console.
"""

from __future__ import annotations

import atexit
import collections
import json
import logging
import os
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
from pyspark.sql import SparkSession

from jobs import plots
from jobs.config import PipelineConfig
from jobs.errors import ConfigError, FulcrumError
from jobs.lakehouse import ledger, tables
from jobs.stage import StageReport
from training.contract import HEAD_PREFIX, PROGRESS_PREFIX, TrainSettings, read_json, to_flags

log = logging.getLogger(__name__)
STAGE = "train"
TAIL_LINES = 40
# The Ray side's own warnings and errors (its log format: "time LEVEL training.module: message") reach the
# terminal at once; everything else it writes goes to the log (and its last lines to the terminal if it fails).
OWN_WARNING = re.compile(r"^\S+ \S+ (?:WARNING|ERROR|CRITICAL) training[.\w]*: (?P<message>.*)$")


def command(cfg: PipelineConfig, run_id: str, version: int | None = None, *, table: str | None = None,
            out: str | None = None, settings: TrainSettings | None = None, final_model: bool = True,
            test_predictions: bool = False, members: int = 1) -> list[str]:  # fmt: skip
    """The ``python -m training`` command line for a pipeline config: its gold table (or ``table``), its train
    section (or ``settings``), its run's train folder (or ``out``); ``final_model`` False: the folds only;
    ``test_predictions``: the final model's test-part probabilities join the predictions table; ``members``: models
    per fold, their probabilities averaged."""
    args = ["--table", table or tables.Lake(cfg.lake_dir).path("gold"), "--out", out or out_dir(cfg, run_id),
            *to_flags(settings or cfg.train), *([] if final_model else ["--no-final-model"]),
            *(["--test-predictions"] if test_predictions else []), *(["--members", str(members)] if members > 1 else [])]  # fmt: skip
    if version is not None:
        args += ["--version", str(version)]
    return ray_side(cfg, run_id, "training", args)


def cross_validate(cfg: PipelineConfig, run_id: str, table: str, version: int, out: str,
                   settings: TrainSettings | None = None, label: str = "train", final_model: bool = True,
                   test_predictions: bool = False, members: int = 1) -> dict:  # fmt: skip
    """Cross-validate a gold-contract table on the Ray side (foreground) and return its ``cv.json``;
    ``label`` names it in the progress; ``final_model`` False trains the folds only; ``test_predictions`` and
    ``members``: see ``command``."""
    cmd = command(cfg, run_id, version, table=table, out=out, settings=settings, final_model=final_model,
                  test_predictions=test_predictions, members=members)
    log.info("train %s: %s", cfg.dataset, " ".join(cmd[1:]))
    code = run_foreground(cmd, f"{cfg.dataset} {label}", ray_env(cfg))
    if code:
        raise FulcrumError(f"{cfg.dataset}: training exited with code {code} (its last lines are printed above)",
                           fix="see the message above; `python -m training --help` lists the flags")  # fmt: skip
    return read_json(Path(out) / "cv.json")


def grid_args(table: str, version: int, out: str, train: TrainSettings, levels: list[str], folds: list[int],
              fractions: list[float] = (1.0,), weighted: list[str] = ()) -> list[str]:  # fmt: skip
    """The arguments of ``python -m training.tradeoff``: one slot per (level, fraction, fold) of a gold-contract
    table with a ``level`` column, trained with ``train`` (pass it without its search); ``weighted``: the levels
    trained with a class-balanced loss."""
    args = ["--table", table, "--version", str(version), "--out", out, *to_flags(train), "--levels", ",".join(levels),
            "--fractions", ",".join(f"{f:g}" for f in fractions), "--folds", ",".join(map(str, folds))]  # fmt: skip
    return args + (["--weighted-levels", ",".join(weighted)] if weighted else [])


def grid(cfg: PipelineConfig, run_id: str, args: list[str], out: str, what: str, fix: str) -> dict:
    """Run a grid of slots on the Ray side (``python -m training.tradeoff ARGS``, foreground) and return its
    ``tradeoff.json``; ``what`` names the grid in the error, ``fix`` says what to do."""
    cmd = ray_side(cfg, run_id, "training.tradeoff", args)
    log.info("%s %s: %s", what, cfg.dataset, " ".join(cmd[1:]))
    code = run_foreground(cmd, f"{cfg.dataset} {what}", ray_env(cfg))
    if code:
        raise FulcrumError(f"{cfg.dataset}: {what} exited with code {code} (its last lines are printed above)", fix=fix)
    return read_json(Path(out) / "tradeoff.json")


def jobs_api(cfg: PipelineConfig) -> str | None:
    """The Ray Jobs API address (``http(s)://head:8265``) when ``RAY_ADDRESS`` or ``ray.address`` names one."""
    address = os.environ.get("RAY_ADDRESS") or cfg.ray.address
    return address if address and address.startswith(("http://", "https://")) else None


HEAD_START_S = 180  # the longest a shared local instance may take to start before runs start their own


class LocalRay:
    """The local Ray instance this process's Ray-side runs share when no cluster is named.

    Without it each run (the audit's folds, ``auto``'s candidates, the search and the CV, a trade-off
    grid) started a local instance and stopped it again. The first run of a command starts
    ``python -m training.head`` (sized as a run's own instance would be, with a token of its own) and
    every run joins it: the first pays the start as it did before, each later one saves about 5 to 9 s
    on 2 cores (the digits audit's CV: 35.3–38.0 s with its own instance, 28.3–30.0 s joining). It is started when the first run needs it, not before: on 2 cores its start (about
    5 CPU-seconds) slowed the Spark stages it overlapped by as much as it saved. It stops with this
    process (``atexit``, and the head's own parent-death signal if this process is killed).
    ``FULCRUM_SHARED_RAY=0`` turns it off."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None
        self.cpus: int | None = None
        self.token = ""
        self.address: str | None = None
        self.ready = threading.Event()
        self.lock = threading.Lock()

    @staticmethod
    def wanted(cfg: PipelineConfig) -> bool:
        """Runs of ``cfg`` start a local instance: no Jobs API, no address, not turned off."""
        return (jobs_api(cfg) is None and not cfg.ray.address and not os.environ.get("RAY_ADDRESS")
                and os.environ.get("FULCRUM_SHARED_RAY", "1") != "0")  # fmt: skip

    def start(self, cfg: PipelineConfig) -> None:
        """Start the instance in the background (no wait) unless one of this size is up."""
        if not self.wanted(cfg):
            return
        with self.lock:
            if self.proc is not None and self.proc.poll() is None and self.cpus == cfg.ray.num_cpus:
                return
            self.stop()
            self.cpus, self.token, self.address = cfg.ray.num_cpus, secrets.token_hex(32), None
            self.ready = threading.Event()
            env = {**os.environ, **self._auth(), "FULCRUM_PARENT_PID": str(os.getpid()), "PYTHONUNBUFFERED": "1",
                   "FULCRUM_ENGINE_LOG": "1"}  # fmt: skip
            cmd = [sys.executable, "-m", "training.head", *(["--num-cpus", str(self.cpus)] if self.cpus else [])]
            self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
            threading.Thread(target=self._read, args=(self.proc, self.ready), daemon=True, name="ray-head").start()

    def _auth(self) -> dict[str, str]:
        return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token}

    def _read(self, proc: subprocess.Popen, ready: threading.Event) -> None:
        from jobs.console import ENGINE

        for raw in iter(proc.stdout.readline, b""):
            line = raw.decode("utf-8", errors="replace").rstrip("\n")
            if line.startswith(HEAD_PREFIX) and not ready.is_set():
                self.address = line[len(HEAD_PREFIX):].strip()
                ready.set()
            else:
                ENGINE.write(line)
        ready.set()  # the head ended (or never started): waiters stop waiting

    def env(self, cfg: PipelineConfig) -> dict[str, str]:
        """The environment that makes a Ray-side run join the instance (started here if need be); empty
        when it should start its own (a cluster is named, or the instance did not come up)."""
        if not self.wanted(cfg):
            return {}
        self.start(cfg)
        self.ready.wait(HEAD_START_S)
        if self.address is None or self.proc is None or self.proc.poll() is not None:
            from jobs.console import ENGINE

            log.warning("the shared local Ray instance did not start (its output is in %s); each Ray-side run "
                        "starts its own", ENGINE.where())  # fmt: skip
            self.stop()
            return {}
        return {"RAY_ADDRESS": self.address, "FULCRUM_LOCAL_RAY": "1", **self._auth()}

    def stop(self, wait: bool = True) -> None:
        """Stop the instance: the head stops Ray's processes on SIGTERM (3 to 5 s); with ``wait`` its process
        group is killed if it has not ended after 30 s. At exit this process does not wait for it."""
        proc, self.proc, self.address = self.proc, None, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        if not wait:
            return
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


LOCAL_RAY = LocalRay()
atexit.register(LOCAL_RAY.stop, wait=False)


def ray_env(cfg: PipelineConfig) -> dict[str, str]:
    """Extra environment of a Ray-side run of ``cfg``: the shared local instance's, when runs start one."""
    return LOCAL_RAY.env(cfg) if jobs_api(cfg) is None else {}


def ray_side(cfg: PipelineConfig, run_id: str, module: str, args: list[str]) -> list[str]:
    """The command that runs a Ray-side entry point (``python -m MODULE ARGS``): in a local process that
    starts or joins Ray, or, when the config names a Ray Jobs API, as a ``ray job submit`` to that cluster
    (which waits for the job, streams its output and exits non-zero when it fails). Either way the stage
    records the run in the ledger and finds the outputs where the run report looks."""
    api = jobs_api(cfg)
    if api is None:
        return [sys.executable, "-m", module, *args, "--progress", *ray_flags(cfg)]
    ray = Path(sys.executable).with_name("ray")
    return [str(ray) if ray.is_file() else "ray", "job", "submit", "--address", api,
            "--submission-id", f"{run_id}-{module.replace('.', '-')}-{secrets.token_hex(4)}",
            "--", "python", "-m", module, *args, "--progress"]  # fmt: skip


def ray_flags(cfg: PipelineConfig) -> list[str]:
    """The config's ``ray`` section as flags of the Ray side's entry points (a local process's)."""
    flags = ["--address", cfg.ray.address] if cfg.ray.address and not jobs_api(cfg) else []
    return flags + (["--num-cpus", str(cfg.ray.num_cpus)] if cfg.ray.num_cpus else [])


def out_dir(cfg: PipelineConfig, run_id: str) -> str:
    return str(Path(cfg.reports_dir) / run_id / "train")


# A Ray Jobs API that is up before its job agent (a head that has just started, a loaded machine) refuses a
# submission with this message; nothing was submitted, so submitting again is safe.
AGENT_NOT_READY = "No available agent to submit job"
SUBMIT_WAITS_S = (2, 4, 8, 15, 15, 15, 15)  # 74 s in all, then the refusal stands


def run_foreground(cmd: list[str], label: str = "training", extra_env: dict[str, str] | None = None) -> int:
    """Run the Ray side in the foreground; it ends with this process (see ``training.runtime``).

    Its output goes to the run's engine log (``jobs.console``), except its progress events (``@fulcrum``
    lines: one per epoch, from ``--progress``), which feed the live progress, and its own warnings and
    errors, which reach the terminal. When it fails, its last lines are shown as well. A submission the
    Jobs API refused because its job agent is not up yet (``AGENT_NOT_READY``) is made again after a wait
    (``SUBMIT_WAITS_S``)."""
    from jobs.console import ENGINE

    for attempt, wait in enumerate((*SUBMIT_WAITS_S, None), 1):
        code, tail = _run_once(cmd, label, extra_env)
        if not code or wait is None or not any(AGENT_NOT_READY in line for line in tail):
            break
        log.info("%s: the Ray cluster's job agent is not up yet; submitting again in %d s (attempt %d of %d)",
                 label, wait, attempt + 1, len(SUBMIT_WAITS_S) + 1)  # fmt: skip
        time.sleep(wait)
    if code and not ENGINE.verbose:
        log.error("%s exited with code %d; its last lines (all of them in %s):\n%s", label, code, ENGINE.where(),
                  "\n".join(tail))  # fmt: skip
    if code and any(AGENT_NOT_READY in line for line in tail):
        log.error("%s: the Ray head's job agent never came up. Its HTTP port (52365 unless the head was started "
                  "with --dashboard-agent-listen-port) may be held by another Ray instance on that machine: stop "
                  "it, or start the head with another port; the head's dashboard_agent.log says why", label)  # fmt: skip
    return code


def _run_once(cmd: list[str], label: str, extra_env: dict[str, str] | None) -> tuple[int, list[str]]:
    """One run of ``cmd`` (see ``run_foreground``): its exit code and its last lines."""
    from jobs.console import ENGINE, PROGRESS

    sys.stdout.flush()
    env = {**os.environ, "FULCRUM_PARENT_PID": str(os.getpid()), "PYTHONUNBUFFERED": "1",
           "FULCRUM_ENGINE_LOG": "1", **(extra_env or {})}  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL)  # fmt: skip
    tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
    try:
        for raw in iter(proc.stdout.readline, b""):
            line = raw.decode("utf-8", errors="replace").rstrip("\n")
            if line.startswith(PROGRESS_PREFIX):
                try:
                    event = json.loads(line[len(PROGRESS_PREFIX):])
                except ValueError:
                    ENGINE.write(line)
                    continue
                run = event.pop("run", None)
                PROGRESS.event({**event, "label": f"{label}, {run}" if run else label})
                continue
            ENGINE.write(line)
            tail.append(line)
            own = OWN_WARNING.match(line)
            if own and not ENGINE.verbose:
                log.warning("%s", own.group("message"))
        code = proc.wait()
    finally:
        if proc.poll() is None:  # interrupted (Ctrl-C, an exception): stop training and its Ray instance
            proc.terminate()
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
    return code, list(tail)


def run(spark: SparkSession, cfg: PipelineConfig, run_id: str, version: int | None = None) -> StageReport:
    """Job: gold (pinned version) → cross-validation on Ray; the report carries mean ± std metrics."""
    lake = tables.Lake(cfg.lake_dir)
    with ledger.track(spark, lake, run_id, cfg.dataset, STAGE) as record:
        start = time.perf_counter()
        latest = tables.version(spark, lake.path("gold"))
        if latest is None:
            raise ConfigError(f"{cfg.dataset}: gold does not exist yet", fix="run `fulcrum oversample CONFIG` first")
        version = latest if version is None else version
        record.inputs.append(("gold", lake.path("gold"), version))
        settings = cfg.train
        if tables.properties(spark, lake.path("gold")).get("fulcrum.class_weight") == "balanced":
            settings = settings.tuned(class_weight="balanced")  # oversample.method auto chose a weighted loss
        summary = cross_validate(cfg, run_id, lake.path("gold"), version, out_dir(cfg, run_id), settings)
        draw(Path(out_dir(cfg, run_id)), summary)
        predictions = summary["predictions"]
        record.outputs.append(("predictions", predictions["path"], tables.version(spark, predictions["path"])))
        # rows in: the real rows (validation parts and test); rows out: out-of-fold predictions written
        real = sum(f["val_rows"] for f in summary["per_fold"]) + summary["final"]["test_rows"]
        report = StageReport(stage=STAGE, rows_in=real, rows_out=predictions["rows"])
        report.details.update({
            "gold_version": version, "folds": summary["folds"], "concurrent_folds": summary["concurrent_folds"],
            **{f"cv_{m}": f"{summary['mean'][m]:.3f}±{summary['std'][m]:.3f}" for m in ("accuracy", "macro_f1")},
            **({"test_accuracy": f"{summary['final']['test_accuracy']:.3f}"} if summary["final"]["test_rows"] else {}),
            "summary": summary,
            **({"search_best": "lr={lr:.2g} weight_decay={weight_decay:.2g} dropout={dropout:.2f} batch_size={batch_size}"
                .format(**summary["search"]["best"]["config"])} if summary.get("search") else {}),
            "report_dir": out_dir(cfg, run_id),
        })  # fmt: skip
        report.seconds = time.perf_counter() - start
        record.counts.update({"real_rows_scored": predictions["rows"], "test_rows": summary["final"]["test_rows"]})
    return report


def draw(folder: Path, summary: dict) -> None:
    """The training's figures beside its JSON: metrics per fold, learning curves, the out-of-fold confusion
    matrix, the reliability diagram, and the search's trials when a search ran."""
    plots.fold_metrics(summary, folder / "fold_metrics.png")
    plots.learning_curves(summary["per_fold"], folder / "learning_curves.png")
    plots.confusion(np.asarray(summary["confusion"]), summary["classes"], folder / "confusion.png")
    if summary.get("calibration"):
        plots.reliability(summary["calibration"], folder / "reliability.png")
    search = folder / "search" / "search.json"
    if search.is_file():
        plots.search(read_json(search), folder / "search" / "search.png")
