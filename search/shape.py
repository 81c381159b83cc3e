"""What one trial of a backbone holds: the ``resources`` section's per-trial fields.

Declared apart from the rest of the config so that the strategies
(:mod:`search.strategies`), which give these fields their meaning, and the config
(:mod:`search.config`), which loads and validates them, both build on it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from trainables.params import bounds


@dataclass(frozen=True)
class Shape:
    """What one trial of a backbone holds: its workers and their accelerators."""

    strategy: str = "single"
    workers: int = field(default=1, metadata=bounds(1, 4096))
    cpus_per_worker: float = field(default=1.0, metadata=bounds(0.0, 1024.0, open_low=True))
    gpus_per_worker: float = field(default=0.0, metadata=bounds(0.0, 16.0))
    # tpu strategy: the chips of one TPU host, its generation and its slice topology.
    tpu_chips_per_worker: int = field(default=4, metadata=bounds(1, 8))
    tpu_accelerator: str = "TPU-V6E"
    tpu_topology: str = "2x2"
    # GPU workers: the GPU type, as GKE's cloud.google.com/gke-accelerator label names it
    # (nvidia-l4, ...); its memory comes from trainables.memory.ACCELERATOR_MEMORY_GIB.
    gpu_type: str | None = None
    # Memory of one replica's device in GiB, overriding the table (or, on CPU workers,
    # the memory a worker may use; unset: this machine's memory).
    accelerator_memory_gib: float | None = field(default=None, metadata=bounds(0.0, 4096.0, open_low=True))
