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
