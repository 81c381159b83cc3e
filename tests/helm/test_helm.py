"""The Helm chart: rendered and linted by Helm's own engine, validated against the
Kubernetes schemas and KubeRay v1.7.0's CRDs, and bad values rejected by name."""

from __future__ import annotations

import copy
from pathlib import Path

import helm_python as helm
import jsonschema
import kubernetes_validate
import pytest
import yaml

from support import render_chart

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "hpsearch"
SCENARIOS = sorted((CHART / "ci").glob("*-values.yaml"))
CRDS = Path(__file__).resolve().parent / "crds"  # vendored: see crds/SOURCE.md
KUBE_VERSION = kubernetes_validate.latest_version()


def render(values: dict) -> list[dict]:
    return render_chart(values)


def strict_schema(node):
    """A CRD schema where listed properties are the only ones allowed (as the API
    server prunes unknown fields, except where the schema preserves them)."""
    if isinstance(node, dict):
        node = {k: strict_schema(v) for k, v in node.items()}
        if "properties" in node and not node.get("x-kubernetes-preserve-unknown-fields"):
            node.setdefault("additionalProperties", False)
        return node
    if isinstance(node, list):
        return [strict_schema(v) for v in node]
    return node


def crd_validator(file_name: str) -> jsonschema.Validator:
    # libyaml's loader when PyYAML has it: the two CRDs are 2.3 MB, 5x slower in pure Python
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    crd = yaml.load((CRDS / file_name).read_text(), Loader=loader)
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    schema = strict_schema(version["schema"]["openAPIV3Schema"])
    # metadata is validated by the API server, not the CRD; allow its usual fields
    schema["properties"]["metadata"] = {"type": "object"}
    return jsonschema.Draft7Validator(schema)


@pytest.fixture(scope="module")
def crd_validators():
    if not CRDS.is_dir():
        pytest.fail(f"KubeRay CRDs not found at {CRDS}")
    return {"RayCluster": crd_validator("ray.io_rayclusters.yaml"), "RayJob": crd_validator("ray.io_rayjobs.yaml")}


@pytest.fixture(params=SCENARIOS, ids=lambda p: p.name)
def scenario(request):
    return yaml.safe_load(request.param.read_text())


def test_every_scenario_exists():
    assert {p.name for p in SCENARIOS} == {
        "cpu-values.yaml", "gpu-values.yaml", "tpu-values.yaml", "gke-values.yaml", "spot-values.yaml",
    }


def test_renders_and_lints_clean(scenario):
    kinds = sorted(d["kind"] for d in render(scenario))
    assert "RayCluster" in kinds and "ServiceAccount" in kinds
    report = helm.lint(CHART, scenario, strict=True)
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


def test_default_values_lint_clean():
    report = helm.lint(CHART, {}, strict=True)
    assert report["errors"] == [] and all(m["severity"] < 2 for m in report["messages"])


def test_builtin_kinds_pass_kubernetes_validate_strict(scenario):
    builtin = [d for d in render(scenario) if not d["apiVersion"].startswith("ray.io/")]
    assert builtin
    for doc in builtin:
        kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)


def test_ray_resources_pass_the_kuberay_crd_strictly(scenario, crd_validators):
    ray_docs = [d for d in render(scenario) if d["apiVersion"] == "ray.io/v1"]
    assert ray_docs
    for doc in ray_docs:
        errors = sorted(crd_validators[doc["kind"]].iter_errors(doc), key=str)
        assert not errors, [f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors]


def test_strict_crd_check_catches_unknown_fields(crd_validators):
    """The strict schema is not vacuous: a misspelt field fails it."""
    cluster = next(d for d in render({}) if d["kind"] == "RayCluster")
    cluster["spec"]["headGroupSpec"]["serviceTyp"] = "ClusterIP"
    assert list(crd_validators["RayCluster"].iter_errors(cluster))


def containers(doc):
    spec = doc["spec"]
    templates = [spec["headGroupSpec"]["template"]] + [g["template"] for g in spec["workerGroupSpecs"]]
    for template in templates:
        yield from template["spec"]["containers"]


