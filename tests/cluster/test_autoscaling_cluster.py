"""The GKE quickstart's cluster (docs/gke.md) in miniature, scaled by Ray's own autoscaler from zero and back.

The chart's scenario the quickstart installs (``ci/gke-values.yaml``: cpu, gpu and tpu
groups, all at zero) is rendered with Helm's engine and its node types derived by Ray's
own KubeRay code, as the autoscaler in the head pod derives them. Ray's standard
autoscaler (v1, the chart's ``autoscaling.version``) then runs in the head started here
with that config and Ray's fake node provider (``RAY_FAKE_CLUSTER=1``), which starts
each node it decides on as a raylet on 127.0.0.1. Adapted for this machine, and only
this: the head node type takes the fake provider's name; the provider type is
``fake_multinode`` (with the GCS address, and node ids as node addresses, as the fake
provider needs); node types drop ``memory`` (the fake provider cannot start a node with
it; nothing here asks for memory) and get an 80 MiB object store; the idle timeout is 6 s
instead of the chart's 120; and the autoscaler's own liveness check is on (10 s without a
heartbeat), standing in for KubeRay, which turns it off because its operator replaces a
lost pod (here nothing else would). GPU and TPU counts and CPUs are the pods' own: logical
resources, which nothing here uses up. No token authentication (the miniature test
covers it), set explicitly. Every Ray process is started by this test and stopped by its process group.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from cluster.autoscaling import autoscaling_config, plan_launch
from search.config import load_config
from search.resources import TRIAL_FUNCTION_RESOURCE_ENV
from search.schedulable import trial_placement_groups
from support import (REPO, free_port, ray_nodes_alive, scenario_raycluster, stop_process_groups, wait_for,
                     wait_in_one_process)

pytestmark = pytest.mark.slow

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
CONFIG = REPO / "configs" / "cifar10.yaml"
IDLE_TIMEOUT_S = 6
# Ray takes the machine's address for a node unless told otherwise: with this setting
# off, every address it picks for itself (the fake provider's nodes included) is
# 127.0.0.1 (ray._private.services.get_node_ip_address).
LOOPBACK_ONLY = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


def fake_provider_config(cluster: dict, gcs_port: int) -> dict:
    """The autoscaling config KubeRay's autoscaler derives, adapted as the docstring says."""
    from ray.autoscaler._private.fake_multi_node.node_provider import FAKE_HEAD_NODE_TYPE

    config = autoscaling_config(cluster, namespace="ml")
    types = config["available_node_types"]
    types[FAKE_HEAD_NODE_TYPE] = types.pop(config["head_node_type"])
    config["head_node_type"] = FAKE_HEAD_NODE_TYPE
    for node_type in types.values():
        node_type["resources"].pop("memory", None)
        node_type["resources"]["object_store_memory"] = 80 * 2**20
    config["provider"] = {**config["provider"], "type": "fake_multinode", "use_node_id_as_ip": True,
                          "gcs_address": f"127.0.0.1:{gcs_port}", "launch_multiple": True,
                          "worker_liveness_check": True}
    config["idle_timeout_minutes"] = IDLE_TIMEOUT_S / 60
    return config


@pytest.fixture(scope="module")
def autoscaling_cluster():
    """A head (the chart's head rayStartParams: no CPUs) running Ray's autoscaler over
    the quickstart scenario's node types; yields (GCS address, environment, monitor log)."""
    from ray.autoscaler._private.fake_multi_node.node_provider import FAKE_HEAD_NODE_ID

    cluster = scenario_raycluster("gke-values.yaml")
    port = free_port()
    temp_dir = tempfile.mkdtemp(prefix="rayas-", dir="/tmp")  # short: Ray's socket paths must fit
    config_path = Path(f"{temp_dir}.json")
    config_path.write_text(json.dumps(fake_provider_config(cluster, port)))
    # Token authentication off explicitly: unset, `ray start --head` turns it on whenever
    # ~/.ray/auth_token exists (any local ray.init() writes one), and clients would not.
    env = {**os.environ, **LOOPBACK_ONLY, "RAY_AUTH_MODE": "disabled", "RAY_FAKE_CLUSTER": "1",
           "AUTOSCALER_UPDATE_INTERVAL_S": "1",
           "AUTOSCALER_HEARTBEAT_TIMEOUT_S": "10",
           "RAY_OVERRIDE_NODE_ID_FOR_TESTING": FAKE_HEAD_NODE_ID, "RAY_CLOUD_INSTANCE_ID": FAKE_HEAD_NODE_ID}
    env.pop("RAY_ADDRESS", None)
    head_params = [f"--{k}={v}" for k, v in cluster["spec"]["headGroupSpec"]["rayStartParams"].items()
                   if k not in ("dashboard-host", "object-store-memory")]  # a small store, below
    head = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", f"--port={port}", "--node-ip-address=127.0.0.1",
         f"--temp-dir={temp_dir}", "--dashboard-host=127.0.0.1", "--disable-usage-stats",
         f"--autoscaling-config={config_path}", "--object-store-memory=100000000", *head_params],
        env=env, stdout=open(f"{temp_dir}-head.log", "w"), stderr=subprocess.STDOUT, start_new_session=True)
    driver_env = {k: v for k, v in env.items() if not k.startswith(("RAY_OVERRIDE", "RAY_CLOUD", "RAY_FAKE"))}
    # the driver's pod's environment, as the chart renders it: trial functions ask for
    # the resource only the cpu group has
    driver_env[TRIAL_FUNCTION_RESOURCE_ENV] = pod_env(cluster)[TRIAL_FUNCTION_RESOURCE_ENV]
    address = f"127.0.0.1:{port}"
    try:
        wait_in_one_process(*ray_nodes_alive(address, 1), 120, "the head alone", driver_env)
        yield address, driver_env, Path(temp_dir, "session_latest", "logs", "monitor.log")
    finally:
        stop_process_groups([head])  # the fake nodes are the monitor's children, in the head's group
        shutil.rmtree(temp_dir, ignore_errors=True)
        config_path.unlink(missing_ok=True)


