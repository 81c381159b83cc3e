"""The strategy registry, entry by entry: what each asks of the cluster, how many replicas
share a batch, the device its memory is planned on, its precision, and what it refuses."""

from __future__ import annotations

import pytest

from search import strategies
from search.shape import Shape
from trainables.errors import InputError
from trainables.strategy import CONSTRUCTORS

GPU = {"gpus_per_worker": 1.0, "gpu_type": "nvidia-l4"}


@pytest.fixture(params=list(strategies.STRATEGIES))
def strategy(request) -> strategies.Strategy:
    return strategies.get(request.param)


def shape_for(strategy: strategies.Strategy, **fields) -> Shape:
    workers = 1 if strategy.one_worker else 2
    return Shape(strategy=strategy.name, workers=workers, **fields)


def test_every_strategy_has_a_constructor_and_an_unknown_one_is_bad_input():
    assert set(strategies.STRATEGIES) == set(CONSTRUCTORS)
    with pytest.raises(InputError, match="resources.strategy must be one of single, mwms, tpu, got 'horovod'"):
        strategies.get("horovod")


def test_ray_train_asks_each_worker_for_what_the_strategy_declares(strategy):
    """The worker group Ray Train is given is the strategy's bundle, once per worker (the
    autoscaling proof in tests/cluster reads the same bundle)."""
    if not strategy.distributed:
        return  # a single trial's process holds its bundle itself (search.resources)
    shape = shape_for(strategy)
    config = strategy.scaling_config(shape)
    assert config.num_workers == shape.workers
    assert dict(config.resources_per_worker) == strategy.worker_bundle(shape)


def test_what_a_worker_holds_and_how_many_replicas_share_the_batch(strategy):
    shape = shape_for(strategy)
    bundle = strategy.worker_bundle(shape)
    if strategy.name == "tpu":
        assert bundle == {"CPU": 1.0, "TPU": 4.0} and strategy.replicas(shape) == 4
        assert strategy.device(shape)[0] == "TPU-V6E chip" and strategy.worker_label(shape) == "4 TPU-V6E chips"
    else:
        assert bundle == {"CPU": 1.0} and strategy.replicas(shape) == shape.workers
        assert strategy.device(shape)[0] == "CPU (this machine)"
        gpu = shape_for(strategy, **GPU)
        assert strategy.worker_bundle(gpu) == {"CPU": 1.0, "GPU": 1.0}
        assert strategy.device(gpu) == ("nvidia-l4", 24 * 1024.0)


def test_precision_rule_for_each_strategy(strategy):
    cpu = strategy.precision(shape_for(strategy), mixed_precision=None, xla=None)
    gpu = strategy.precision(shape_for(strategy, **GPU), mixed_precision=None, xla=None)
    if strategy.name == "tpu":
        assert cpu.policy == "mixed_bfloat16" and not cpu.jit_compile  # TPUStrategy compiles itself
    else:
        assert cpu.policy == "float32" and not cpu.jit_compile  # reduced precision is slower on CPUs
        assert gpu.policy == "mixed_float16" and gpu.jit_compile
    off = strategy.precision(shape_for(strategy, **GPU), mixed_precision=False, xla=False)
    assert off.policy == "float32" and not off.jit_compile


def test_each_strategy_names_what_its_shape_lacks(strategy):
    if strategy.name == "tpu":
        bad = shape_for(strategy, gpus_per_worker=1.0, tpu_accelerator="TPU-V9", tpu_topology="4x4")
        assert [name for name, _ in strategy.problems(bad, xla=None)] == \
            ["gpus_per_worker", "tpu_accelerator", "tpu_topology"]
        assert strategy.problems(shape_for(strategy), xla=True) == []
    else:
        assert [name for name, _ in strategy.problems(shape_for(strategy, gpus_per_worker=1.0), xla=None)] == \
            ["gpu_type"]
        assert [name for name, _ in strategy.problems(shape_for(strategy), xla=True)] == ["xla"]
        assert strategy.problems(shape_for(strategy, **GPU), xla=True) == []