def test_security_defaults(scenario):
    cluster = next(d for d in render(scenario) if d["kind"] == "RayCluster")
    for container in containers(cluster):
        context = container["securityContext"]
        assert context["runAsNonRoot"] is True and context["allowPrivilegeEscalation"] is False
        for part in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(container["resources"][part]), container["name"]
    autoscaler = cluster["spec"].get("autoscalerOptions")
    if autoscaler:
        assert autoscaler["securityContext"]["runAsNonRoot"] is True
        assert set(autoscaler["resources"]) == {"requests", "limits"}
    assert cluster["spec"]["headGroupSpec"]["serviceType"] == "ClusterIP"
    assert cluster["spec"]["authOptions"] == {"mode": "token"}


def test_no_credentials_in_values():
    text = (CHART / "values.yaml").read_text().lower()
    for word in ("password:", "token:", "apikey", "private_key", "-----begin"):
        assert word not in text


def test_accelerator_groups():
    def group(values_file, name):
        cluster = next(d for d in render(yaml.safe_load((CHART / "ci" / values_file).read_text())) if d["kind"] == "RayCluster")
        return next(g for g in cluster["spec"]["workerGroupSpecs"] if g["groupName"] == name)

    gpu = group("gpu-values.yaml", "gpu")
    pod = gpu["template"]["spec"]
    assert pod["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-l4"}
    assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert pod["containers"][0]["image"].endswith("-gpu")

    single = group("tpu-values.yaml", "tpu")
    assert single["numOfHosts"] == 1
    pod = single["template"]["spec"]
    assert pod["nodeSelector"] == {
        "cloud.google.com/gke-tpu-accelerator": "tpu-v6e-slice",
        "cloud.google.com/gke-tpu-topology": "2x2",
    }
    assert pod["containers"][0]["resources"]["limits"]["google.com/tpu"] == "4"


def test_a_multi_host_slice_is_refused_by_name():
    """A trial holds one TPU host; a slice of several hosts would leave libtpu waiting
    for hosts no trial holds, so the chart refuses it."""
    multi = copy.deepcopy(TPU_GROUP)
    multi["tpu"]["topology"] = "4x4"
    with pytest.raises(helm.HelmError, match=r"workerGroups.tpu.tpu: topology 4x4 spans 4 hosts"):
        render(with_group("tpu", multi))


def test_workload_identity_and_bucket():
    values = yaml.safe_load((CHART / "ci" / "gpu-values.yaml").read_text())
    docs = render(values)
    account = next(d for d in docs if d["kind"] == "ServiceAccount")
    assert account["metadata"]["annotations"]["iam.gke.io/gcp-service-account"].endswith(".iam.gserviceaccount.com")
    cluster = next(d for d in docs if d["kind"] == "RayCluster")
    for container in containers(cluster):
        env = {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}
        assert env["HPSEARCH_STORAGE"] == "gs://my-bucket/experiments"
        # the search reads its own RayCluster's worker groups (search.experiment.check_schedulable)
        assert env["HPSEARCH_RAYCLUSTER_NAME"] == cluster["metadata"]["name"] == "search-hpsearch"
        assert env["HPSEARCH_RAYCLUSTER_NAMESPACE"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}


def test_ray_version_matches_the_pinned_ray():
    pyproject = (REPO / "pyproject.toml").read_text()
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert f'ray[default,tune,train]=={values["rayVersion"]}"' in pyproject
    assert f"ray{values['rayVersion']}" in values["image"]["tag"]


