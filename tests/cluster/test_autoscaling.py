"""Every trial shape a shipped config asks for, against the autoscaler's own view.

For each scenario in ``helm/hpsearch/ci/`` (and the one the GKE quickstart's (docs/gke.md)
installs): the chart is rendered with Helm's engine, the node types are derived from the
rendered RayCluster by Ray's own ``_derive_autoscaling_config_from_ray_cr`` (as KubeRay's
autoscaler does in the head pod), and the placement groups a trial asks for are built by
the search's own code (``trial_resources``, ``scaling_config``); Ray's
``ResourceDemandScheduler`` then decides, from a cluster of only its head, which groups
it scales up for one trial of each backbone. Each scenario names the configs and
backbones it serves in its ``# serves:`` lines.

This is the autoscaler's decision, in-process; ``test_autoscaling_cluster.py`` runs
Ray's autoscaler itself with nodes on 127.0.0.1.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from cluster.autoscaling import autoscaling_config, group_resources, plan_launch
from search.config import load_config
from search.distributed import scaling_config, worker_group_bundles
from search.schedulable import trial_placement_groups, unschedulable
from support import CHART, REPO, scenario_raycluster

SCENARIOS = sorted((CHART / "ci").glob("*-values.yaml"))

GKE_GUIDE = (REPO / "docs" / "gke.md").read_text()  # the GKE quickstart


def view_of(values_file: str) -> dict:
    return autoscaling_config(scenario_raycluster(values_file), namespace="ml")


def served(path: Path) -> list[tuple[str, list[str]]]:
    """(config, backbones) of each ``# serves:`` line of a scenario."""
    lines = [line.split(":", 1)[1].split() for line in path.read_text().splitlines() if line.startswith("# serves:")]
    assert lines, f"{path.name} names no config it serves"
    return [(words[0], words[1:]) for words in lines]


SERVED = [(path.name, config, backbone) for path in SCENARIOS for config, backbones in served(path)
          for backbone in backbones]


