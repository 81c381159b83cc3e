"""Strategy choice, precision rule, and the resource preflight: one test per kind."""

import subprocess
import sys

import pytest

from search.resources import TrialShape, shortfalls
from trainables.errors import InputError
from trainables.strategy import STRATEGIES, precision_for


@pytest.fixture(params=list(STRATEGIES))
def kind(request):
    return request.param


def test_precision_rule_for_each_kind(kind):
    cpu = precision_for(kind, gpus=0, mixed_precision=True, xla=True)
    gpu = precision_for(kind, gpus=1, mixed_precision=True, xla=True)
    if kind == "tpu":
        assert cpu.policy == gpu.policy == "mixed_bfloat16"
    else:
        assert cpu.policy == "float32" and not cpu.jit_compile
        assert gpu.policy == "mixed_float16" and gpu.jit_compile
    assert precision_for(kind, gpus=1, mixed_precision=False, xla=False).policy == "float32"


def test_unknown_kind():
    with pytest.raises(InputError, match="strategy must be one of"):
        precision_for("horovod", gpus=0, mixed_precision=True, xla=True)


def test_strategy_for_each_kind_in_a_fresh_process(kind):
    """single and mwms build here (mwms with one local worker and no TF_CONFIG); tpu
    fails with a message that names the missing TPU, not a stack trace or a hang."""
    code = (
        "import sys; from trainables.strategy import make_strategy, TPUUnavailableError\n"
        "try:\n"
        "    import tensorflow as tf\n"
        f"    s = make_strategy({kind!r}); mw = isinstance(s, tf.distribute.MultiWorkerMirroredStrategy)\n"
        "    print('replicas', s.num_replicas_in_sync, 'MultiWorkerMirroredStrategy' if mw else type(s).__name__)\n"
        "except TPUUnavailableError as e:\n"
        "    print('ERROR', e); sys.exit(3)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180)
    if kind == "tpu":
        assert done.returncode == 3, done.stderr[-2000:]
        assert "has no TPU" in done.stdout and "tpu-values.yaml" in done.stdout
    else:
        assert done.returncode == 0, done.stderr[-2000:]
        expected = {"single": "_DefaultDistributionStrategy", "mwms": "MultiWorkerMirroredStrategy"}[kind]
        assert f"replicas 1 {expected}" in done.stdout


LAPTOP = {"CPU": 2.0, "memory": 8e9}


def test_a_fitting_trial_has_no_shortfall():
    shape = TrialShape("mwms", workers=2, cpus_per_worker=0.99, gpus_per_worker=0, tpu_chips_per_worker=0)
    assert shortfalls(shape, LAPTOP, [LAPTOP]) == []


def test_more_workers_than_cpus():
    shape = TrialShape("mwms", workers=4, cpus_per_worker=1, gpus_per_worker=0, tpu_chips_per_worker=0)
    (problem,) = shortfalls(shape, LAPTOP, [LAPTOP])
    assert "needs 4.01 CPUs (4 workers x 1)" in problem and "only 2" in problem


def test_gpus_where_none_exist():
    shape = TrialShape("mwms", workers=2, cpus_per_worker=0.5, gpus_per_worker=1, tpu_chips_per_worker=0)
    (problem,) = shortfalls(shape, LAPTOP, [LAPTOP])
    assert "GPUs" in problem and "has none" in problem


def test_tpu_without_tpu_resource():
    shape = TrialShape("tpu", workers=1, cpus_per_worker=1, gpus_per_worker=0, tpu_chips_per_worker=4)
    (problem,) = shortfalls(shape, LAPTOP, [LAPTOP])
    assert "TPU chips" in problem and "has none" in problem


def test_a_worker_must_fit_on_one_node():
    nodes = [{"CPU": 4.0}, {"CPU": 4.0}]
    shape = TrialShape("mwms", workers=1, cpus_per_worker=6, gpus_per_worker=0, tpu_chips_per_worker=0)
    (problem,) = shortfalls(shape, {"CPU": 8.0}, nodes)
    assert "no single node" in problem
