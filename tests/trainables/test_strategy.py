"""Each strategy's tf.distribute constructor, in a fresh process per strategy (what each
strategy asks of the cluster, and its precision, are tested in
tests/search/test_strategies.py)."""

import subprocess
import sys

import pytest

from trainables.errors import InputError
from trainables.strategy import make_strategy


def test_an_unknown_strategy_is_bad_input_naming_the_known_ones():
    with pytest.raises(InputError, match="resources.strategy must be one of single, mwms, tpu, got 'horovod'"):
        make_strategy("horovod")


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
