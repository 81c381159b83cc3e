"""How much memory one replica's training step needs: the measured table, as a model.

``memory_table.json`` (written by ``bench/memory.py``, with the date and machine it was
measured on) gives, per backbone and at two resolutions, the peak memory of a phase-2
training step in float32 as ``fixed + per_image * batch``. This module turns it into an
estimate for any resolution, micro-batch and precision, and picks the number of
micro-batches a replica's share of the global batch needs to fit its device.

Assumptions, stated so the plan can be judged:

- Per-image memory is activations kept for the backward pass; it grows with the pixel
  count, so between (and beyond) the two measured sides it is ``a + c * side**2``.
- Mixed precision (float16 on GPUs, bfloat16 on TPUs) stores activations in 16 bits and
  keeps float32 master weights, gradients and momentum (Micikevicius et al. 2018, "Mixed
  Precision Training", section 3): per-image memory halves, the fixed part does not.
- A device holds ``USABLE_FRACTION`` of its nominal memory for the step; the rest goes
  to the runtime, the input pipeline and fragmentation.
- The table is host memory under TensorFlow's CPU allocator. An accelerator's allocator
  differs in workspace and fragmentation; treat a plan within 10% of the limit as
  uncertain.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from trainables import backbones
from trainables.errors import InputError

TABLE = Path(__file__).with_name("memory_table.json")

# Nominal memory per replica's device, GiB. GPUs by GKE's gke-accelerator label (NVIDIA
# data sheets); TPUs by Ray's accelerator type, HBM per chip (Cloud TPU docs: v4 32 GiB,
# v5e 16 GiB, v5p 95 GiB, v6e 32 GiB).
ACCELERATOR_MEMORY_GIB: dict[str, float] = {
    "nvidia-tesla-t4": 16,
    "nvidia-tesla-v100": 16,
    "nvidia-l4": 24,
    "nvidia-tesla-a100": 40,
    "nvidia-a100-80gb": 80,
    "nvidia-h100-80gb": 80,
    "nvidia-h200-141gb": 141,
    "TPU-V4": 32,
    "TPU-V5LITEPOD": 16,
    "TPU-V5P": 95,
    "TPU-V6E": 32,
}
USABLE_FRACTION = 0.9
HALF_PRECISION_ACTIVATIONS = 0.5


@dataclass(frozen=True)
class Cost:
    """Memory of one step on one replica, MiB: fixed + per_image * batch."""

    fixed_mib: float
    per_image_mib: float

    def at(self, batch: int) -> float:
        return self.fixed_mib + self.per_image_mib * batch


@cache
def table() -> dict:
    """The measured table (see bench/memory.py)."""
    return json.loads(TABLE.read_text())


def step_cost(backbone: str, side: int, *, mixed_precision: bool = False) -> Cost:
    """The memory model of ``backbone`` at ``side`` pixels.

    Raises:
        InputError: the backbone was never measured; the message says how to measure it.
    """
    fits = table()["backbones"].get(backbone) or backbones.get(backbone).memory or {}
    small, native = fits.get("small"), fits.get("native")
    if small is None or native is None:
        raise InputError(
            f"backbone {backbone} has no memory measurement in {TABLE.name}, which hpsearch plan and run size "
            f"every trial's step by: measure it with `python bench/memory.py --backbones {backbone}`")
    # per_image(side) = a + c * side**2 through the two measured sides; below the small
    # side, no less than the small side's cost scaled by the pixel count.
    s0, s1 = small["side"] ** 2, native["side"] ** 2
    c = max((native["per_image_mib"] - small["per_image_mib"]) / (s1 - s0), 0.0)
    a = native["per_image_mib"] - c * s1
    per_image = a + c * side**2 if side**2 >= s0 else small["per_image_mib"] * side**2 / s0
    if mixed_precision:
        per_image *= HALF_PRECISION_ACTIVATIONS
    return Cost(fixed_mib=max(small["fixed_mib"], native["fixed_mib"]), per_image_mib=per_image)


def micro_batches(per_replica_batch: int, cost: Cost, capacity_mib: float) -> int | None:
    """The fewest equal micro-batches (a divisor of the replica's batch) whose step fits
    ``capacity_mib``; None when even one image at a time does not fit."""
    usable = capacity_mib * USABLE_FRACTION
    for k in range(1, per_replica_batch + 1):
        if per_replica_batch % k == 0 and cost.at(per_replica_batch // k) <= usable:
            return k
    return None


def host_memory_mib() -> float:
    """This machine's memory, MiB (the capacity of a CPU worker with none configured)."""
    import os

    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20


def gib_to_mib(gib: float) -> float:
    return gib * 1024.0


__all__ = ["ACCELERATOR_MEMORY_GIB", "Cost", "micro_batches", "step_cost", "table", "host_memory_mib"]
