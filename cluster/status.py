"""The state of an hpsearch RayCluster, read through the Kubernetes API."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cluster.errors import ClusterError

GROUP, VERSION, PLURAL = "ray.io", "v1", "rayclusters"
DASHBOARD_PORT = 8265


@dataclass(frozen=True)
class GroupStatus:
    name: str
    ready: int
    desired: int
    min_replicas: int
    max_replicas: int


@dataclass(frozen=True)
class ClusterStatus:
    name: str
    namespace: str
    state: str  # KubeRay's status.state ("ready", "suspended", ...) or "provisioning"
    ready_workers: int
    desired_workers: int
    groups: list[GroupStatus] = field(default_factory=list)
    dashboard: str = ""

    def lines(self) -> list[str]:
        out = [
            f"RayCluster {self.namespace}/{self.name}: {self.state}",
            f"workers ready: {self.ready_workers}/{self.desired_workers}",
        ]
        for g in self.groups:
            out.append(f"  {g.name}: {g.ready}/{g.desired} ready (min {g.min_replicas}, max {g.max_replicas})")
        out.append(f"dashboard: {self.dashboard}")
        out.append(
            f"  from your machine: kubectl port-forward -n {self.namespace} svc/{self.name}-head-svc "
            f"{DASHBOARD_PORT}:{DASHBOARD_PORT}, then http://localhost:{DASHBOARD_PORT}"
        )
        return out


def _pod_ready(pod: Any) -> bool:
    conditions = (pod.status.conditions or []) if pod.status else []
    return pod.status is not None and pod.status.phase == "Running" and any(
        c.type == "Ready" and c.status == "True" for c in conditions
    )


def summarise(cluster: dict[str, Any], pods: list[Any]) -> ClusterStatus:
    """Build a status from a RayCluster object and the pods of its worker groups."""
    meta, spec, status = cluster["metadata"], cluster.get("spec", {}), cluster.get("status") or {}
    name, namespace = meta["name"], meta.get("namespace", "default")
    groups = []
    for g in spec.get("workerGroupSpecs", []):
        hosts = int(g.get("numOfHosts", 1))
        members = [p for p in pods if (p.metadata.labels or {}).get("ray.io/group") == g["groupName"]]
        groups.append(
            GroupStatus(
                name=g["groupName"],
                ready=sum(_pod_ready(p) for p in members),
                desired=int(g.get("replicas", 0)) * hosts,
                min_replicas=int(g.get("minReplicas", 0)),
                max_replicas=int(g.get("maxReplicas", 0)),
            )
        )
    return ClusterStatus(
        name=name,
        namespace=namespace,
        state=status.get("state") or "provisioning",
        ready_workers=int(status.get("readyWorkerReplicas", sum(g.ready for g in groups))),
        desired_workers=int(status.get("desiredWorkerReplicas", sum(g.desired for g in groups))),
        groups=groups,
        dashboard=f"http://{name}-head-svc.{namespace}.svc.cluster.local:{DASHBOARD_PORT}",
    )


def api_client(context: str | None = None, kubeconfig: str | None = None) -> Any:
    """A Kubernetes API client from the user's kubeconfig (or in-cluster credentials)."""
    from kubernetes import client, config

    try:
        return config.new_client_from_config(config_file=kubeconfig, context=context)
    except config.ConfigException as exc:
        try:
            config.load_incluster_config()
            return client.ApiClient()
        except config.ConfigException:
            raise ClusterError(
                f"no usable kubeconfig ({exc}): run `gcloud container clusters get-credentials CLUSTER "
                "--region REGION`, or set KUBECONFIG / pass --context"
            ) from None


# The label the chart puts on its RayCluster (hpsearch.labels): how a cluster is found
# without --name.
CHART_LABEL = "app.kubernetes.io/name=hpsearch"


def context_namespace(context: str | None = None, kubeconfig: str | None = None) -> str:
    """The namespace of the kubeconfig context (the current one unless named), as kubectl
    uses it; ``default`` when the context sets none."""
    from kubernetes import config

    try:
        contexts, active = config.list_kube_config_contexts(config_file=kubeconfig)
    except (config.ConfigException, OSError):
        return "default"  # in-cluster, or no kubeconfig: api_client() reports the latter
    chosen = next((c for c in contexts if c["name"] == context), None) if context else active
    return (chosen or {}).get("context", {}).get("namespace") or "default"


def find_cluster(namespace: str, api: Any) -> str:
    """The name of the one hpsearch RayCluster in ``namespace`` (what `helm install NAME
    helm/hpsearch` created, whatever NAME was).

    Raises:
        ClusterError: none, or several (the message lists them).
    """
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    try:
        found = client.CustomObjectsApi(api).list_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, label_selector=CHART_LABEL)
    except ApiException as exc:
        raise ClusterError(f"the Kubernetes API answered {exc.status} {exc.reason} listing RayClusters") from None
    names = sorted(item["metadata"]["name"] for item in found.get("items", []))
    if not names:
        raise ClusterError(f"no hpsearch RayCluster in namespace {namespace!r}: install one with "
                           f"`helm install search helm/hpsearch -n {namespace}`, or pass --namespace")
    if len(names) > 1:
        raise ClusterError(f"{len(names)} hpsearch RayClusters in namespace {namespace!r} ({', '.join(names)}): "
                           "pass --name")
    return names[0]


def get_status(name: str, namespace: str, api: Any) -> ClusterStatus:
    """Read the RayCluster and its pods.

    Raises:
        ClusterError: the cluster does not exist, or the API server cannot be reached.
    """
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    try:
        cluster = client.CustomObjectsApi(api).get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        pods = client.CoreV1Api(api).list_namespaced_pod(namespace, label_selector=f"ray.io/cluster={name}").items
    except ApiException as exc:
        if exc.status == 404:
            raise ClusterError(
                f"RayCluster {name!r} not found in namespace {namespace!r}: install it with "
                f"`helm install {name.removesuffix('-hpsearch')} helm/hpsearch -n {namespace}`, or pass --name/--namespace"
            ) from None
        if exc.status in (401, 403):
            raise ClusterError(
                f"the Kubernetes API refused access ({exc.status} {exc.reason}): refresh your credentials "
                "(`gcloud container clusters get-credentials ...`)"
            ) from None
        raise ClusterError(f"the Kubernetes API answered {exc.status} {exc.reason}") from None
    except HTTPError as exc:
        raise ClusterError(f"cannot reach the Kubernetes API server ({exc.__class__.__name__}): check your context") from None
    return summarise(cluster, pods)
