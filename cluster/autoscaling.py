"""What a KubeRay cluster's autoscaler can ever launch, seen through Ray's own code.

On GKE every accelerator pool starts at zero nodes. A trial's placement group is only
ever placed if KubeRay's autoscaler (Ray's, running in the head pod) finds a node type
for each of its bundles. It derives those node types from the RayCluster's pod specs
(``_derive_autoscaling_config_from_ray_cr``: CPU, memory, ``nvidia.com/gpu``,
``google.com/tpu``, the TPU node selectors, ``rayStartParams.resources`` and the group's
``resources`` field; nothing else) and chooses nodes with its
``ResourceDemandScheduler``. A bundle with any other key (``accelerator_type:TPU-V6E``,
which Ray Train adds when ``ScalingConfig.accelerator_type`` is set) fits no node type,
and its trial would wait for ever (kuberay#863).

Nothing here re-types those rules: the node types and the decision are Ray's, called
with the RayCluster (read from the Kubernetes API, or rendered from the chart in tests)
and the demands the search's own code builds. The functions used are private to Ray
(pinned with ray==2.60.0); ``tests/cluster/test_autoscaling.py`` fails with a clear
message when an upgrade moves them.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

# The chart sets these in every Ray container: which RayCluster the driver runs in, so it
# can read the cluster's node groups with the head's service account (KubeRay grants it
# get on its RayCluster for the autoscaler).
RAYCLUSTER_NAME_ENV = "HPSEARCH_RAYCLUSTER_NAME"
RAYCLUSTER_NAMESPACE_ENV = "HPSEARCH_RAYCLUSTER_NAMESPACE"

# The head group's node type, as the KubeRay autoscaler names it.
HEAD_NODE_TYPE = "headgroup"

Bundle = dict[str, float]


@dataclass(frozen=True)
class LaunchPlan:
    """The autoscaler's decision for some demands on a cluster with no worker nodes.

    Attributes:
        launch: node type -> how many nodes it would start.
        unfulfilled: the bundles no node type can hold (the autoscaler logs "could not
            find a node type to satisfy the request" and launches nothing for them).
    """

    launch: dict[str, int]
    unfulfilled: list[Bundle]

    @property
    def feasible(self) -> bool:
        return not self.unfulfilled


def autoscaling_config(raycluster: dict[str, Any], namespace: str = "default") -> dict[str, Any]:
    """The autoscaling config KubeRay's autoscaler derives from a RayCluster resource.

    A RayCluster read from the API server carries its namespace; a rendered manifest
    does not, and gets ``namespace`` (the autoscaler uses it only to reach the API).
    """
    import copy

    from ray.autoscaler._private.kuberay.autoscaling_config import _derive_autoscaling_config_from_ray_cr

    raycluster = copy.deepcopy(raycluster)
    raycluster["metadata"].setdefault("namespace", namespace)
    return _derive_autoscaling_config_from_ray_cr(raycluster)


def read_autoscaling_config(name: str, namespace: str) -> dict[str, Any]:
    """The autoscaling config of a running RayCluster, read as the autoscaler reads it
    (Ray's ``AutoscalingConfigProducer``: the pod's service account, in-cluster; up to 5
    tries, 5 s apart)."""
    from ray.autoscaler._private.kuberay.autoscaling_config import AutoscalingConfigProducer

    return AutoscalingConfigProducer(name, namespace)()


def cluster_in_env() -> tuple[str, str] | None:
    """(name, namespace) of the RayCluster this process runs in, when the chart said so."""
    name = os.environ.get(RAYCLUSTER_NAME_ENV)
    namespace = os.environ.get(RAYCLUSTER_NAMESPACE_ENV)
    return (name, namespace) if name and namespace else None


def group_resources(config: dict[str, Any]) -> dict[str, tuple[Bundle, int]]:
    """Each worker group's node resources and its maximum node count."""
    return {
        name: (dict(node_type["resources"]), int(node_type.get("max_workers", 0)))
        for name, node_type in config["available_node_types"].items()
        if name != config["head_node_type"]
    }


class _HeadOnly:
    """The provider view of a cluster that has its head and nothing else yet: the only
    provider calls the scheduler makes are these (node kind and type tags, the IP)."""

    def __init__(self, head_node_type: str):
        from ray.autoscaler.tags import NODE_KIND_HEAD, TAG_RAY_NODE_KIND, TAG_RAY_USER_NODE_TYPE

        self._tags = {TAG_RAY_NODE_KIND: NODE_KIND_HEAD, TAG_RAY_USER_NODE_TYPE: head_node_type}

    def node_tags(self, node_id: str) -> dict[str, str]:
        return self._tags

    def internal_ip(self, node_id: str) -> str:
        return "head"


def plan_launch(config: dict[str, Any], placement_groups: list[list[Bundle]]) -> LaunchPlan:
    """What Ray's autoscaler launches for pending placement groups (PACK, as Ray Train's
    and Tune's) on a cluster that holds only its head, and which bundles it cannot place.

    Args:
        config: an autoscaling config (:func:`autoscaling_config`).
        placement_groups: each pending placement group's bundles.
    """
    from ray._private.gcs_utils import PlacementGroupTableData
    from ray.autoscaler._private.node_provider_availability_tracker import NodeAvailabilitySummary
    from ray.autoscaler._private.resource_demand_scheduler import ResourceDemandScheduler
    from ray.core.generated.common_pb2 import Bundle as BundleProto
    from ray.core.generated.common_pb2 import PlacementStrategy

    head = config["head_node_type"]
    scheduler = ResourceDemandScheduler(
        provider=_HeadOnly(head),
        node_types=config["available_node_types"],
        max_workers=config["max_workers"],
        head_node_type=head,
        upscaling_speed=config.get("upscaling_speed", 1),
    )
    pending = [
        PlacementGroupTableData(strategy=PlacementStrategy.PACK,
                                bundles=[BundleProto(unit_resources=bundle) for bundle in bundles])
        for bundles in placement_groups
    ]
    head_resources = dict(config["available_node_types"][head]["resources"])
    # The scheduler logs a warning per unplaceable request; the caller reports them.
    scheduler_log = logging.getLogger(ResourceDemandScheduler.__module__)
    level = scheduler_log.level
    scheduler_log.setLevel(logging.ERROR)
    try:
        launch, unfulfilled = scheduler.get_nodes_to_launch(
            nodes=["head"],
            launching_nodes={},
            resource_demands=[],
            unused_resources_by_ip={"head": head_resources},
            pending_placement_groups=pending,
            max_resources_by_ip={"head": head_resources},
            ensure_min_cluster_size=[],
            node_availability_summary=NodeAvailabilitySummary(node_availabilities={}),
        )
    finally:
        scheduler_log.setLevel(level)
    return LaunchPlan(launch=dict(launch), unfulfilled=[dict(b) for b in unfulfilled])


def describe_groups(config: dict[str, Any]) -> str:
    """The cluster's worker groups, for an error message."""
    return "; ".join(
        f"{name} (up to {count} x {_format(resources)})" for name, (resources, count) in group_resources(config).items()
    ) or "no worker groups"


def _format(resources: Bundle) -> str:
    shown = {k: (f"{v / 2**30:g}Gi" if k == "memory" else f"{v:g}") for k, v in resources.items()}
    return "{" + ", ".join(f"{k}: {v}" for k, v in shown.items()) + "}"
