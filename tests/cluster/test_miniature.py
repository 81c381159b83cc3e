"""The GKE path in miniature: the chart's CPU scenario as Ray nodes on 127.0.0.1.

The chart is rendered with Helm's engine; the head starts with the head group's
rayStartParams (no CPUs for trials) and two worker nodes with the worker group's
(CPUs scaled to fit this 2-core machine), token authentication on, fake-gcs-server as
the bucket and HPSEARCH_STORAGE set as the chart sets it in every pod. The search is
submitted with the GKE quickstart's own `ray job submit` line (docs/gke.md), stopped with `ray job stop`
mid-search and resubmitted with --resume by `hpsearch cluster submit --follow` (then its
`logs` and `stop`); the finished experiment is read from outside the cluster with
`hpsearch ensemble` and `hpsearch report`. A submit without the cluster's token is one
clear line.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from support import (assert_each_epoch_trained_once, create_bucket, free_port, ray_nodes_alive, scenario_raycluster,
                     start_fake_gcs, stop_process_groups, wait_in_one_process)

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
BUCKET_PATH = "gs://hpsearch-test/experiments"
CONFIG = """
data: {dataset: digits, image_size: 32, max_train_examples: 96}
space:
  backbones: [Tiny]
  warmup_epochs: {low: 0, high: 1}
  max_lr: {low: 0.01, high: 0.02, log: true}
recipe: {weights: none, flip: false, batch_size: 32, head_epochs: 0, flat_epochs: 1, cooldown_epochs: 1}
search: {name: miniature, num_trials: 3, max_concurrent_trials: 2, seed: 5, grace_epochs: 1}
resources: {strategy: single, cpus_per_worker: 1}
"""  # no storage.path: HPSEARCH_STORAGE, as the chart sets it, decides


def rendered_cluster() -> dict:
    return scenario_raycluster("cpu-values.yaml", storage={"bucket": BUCKET_PATH})


def start_params(params: dict) -> list[str]:
    """``ray start`` arguments from rayStartParams, as KubeRay's bash command line passes
    them (a value may carry its own shell quoting: the chart's resources JSON does)."""
    return [arg for key, value in params.items() if key != "dashboard-host"
            for arg in shlex.split(f"--{key}={value}")]


@pytest.fixture(scope="module")
def miniature(tmp_path_factory):
    """Head + 2 workers shaped like the chart's CPU scenario; yields (address, env)."""
    cluster = rendered_cluster()
    head_spec = cluster["spec"]["headGroupSpec"]
    (group,) = cluster["spec"]["workerGroupSpecs"]
    pod_env = {e["name"]: e["value"] for e in group["template"]["spec"]["containers"][0]["env"] if "value" in e}
    assert head_spec["rayStartParams"]["num-cpus"] == "0" and group["replicas"] == 2

    server, endpoint = start_fake_gcs(tmp_path_factory.mktemp("gcs") / "fake-gcs.log")
    create_bucket(endpoint, "hpsearch-test")
    env = {**os.environ, **pod_env, "PATH": f"{BIN}:{os.environ['PATH']}", "HPSEARCH_GCS_ENDPOINT": endpoint,
           "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    env.pop("RAY_ADDRESS", None)
    gcs_port, dashboard_port = free_port(), free_port()
    temp_dir = tempfile.mkdtemp(prefix="raymini-", dir="/tmp")  # short: Ray's socket paths must fit
    # Every port a node would take by default named free: another Ray on the machine may
    # hold a default one (the head's agent on 52365 is the one Ray's job server submits
    # through; taken, jobs are refused with "No available agent").
    common = ["--block", "--node-ip-address=127.0.0.1", "--disable-usage-stats"]

    def own_ports() -> list[str]:
        return [f"--dashboard-agent-listen-port={free_port()}", f"--metrics-export-port={free_port()}"]

    processes = [subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", f"--port={gcs_port}", "--dashboard-host=127.0.0.1",
         f"--dashboard-port={dashboard_port}", f"--temp-dir={temp_dir}", "--include-dashboard=true",
         f"--ray-client-server-port={free_port()}", *own_ports(), *start_params(head_spec["rayStartParams"]), *common],
        env=env, stdout=open(f"{temp_dir}-head.log", "w"), stderr=subprocess.STDOUT, start_new_session=True)]
    # the worker group's pods: 2 CPUs each in the chart, 1 each here (2 cores in all)
    worker_cpus = max(1, int(float(group["template"]["spec"]["containers"][0]["resources"]["requests"]["cpu"])) // 2)
    # each node a temporary directory of its own, as each pod has its own disk: nodes that
    # shared one would share Ray's working-directory cache, and a node whose last task of
    # a job ended would delete the job's files under the other nodes' processes
    worker_dirs = [tempfile.mkdtemp(prefix="raymw-", dir="/tmp") for _ in range(group["replicas"])]
    try:
        wait_in_one_process(*ray_nodes_alive(f"127.0.0.1:{gcs_port}", 1, at_least=True), 120, "the head", env)
        for replica, worker_dir in enumerate(worker_dirs, start=1):
            processes.append(subprocess.Popen(
                [str(BIN / "ray"), "start", f"--address=127.0.0.1:{gcs_port}", f"--num-cpus={worker_cpus}",
                 f"--temp-dir={worker_dir}", *own_ports(), *start_params(group["rayStartParams"]), *common],
                env=env, stdout=open(f"{temp_dir}-worker{replica}.log", "w"), stderr=subprocess.STDOUT,
                start_new_session=True))
        wait_in_one_process(*ray_nodes_alive(f"127.0.0.1:{gcs_port}", 1 + len(worker_dirs), at_least=True), 180,
                            "the worker nodes", env)
        address = f"http://127.0.0.1:{dashboard_port}"
        wait_for_job_server(address, env)
        yield address, env, gcs_port
    finally:
        stop_process_groups(processes)
        server.stop()
        for directory in (temp_dir, *worker_dirs):
            shutil.rmtree(directory, ignore_errors=True)


def wait_for_job_server(address: str, env: dict, wait_s: int = 120) -> None:
    """Wait until Ray's job server takes a job (it refuses one until the head's agent
    has registered, which on a busy machine comes after the nodes are up): a job that
    does nothing, submitted as `hpsearch cluster submit` submits, waiting at most ``wait_s``."""
    code = ("from ray.job_submission import JobSubmissionClient\n"
            "from cluster.jobs import submit_job\n"
            f"print('taken:', submit_job(JobSubmissionClient({address!r}), {address!r}, say=lambda _: None, "
            f"wait_s={wait_s}, poll_s=1, entrypoint='true'))\n")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=wait_s + 60)
    assert done.returncode == 0 and "taken:" in done.stdout, f"the job server within {wait_s} s: {done.stderr[-2000:]}"


