"""Strategy choice and precision rule: one test per registered strategy kind."""

import subprocess
import sys

import pytest

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


def test_strategy_for_each_kind_in_a_fresh_process():
    """single and mwms build (mwms with one local worker and no TF_CONFIG); tpu fails with
    a message that names the missing TPU, not a stack trace or a hang. Each in a fresh
    process of its own (a TensorFlow no other strategy has touched), the three at once."""
    def code(kind):
        return (
            "import sys; from trainables.strategy import make_strategy, TPUUnavailableError\n"
            "try:\n"
            "    import tensorflow as tf\n"
            f"    s = make_strategy({kind!r}); mw = isinstance(s, tf.distribute.MultiWorkerMirroredStrategy)\n"
            "    print('replicas', s.num_replicas_in_sync, 'MultiWorkerMirroredStrategy' if mw else type(s).__name__)\n"
            "except TPUUnavailableError as e:\n"
            "    print('ERROR', e); sys.exit(3)\n"
        )

    kinds = ("single", "mwms", "tpu")
    processes = {kind: subprocess.Popen([sys.executable, "-c", code(kind)], stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True) for kind in kinds}
    for kind, process in processes.items():
        stdout, stderr = process.communicate(timeout=180)
        if kind == "tpu":
            assert process.returncode == 3, stderr[-2000:]
            assert "has no TPU" in stdout and "tpu-values.yaml" in stdout
        else:
            assert process.returncode == 0, stderr[-2000:]
            expected = {"single": "_DefaultDistributionStrategy", "mwms": "MultiWorkerMirroredStrategy"}[kind]
            assert f"replicas 1 {expected}" in stdout
