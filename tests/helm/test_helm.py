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

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "hpsearch"
SCENARIOS = sorted((CHART / "ci").glob("*-values.yaml"))
CRDS = Path(__file__).resolve().parent / "crds"  # vendored: see crds/SOURCE.md
KUBE_VERSION = kubernetes_validate.latest_version()


def render(values: dict) -> list[dict]:
    rendered = helm.Chart.load(CHART).render(values, name="search", namespace="ml")
    return [
        doc
        for path, text in rendered.items()
        if path.endswith(".yaml")
        for doc in yaml.safe_load_all(text)
        if doc
    ]


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
    crd = yaml.safe_load((CRDS / file_name).read_text())
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
        "cpu-values.yaml", "gpu-values.yaml", "tpu-values.yaml", "tpu-multihost-values.yaml",
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
    multi = group("tpu-multihost-values.yaml", "tpu-slice")
    assert multi["numOfHosts"] == 4  # 4x4 = 16 chips on hosts of 4
    pod = multi["template"]["spec"]
    assert pod["nodeSelector"] == {
        "cloud.google.com/gke-tpu-accelerator": "tpu-v6e-slice",
        "cloud.google.com/gke-tpu-topology": "4x4",
    }
    assert pod["containers"][0]["resources"]["limits"]["google.com/tpu"] == "4"


def test_workload_identity_and_bucket():
    values = yaml.safe_load((CHART / "ci" / "gpu-values.yaml").read_text())
    docs = render(values)
    account = next(d for d in docs if d["kind"] == "ServiceAccount")
    assert account["metadata"]["annotations"]["iam.gke.io/gcp-service-account"].endswith(".iam.gserviceaccount.com")
    cluster = next(d for d in docs if d["kind"] == "RayCluster")
    for container in containers(cluster):
        env = {e["name"]: e["value"] for e in container["env"]}
        assert env["HPSEARCH_STORAGE"] == "gs://my-bucket/experiments"


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
