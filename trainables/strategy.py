"""Which tf.distribute strategy a worker trains under, and its numeric precision.

- ``single``: one process, TensorFlow's default strategy (laptops, the offline default).
- ``mwms``: MultiWorkerMirroredStrategy; the trial's Ray Train backend sets TF_CONFIG on
  every worker, and each worker reads its own shard.
- ``tpu``: TPUStrategy on the TPU host this worker holds (``TPUClusterResolver(tpu=
  "local")``), in bfloat16.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from trainables.errors import InputError


class TPUUnavailableError(InputError):
    """The tpu strategy was asked for on a host without a TPU."""


@dataclass(frozen=True)
class StrategyKind:
    """One way a trial trains.

    Attributes:
        name: ``resources.strategy`` in a config.
        distributed: the trial runs as a Ray Train job of its workers (Tune's trial
            process only waits); otherwise it trains in the trial's own process.
        one_worker: the strategy runs exactly one worker per trial.
        accelerator: "tpu" when a worker holds a TPU host, else None (CPUs, GPUs).
        make: builds the ``tf.distribute`` strategy inside a worker.
    """

    name: str
    distributed: bool
    one_worker: bool
    accelerator: str | None
    make: Callable[[], Any]


@dataclass(frozen=True)
class Precision:
    """Keras mixed-precision policy and XLA compilation of the training step."""

    policy: str = "float32"  # "float32", "mixed_float16" or "mixed_bfloat16"
    jit_compile: bool = False


def precision_for(
    kind: str, *, gpus: float, mixed_precision: bool | None = None, xla: bool | None = None
) -> Precision:
    """The precision rule: bfloat16 on TPUs; float16 on GPUs; float32 on CPUs, where
    reduced precision is slower, not faster. XLA on GPUs (TPUStrategy always compiles
    with XLA). ``None`` means on; ``False`` turns either off."""
    mixed_precision = mixed_precision is not False
    xla = xla is not False
    if get(kind).accelerator == "tpu":
        return Precision("mixed_bfloat16" if mixed_precision else "float32", jit_compile=False)
    if gpus > 0:
        return Precision("mixed_float16" if mixed_precision else "float32", jit_compile=xla)
    return Precision("float32", jit_compile=False)


def limit_threads(cpus: float) -> None:
    """Size TensorFlow's thread pools to the CPUs this worker holds.

    Ray workers see every core of their node; without a cap, two trials (or two workers
    of one trial) on a node each start pools the size of the machine and slow each other
    down. Call before TensorFlow runs its first op.
    """
    import tensorflow as tf

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


# The registry: config validation, the CLI's help and the search's choice of trial
# function read it. A tpu trial is one TPU host (TPUClusterResolver(tpu="local")):
# multi-host slices would need a slice-wide resolver.
STRATEGIES: dict[str, StrategyKind] = {
    kind.name: kind
    for kind in (
        StrategyKind("single", distributed=False, one_worker=True, accelerator=None, make=_default),
        StrategyKind("mwms", distributed=True, one_worker=False, accelerator=None, make=_mwms),
        StrategyKind("tpu", distributed=True, one_worker=True, accelerator="tpu", make=_tpu),
    )
}


def get(name: str) -> StrategyKind:
    """The strategy kind called ``name``.

    Raises:
        InputError: an unknown name; the message lists the known ones.
    """
    if name not in STRATEGIES:
        raise InputError(f"resources.strategy must be one of {', '.join(STRATEGIES)}, got {name!r}")
    return STRATEGIES[name]


def make_strategy(name: str) -> Any:
    """Build the strategy for this worker (call once, before any TensorFlow op).

    Raises:
        TPUUnavailableError: ``tpu`` on a host where TensorFlow finds no TPU.
    """
    return get(name).make()