def test_values_are_documented():
    """Every value at the top two levels has a comment line right above it (the
    example worker group is covered by the comment on workerGroups)."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    assert lines[0] == "# yaml-language-server: $schema=values.schema.json"
    for i, line in enumerate(lines):
        indent = len(line) - len(line.lstrip())
        key, _, value = line.strip().partition(":")
        if indent in (0, 2) and value.strip() and not line.lstrip().startswith("#"):
            assert lines[i - 1].lstrip().startswith("#"), f"undocumented value: {line.strip()}"


GPU_GROUP = {
    "type": "gpu", "replicas": 0, "minReplicas": 0, "maxReplicas": 2, "cpu": "4", "memory": "16Gi",
    "gpu": {"accelerator": "nvidia-l4", "count": 1},
}
CPU_GROUP = {"type": "cpu", "replicas": 0, "minReplicas": 0, "maxReplicas": 2, "cpu": "4", "memory": "16Gi"}
TPU_GROUP = {
    "type": "tpu", "replicas": 0, "minReplicas": 0, "maxReplicas": 1, "cpu": "8", "memory": "32Gi",
    "tpu": {"accelerator": "tpu-v6e-slice", "topology": "2x2", "chipsPerHost": 4},
}


def with_group(name, group, **changes):
    group = copy.deepcopy(group)
    for dotted, value in changes.items():
        target = group
        *parents, leaf = dotted.split(".")
        for part in parents:
            target = target[part]
        if value is None:
            del target[leaf]
        else:
            target[leaf] = value
    return {"workerGroups": {name: group}}


BAD_VALUES = {
    "unknown GPU accelerator": (with_group("gpu", GPU_GROUP, **{"gpu.accelerator": "nvidia-rtx-4090"}), "accelerator"),
    "negative replicas": (with_group("gpu", GPU_GROUP, replicas=-1), "replicas"),
    "TPU topology not in the enum": (with_group("tpu", TPU_GROUP, **{"tpu.topology": "3x3"}), "topology"),
    "3-D topology on a 2-D TPU": (with_group("tpu", TPU_GROUP, **{"tpu.topology": "2x2x1"}), "topology"),
    "chips per host not offered": (with_group("tpu", TPU_GROUP, **{"tpu.chipsPerHost": 3}), "chipsPerHost"),
    "misspelt top-level key": ({"workerGroup": {}}, "workerGroup"),
    "misspelt group key": (with_group("gpu", GPU_GROUP, replica=1), "replica"),
    "GPU group without its gpu block": (with_group("gpu", GPU_GROUP, gpu=None), "gpu"),
    "CPU group with a TPU block": (with_group("cpu", {**TPU_GROUP, "type": "cpu"}), "tpu"),
    "unknown group type": (with_group("x", GPU_GROUP, type="fpga"), "type"),
    "public service type typo": ({"head": {"serviceType": "Public"}}, "serviceType"),
    "bucket not on GCS": ({"storage": {"bucket": "s3://bucket/x"}}, "bucket"),
    "memory not a quantity": (with_group("gpu", GPU_GROUP, memory="lots"), "memory"),
    "bad pull policy": ({"image": {"repository": "r", "tag": "t", "pullPolicy": "Sometimes"}}, "pullPolicy"),
    "group name not a DNS label": (with_group("GPU_Group", GPU_GROUP), "GPU_Group"),
    "shm not whole Mi or Gi": (with_group("gpu", GPU_GROUP, shmSize="1.5Gi"), "shmSize"),
}


# Rules across fields, which JSON Schema cannot state, are checked by the templates:
# `helm install` and `helm template` stop with the message (`helm lint` only logs a
# template's fail, by Helm's design).
BAD_ACROSS_FIELDS = {
    "min above max": (with_group("gpu", GPU_GROUP, minReplicas=3, maxReplicas=1), "workerGroups.gpu.minReplicas (3)"),
    "replicas above max": (with_group("gpu", GPU_GROUP, replicas=5), "workerGroups.gpu.replicas (5)"),
    "topology does not split into hosts": (
        with_group("tpu", TPU_GROUP, **{"tpu.topology": "1x1"}), "workerGroups.tpu.tpu: topology 1x1",
    ),
    "only Spot groups": ({"workerGroups": {"gpu": {**GPU_GROUP, "spot": True}, "cpu": None}},
                         "no group of type cpu without spot"),
    "no cpu group": ({"workerGroups": {"gpu": GPU_GROUP, "cpu": None}}, "no group of type cpu without spot"),
    "a drain longer than the grace period": (
        {"workerGroups": {"gpu": {**GPU_GROUP, "spot": True}, "cpu": CPU_GROUP},
         "spot": {"terminationGracePeriodSeconds": 15, "drainSeconds": 15}},
        "spot.drainSeconds (15) must be below"),
}


def write_and_read(tmp_path, values):
    path = tmp_path / "bad-values.yaml"
    path.write_text(yaml.safe_dump(values))
    return yaml.safe_load(path.read_text())


@pytest.mark.parametrize(("values", "named"), BAD_VALUES.values(), ids=BAD_VALUES.keys())
def test_bad_values_are_rejected_by_the_schema(values, named, tmp_path):
    values = write_and_read(tmp_path, values)
    with pytest.raises(helm.HelmValuesError) as info:
        helm.Chart.load(CHART).validate_schema(values)
    assert named in str(info.value), str(info.value)
    with pytest.raises(helm.HelmError):
        render(values)
    assert helm.lint(CHART, values, strict=True)["errors"], f"lint accepted {values}"


@pytest.mark.parametrize(("values", "message"), BAD_ACROSS_FIELDS.values(), ids=BAD_ACROSS_FIELDS.keys())
def test_bad_values_across_fields_stop_the_render(values, message, tmp_path):
    with pytest.raises(helm.HelmError) as info:
        render(write_and_read(tmp_path, values))
    assert message in str(info.value), str(info.value)


# ---------------------------------------------------------------------------- day one on GKE

def cluster_of(values):
    return next(d for d in render(values) if d["kind"] == "RayCluster")


def pod_templates(cluster):
    spec = cluster["spec"]
    yield "head", spec["headGroupSpec"]["template"]
    for group in spec["workerGroupSpecs"]:
        yield group["groupName"], group["template"]


def test_pod_templates_leave_the_name_label_to_kuberay(scenario):
    """KubeRay labels its pods app.kubernetes.io/name: kuberay, the label GKE's TPU webhook
    selects on; a pod template that sets the label replaces KubeRay's value."""
    for name, template in pod_templates(cluster_of(scenario)):
        assert "app.kubernetes.io/name" not in template["metadata"].get("labels", {}), name