def chart_environment(values_file: str) -> dict[str, str]:
    """The variables the chart sets in the head pod, where the search's driver runs."""
    head = scenario_raycluster(values_file)["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e["value"] for e in head["env"] if "value" in e}


@pytest.mark.parametrize(("scenario", "config_file", "backbone"), SERVED, ids=lambda v: str(v))
def test_every_served_backbone_scales_a_group_up_from_the_head_alone(scenario, config_file, backbone, monkeypatch):
    for name, value in chart_environment(scenario).items():  # as the driver in the head pod
        monkeypatch.setenv(name, value)
    view = view_of(scenario)
    config = load_config(REPO / config_file)
    assert backbone in config.space.backbones
    groups = trial_placement_groups(config, backbone)
    plan = plan_launch(view, groups)
    assert plan.feasible, (scenario, backbone, groups, plan)
    # what it launches holds every bundle of the trial, accelerators included
    nodes = group_resources(view)
    launched = {key: sum(nodes[name][0].get(key, 0) * count for name, count in plan.launch.items())
                for key in ("CPU", "GPU", "TPU")}
    asked = {key: sum(b.get(key, 0) for g in groups for b in g) for key in ("CPU", "GPU", "TPU")}
    assert all(launched[k] >= asked[k] for k in asked), (plan.launch, asked)
    alone = dataclasses.replace(config, space=dataclasses.replace(config.space, backbones=(backbone,)))
    assert unschedulable(alone, view) == []


def test_every_scenario_serves_some_backbone_of_a_shipped_config():
    assert {name for name, _, _ in SERVED} == {p.name for p in SCENARIOS}


def readme_gke_path() -> tuple[str, str]:
    """The values file the GKE quickstart's (docs/gke.md) installs and the config it submits."""
    gke = GKE_GUIDE[GKE_GUIDE.index("## GKE quickstart"):]
    (values,) = set(re.findall(r"helm install search helm/hpsearch -f helm/hpsearch/ci/(\S+)", gke))
    configs = set(re.findall(r"python -m search run --config (\S+)", gke))
    (config,) = configs
    return values, config


def test_the_readme_installs_every_pool_its_config_asks_for():
    values, config_file = readme_gke_path()
    config = load_config(REPO / config_file)
    assert unschedulable(config, view_of(values)) == []
    # and the scenario says so
    assert (config_file, list(config.space.backbones)) in served(CHART / "ci" / values)


def test_every_accelerator_group_of_every_scenario_is_one_the_real_autoscaler_scaled():
    """test_autoscaling_cluster.py runs Ray's autoscaler itself on the quickstart's scenario
    only (each run costs minutes). Every accelerator node type any scenario has is, by the
    resources the autoscaler derives for it, one of that scenario's, which that test scales
    from zero and back; the CPU-only scenario is the miniature test's, whose nodes Ray
    starts there. So the real run covers each accelerator group a scenario launches, and
    this module's plans say which one each backbone needs."""
    readme, _ = readme_gke_path()
    scaled = [t["resources"] for t in view_of(readme)["available_node_types"].values()]
    accelerator_groups = 0
    for path in SCENARIOS:
        for name, node_type in view_of(path.name)["available_node_types"].items():
            if node_type["resources"].get("GPU") or node_type["resources"].get("TPU"):
                assert node_type["resources"] in scaled, (path.name, name, node_type["resources"])
                accelerator_groups += 1
    assert accelerator_groups == 6  # gpu and tpu of gpu-, tpu-, gke- and spot-values


# every scenario with an accelerator group (cpu-values.yaml has none)
@pytest.mark.parametrize("scenario", [p.name for p in SCENARIOS if p.name != "cpu-values.yaml"])
def test_in_every_scenario_a_trial_function_goes_only_to_a_cpu_group(scenario, monkeypatch):
    """The driver in the head pod (the chart's environment) asks, for every distributed
    trial's function, a resource only the cpu groups that are not Spot have: Ray's
    autoscaler scales such a group for it, and no accelerator node type can hold it,
    idle or not, while the trial's workers still go to the accelerators. Without the
    chart's variable (a laptop, the control) the same function fits an accelerator node."""
    from search.resources import TRIAL_FUNCTION_RESOURCE_ENV

    view = view_of(scenario)
    nodes = group_resources(view)
    accelerators = [name for name, node in nodes.items() if node[0].get("GPU") or node[0].get("TPU")]
    config = load_config(REPO / "configs" / "cifar10.yaml")

    def fits(bundle, node):
        return all(node.get(key, 0) >= value for key, value in bundle.items())

    monkeypatch.delenv(TRIAL_FUNCTION_RESOURCE_ENV, raising=False)
    (function,) = trial_placement_groups(config, "B0")[0]
    assert accelerators and all(fits(function, nodes[name][0]) for name in accelerators)  # the control

    monkeypatch.setenv(TRIAL_FUNCTION_RESOURCE_ENV, chart_environment(scenario)[TRIAL_FUNCTION_RESOURCE_ENV])
    for backbone in config.space.backbones:
        function_group, workers = trial_placement_groups(config, backbone)
        assert not any(fits(function_group[0], nodes[name][0]) for name in accelerators), backbone
        assert plan_launch(view, [function_group]).launch == {"cpu": 1}, backbone
        plan = plan_launch(view, [function_group, workers])
        if plan.feasible:  # the scenario's groups hold this backbone's workers
            assert plan.launch["cpu"] == 1 and set(plan.launch) - {"cpu"} <= set(accelerators), plan


def test_the_check_sees_a_config_whose_pools_are_missing():
    """Before this check, the quickstart installed the GPU scenario and submitted
    configs/cifar10.yaml, whose B6/B7 go to TPUs: those trials waited for ever."""
    problems = unschedulable(load_config(REPO / "configs" / "cifar10.yaml"), view_of("gpu-values.yaml"))
    assert len(problems) == 1, problems
    assert problems[0].startswith("B6, B7: a trial asks 1 x {'CPU': 0.01} + 1 x {'CPU': 8.0, 'TPU': 4.0}")
    assert "gpu (up to 4 x {CPU: 6, GPU: 1, memory: 22Gi})" in problems[0]


def test_the_check_sees_an_accelerator_type_key_no_node_type_has():
    """kuberay#863: Ray Train adds ``accelerator_type:TPU-V6E`` to every bundle when the
    ScalingConfig names the accelerator (as hpsearch did); the autoscaler derives no such
    key from the pod spec, so the TPU group never scales up. The same bundle without it
    (what ``scaling_config`` asks now) scales the TPU group from zero."""
    import ray.train

    config = load_config(REPO / "configs" / "cifar10.yaml")
    shape = config.resources.shape_for("B7")
    named = ray.train.ScalingConfig(num_workers=1, use_tpu=True, topology="2x2", accelerator_type="TPU-V6E",
                                    resources_per_worker={"CPU": 8.0, "TPU": 4.0})
    bundle = dict(named._resources_per_worker_not_none)
    assert "accelerator_type:TPU-V6E" in bundle
    view = view_of("tpu-values.yaml")
    assert not plan_launch(view, [[{"CPU": 0.01}], [bundle]]).feasible
    assert worker_group_bundles(shape) == [{"CPU": 8.0, "TPU": 4.0}]
    assert plan_launch(view, trial_placement_groups(config, "B7")).launch.get("tpu") == 1


def test_every_tpu_shape_shipped_is_accepted_by_ray_train():
    """Every TPU shape in the shipped configs builds its ScalingConfig (Ray validates
    TPU settings there) and holds one whole host: no accelerator key, no topology."""
    seen = 0
    for path in sorted((REPO / "configs").glob("*.yaml")):
        config = load_config(path)
        for backbone in config.space.backbones:
            shape = config.resources.shape_for(backbone)
            if shape.strategy != "tpu":
                continue
            built = scaling_config(shape)
            assert built.use_tpu and built.num_workers == 1 and built.topology is None
            assert built.accelerator_type is None
            assert not [k for b in worker_group_bundles(shape) for k in b if k.startswith("accelerator_type")]
            seen += 1
    assert seen == 2  # B6 and B7 of configs/cifar10.yaml


def test_readme_node_pools_start_at_zero_and_tpu_pools_name_their_zone():
    """The quickstart's step 1, and its Spot variant: accelerator pools start with no node
    (gcloud's default is 3 per zone), the TPU pool names the zone that has v6e (one
    zone of us-central1) and the L4 pools the zones that have L4s; the Spot pools are Spot and carry the taint the chart's Spot
    groups tolerate."""
    gke = GKE_GUIDE[GKE_GUIDE.index("## GKE quickstart"):GKE_GUIDE.index("### What the miniature cluster test proves")]
    commands = [" ".join(c.replace("\\\n", " ").split()) for c in re.findall(
        r"gcloud container node-pools create (?:[^\n]*\\\n)*[^\n]*", gke)]
    assert len(commands) == 4, commands
    spot = [c for c in commands if "--spot" in c]
    assert len(spot) == 2 and all("--node-taints cloud.google.com/gke-spot=true:NoSchedule" in c for c in spot)
    for command in commands:
        assert "--accelerator" in command or "--tpu-topology" in command, command
        assert "--num-nodes 0" in command and "--min-nodes 0" in command, command
        if "--tpu-topology" in command:
            assert re.search(r"--node-locations us-central1-[a-f]\b", command), command
        else:  # g2 machines are not in every zone of a region: the pool names those that have them
            assert "--node-locations L4_ZONES" in command and "L4_ZONES" in gke.split("```")[0], command


@pytest.fixture
def in_kuberay_pod(monkeypatch):
    """This process as the driver in the chart's head pod: the chart's environment, and
    the Kubernetes API (as Ray's KubeRay client reaches it) answering with a RayCluster
    the test chooses. Returns the setter and the paths the client asked for."""
    from ray.autoscaler._private.kuberay.node_provider import KubernetesHttpApiClient

    from cluster.autoscaling import RAYCLUSTER_NAME_ENV, RAYCLUSTER_NAMESPACE_ENV

    served_cluster: dict = {}
    asked: list[tuple[str, str]] = []

    def get(self, path):
        asked.append((self._namespace, path))
        return served_cluster

    monkeypatch.setattr(KubernetesHttpApiClient, "get", get)
    monkeypatch.setenv(RAYCLUSTER_NAME_ENV, "search-hpsearch")
    monkeypatch.setenv(RAYCLUSTER_NAMESPACE_ENV, "ml")

    def serve(values_file: str) -> None:
        served_cluster.clear()
        served_cluster.update(scenario_raycluster(values_file))
        served_cluster["metadata"]["namespace"] = "ml"  # as the API server returns it

    return serve, asked


def test_run_refuses_what_no_group_of_its_cluster_holds_before_ray_starts(in_kuberay_pod, tmp_path, monkeypatch,
                                                                           capsys):
    import ray

    from search.cli import main

    serve, asked = in_kuberay_pod
    serve("gpu-values.yaml")
    monkeypatch.setenv("HPSEARCH_STORAGE", str(tmp_path))
    assert main(["run", "--config", str(REPO / "configs" / "cifar10.yaml")]) == 2
    err = capsys.readouterr().err
    assert "on RayCluster ml/search-hpsearch these trials could never start: B6, B7: a trial asks" in err, err
    assert "gpu (up to 4 x {CPU: 6, GPU: 1, memory: 22Gi})" in err and "ci/gke-values.yaml" in err
    assert asked == [("ml", "rayclusters/search-hpsearch")]
    assert not ray.is_initialized()
    assert not list(tmp_path.iterdir())  # nothing written


def test_the_readme_cluster_passes_the_same_check(in_kuberay_pod):
    from search.experiment import check_schedulable

    serve, asked = in_kuberay_pod
    serve("gke-values.yaml")
    assert check_schedulable(load_config(REPO / "configs" / "cifar10.yaml")) is True
    assert asked == [("ml", "rayclusters/search-hpsearch")]
