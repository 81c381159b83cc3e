"""What one trial asks of the cluster, and whether the cluster can ever give it.

A trial that asks for more than the cluster holds waits forever for its placement
group. These rules turn that into an error before the search starts, naming the
backbone whose trials cannot be held and what is missing. On an autoscaling cluster the
missing nodes may still come: set ``resources.wait_for_autoscaler`` and the check only
warns.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from search.config import Config, ResourcesConfig, Shape
from search import strategies

# The trial function of a distributed trial only waits for its workers; it must hold
# almost nothing or on a small machine the workers never fit (0 is rejected by Ray).
DRIVER_CPU = 0.01
# A Ray resource that only the nodes meant for trial functions have (the chart sets this
# variable in every pod, and the resource on its cpu groups that are not Spot): a
# distributed trial's function, and the Ray Train controller that runs beside it, only
# wait for the trial's workers. Ray's scheduler puts a small bundle on the node with the
# largest free share, which is an idle accelerator node whenever a trial has just ended
# there: it would keep that node (and its bill) for the whole trial and take CPUs a
# worker needs; on a Spot node it would die with the node. Unset (a laptop): anywhere.
TRIAL_FUNCTION_RESOURCE_ENV = "HPSEARCH_TRIAL_FUNCTION_RESOURCE"
TRIAL_FUNCTION_SHARE = 0.01


def driver_bundle() -> dict[str, float]:
    """What a distributed trial's own function holds."""
    bundle = {"CPU": DRIVER_CPU}
    if os.environ.get(TRIAL_FUNCTION_RESOURCE_ENV):
        bundle[os.environ[TRIAL_FUNCTION_RESOURCE_ENV]] = TRIAL_FUNCTION_SHARE
    return bundle


def worker_bundle(shape: Shape) -> dict[str, float]:
    """What one worker of a trial of this shape holds (Ray resource names)."""
    return strategies.of(shape).worker_bundle(shape)


def any_distributed(config: Config) -> bool:
    """Whether some backbone's trials run as Ray Train jobs (mwms, tpu)."""
    return any(strategies.of(config.resources.shape_for(b)).distributed for b in config.space.backbones)


def trial_total(shape: Shape) -> dict[str, float]:
    """Everything one trial holds: its workers, plus the waiting trial function."""
    total = {k: v * shape.workers for k, v in worker_bundle(shape).items()}
    if strategies.of(shape).distributed:
        for key, value in driver_bundle().items():
            total[key] = total.get(key, 0.0) + value
    return total


def trial_resources(config: Config) -> Callable[[dict[str, Any]], Any]:
    """Tune's per-trial resources, from the trial's sampled backbone.

    A trial that trains in its own process (``single``) holds its worker's CPUs and
    GPUs; a distributed trial's process only waits for its Ray Train workers (whose
    resources its Train job's ScalingConfig asks for), so it holds almost nothing.
    """
    from ray.tune import PlacementGroupFactory

    def resources(sampled: dict[str, Any]) -> Any:
        shape = config.resources.shape_for(sampled["backbone"])
        if strategies.of(shape).distributed:
            return PlacementGroupFactory([driver_bundle()])
        return PlacementGroupFactory([worker_bundle(shape)])

    return resources


def shortfalls(shape: Shape, cluster: dict[str, float], node_resources: list[dict[str, float]]) -> list[str]:
    """Why the cluster can never run one trial of this shape (empty when it can).

    Args:
        shape: the trial's shape.
        cluster: ``ray.cluster_resources()``.
        node_resources: each alive node's total resources (a worker bundle must fit on
            one node).
    """
    problems = []
    names = {"CPU": "CPUs", "GPU": "GPUs", "TPU": "TPU chips"}
    bundle = worker_bundle(shape)
    for key, needed in trial_total(shape).items():
        have = cluster.get(key, 0.0)
        if needed > have + 1e-9:
            where = "none" if have == 0 else f"only {have:g}"
            problems.append(
                f"a trial needs {needed:g} {names[key]} ({shape.workers} workers x {bundle.get(key, 0.0):g}), "
                f"the cluster has {where}"
            )
    if not problems and node_resources and not any(
        all(node.get(k, 0.0) + 1e-9 >= v for k, v in bundle.items()) for node in node_resources
    ):
        problems.append(f"no single node can hold one worker {bundle}")
    return problems


def cluster_shortfalls(resources: ResourcesConfig, backbones: tuple[str, ...], cluster: dict[str, float],
                       node_resources: list[dict[str, float]]) -> list[str]:
    """:func:`shortfalls` of every backbone's shape, each problem naming its backbone
    (the backbones that share the default shape are named together)."""
    by_shape: dict[Shape, list[str]] = {}
    for name in backbones:
        by_shape.setdefault(resources.shape_for(name), []).append(name)
    problems = []
    for shape, names in by_shape.items():
        problems += [f"{', '.join(names)}: {p}" for p in shortfalls(shape, cluster, node_resources)]
    return problems