def test_the_name_label_check_can_fail():
    values = {"head": {"podLabels": {"app.kubernetes.io/name": "hpsearch"}}}
    labels = dict(pod_templates(cluster_of(values)))["head"]["metadata"]["labels"]
    assert labels["app.kubernetes.io/name"] == "hpsearch"


# Allocatable of the node types the GKE quickstart creates (GKE's reservation formula: CPU 6% of
# the first core, 1% of the next, 0.5% of the next 2, 0.25% above 4; memory 25% of the
# first 4 GiB, 20% of the next 4, 10% of the next 8, 6% up to 128, 2% above, plus 100 MiB
# eviction threshold; GPU nodes from GKE's docs for g2-standard-8). GKE's own DaemonSets
# (kube-proxy, logging, metadata server, GPU device plugin) take their share, so a pod
# must leave DAEMONSET_RESERVE free.
NODE_ALLOCATABLE = {  # cpu, GiB
    "e2-standard-8": (7.91, 28.3),
    "g2-standard-8": (7.9, 26.0),
    "ct6e-standard-4t": (179.48, 650.0),
}
DAEMONSET_RESERVE = (0.5, 1.5)


def quantity(value: str) -> float:
    """cpu cores or memory GiB of a Kubernetes quantity."""
    units = {"m": 1e-3, "Ki": 2**-20, "Mi": 2**-10, "Gi": 1.0, "Ti": 1024.0}
    for suffix, factor in units.items():
        if value.endswith(suffix):
            return float(value[: -len(suffix)]) * factor
    return float(value)


def scenario_nodes(path: Path) -> dict[str, str]:
    import re

    (line,) = [l for l in path.read_text().splitlines() if l.startswith("# nodes:")]
    return dict(re.findall(r"(\S+)=(\S+)", line))


@pytest.mark.parametrize("path", SCENARIOS, ids=lambda p: p.name)
def test_every_pod_fits_the_node_type_the_quickstart_creates_for_it(path):
    nodes = scenario_nodes(path)
    guide = (REPO / "docs" / "gke.md").read_text()  # the GKE quickstart creates the node pools
    for name, template in pod_templates(cluster_of(yaml.safe_load(path.read_text()))):
        node = nodes[name]  # the file names a node type for the head and every group
        assert node in NODE_ALLOCATABLE and f"--machine-type {node}" in guide, (name, node)
        cpu, memory = NODE_ALLOCATABLE[node]
        requests = template["spec"]["containers"][0]["resources"]["requests"]
        assert quantity(requests["cpu"]) <= cpu - DAEMONSET_RESERVE[0], (path.name, name, requests)
        assert quantity(requests["memory"].replace("G", "Gi") if requests["memory"].endswith("G") else requests["memory"]) \
            <= memory - DAEMONSET_RESERVE[1], (path.name, name, requests)


ESCAPE_HATCHES = {
    "nodeSelector": {"cloud.google.com/gke-spot": "true"},
    "tolerations": [{"key": "cloud.google.com/gke-spot", "operator": "Equal", "value": "true", "effect": "NoSchedule"}],
    "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "cloud.google.com/reservation-name", "operator": "In", "values": ["r1"]}]}]}}},
    "priorityClassName": "batch-low",
    "podLabels": {"kueue.x-k8s.io/queue-name": "research"},
    "podAnnotations": {"example.com/owner": "ml"},
    "env": [{"name": "EXTRA", "value": "1"}],
    "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "datasets"}}],
    "volumeMounts": [{"name": "data", "mountPath": "/data", "readOnly": True}],
}


