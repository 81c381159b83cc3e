"""How a trial trains, declared once per strategy: what its workers hold, how many
replicas share its batch, the device a replica's memory is planned on, its precision,
Ray Train's worker group, and which shape fields it needs.

- ``single``: the trial trains in its own process (laptops, the offline default).
- ``mwms``: a Ray Train job of N workers under MultiWorkerMirroredStrategy, each on its
  own shard.
- ``tpu``: a Ray Train job of one worker holding one TPU host (a whole single-host
  slice), under TPUStrategy, in bfloat16.

The rest of the search asks the registry entry, never "is this a TPU". A new strategy
is an entry here and its ``tf.distribute`` constructor in :mod:`trainables.strategy`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from search.shape import Shape
from trainables import memory
from trainables import strategy as constructors
from trainables.errors import InputError
from trainables.strategy import Precision

# Ray's names for TPU generations (the ``accelerator_type`` of a TPU node).
TPU_ACCELERATORS = ("TPU-V4", "TPU-V5P", "TPU-V5LITEPOD", "TPU-V6E")


@dataclass(frozen=True)
class Strategy:
    """A strategy whose workers hold CPUs and, when configured, GPUs.

    Attributes:
        name: ``resources.strategy`` in a config (and its constructor in
            :data:`trainables.strategy.CONSTRUCTORS`).
        distributed: the trial runs as a Ray Train job of its workers (Tune's trial
            process only waits); otherwise it trains in the trial's own process.
        one_worker: exactly one worker per trial.
    """

    name: str
    distributed: bool
    one_worker: bool

    def worker_bundle(self, shape: Shape) -> dict[str, float]:
        """What one worker holds (Ray resource names)."""
        bundle = {"CPU": shape.cpus_per_worker}
        if shape.gpus_per_worker:
            bundle["GPU"] = shape.gpus_per_worker
        return bundle

    def replicas(self, shape: Shape) -> int:
        """How many replicas share a trial's global batch: one per worker."""
        return shape.workers

    def device(self, shape: Shape) -> tuple[str, float]:
        """The device one replica runs on, and its memory in MiB. A CPU worker without
        ``accelerator_memory_gib`` is planned with the memory of the machine that plans
        (the driver's: ``hpsearch plan`` prints that plan, and trials receive it)."""
        if shape.gpus_per_worker:  # validation ensured a known type or an explicit size
            gib = shape.accelerator_memory_gib or memory.ACCELERATOR_MEMORY_GIB[shape.gpu_type]
            return shape.gpu_type or "GPU", memory.gib_to_mib(gib)
        if shape.accelerator_memory_gib:
            return "CPU", memory.gib_to_mib(shape.accelerator_memory_gib)
        return "CPU (this machine)", memory.host_memory_mib()

    def worker_label(self, shape: Shape) -> str:
        """One worker's accelerator, as the plan's table shows it."""
        return self.device(shape)[0]

    def precision(self, shape: Shape, *, mixed_precision: bool | None, xla: bool | None) -> Precision:
        """float16 and XLA on GPUs; float32 on CPUs, where reduced precision is slower,
        not faster. ``None`` means on; ``False`` turns either off."""
        if shape.gpus_per_worker > 0:
            return Precision("float32" if mixed_precision is False else "mixed_float16", jit_compile=xla is not False)
        return Precision("float32", jit_compile=False)

    def scaling_config(self, shape: Shape) -> Any:
        """Ray Train's worker group for one trial: N workers of :meth:`worker_bundle`."""
        import ray.train

        return ray.train.ScalingConfig(num_workers=shape.workers, use_gpu=bool(shape.gpus_per_worker),
                                       resources_per_worker=self.worker_bundle(shape))

    def problems(self, shape: Shape, *, xla: bool | None) -> list[tuple[str, str]]:
        """What this strategy needs of a shape and it lacks: (field, message) pairs."""
        found = []
        if shape.gpus_per_worker:
            if shape.gpu_type is None and shape.accelerator_memory_gib is None:
                found.append(("gpu_type", "GPU workers need their GPU type (e.g. nvidia-l4) "
                                          "or accelerator_memory_gib, to plan memory"))
            elif shape.gpu_type is not None and shape.gpu_type not in memory.ACCELERATOR_MEMORY_GIB \
                    and shape.accelerator_memory_gib is None:
                known = ", ".join(k for k in memory.ACCELERATOR_MEMORY_GIB if not k.startswith("TPU"))
                found.append(("gpu_type", f"unknown GPU {shape.gpu_type!r}: use one of {known} "
                                          "or set accelerator_memory_gib"))
        elif xla:
            found.append(("xla", "XLA is for GPU and TPU workers; set gpus_per_worker or leave xla unset"))
        return found