def pod_env(cluster: dict) -> dict[str, str]:
    """The head container's environment variables with plain values, as the chart renders them."""
    container = cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


def alive_nodes(address: str, env: dict) -> int:
    """How many nodes of the cluster are alive (0 when it cannot be asked)."""
    code = ("import ray; ray.init(address=%r, logging_level='ERROR'); "
            "print('alive nodes:', sum(n['Alive'] for n in ray.nodes()))" % address)
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    found = re.findall(r"^alive nodes: (\d+)$", done.stdout, re.MULTILINE)
    return int(found[-1]) if done.returncode == 0 and found else 0


def live_actors(address: str, env: dict) -> list[list]:
    """[class name, on the head] of every live actor (Ray's state API)."""
    code = ("import json, ray; from ray.util.state import list_actors, list_nodes\n"
            "ray.init(address=%r, logging_level='ERROR')\n"
            "head = {n.node_id for n in list_nodes(address=%r) if n.is_head_node}\n"
            "print('actors:', json.dumps([[a.class_name, a.node_id in head] "
            "for a in list_actors(address=%r, filters=[('state', '=', 'ALIVE')])]))" % (address, address, address))
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    found = re.findall(r"^actors: (.*)$", done.stdout, re.MULTILINE)
    assert found, done.stderr[-3000:]
    return json.loads(found[-1])


def representatives(config) -> dict[str, list[str]]:
    """One backbone per distinct request (the placement groups its trial asks for):
    backbones that ask the same are scheduled the same."""
    by_request: dict[str, list[str]] = {}
    for backbone in config.space.backbones:
        by_request.setdefault(json.dumps(trial_placement_groups(config, backbone), sort_keys=True), []).append(
            backbone)
    return {names[0]: names for names in by_request.values()}


LOST_EPOCHS = 4  # the trial whose node is lost: 4 epochs of 3 s, its node killed in epoch 3