def test_escape_hatches_render_where_kubernetes_reads_them(crd_validators):
    values = copy.deepcopy(yaml.safe_load((CHART / "ci" / "gpu-values.yaml").read_text()))
    values["head"] = copy.deepcopy(ESCAPE_HATCHES)
    values["workerGroups"]["gpu"].update(copy.deepcopy(ESCAPE_HATCHES))
    values["imagePullSecrets"] = [{"name": "regcred"}]
    helm.Chart.load(CHART).validate_schema(values)
    cluster = cluster_of(values)
    assert not list(crd_validators["RayCluster"].iter_errors(cluster))
    for name, template in pod_templates(cluster):
        if name == "cpu":
            continue
        pod, container = template["spec"], template["spec"]["containers"][0]
        assert pod["nodeSelector"]["cloud.google.com/gke-spot"] == "true"
        assert ESCAPE_HATCHES["tolerations"][0] in pod["tolerations"]
        assert pod["affinity"] == ESCAPE_HATCHES["affinity"]
        assert pod["priorityClassName"] == "batch-low"
        assert pod["imagePullSecrets"] == [{"name": "regcred"}]
        assert template["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "research"
        assert template["metadata"]["annotations"]["example.com/owner"] == "ml"
        assert {"name": "EXTRA", "value": "1"} in container["env"]
        assert ESCAPE_HATCHES["volumes"][0] in pod["volumes"]
        assert ESCAPE_HATCHES["volumeMounts"][0] in container["volumeMounts"]
    gpu = dict(pod_templates(cluster))["gpu"]["spec"]
    # the accelerator's own selector and toleration stay beside the user's
    assert gpu["nodeSelector"]["cloud.google.com/gke-accelerator"] == "nvidia-l4"
    assert any(t["key"] == "nvidia.com/gpu" for t in gpu["tolerations"])


def test_workers_have_their_own_service_account_with_workload_identity():
    docs = render(yaml.safe_load((CHART / "ci" / "gpu-values.yaml").read_text()))
    accounts = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ServiceAccount"}
    assert set(accounts) == {"search-hpsearch", "search-hpsearch-worker"}
    for account in accounts.values():
        assert account["metadata"]["annotations"]["iam.gke.io/gcp-service-account"] == \
            "hpsearch@my-project.iam.gserviceaccount.com"
    cluster = next(d for d in docs if d["kind"] == "RayCluster")
    templates = dict(pod_templates(cluster))
    assert templates.pop("head")["spec"]["serviceAccountName"] == "search-hpsearch"
    assert {t["spec"]["serviceAccountName"] for t in templates.values()} == {"search-hpsearch-worker"}


def test_the_head_is_protected_from_eviction():
    head = dict(pod_templates(cluster_of({})))["head"]
    assert head["metadata"]["annotations"]["cluster-autoscaler.kubernetes.io/safe-to-evict"] == "false"
    assert not [d for d in render({}) if d["kind"] == "PodDisruptionBudget"]
    (pdb,) = [d for d in render({"podDisruptionBudget": {"enabled": True}}) if d["kind"] == "PodDisruptionBudget"]
    kubernetes_validate.validate(pdb, KUBE_VERSION, strict=True)
    assert pdb["spec"]["maxUnavailable"] == 0
    assert pdb["spec"]["selector"]["matchLabels"] == {"ray.io/cluster": "search-hpsearch", "ray.io/node-type": "head"}


def test_autoscaler_v2_with_a_per_group_idle_timeout(crd_validators):
    values = with_group("gpu", GPU_GROUP, idleTimeoutSeconds=30)
    values["autoscaling"] = {"version": "v2"}
    cluster = cluster_of(values)
    assert cluster["spec"]["autoscalerOptions"]["version"] == "v2"
    group = next(g for g in cluster["spec"]["workerGroupSpecs"] if g["groupName"] == "gpu")
    assert group["idleTimeoutSeconds"] == 30
    assert not list(crd_validators["RayCluster"].iter_errors(cluster))
    with pytest.raises(helm.HelmError, match="needs autoscaling.version v2"):
        render(with_group("gpu", GPU_GROUP, idleTimeoutSeconds=30))


def test_gcs_fault_tolerance_through_redis(crd_validators):
    values = {"gcsFaultTolerance": {"enabled": True, "redisAddress": "redis.ml.svc:6379",
                                    "redisPasswordSecret": {"name": "redis", "key": "password"}}}
    cluster = cluster_of(values)
    options = cluster["spec"]["gcsFaultToleranceOptions"]
    assert options["redisAddress"] == "redis.ml.svc:6379"
    assert options["redisPassword"] == {"valueFrom": {"secretKeyRef": {"name": "redis", "key": "password"}}}
    assert not list(crd_validators["RayCluster"].iter_errors(cluster))
    assert "gcsFaultToleranceOptions" not in cluster_of({})["spec"]
    with pytest.raises(helm.HelmError, match="redisAddress is required"):
        render({"gcsFaultTolerance": {"enabled": True}})


def test_no_scenario_ships_a_job_it_cannot_run():
    for path in SCENARIOS:
        kinds = {d["kind"] for d in render(yaml.safe_load(path.read_text()))}
        assert "RayJob" not in kinds, path.name


def notes(values: dict) -> str:
    return helm.Chart.load(CHART).render(values, name="search", namespace="ml")["hpsearch/templates/NOTES.txt"]


def test_notes_warn_about_the_unpublished_image_and_say_where_experiments_go():
    default = notes({})
    assert "WARNING: image.repository is the chart's default" in default
    assert "WARNING: storage.bucket is empty" in default
    ready = notes({"image": {"repository": "europe-docker.pkg.dev/p/r/hpsearch"},
                   "storage": {"bucket": "gs://b/experiments"}})
    assert "WARNING" not in ready
    assert "every pod has HPSEARCH_STORAGE set to it" in ready and "set storage.path" not in ready


def test_the_accelerator_selector_wins_over_a_user_key():
    """A user's nodeSelector is kept beside the accelerator's keys, but cannot contradict
    them (a topology that disagrees with the group's would never find a node)."""
    group = copy.deepcopy(TPU_GROUP)
    group["nodeSelector"] = {"cloud.google.com/gke-tpu-topology": "4x4", "pool": "reserved"}
    values = with_group("tpu", group)
    values["workloadIdentityNodeSelector"] = True
    templates = dict(pod_templates(cluster_of(values)))
    assert templates["tpu"]["spec"]["nodeSelector"] == {
        "cloud.google.com/gke-tpu-accelerator": "tpu-v6e-slice", "cloud.google.com/gke-tpu-topology": "2x2",
        "pool": "reserved", "iam.gke.io/gke-metadata-server-enabled": "true"}
    assert templates["head"]["spec"]["nodeSelector"] == {"iam.gke.io/gke-metadata-server-enabled": "true"}
    assert "nodeSelector" not in dict(pod_templates(cluster_of({})))["head"]["spec"]


def test_workers_mount_no_service_account_token_unless_asked(crd_validators):
    templates = dict(pod_templates(cluster_of(with_group("gpu", GPU_GROUP))))
    assert templates["gpu"]["spec"]["automountServiceAccountToken"] is False
    assert "automountServiceAccountToken" not in templates["head"]["spec"]  # the autoscaler reads the API
    opted = dict(pod_templates(cluster_of(with_group("gpu", GPU_GROUP, automountServiceAccountToken=True))))
    assert opted["gpu"]["spec"]["automountServiceAccountToken"] is True


def shm_bytes(template: dict) -> float:
    (shm,) = [v for v in template["spec"]["volumes"] if v["name"] == "shm"]
    return quantity(shm["emptyDir"]["sizeLimit"]) * 2**30


@pytest.mark.parametrize("path", [*SCENARIOS, None], ids=lambda p: p.name if p else "defaults")
def test_every_object_store_fits_its_shared_memory(path):
    """Ray puts its object store in /dev/shm only if shm holds it, and by default takes 30%
    of the memory limit: every group sets the store to 90% of its shm instead."""
    cluster = cluster_of(yaml.safe_load(path.read_text()) if path else {})
    spec = cluster["spec"]
    params = {"head": spec["headGroupSpec"]["rayStartParams"],
              **{g["groupName"]: g["rayStartParams"] for g in spec["workerGroupSpecs"]}}
    for name, template in pod_templates(cluster):
        store = int(params[name]["object-store-memory"])
        assert 0.85 * shm_bytes(template) <= store <= shm_bytes(template), (name, store)


def test_security_context_overrides_per_group(crd_validators):
    """KubeRay's v6e samples run TPU workers as root, and large slices needed privileged:
    a group may override the restricted defaults; the others keep them."""
    group = copy.deepcopy(TPU_GROUP)
    group["podSecurityContext"] = {"runAsNonRoot": False, "runAsUser": 0}
    group["securityContext"] = {"privileged": True, "runAsNonRoot": False, "runAsUser": 0,
                                "allowPrivilegeEscalation": True}
    cluster = cluster_of(with_group("tpu", group))
    assert not list(crd_validators["RayCluster"].iter_errors(cluster))
    templates = dict(pod_templates(cluster))
    pod = templates["tpu"]["spec"]
    assert pod["securityContext"] == {"runAsNonRoot": False, "runAsUser": 0, "fsGroup": 100}
    container = pod["containers"][0]["securityContext"]
    assert container["privileged"] is True and container["runAsUser"] == 0
    assert container["capabilities"] == {"drop": ["ALL"]}  # kept from the defaults
    head = templates["head"]["spec"]
    assert head["securityContext"] == {"runAsNonRoot": True, "fsGroup": 100}
    assert head["containers"][0]["securityContext"]["allowPrivilegeEscalation"] is False


POD_EXTRAS = {
    "envFrom": [{"secretRef": {"name": "wandb"}}],
    "initContainers": [{"name": "fetch", "image": "busybox:1.36", "command": ["true"]}],
    "sidecars": [{"name": "fluentbit", "image": "fluent/fluent-bit:3.0"}],
    "runtimeClassName": "gvisor",
    "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone",
                                   "whenUnsatisfiable": "ScheduleAnyway"}],
    "ephemeralStorage": "50Gi",
}