def readme_submit_line() -> str:
    """The GKE quickstart's own `ray job submit` line (docs/gke.md)."""
    guide = (REPO / "docs" / "gke.md").read_text()
    return next(l.strip() for l in guide.splitlines() if l.strip().startswith("ray job submit --address"))


def job_status(address, env, job_id) -> str:
    """The job's status through Ray's job SDK, with the cluster's token."""
    code = ("from ray.job_submission import JobSubmissionClient; "
            f"print(JobSubmissionClient({address!r}).get_job_status({job_id!r}).value)")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    return done.stdout.strip().splitlines()[-1] if done.returncode == 0 and done.stdout.strip() else "UNKNOWN"


def gcs_files():
    from trainables.storage import resolve

    location = resolve(BUCKET_PATH)
    return location, location.filesystem


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A user's project directory: the packages plus their configs."""
    root = tmp_path_factory.mktemp("project")
    for name in ("search", "trainables", "cluster", "configs"):
        shutil.copytree(REPO / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    (root / "configs" / "miniature.yaml").write_text(CONFIG)
    return root


def test_search_on_the_miniature_cluster_survives_a_stopped_job(miniature, project, monkeypatch):
    address, env, gcs_port = miniature
    monkeypatch.setenv("HPSEARCH_GCS_ENDPOINT", env["HPSEARCH_GCS_ENDPOINT"])  # this process reads the bucket too
    line = readme_submit_line().replace("http://localhost:8265", address)
    line = line.replace("configs/cifar10.yaml", "configs/miniature.yaml").replace("ray job submit", "ray job submit --no-wait", 1)
    assert line != readme_submit_line()

    # 1. submit, and stop the job once a trial has finished (mid-search)
    first = subprocess.run(["bash", "-c", line], cwd=project, env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    job_id = re.search(r"Job '([^']+)' submitted successfully", first.stdout + first.stderr).group(1)
    client = f"from ray.job_submission import JobSubmissionClient; client = JobSubmissionClient({address!r})"
    wait_in_one_process(client, f"' completed after ' in client.get_job_logs({job_id!r}) or "
                                f"client.get_job_status({job_id!r}).value not in ('PENDING', 'RUNNING')",
                        600, "a finished trial or the job's end", env)
    logs = subprocess.run([str(BIN / "ray"), "job", "logs", "--address", address, job_id], env=env,
                          capture_output=True, text=True, timeout=60).stdout
    assert job_status(address, env, job_id) in ("PENDING", "RUNNING"), logs[-3000:]
    finished_before = set(re.findall(r"Trial (\S+) completed after", logs))
    assert finished_before, logs[-3000:]
    stop = subprocess.run([str(BIN / "ray"), "job", "stop", "--address", address, job_id], env=env,
                          capture_output=True, text=True, timeout=120)
    wait_in_one_process(client, f"client.get_job_status({job_id!r}).value == 'STOPPED'", 120,
                        f"the job stopped (ray job stop said: {stop.stdout[-500:]} {stop.stderr[-500:]})", env)

    # 2. resubmit with --resume, through `hpsearch cluster submit --follow` this time:
    # the job's own output streamed until it ends, then its logs and a stop of the
    # finished job through `hpsearch cluster`
    hpsearch = [str(BIN / "hpsearch"), "cluster"]
    resumed = subprocess.run([*hpsearch, "submit", "--config", "configs/miniature.yaml", "--address", address,
                              "--follow", "--", "--resume"], cwd=project, env=env, capture_output=True, text=True,
                             timeout=900)
    assert resumed.returncode == 0, resumed.stdout[-4000:] + resumed.stderr[-2000:]
    resumed_id = re.search(r"submitted job (\S+)", resumed.stdout).group(1)
    assert "best validation accuracy:" in resumed.stdout  # the search's own output, streamed
    assert f"job {resumed_id}: SUCCEEDED" in resumed.stdout
    logs = subprocess.run([*hpsearch, "logs", resumed_id, "--address", address], cwd=project, env=env,
                          capture_output=True, text=True, timeout=120)
    assert logs.returncode == 0 and "best validation accuracy:" in logs.stdout
    stop = subprocess.run([*hpsearch, "stop", resumed_id, "--address", address], cwd=project, env=env,
                          capture_output=True, text=True, timeout=120)
    assert stop.returncode == 0 and "already finished" in stop.stdout

    # 3. what the bucket holds: every trial once, finished, its epochs each once
    location, fs = gcs_files()
    experiment = location.join("miniature")
    rows = pq.read_table(f"{experiment}/trials.parquet", filesystem=fs).to_pylist()
    assert len(rows) == 3 and all(r["status"] == "TERMINATED" for r in rows), rows
    assert {f"run_trial_{r['trial_id']}" for r in rows} >= finished_before  # nothing lost
    history = pq.read_table(f"{experiment}/history.parquet", filesystem=fs).to_pandas()
    assert_each_epoch_trained_once(history, interruptions=1)  # the stopped driver
    for row in rows:
        assert fs.get_file_info(f"{row['best_checkpoint']}/model.keras").is_file, row
    checkpoints = [i for i in fs.get_file_info(__import__("pyarrow.fs").fs.FileSelector(experiment, recursive=True))
                   if i.base_name == "model.keras"]
    assert len(checkpoints) >= 3

    # 4. every trial ran on a worker node, none on the head (Ray's state API, with the token)
    code = (
        "import json, ray; from ray.util.state import list_actors, list_nodes\n"
        f"ray.init(address='127.0.0.1:{gcs_port}', logging_level='ERROR')\n"
        f"address = '127.0.0.1:{gcs_port}'\n"  # named: Ray's own guess refuses when another Ray runs here
        "head = {n.node_id for n in list_nodes(address=address) if n.is_head_node}\n"
        "trials = [a.node_id for a in list_actors(address=address, filters=[('class_name', '=', 'ImplicitFunc')],"
        " limit=1000)]\n"
        "print(json.dumps({'head': sorted(head), 'trials': trials}))"
    )
    placed = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert placed.returncode == 0 and placed.stdout.strip(), placed.stderr[-3000:]
    placement = json.loads(placed.stdout.strip().splitlines()[-1])
    # the resumed job's trial actors at least (it may have had a single trial left, and
    # the stopped job's actors may be gone from Ray's state by now): none on the head
    assert placement["trials"] and not set(placement["trials"]) & set(placement["head"]), placement

    # 5. from outside the cluster: the ensemble and the report straight from the bucket (at once)
    outside = {**os.environ, "HPSEARCH_GCS_ENDPOINT": env["HPSEARCH_GCS_ENDPOINT"]}
    readers = [subprocess.Popen([sys.executable, "-m", "search", *command], env=outside, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
               for command in (["ensemble", f"{BUCKET_PATH}/miniature", "--top-k", "2", "--tta", "2"],
                               ["report", f"{BUCKET_PATH}/miniature"])]
    for reader in readers:
        _, stderr = reader.communicate(timeout=600)
        assert reader.returncode == 0, stderr[-3000:]
    assert fs.get_file_info(f"{experiment}/report/index.html").is_file
    assert fs.get_file_info(f"{experiment}/ensemble/ensemble.keras").is_file


def test_missing_token_is_one_clear_line(miniature, project):
    address, env, _ = miniature
    no_token = {k: v for k, v in env.items() if k != "RAY_AUTH_TOKEN"}
    no_token["HOME"] = str(project)  # and no ~/.ray/auth_token to fall back on
    done = subprocess.run([str(BIN / "hpsearch"), "cluster", "submit", "--config", "configs/miniature.yaml",
                           "--address", address], cwd=project, env=no_token, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2
    assert "token" in done.stderr and "RAY_AUTH_TOKEN" in done.stderr
    assert "Traceback" not in done.stderr
