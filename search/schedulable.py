"""Whether every backbone's trial can ever be scheduled on an autoscaling cluster.

A trial asks Ray for two placement groups: Tune's, for the trial function
(``search.resources.trial_resources``), and, for a distributed trial, Ray Train's worker
group (``search.distributed.worker_group_bundles``, from the trial's ``ScalingConfig``).
Both are built here by the same code the search runs, never re-typed, and handed to
Ray's own autoscaler decision (``cluster.autoscaling.plan_launch``) over the cluster's
node types. A backbone whose bundles no node type can hold would wait for ever: the
search refuses it before the first trial.
"""

from __future__ import annotations

from typing import Any

from cluster.autoscaling import Bundle, LaunchPlan, describe_groups, plan_launch
from search import strategies
from search.config import Config
from search.distributed import worker_group_bundles
from search.resources import trial_resources


def trial_placement_groups(config: Config, backbone: str) -> list[list[Bundle]]:
    """The placement groups one trial of ``backbone`` asks Ray for, in the order it
    asks: the trial function's, then its worker group's (distributed strategies)."""
    groups = [[dict(b) for b in trial_resources(config)({"backbone": backbone}).bundles]]
    shape = config.resources.shape_for(backbone)
    if strategies.of(shape).distributed:
        groups.append(worker_group_bundles(shape))
    return groups


def launch_plans(config: Config, autoscaling: dict[str, Any]) -> dict[str, LaunchPlan]:
    """Backbone -> what the autoscaler launches, from a cluster of only its head, for
    one trial of that backbone."""
    return {backbone: plan_launch(autoscaling, trial_placement_groups(config, backbone))
            for backbone in config.space.backbones}


def unschedulable(config: Config, autoscaling: dict[str, Any]) -> list[str]:
    """Why some backbones' trials could never start on this cluster (empty when all can):
    each problem names the backbones, what one trial asks and the cluster's groups."""
    by_request: dict[str, list[str]] = {}
    for backbone, plan in launch_plans(config, autoscaling).items():
        if not plan.feasible:
            asks = " + ".join(_group_text(g) for g in trial_placement_groups(config, backbone))
            missing = [dict(t) for t in dict.fromkeys(tuple(sorted(b.items())) for b in plan.unfulfilled)]
            by_request.setdefault(f"a trial asks {asks}; no worker group can hold {' or '.join(map(str, missing))}",
                                  []).append(backbone)
    groups = describe_groups(autoscaling)
    return [f"{', '.join(names)}: {problem} (the cluster's groups: {groups})" for problem, names in by_request.items()]


def _group_text(bundles: list[Bundle]) -> str:
    first = bundles[0]
    return f"{len(bundles)} x {first}" if all(b == first for b in bundles) else str(bundles)
