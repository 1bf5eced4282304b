"""What the terminal shows: fulcrum's own lines, tables and live progress. The engines' output goes to a file.

The engine log (``<reports>/<run_id>/engine.log``) receives everything Spark's JVM writes (log4j, Ivy's
resolution, the Python workers' stderr) and everything the Ray side's process writes (Ray's driver lines,
the workers' lines, Tune's, the training's own log). ``fulcrum --verbose`` echoes it to the terminal too.

Progress (``PROGRESS``) has four modes:

- ``bars`` (stderr is a terminal): a spinner per running stage and, while a model trains, one bar per slot
  (fold, final model, grid cell) with its epoch, validation metric and early stop;
- ``lines`` (not a terminal: a log file, CI, a scheduler): one line per training epoch, nothing else;
- ``json`` (``fulcrum --log-format json``): each epoch as one JSON object on stderr, beside the stage events;
- ``none``: nothing (the Python API's default: its callers have the stage events and the logs).
"""

from __future__ import annotations

import collections
import contextlib
import os
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from training.contract import json_text

PROGRESS_MODES = ("bars", "lines", "json", "none")
ENGINE_LOG = "engine.log"
PENDING_LINES = 5000  # written before any run's log was named (the JVM's start): kept for the first one


class EngineLog:
    """One sink for the engines' lines, switched from run to run (a Spark session outlives a run)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._file = None
        self.path: Path | None = None
        self._pending: collections.deque[str] = collections.deque(maxlen=PENDING_LINES)
        self._echo = None
        self.recent: collections.deque[str] = collections.deque(maxlen=40)  # for an error message

    @property
    def verbose(self) -> bool:
        return self._echo is not None

    def set_verbose(self, on: bool = True) -> None:
        """Echo the engines' lines to this process's stderr as it is now (a copy of the descriptor: the
        JVM's start must not feed its own lines back into the pipe)."""
        if on and self._echo is None:
            self._echo = os.fdopen(os.dup(2), "w", encoding="utf-8", errors="replace")
        elif not on and self._echo is not None:
            self._echo.close()
            self._echo = None

    def use(self, path: str | Path) -> Path:
        """Write from now on to ``path`` (appended: a re-run of the same run id adds to it)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock:
            if self.path == path and self._file is not None:
                return path
            if self._file is not None:
                self._file.close()
            self._file = open(path, "a", encoding="utf-8", errors="replace")  # noqa: SIM115 - lives across calls
            self.path = path
            while self._pending:
                self._file.write(self._pending.popleft())
            self._file.flush()
        return path

    def write(self, line: str) -> None:
        if not line.endswith("\n"):
            line += "\n"
        with self._lock:
            self.recent.append(line)
            if self._file is not None:
                self._file.write(line)
                self._file.flush()
            else:
                self._pending.append(line)
        echo = self._echo
        if echo is not None:
            echo.write(line)
            echo.flush()

    def where(self) -> str:
        """Where the lines are, for a message: the file, or that they were not written to one yet."""
        return str(self.path) if self.path else "the engine log (no run's log was opened yet)"

    def pump(self, fd: int, name: str) -> threading.Thread:
        """Copy the lines arriving on ``fd`` (a pipe's read end) into the log, in a daemon thread."""

        def copy() -> None:
            with os.fdopen(fd, "rb", buffering=0) as pipe:
                for raw in iter(pipe.readline, b""):
                    self.write(raw.decode("utf-8", errors="replace"))

        thread = threading.Thread(target=copy, name=name, daemon=True)
        thread.start()
        return thread


ENGINE = EngineLog()


def run_log(reports_dir: str | Path, run_id: str) -> Path:
    """Point the engine log at this run's ``engine.log``; returns its path."""
    return ENGINE.use(Path(reports_dir) / run_id / ENGINE_LOG)


@contextlib.contextmanager
def engine_output(name: str) -> Iterator[None]:
    """Processes started inside this block (Spark's JVM) write their stdout and stderr to the engine log:
    they inherit a pipe in place of this process's file descriptors 1 and 2, which are restored at the end.
    With ``--verbose`` the lines are echoed to the terminal as well."""
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    read, write = os.pipe()
    ENGINE.pump(read, name)  # reading from the start: a full pipe would stop the JVM before it is up
    saved = os.dup(1), os.dup(2)
    try:
        os.dup2(write, 1)
        os.dup2(write, 2)
        yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, write):
            os.close(fd)


class Progress:
    """Live progress, in the mode the CLI chose (see the module's docstring)."""

    def __init__(self) -> None:
        self.mode = "none"
        self.console = None
        self._live = None
        self._tasks: dict[str, int] = {}
        self._stage = None

    def configure(self, mode: str, console=None) -> None:
        if mode not in PROGRESS_MODES:
            raise ValueError(f"progress mode {mode!r}: use one of {', '.join(PROGRESS_MODES)}")
        self.mode, self.console = mode, console

    def _print(self, text: str) -> None:
        if self.console is not None:
            self.console.print(text, markup=False, highlight=False, soft_wrap=True)
        else:
            print(text, file=sys.stderr, flush=True)

    @contextlib.contextmanager
    def stage(self, dataset: str, name: str) -> Iterator[None]:
        """A spinner while ``name`` runs (bars mode), under which training adds its slots' bars."""
        if self.mode != "bars":
            yield
            return
        from rich.progress import BarColumn, SpinnerColumn, TextColumn, TimeElapsedColumn
        from rich.progress import Progress as Bars

        bars = Bars(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(bar_width=24),
                    TextColumn("{task.fields[state]}"), TimeElapsedColumn(), console=self.console,
                    transient=True, refresh_per_second=4)  # fmt: skip
        self._live, self._tasks = bars, {}
        self._stage = bars.add_task(f"{dataset}: {name}", total=None, state="")
        bars.start()
        try:
            yield
        finally:
            bars.stop()
            self._live = None

    def event(self, event: dict) -> None:
        """One progress event from the Ray side (``training.progress``): an epoch of a set of slots."""
        if self.mode == "json":
            self._print(json_text({"event": "progress", "time": round(time.time(), 3), **event}))
        elif self.mode == "lines":
            self._print(describe_epoch(event))
        elif self.mode == "bars" and self._live is not None:
            for slot in event.get("slots", []):
                key = f"{event.get('label')}/{slot['name']}"
                state = slot_state(slot, event.get("metric", "metric"))
                if key not in self._tasks:
                    self._tasks[key] = self._live.add_task(f"  {event.get('label')} {slot['name']}",
                                                           total=event["epochs"], state=state)  # fmt: skip
                done = event["epochs"] if slot.get("stopped") else event["epoch"]
                self._live.update(self._tasks[key], completed=done, total=event["epochs"], state=state)


def slot_state(slot: dict, metric: str) -> str:
    """A slot's state after an epoch, in a few words."""
    value = slot.get("value")
    best = slot.get("best")
    text = f"val {metric} {value:.3f}" if isinstance(value, float) else ""
    if isinstance(best, float) and best != value:
        text += f" (best epoch: {best:.3f})"  # the epoch early stopping keeps (lowest validation loss)
    return text + (", stopped early" if slot.get("stopped") else "")


def describe_epoch(event: dict) -> str:
    """An epoch of a set of slots as one line (the progress of a run whose output is not a terminal)."""
    slots = event.get("slots", [])
    metric = event.get("metric", "metric")
    stopped = [s["name"] for s in slots if s.get("stopped")]
    running = [s for s in slots if not s.get("stopped")]
    values = [s["value"] for s in running if isinstance(s.get("value"), float)]
    text = f"{event.get('label', 'training')}: epoch {event['epoch']}/{event['epochs']}, {len(running)} of {len(slots)} slot(s) training"
    if values:
        text += f", val {metric} {min(values):.3f}–{max(values):.3f}" if len(values) > 1 else f", val {metric} {values[0]:.3f}"
    if stopped:
        text += f"; stopped early: {', '.join(stopped)}"
    return text


PROGRESS = Progress()