@dataclass(frozen=True)
class TpuHost(Strategy):
    """One worker holding one TPU host: a whole single-host slice (TPUClusterResolver(
    tpu="local")); multi-host slices would need a slice-wide resolver."""

    def worker_bundle(self, shape: Shape) -> dict[str, float]:
        return {**super().worker_bundle(shape), "TPU": float(shape.tpu_chips_per_worker)}

    def replicas(self, shape: Shape) -> int:
        """One replica per chip of the host."""
        return shape.tpu_chips_per_worker

    def device(self, shape: Shape) -> tuple[str, float]:
        gib = shape.accelerator_memory_gib or memory.ACCELERATOR_MEMORY_GIB[shape.tpu_accelerator]
        return f"{shape.tpu_accelerator} chip", memory.gib_to_mib(gib)

    def worker_label(self, shape: Shape) -> str:
        return f"{shape.tpu_chips_per_worker} {shape.tpu_accelerator} chips"

    def precision(self, shape: Shape, *, mixed_precision: bool | None, xla: bool | None) -> Precision:
        """bfloat16; TPUStrategy always compiles with XLA, so none is asked for."""
        return Precision("float32" if mixed_precision is False else "mixed_bfloat16", jit_compile=False)

    def scaling_config(self, shape: Shape) -> Any:
        """One TPU host, asking for ``TPU`` chips and CPUs only. ``accelerator_type`` and
        ``topology`` are left out on purpose: Ray Train would add an
        ``accelerator_type:TPU-...`` key to every bundle (or reserve a slice head), which
        KubeRay's autoscaler never sees on a node type, so a TPU group could never scale
        up from zero for it (kuberay#863; ``cluster.autoscaling``)."""
        import ray.train

        return ray.train.ScalingConfig(num_workers=1, use_tpu=True, resources_per_worker=self.worker_bundle(shape))

    def problems(self, shape: Shape, *, xla: bool | None) -> list[tuple[str, str]]:
        found = []
        if shape.gpus_per_worker:
            found.append(("gpus_per_worker", f"must be 0 with the tpu strategy, got {shape.gpus_per_worker:g}"))
        if shape.tpu_accelerator not in TPU_ACCELERATORS:
            found.append(("tpu_accelerator",
                          f"must be one of {', '.join(TPU_ACCELERATORS)}, got {shape.tpu_accelerator!r}"))
        if not re.fullmatch(r"[1-9][0-9]*(x[1-9][0-9]*){1,2}", shape.tpu_topology):
            found.append(("tpu_topology", f"must look like 2x2 or 2x2x1, got {shape.tpu_topology!r}"))
        else:
            chips = math.prod(int(d) for d in shape.tpu_topology.split("x"))
            if chips != shape.tpu_chips_per_worker:
                found.append((
                    "tpu_topology",
                    f"a trial holds one whole single-host slice, so the topology must have tpu_chips_per_worker "
                    f"({shape.tpu_chips_per_worker}) chips; {shape.tpu_topology} has {chips}. Multi-host slices are "
                    "not supported (no TensorFlow multi-host TPU path runs under Ray): use e.g. 2x2 with 4 chips"))
        return found


# The registry: config validation, the plan, the trial's resources and worker group,
# and the CLI's help read it. Each name has its constructor in trainables.strategy.
STRATEGIES: dict[str, Strategy] = {
    s.name: s
    for s in (
        Strategy("single", distributed=False, one_worker=True),
        Strategy("mwms", distributed=True, one_worker=False),
        TpuHost("tpu", distributed=True, one_worker=True),
    )
}
assert set(STRATEGIES) == set(constructors.CONSTRUCTORS), "each strategy needs its constructor"


def get(name: str) -> Strategy:
    """The strategy called ``name``.

    Raises:
        InputError: an unknown name; the message lists the known ones.
    """
    if name not in STRATEGIES:
        raise InputError(f"resources.strategy must be one of {', '.join(STRATEGIES)}, got {name!r}")
    return STRATEGIES[name]


def of(shape: Shape) -> Strategy:
    """The strategy a shape trains with."""
    return get(shape.strategy)
