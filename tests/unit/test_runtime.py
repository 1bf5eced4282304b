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
