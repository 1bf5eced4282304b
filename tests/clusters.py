"""Real local clusters for the `cluster` tests: started on 127.0.0.1, stopped even on failure.

``ray stop`` would kill every Ray process on the machine (the test session's own local
instance too), so a head is started with ``ray start --head --block`` in its own process
group and temp dir, and stopped by signalling that group, then sweeping any process whose
command line names the temp dir.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env_with_venv() -> dict[str, str]:
    """This interpreter's bin first on PATH, so `python` and `ray` in commands are this venv's."""
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}


def _wait_http(url: str, seconds: float, token: str) -> None:
    """Until ``url`` answers 200 with the bearer token (an HTTP error is an answer: raised at once)."""
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + seconds
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    while True:
        try:
            with urllib.request.urlopen(request, timeout=2):
                return
        except urllib.error.HTTPError:
            raise
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)


def _sweep(marker: str) -> None:
    import psutil

    for p in psutil.process_iter(["cmdline"]):
        try:
            if any(marker in part for part in p.info["cmdline"] or []):
                p.kill()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass


@dataclass
class RayHead:
    gcs: str  # 127.0.0.1:port, for `ray.init(address=...)` and RAY_ADDRESS
    dashboard: str  # http://127.0.0.1:port, for `ray job submit --address`
    log: Path
    env: dict[str, str]  # the environment for clients: the venv on PATH and the cluster's auth token


@contextmanager
def ray_head(num_cpus: int = 4, timeout: float = 120) -> Iterator[RayHead]:
    """``ray start --head`` on 127.0.0.1 with the dashboard (the Jobs API) and token authentication
    (Ray's default for local clusters): clients use ``head.env``. Stopped on exit."""
    import secrets

    temp = Path(tempfile.mkdtemp(prefix="fr-", dir="/tmp"))  # Ray's socket paths must stay short
    env = {**env_with_venv(), "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    # The job agent's HTTP port too: its default, 52365, may be held by another Ray instance on this machine (a
    # fulcrum run's local head), and then the Jobs API refuses every job ("No available agent to submit job").
    port, dash, agent = free_port(), free_port(), free_port()
    log = temp / "head.log"
    cmd = [str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={port}",
           f"--num-cpus={num_cpus}", "--num-gpus=0", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
           f"--dashboard-port={dash}", f"--dashboard-agent-listen-port={agent}", f"--temp-dir={temp}",
           "--disable-usage-stats"]  # fmt: skip
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        _wait_http(f"http://127.0.0.1:{dash}/api/version", timeout, env["RAY_AUTH_TOKEN"])
        yield RayHead(gcs=f"127.0.0.1:{port}", dashboard=f"http://127.0.0.1:{dash}", log=log, env=env)
    finally:
        stop_group(proc)
        _sweep(str(temp))
        shutil.rmtree(temp, ignore_errors=True)


@dataclass
class SparkStandalone:
    master: str  # spark://127.0.0.1:port
    ui: str  # the master's web UI (its /json lists workers and applications)
    logs: Path
    env: dict[str, str]


def _spark_json(ui: str) -> dict:
    import json
    import urllib.request

    with urllib.request.urlopen(f"{ui}/json/", timeout=5) as r:
        return json.load(r)


@contextmanager
def spark_standalone(cores: int = 2, memory: str = "3g", timeout: float = 120) -> Iterator[SparkStandalone]:
    """A Spark standalone master and one worker from the installed pyspark (``spark-class``), on
    127.0.0.1, each in its own process group; stopped on exit, even on failure."""
    import pyspark

    home = Path(pyspark.__file__).parent
    temp = Path(tempfile.mkdtemp(prefix="fs-", dir="/tmp"))
    env = {**env_with_venv(), "SPARK_HOME": str(home), "SPARK_LOCAL_IP": "127.0.0.1",
           "SPARK_LOG_DIR": str(temp), "SPARK_WORKER_DIR": str(temp / "work"), "PYSPARK_PYTHON": sys.executable}  # fmt: skip
    port, ui_port, worker_ui = free_port(), free_port(), free_port()
    cls = str(home / "bin" / "spark-class")
    commands = {
        "master": [cls, "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1", "--port", str(port),
                   "--webui-port", str(ui_port)],
        "worker": [cls, "org.apache.spark.deploy.worker.Worker", f"spark://127.0.0.1:{port}", "--host", "127.0.0.1",
                   "--cores", str(cores), "--memory", memory, "--webui-port", str(worker_ui),
                   "--work-dir", str(temp / "work")],
    }  # fmt: skip
    procs = []
    ui = f"http://127.0.0.1:{ui_port}"
    try:
        for name, cmd in commands.items():
            with open(temp / f"{name}.log", "w") as out:
                procs.append(subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env,
                                              start_new_session=True))  # fmt: skip
            deadline = time.monotonic() + timeout
            while True:
                try:
                    state = _spark_json(ui)
                    if name == "master" or state.get("aliveworkers", 0) >= 1:
                        break
                except OSError:
                    pass
                if time.monotonic() > deadline or procs[-1].poll() is not None:
                    raise RuntimeError(f"spark {name} did not start: {(temp / f'{name}.log').read_text()[-2000:]}")
                time.sleep(1)
        yield SparkStandalone(master=f"spark://127.0.0.1:{port}", ui=ui, logs=temp, env=env)
    finally:
        for proc in reversed(procs):
            stop_group(proc)
        _sweep(str(temp))
        shutil.rmtree(temp, ignore_errors=True)


def stop_group(proc: subprocess.Popen, grace: float = 30) -> None:
    """SIGTERM a process group started with ``start_new_session``; SIGKILL what is left after ``grace`` s."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=grace)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def dag_commands(config: str, run_id: str, variables: dict[str, str]) -> dict[str, str]:
    """The Airflow DAG's four bash commands, rendered as Airflow would: ``{{ var.value.X }}`` from
    ``variables``, the run id in place of ``airflow-{{ ts_nodash }}`` (the DAG file is parsed, not imported,
    so no Airflow is needed)."""
    import ast
    import re

    source = (Path(__file__).resolve().parents[1] / "infra" / "airflow" / "fulcrum_dag.py").read_text()
    names = {"CONFIG": config, "RUN_ID": run_id}
    out = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            name = node.targets[0].id
            if name in ("SPARK_STAGES", "TRAIN", "AUDIT", "REPORT"):
                text = eval(compile(ast.Expression(node.value), "dag", "eval"), {"__builtins__": {}}, names)  # noqa: S307
                out[name] = re.sub(r"\{\{\s*var\.value\.(\w+)\s*\}\}", lambda m: variables[m.group(1)], text)
    return out
