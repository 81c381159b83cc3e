"""Inside a worker: the tf.distribute strategy it trains under, its numeric precision
and its thread pools.

What each strategy asks of the cluster, and which precision it trains in, is declared
in ``search.strategies``; this module holds only what runs in the worker.

- ``single``: one process, TensorFlow's default strategy (laptops, the offline default).
- ``mwms``: MultiWorkerMirroredStrategy; the trial's Ray Train backend sets TF_CONFIG on
  every worker, and each worker reads its own shard.
- ``tpu``: TPUStrategy on the TPU host this worker holds (``TPUClusterResolver(tpu=
  "local")``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from trainables.errors import InputError


class TPUUnavailableError(InputError):
    """The tpu strategy was asked for on a host without a TPU."""


@dataclass(frozen=True)
class Precision:
    """Keras mixed-precision policy and XLA compilation of the training step."""

    policy: str = "float32"  # "float32", "mixed_float16" or "mixed_bfloat16"
    jit_compile: bool = False


def limit_threads(cpus: float) -> None:
    """Size TensorFlow's thread pools to the CPUs this worker holds.

    Ray workers see every core of their node; without a cap, two trials (or two workers
    of one trial) on a node each start pools the size of the machine and slow each other
    down. Call before TensorFlow runs its first op. It is the first import of TensorFlow
    in a trial's process, made without TensorFlow's start-up notices.
    """
    from trainables.notices import import_tensorflow

    tf = import_tensorflow()

    threads = max(1, round(cpus))  # 1.99 CPUs (a worker beside a 0.01 driver) is 2 threads
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(max(2, threads))
    except RuntimeError:  # TensorFlow already initialised in this process
        pass


def _default() -> Any:
    import tensorflow as tf

    return tf.distribute.get_strategy()


def _mwms() -> Any:
    import tensorflow as tf

    # The trial's Ray Train backend sets TF_CONFIG on every worker before this runs.
    return tf.distribute.MultiWorkerMirroredStrategy()


def _tpu() -> Any:
    import tensorflow as tf

    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu="local")
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (tf.errors.NotFoundError, ValueError, RuntimeError) as exc:
        raise TPUUnavailableError(
            "resources.strategy is tpu, but this host has no TPU "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}). "
            "Run on a TPU worker group (helm/hpsearch/ci/tpu-values.yaml) with the TPU image"
        ) from None
    return tf.distribute.TPUStrategy(resolver)


# Each strategy's constructor, by its name in ``resources.strategy`` (search.strategies
# declares the rest of what each one is).
CONSTRUCTORS: dict[str, Callable[[], Any]] = {"single": _default, "mwms": _mwms, "tpu": _tpu}


def make_strategy(name: str) -> Any:
    """Build the strategy for this worker (call once, before any TensorFlow op).

    Raises:
        InputError: an unknown name.
        TPUUnavailableError: ``tpu`` on a host where TensorFlow finds no TPU.
    """
    if name not in CONSTRUCTORS:
        raise InputError(f"resources.strategy must be one of {', '.join(CONSTRUCTORS)}, got {name!r}")
    return CONSTRUCTORS[name]()