def test_every_trial_shape_scales_its_group_from_zero_and_back_and_a_lost_node_is_replaced(autoscaling_cluster,
                                                                                          tmp_path):
    """Every trial shape of configs/cifar10.yaml, at once, each on the group Ray's
    autoscaler launches for it from zero; the TPU trial's node is killed (its raylet and
    every process it started, SIGKILL) while the trial trains on it: the autoscaler
    launches a replacement, Ray Train restarts the worker group there from the latest
    checkpoint, and each epoch is trained once but for the one in flight at the kill.
    Then every group goes back to zero."""
    import psutil

    address, env, monitor_log = autoscaling_cluster
    config = load_config(CONFIG)
    view = autoscaling_config(scenario_raycluster("gke-values.yaml"), namespace="ml")
    shapes = representatives(config)
    assert sorted(shapes) == ["B0", "B4", "B6"], shapes  # 2 L4 workers, 4 L4 workers, one v6e host
    lost = "B6"

    # 1. Before the fix, a TPU trial's bundle carried accelerator_type:TPU-V6E (Ray Train
    # adds it when the ScalingConfig names the accelerator): the autoscaler finds no node
    # type for it and launches nothing, however long the trial waits.
    stale = {"CPU": 8.0, "TPU": 4.0, "accelerator_type:TPU-V6E": 0.001}
    code = ("import ray; from ray.util.placement_group import placement_group; "
            "ray.init(address=%r, logging_level='ERROR'); pg = placement_group([%r]); "
            "print('placed:', pg.wait(6))" % (address, stale))
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert "placed: False" in done.stdout, done.stdout[-2000:] + done.stderr[-2000:]
    log = monitor_log.read_text()
    assert "could not find a node type to satisfy the request" in log and "accelerator_type:TPU-V6E" in log
    assert "of type tpu" not in log
    assert alive_nodes(address, env) == 1

    # 2. The search's stand-in trials, each asking exactly what its backbone's trials ask
    trials = [f"{name}:{LOST_EPOCHS}:3" if name == lost else name for name in shapes]
    driver = subprocess.Popen(
        [sys.executable, str(HERE / "standin_trials.py"), address, str(CONFIG), ",".join(trials), str(tmp_path)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    ledger = tmp_path / "ledger"

    def trained() -> list[dict]:
        return [json.loads(p.read_text()) | {"worker": p.stem.split("-")[1]}
                for p in ledger.glob(f"{lost}-worker*.json")]

    try:
        # once epoch 2 trains, epoch 1's checkpoint is in storage (each report waits for it)
        wait_for(lambda: any(r["epoch"] == 2 for r in trained()), 300, f"{lost}'s epoch 2")
        (first,) = [r for r in trained() if r["epoch"] == 2]
        # the trial function is elsewhere: what is lost is the worker group's node only
        assert json.loads((ledger / f"{lost}-trial.json").read_text())["node_type"] != "tpu"
        # its node, whole: its raylet and every process it started (its workers would
        # otherwise outlive it, orphaned)
        raylet = psutil.Process(first["raylet_pid"])
        for process in [*raylet.children(recursive=True), raylet]:
            with contextlib.suppress(psutil.NoSuchProcess):  # one may end with another killed before it
                process.kill()
        out, err = driver.communicate(timeout=600)
    finally:
        try:
            os.killpg(driver.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert driver.returncode == 0, out[-3000:] + err[-3000:]
    finished = json.loads(re.findall(r"^finished: (.*)$", out, re.MULTILINE)[-1])
    assert finished == {name: True for name in shapes}, err[-3000:]

    # each process ran on a node of the group Ray's scheduler chose for it from zero
    records = {p.stem: json.loads(p.read_text()) for p in ledger.glob("*.json")}
    for name in shapes:
        plan = plan_launch(view, trial_placement_groups(config, name))
        workers = {key.split("-")[1]: r["node_type"] for key, r in records.items() if key.startswith(f"{name}-worker")}
        (bundles,) = trial_placement_groups(config, name)[1:]
        assert len(workers) == len(bundles), records  # one record per rank (and epoch)
        accelerator = "GPU" if "GPU" in bundles[0] else "TPU"
        groups = {g for g in plan.launch if view["available_node_types"][g]["resources"].get(accelerator)}
        assert set(workers.values()) == groups and len(groups) == 1, (name, workers, plan)
        # the trial function (0.01 CPU, and the trial-function resource) runs on the cpu
        # group, never on an accelerator node (nor the head, which has no CPUs)
        assert records[f"{name}-trial"]["node_type"] == "cpu", (name, records)
    log = monitor_log.read_text()
    for group in ("gpu", "tpu", "cpu"):
        assert re.search(rf"Adding \d+ node\(s\) of type {group}\.", log), group

    # the lost node's trial: one restart, from a checkpoint, on the replacement node
    runs = sorted((r["resumed_after"], r["epoch"], r["raylet_pid"]) for r in trained())
    attempts = sorted({after for after, _, _ in runs})
    assert len(attempts) == 2 and attempts[0] == 0, runs
    resumed_after = attempts[1]
    epochs_trained = [epoch for _, epoch, _ in runs]
    # every epoch trained; the only one trained twice is the one in flight at the kill
    assert sorted(set(epochs_trained)) == list(range(1, LOST_EPOCHS + 1)), runs
    repeated = [e for e in set(epochs_trained) if epochs_trained.count(e) > 1]
    assert repeated in ([], [resumed_after + 1]), runs
    assert all(pid != first["raylet_pid"] for after, _, pid in runs if after == resumed_after)  # elsewhere
    # one TPU host at a time: the restarted group's host is a second one the autoscaler added
    added = re.findall(r":event_summary:Adding (\d+) node\(s\) of type tpu\.", log)
    assert sum(map(int, added)) >= 2, added

    assert live_actors(address, env) == [["_AutoscalingCoordinatorActor", True]]

    # 3. and back to zero: every worker node removed once idle (Ray Train's detached
    # coordinator actor is on the head: search.distributed.keep_train_coordinator_on_this_node)
    wait_in_one_process(*ray_nodes_alive(address, 1), 30 * IDLE_TIMEOUT_S, "every group at zero", env, monitor_log)
    log = monitor_log.read_text()
    for group in ("gpu", "tpu", "cpu"):
        assert re.search(rf"Removing \d+ nodes of type {group} \(idle\)", log), group
