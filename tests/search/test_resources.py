"""The resource preflight: what a trial of each shape needs, and what is missing."""

from search.config import ResourcesConfig, Shape, ShapeOverride
from search.resources import cluster_shortfalls, shortfalls

LAPTOP = {"CPU": 2.0, "memory": 8e9}


def test_a_fitting_trial_has_no_shortfall():
    shape = Shape(strategy="mwms", workers=2, cpus_per_worker=0.99, gpus_per_worker=0)
    assert shortfalls(shape, LAPTOP, [LAPTOP]) == []


def test_more_workers_than_cpus():
    shape = Shape(strategy="mwms", workers=4, cpus_per_worker=1, gpus_per_worker=0)
    (problem,) = shortfalls(shape, LAPTOP, [LAPTOP])
    assert "needs 4.01 CPUs (4 workers x 1)" in problem and "only 2" in problem


def test_gpus_where_none_exist():
    shape = Shape(strategy="mwms", workers=2, cpus_per_worker=0.5, gpus_per_worker=1)
    (problem,) = shortfalls(shape, LAPTOP, [LAPTOP])
    assert "GPUs" in problem and "has none" in problem


def test_tpu_without_tpu_resource():
    shape = Shape(strategy="tpu", workers=1, cpus_per_worker=1, gpus_per_worker=0, tpu_chips_per_worker=4)
    (problem,) = shortfalls(shape, LAPTOP, [LAPTOP])
    assert "TPU chips" in problem and "has none" in problem


def test_a_worker_must_fit_on_one_node():
    nodes = [{"CPU": 4.0}, {"CPU": 4.0}]
    shape = Shape(strategy="mwms", workers=1, cpus_per_worker=6, gpus_per_worker=0)
    (problem,) = shortfalls(shape, {"CPU": 8.0}, nodes)
    assert "no single node" in problem


def test_each_backbone_is_checked_with_its_own_shape_and_named():
    resources = ResourcesConfig(backbones={"B7": ShapeOverride(strategy="mwms", workers=4)})
    (problem,) = cluster_shortfalls(resources, ("B0", "B1", "B7"), LAPTOP, [LAPTOP])
    assert problem.startswith("B7: a trial needs 4.01 CPUs")
    assert cluster_shortfalls(resources, ("B0", "B1"), LAPTOP, [LAPTOP]) == []


def test_the_run_refuses_a_shortfall_unless_told_to_wait_for_the_autoscaler(monkeypatch, caplog):
    """As `hpsearch run` checks a live cluster (search.experiment): a GPU trial on a Ray
    without GPUs is refused, naming what is missing; with wait_for_autoscaler it is
    only a warning, and the search goes on to wait for nodes."""
    import logging

    import pytest
    import ray

    from search.config import config_from_dict
    from search.experiment import Refused, _check_resources

    node = {"CPU": 2.0, "memory": 8e9}
    monkeypatch.setattr(ray, "nodes", lambda: [{"Alive": True, "Resources": node}])
    monkeypatch.setattr(ray, "cluster_resources", lambda: node)

    def config(wait: bool):
        return config_from_dict({"space": {"backbones": ["B0"]},
                                 "resources": {"gpus_per_worker": 1, "gpu_type": "nvidia-l4",
                                               "wait_for_autoscaler": wait}})

    with pytest.raises(Refused, match="B0: a trial needs 1 GPUs.*wait_for_autoscaler: true"):
        _check_resources(config(False))
    with caplog.at_level(logging.WARNING, logger="search.experiment"):
        _check_resources(config(True))
    assert any("a trial needs 1 GPUs" in r.getMessage() and "waiting for the autoscaler" in r.getMessage()
               for r in caplog.records)
