"""The Ray runtime: join a cluster when one is named, else start a local instance.

On a machine with few cores the local instance advertises more logical CPUs than
physical ones, so Ray Data's read tasks can still be scheduled while trainer workers
hold their CPUs; without that, training on 2 cores deadlocks waiting for data.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)

MIN_LOCAL_CPUS = 4
DATA_CPU_SHARE = 0.25  # of the cluster's CPUs kept free for Ray Data tasks
HEALTH_CHECK_S = 0.25  # Ray Train's poll of its workers, and so the longest an epoch's report waits


def local_logical_cpus(physical: int | None = None) -> int:
    """Logical CPUs for a local instance: twice the cores, at least 4."""
    return max(MIN_LOCAL_CPUS, 2 * (physical or os.cpu_count() or 1))


def train_env() -> dict[str, str]:
    """Settings for Ray Train, put in this (the driver's) environment unless the user set them; returns them.

    Ray Train's controller takes a worker's report off its one-slot queue on every health check (2 s by
    default), so each epoch's report waited up to 2 s: the bulk of a small model's training time. Ray Train
    passes this variable from the driver to the controller and the workers, on a cluster too.
    """
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", str(HEALTH_CHECK_S))
    return {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"]}


def init_ray(address: str | None = None, num_cpus: int | None = None, **kwargs):
    """Connect to ``RAY_ADDRESS`` (or ``address``) if set, else start a sized local instance.

    The workers' own lines (every epoch's "Reporting training result", checkpoints, the controller's
    chatter) stay in Ray's session logs (``/tmp/ray/session_latest/logs``) instead of this process's
    output, unless ``FULCRUM_VERBOSE=1`` or ``FULCRUM_ENGINE_LOG=1`` (``fulcrum`` started this process and
    writes its output to the run's engine log); failures still reach the driver as exceptions, and
    fulcrum's own lines come from the driver."""
    import ray

    train_env()
    # Under `fulcrum` (FULCRUM_ENGINE_LOG) this process's output is the run's engine log: the workers' lines
    # belong there. Run directly, they stay in Ray's session logs unless FULCRUM_VERBOSE.
    kwargs.setdefault("log_to_driver", "1" in (os.environ.get("FULCRUM_VERBOSE"), os.environ.get("FULCRUM_ENGINE_LOG")))
    if ray.is_initialized():
        return ray.get_runtime_context()
    address = os.environ.get("RAY_ADDRESS") or address
    if address:
        if os.environ.get("FULCRUM_LOCAL_RAY"):  # the local instance `fulcrum` started (training.head)
            _local_settings()
        ctx = ray.init(address=address, **kwargs)
        log.info("joined Ray cluster at %s", address)
    else:
        _local_settings()
        cpus = num_cpus or local_logical_cpus()
        ctx = ray.init(num_cpus=cpus, include_dashboard=False, configure_logging=False, **kwargs)
        log.info("started local Ray with %d logical CPUs", cpus)
    return ctx


def _local_settings() -> None:
    """Ray Train settings for a one-node local instance, in this (the driver's) environment."""
    # Workers inherit this: on a few cores, trainers starting at once (concurrent folds or search trials,
    # each a process importing torch) can take more than Ray Train's 60 s to start a worker, and every
    # timeout restarts the worker group, adding to the load. A local instance waits longer.
    os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "300")
    # A one-node instance cannot lose a node to preemption: no watcher actor (one process per training).
    os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")


def worker_cpus(num_workers: int, cluster_cpus: float) -> float:
    """CPUs per trainer worker so that workers never take more than 75% of the cluster."""
    if num_workers < 1:
        raise ValueError("num_workers must be at least 1")
    budget = cluster_cpus * (1 - DATA_CPU_SHARE)
    share = min(1.0, budget / num_workers)
    if share < 0.1:
        raise ValueError(
            f"{num_workers} workers do not fit in {cluster_cpus:g} CPUs with {DATA_CPU_SHARE:.0%} kept for "
            "Ray Data; use fewer workers or a bigger cluster"
        )
    return round(share, 2)


def die_with_parent(parent: int) -> None:
    """Linux: get SIGTERM when the process that started this one dies, even by SIGKILL, so a killed
    ``fulcrum`` never leaves training (and its local Ray instance) running. Ray's node handles SIGTERM
    by stopping its processes."""
    import ctypes
    import signal
    import sys

    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        return
    if os.getppid() != parent:  # the parent died before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)


def shutdown() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()
