"""Live progress of a run, from the workers to whoever launched it (``--progress``).

The entry point (``python -m training``, ``python -m training.tradeoff``) starts a ``Board``: a Ray actor
named after the job, so every worker of the job finds it (Ray Train's workers, and Tune's search trials,
on any node of a cluster). After each epoch, the worker of rank 0 posts one event (the epoch, and each
slot's validation metric and early stop) without waiting for it. A thread of the entry point takes the
events and prints each as one line, ``@fulcrum {json}``, on stdout: ``fulcrum`` reads its child's
output (or ``ray job submit``'s, which streams the job's) and draws the bars from these lines.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
from collections.abc import Iterator

from training.contract import jsonio
from training.contract.settings import PROGRESS_PREFIX

log = logging.getLogger(__name__)
POLL_S = 0.5


def board_name() -> str:
    import ray

    return f"fulcrum-progress-{ray.get_runtime_context().get_job_id()}"


def _board_class():
    import ray

    @ray.remote(num_cpus=0, max_restarts=0)
    class Board:
        """The events posted since the last ``take``."""

        def __init__(self) -> None:
            self.events: list[dict] = []

        def put(self, event: dict) -> None:
            self.events.append(event)

        def take(self) -> list[dict]:
            events, self.events = self.events, []
            return events

    return Board


@contextlib.contextmanager
def relay(enabled: bool, stream=None) -> Iterator[None]:
    """While the block runs (Ray initialised), print the workers' events on ``stream`` (stdout)."""
    if not enabled:
        yield
        return
    import ray

    stream = stream or sys.stdout
    board = _board_class().options(name=board_name()).remote()
    stop = threading.Event()

    def pump() -> None:
        while True:
            finished = stop.wait(POLL_S)
            try:
                events = ray.get(board.take.remote())
            except Exception as exc:  # the run goes on without progress
                log.debug("progress board unavailable: %s", exc)
                return
            for event in events:
                stream.write(PROGRESS_PREFIX + jsonio.dumps(event) + "\n")
            stream.flush()
            if finished:
                return

    thread = threading.Thread(target=pump, name="progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=10)
        ray.kill(board)


class Poster:
    """A worker's handle on the board (nothing when the run was started without ``--progress``)."""

    def __init__(self) -> None:
        self._board = None
        try:
            import ray

            if ray.is_initialized():
                self._board = ray.get_actor(board_name())
        except Exception:  # no board: no progress
            self._board = None

    def post(self, event: dict) -> None:
        if self._board is not None:
            self._board.put.remote(event)  # not waited for