def test_pod_extras_and_group_fields_render_where_kubernetes_and_kuberay_read_them(crd_validators):
    values = with_group("gpu", GPU_GROUP, **copy.deepcopy(POD_EXTRAS), resources={"GPU": "1", "CPU": "4"},
                        labels={"hpsearch.io/pool": "l4"})
    values["head"] = {**copy.deepcopy(POD_EXTRAS), "serviceAnnotations": {"cloud.google.com/neg": '{"ingress": true}'}}
    helm.Chart.load(CHART).validate_schema(values)
    cluster = cluster_of(values)
    assert not list(crd_validators["RayCluster"].iter_errors(cluster))
    spec = cluster["spec"]
    assert spec["headGroupSpec"]["headService"]["metadata"]["annotations"] == {"cloud.google.com/neg": '{"ingress": true}'}
    gpu = next(g for g in spec["workerGroupSpecs"] if g["groupName"] == "gpu")
    assert gpu["resources"] == {"GPU": "1", "CPU": "4"} and gpu["labels"] == {"hpsearch.io/pool": "l4"}
    for name, template in pod_templates(cluster):
        if name == "cpu":
            continue
        pod = template["spec"]
        ray_container, *others = pod["containers"]
        assert others == POD_EXTRAS["sidecars"], name
        assert pod["initContainers"] == POD_EXTRAS["initContainers"] and pod["runtimeClassName"] == "gvisor"
        assert pod["topologySpreadConstraints"] == POD_EXTRAS["topologySpreadConstraints"]
        assert ray_container["envFrom"] == POD_EXTRAS["envFrom"]
        for part in ("requests", "limits"):
            assert ray_container["resources"][part]["ephemeral-storage"] == "50Gi"
    # the autoscaler reads the group's resources field instead of the pod spec
    from cluster.autoscaling import autoscaling_config

    view = autoscaling_config(cluster, namespace="ml")
    assert view["available_node_types"]["gpu"]["resources"]["CPU"] == 4


