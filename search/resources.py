"""What one trial asks of the cluster, and whether the cluster can ever give it.

A trial that asks for more than the cluster holds waits forever for its placement
group. These rules turn that into an error before the search starts, naming what is
missing. On an autoscaling cluster the missing nodes may still come: set
``resources.wait_for_autoscaler`` and the check only warns.
"""

from __future__ import annotations

from dataclasses import dataclass

from search.config import ResourcesConfig
from trainables import strategy as strategies
from trainables.strategy import Precision, precision_for

# The trial function itself only waits for its workers; it must hold almost nothing or
# on a small machine the workers never fit (0 is rejected by Ray).
DRIVER_CPU = 0.01


@dataclass(frozen=True)
class TrialShape:
    """Resources of one trial: a driver bundle plus one bundle per worker."""

    strategy: str
    workers: int
    cpus_per_worker: float
    gpus_per_worker: float
    tpu_chips_per_worker: int

    def worker_bundle(self) -> dict[str, float]:
        bundle = {"CPU": self.cpus_per_worker}
        if self.gpus_per_worker:
            bundle["GPU"] = self.gpus_per_worker
        if strategies.get(self.strategy).accelerator == "tpu":
            bundle["TPU"] = float(self.tpu_chips_per_worker)
        return bundle

    def total(self) -> dict[str, float]:
        total = {k: v * self.workers for k, v in self.worker_bundle().items()}
        total["CPU"] = total.get("CPU", 0.0) + (DRIVER_CPU if strategies.get(self.strategy).distributed else 0.0)
        return total


def worker_precision(resources: ResourcesConfig) -> Precision:
    """The precision every worker of a trial trains in, from the config's resources."""
    return precision_for(
        resources.strategy,
        gpus=resources.gpus_per_worker,
        mixed_precision=resources.mixed_precision,
        xla=resources.xla,
    )


def shortfalls(shape: TrialShape, cluster: dict[str, float], node_resources: list[dict[str, float]]) -> list[str]:
    """Why the cluster can never run one trial of this shape (empty when it can).

    Args:
        shape: the trial.
        cluster: ``ray.cluster_resources()``.
        node_resources: each alive node's total resources (a worker bundle must fit on
            one node).
    """
    problems = []
    names = {"CPU": "CPUs", "GPU": "GPUs", "TPU": "TPU chips"}
    for key, needed in shape.total().items():
        have = cluster.get(key, 0.0)
        if needed > have + 1e-9:
            where = "none" if have == 0 else f"only {have:g}"
            per = shape.worker_bundle().get(key, 0.0)
            problems.append(
                f"a trial needs {needed:g} {names[key]} ({shape.workers} workers x {per:g}), the cluster has {where}"
            )
    bundle = shape.worker_bundle()
    if not problems and node_resources and not any(
        all(node.get(k, 0.0) + 1e-9 >= v for k, v in bundle.items()) for node in node_resources
    ):
        problems.append(f"no single node can hold one worker {bundle}")
    return problems
