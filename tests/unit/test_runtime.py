import pytest

from training.runtime import local_logical_cpus, worker_cpus


def test_local_instance_has_more_logical_cpus_than_cores():
    assert local_logical_cpus(2) == 4
    assert local_logical_cpus(1) == 4
    assert local_logical_cpus(16) == 32


def test_workers_leave_a_quarter_of_the_cpus_for_ray_data():
    assert worker_cpus(1, 4) == 1.0
    assert worker_cpus(4, 4) == 0.75
    assert 2 * worker_cpus(2, 2) <= 2 * 0.75
    with pytest.raises(ValueError, match="do not fit"):
        worker_cpus(100, 4)


def test_ray_train_polls_its_workers_often_and_the_setting_reaches_the_controller(monkeypatch):
    from ray.train.v2._internal.constants import get_env_vars_to_propagate

    from training.runtime import HEALTH_CHECK_S, train_env

    monkeypatch.delenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", raising=False)
    assert train_env() == {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": str(HEALTH_CHECK_S)} and HEALTH_CHECK_S <= 0.5
    assert get_env_vars_to_propagate()["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] == str(HEALTH_CHECK_S)
    monkeypatch.setenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "1.5")  # a user's own value wins
    assert train_env() == {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "1.5"}