def test_spot_groups_render_gkes_spot_fields(crd_validators):
    """A Spot group's pods go to GKE Spot nodes (selector and toleration), get the grace
    period a reclaimed Spot pod has, and Ray drains their node for less than it."""
    cluster = cluster_of(yaml.safe_load((CHART / "ci" / "spot-values.yaml").read_text()))
    assert not list(crd_validators["RayCluster"].iter_errors(cluster))
    groups = {g["groupName"]: g for g in cluster["spec"]["workerGroupSpecs"]}
    for name in ("gpu", "tpu"):
        pod = groups[name]["template"]["spec"]
        assert pod["nodeSelector"]["cloud.google.com/gke-spot"] == "true"
        assert {"key": "cloud.google.com/gke-spot", "operator": "Equal", "value": "true",
                "effect": "NoSchedule"} in pod["tolerations"]
        env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
        assert int(env["RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S"]) < pod["terminationGracePeriodSeconds"] == 15
        # the node drains itself before the kubelet's SIGTERM, whatever PID 1 does with it
        assert pod["containers"][0]["lifecycle"]["preStop"]["exec"]["command"] == [
            "python", "-m", "cluster.drain", "--deadline-s", env["RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S"]]
    cpu = groups["cpu"]["template"]["spec"]
    assert "lifecycle" not in cpu["containers"][0]
    assert "cloud.google.com/gke-spot" not in (cpu.get("nodeSelector") or {}) and "terminationGracePeriodSeconds" not in cpu


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda p: p.name)
def test_in_every_scenario_only_cpu_groups_not_on_spot_hold_trial_functions(scenario):
    """Trial functions (and Ray Train's controllers beside them) ask for a resource that
    only the cpu groups that are not Spot advertise, whether or not a Spot group exists:
    an idle accelerator node never takes one (it would keep the node up and take CPUs a
    worker needs), nor does a Spot node (it would die with it). Every pod is told the
    resource to ask for. (The autoscaler's own view of it: tests/cluster/test_autoscaling.py.)"""
    cluster = cluster_of(yaml.safe_load(scenario.read_text()))
    hosts = 0
    for group in cluster["spec"]["workerGroupSpecs"]:
        pod = group["template"]["spec"]
        spot = (pod.get("nodeSelector") or {}).get("cloud.google.com/gke-spot") == "true"
        accelerator = any(k in pod["containers"][0]["resources"]["limits"] for k in ("nvidia.com/gpu", "google.com/tpu"))
        if accelerator or spot:
            assert "resources" not in group["rayStartParams"], group["groupName"]
        else:
            assert group["rayStartParams"]["resources"] == '"{\\"trial_functions\\": 1000}"', group["groupName"]
            hosts += 1
    assert hosts >= 1
    for _, template in pod_templates(cluster):
        env = {e["name"]: e.get("value") for e in template["spec"]["containers"][0]["env"]}
        assert env["HPSEARCH_TRIAL_FUNCTION_RESOURCE"] == "trial_functions"
        assert env["RAY_TRAIN_PREEMPTION_POLL_INTERVAL_S"] == "1"


