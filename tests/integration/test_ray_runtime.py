"""The local Ray runtime leaves room for Ray Data beside trainer-sized actors."""

import pytest

pytestmark = pytest.mark.ray


def test_ray_data_runs_while_workers_hold_their_cpus(ray_local):
    import ray

    from training.runtime import worker_cpus

    total = ray.cluster_resources()["CPU"]
    assert total >= 4
    share = worker_cpus(2, total)

    @ray.remote(num_cpus=share)
    class Holder:
        def ping(self):
            return 1

    holders = [Holder.remote() for _ in range(2)]
    assert ray.get([h.ping.remote() for h in holders], timeout=60) == [1, 1]
    # With both "workers" alive, a Ray Data pipeline must still get CPUs for its tasks.
    ds = ray.data.range(1000, override_num_blocks=4).map_batches(lambda b: {"id": b["id"] * 2})
    assert ds.sum("id") == 2 * sum(range(1000))
    for h in holders:
        ray.kill(h)


def test_a_local_instance_gives_ray_train_its_one_node_defaults_in_every_worker(ray_local):
    import ray

    @ray.remote(num_cpus=0.1)
    def env(name):
        import os

        return os.environ.get(name)

    # Its processes (Ray Train's controller among them) inherit them: no preemption watcher, 300 s to start.
    assert ray.get(env.remote("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"), timeout=60) == "0"
    assert ray.get(env.remote("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"), timeout=60) == "300"


def test_the_ray_side_runs_of_one_command_join_one_local_instance_that_stops_with_it(sample_dir, monkeypatch):
    """``jobs.launch.LocalRay``: one ``python -m training.head`` per command; each Ray-side run joins it through
    the environment it gives (address, token); stopping it leaves none of its processes (Ray's included)."""
    import os
    import subprocess
    import sys

    import psutil

    from jobs import launch
    from jobs.config import load_config

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("FULCRUM_SHARED_RAY", raising=False)
    cfg = load_config(sample_dir / "cancer" / "cancer.yaml")
    local = launch.LocalRay()
    family: list[psutil.Process] = []
    try:
        env = local.env(cfg)
        assert env["FULCRUM_LOCAL_RAY"] == "1" and len(env["RAY_AUTH_TOKEN"]) == 64 and env["RAY_ADDRESS"]
        head = psutil.Process(local.proc.pid)
        family = [head, *head.children(recursive=True)]
        assert any("raylet" in " ".join(p.cmdline()) for p in family)
        joined = ("import ray\nfrom training import runtime\nruntime.init_ray()\n"
                  "print(ray.get_runtime_context().gcs_address, ray.cluster_resources()['CPU'])\nruntime.shutdown()")  # fmt: skip
        for _ in range(2):  # two runs, one instance: each leaves it running for the next
            out = subprocess.run([sys.executable, "-c", joined], env={**os.environ, **env}, capture_output=True,
                                 text=True, timeout=180)  # fmt: skip
            assert out.returncode == 0, out.stderr[-2000:]
            address, cpus = out.stdout.split()[-2:]
            assert address == env["RAY_ADDRESS"] and float(cpus) >= 4  # sized as a run's own instance
        assert local.env(cfg) == env and psutil.Process(local.proc.pid) == head
    finally:
        local.stop()
    _, alive = psutil.wait_procs(family, timeout=60)
    assert not alive, [p.cmdline()[:2] for p in alive]


@pytest.mark.parametrize("setting", ["ray.address", "RAY_ADDRESS", "FULCRUM_SHARED_RAY=0", "jobs api"])
def test_no_shared_local_instance_when_a_cluster_is_named_or_it_is_turned_off(sample_dir, monkeypatch, setting):
    from jobs import launch
    from jobs.config import load_config

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("FULCRUM_SHARED_RAY", raising=False)
    overrides = {}
    if setting == "ray.address":
        overrides = {"ray.address": "10.0.0.1:6379"}
    elif setting == "jobs api":
        overrides = {"ray.address": "http://10.0.0.1:8265"}
    elif setting == "RAY_ADDRESS":
        monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    else:
        monkeypatch.setenv("FULCRUM_SHARED_RAY", "0")
    cfg = load_config(sample_dir / "cancer" / "cancer.yaml", overrides)
    local = launch.LocalRay()
    assert not local.wanted(cfg) and local.env(cfg) == {} and local.proc is None
    assert launch.LocalRay.wanted(load_config(sample_dir / "cancer" / "cancer.yaml")) == (setting not in ("RAY_ADDRESS", "FULCRUM_SHARED_RAY=0"))