def test_a_trial_function_hosts_own_ray_resources_are_refused_not_overwritten():
    """The chart sets the Ray resources of each group that hosts trial functions; a
    user's own rayStartParams.resources there would be silently replaced, so the render
    fails naming the field and the way to keep both."""
    values = yaml.safe_load((CHART / "ci" / "gke-values.yaml").read_text())
    values["workerGroups"]["cpu"] = {**values["workerGroups"].get("cpu", {}), "rayStartParams": {"resources": '"{\\"mine\\": 1}"'}}
    with pytest.raises(helm.HelmError, match=r"workerGroups.cpu.rayStartParams.resources: the chart sets"):
        render(values)


def test_a_trial_function_hosts_own_group_resources_keep_the_trial_functions_resource(crd_validators):
    """KubeRay 1.7 starts a group's Ray with its top-level resources field instead of
    rayStartParams.resources: set there, they still carry the trial functions' resource."""
    values = yaml.safe_load((CHART / "ci" / "gke-values.yaml").read_text())
    values["workerGroups"]["cpu"] = {**values["workerGroups"].get("cpu", {}), "resources": {"custom": "2"}}
    cluster = cluster_of(values)
    assert not list(crd_validators["RayCluster"].iter_errors(cluster))
    (cpu,) = [g for g in cluster["spec"]["workerGroupSpecs"] if g["groupName"] == "cpu"]
    assert cpu["resources"] == {"custom": "2", "trial_functions": "1000"}
    others = [g for g in cluster["spec"]["workerGroupSpecs"] if g["groupName"] != "cpu"]
    assert all("trial_functions" not in (g.get("resources") or {}) for g in others)


def test_the_rayclusters_own_labels_carry_kueues_queue(crd_validators):
    """Kueue admits the RayCluster by the queue label on the object itself."""
    values = yaml.safe_load((CHART / "ci" / "gke-values.yaml").read_text())
    values["rayCluster"] = {"labels": {"kueue.x-k8s.io/queue-name": "ml"}, "annotations": {"team": "vision"}}
    cluster = cluster_of(values)
    assert not list(crd_validators["RayCluster"].iter_errors(cluster))
    assert cluster["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "ml"
    assert cluster["metadata"]["annotations"] == {"team": "vision"}
    assert "annotations" not in cluster_of(yaml.safe_load((CHART / "ci" / "gke-values.yaml").read_text()))["metadata"]
