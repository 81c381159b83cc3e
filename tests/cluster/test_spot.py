"""A Spot reclaim under a running mwms trial, on Ray nodes on 127.0.0.1.

The head (it has the resource the trial function asks for, as the chart's cpu groups
have) and four one-CPU worker nodes, each a `ray start --block` of its own, with the
environment the chart gives Spot pods. The search is `hpsearch run`, as a user starts
it. Mid-epoch, the node under the trial's rank 0 is reclaimed: first through the chart's
preStop hook alone (cluster/drain.py marks the node draining with the deadline; no
signal reaches `ray start`, as where a pod's PID 1 drops SIGTERM), the node killed
whole at the deadline; then by SIGTERM to `ray start`, what GKE sends a Spot node's pod,
on which Ray marks the node draining with a deadline
(RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S) and stops it then. With checks every
CHECK_STEPS steps the workers checkpoint the step reached, the group restarts on the
two other nodes and resumes there: each step of the epoch is trained once. With checks
off the same reclaim loses the steps the epoch had trained. The steps are counted from
the workers' own progress lines (HPSEARCH_LOG_LEVEL=DEBUG), one per compiled call.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from search.resources import TRIAL_FUNCTION_RESOURCE_ENV
from support import free_port, stop_process_groups, wait_for, write_colour_batches

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
TESTS = Path(__file__).resolve().parents[1]
CHECK_STEPS = 4
PER_CALL = 2  # steps_per_execution: the progress lines' grain
# the reclaim's notice: SIGTERM to the node's `ray start`, its processes stopped after
# this (GKE: 13 s). The checkpoint must be written and registered within it: 6 s was
# missed once on a machine busy with the other test process's work.
DRAIN_S = 10
# With checks off nothing uses the notice: the node is killed whole (every process its
# `ray start` started, whatever their process group) this soon after it, as the kubelet
# ends a pod whose grace period is over. On a fast machine rank 0 trained the epoch to
# its end on that node and nothing restarted: left to Ray's drain in 2 of 7 runs, with
# `ray start`'s process group SIGKILLed 2 or 13 s after the notice in 3 of 4 (the
# workers outlived it); killed whole, it restarted in every run.
KILL_UNCHECKED_AFTER_S = 2
TRIAL_FUNCTIONS = "trial_functions"  # the chart's trialFunctions.resource
PROGRESS = re.compile(r"epoch (\d+), attempt (\d+), rank (\d+): steps (\d+)-(\d+) of (\d+) trained")


class Nodes:
    """The head and the worker nodes: each a `ray start --block` in a process group and
    a temporary directory of its own (where its workers' logs are)."""

    def __init__(self, env: dict[str, str]):
        self.env, self.processes, self.dirs = env, [], []
        self.texts: dict[Path, tuple[int, str]] = {}
        self.port = free_port()

    def start(self, *args: str, head: bool = False, count: int = 1) -> None:
        """Start ``count`` nodes at once (each joins the head on its own) and wait for them all."""
        where = [f"--port={self.port}", "--include-dashboard=false"] if head else [f"--address=127.0.0.1:{self.port}"]
        logs = []
        for _ in range(count):
            directory = Path(tempfile.mkdtemp(prefix="rayspot-", dir="/tmp"))  # short: socket paths
            self.processes.append(subprocess.Popen(
                [str(BIN / "ray"), "start", *(["--head"] if head else []), "--block", *where,
                 f"--temp-dir={directory}", "--node-ip-address=127.0.0.1", "--disable-usage-stats",
                 f"--dashboard-agent-listen-port={free_port()}", f"--metrics-export-port={free_port()}", *args],
                env=self.env, stdout=open(f"{directory}.log", "w"), stderr=subprocess.STDOUT, start_new_session=True))
            self.dirs.append(directory)
            logs.append(Path(f"{directory}.log"))
        for log in logs:
            wait_for(lambda: "Ray runtime started" in log.read_text(), 120, f"the node logging to {log}", log=log)

    def refresh(self) -> frozenset:
        """Read the workers' stderr files again (a new worker process, as each attempt's
        and each search's are, writes a new one) and return their paths. A file keeps
        the last text read: a reclaimed node's go with its directory."""
        for index, directory in enumerate(self.dirs):
            for log in directory.glob("session_2*/logs/worker-*.err"):  # not session_latest, a link to it
                try:
                    self.texts[log] = (index, log.read_text(errors="replace"))
                except FileNotFoundError:
                    pass
        return frozenset(self.texts)

    def progress(self, skip: frozenset = frozenset()) -> list[tuple[int, ...]]:
        """The progress lines of the workers' files but ``skip``, with the node each was
        logged on: (epoch, attempt, rank, from, to, steps, node index)."""
        self.refresh()
        return [(*map(int, m.groups()), index) for log, (index, text) in self.texts.items() if log not in skip
                for m in PROGRESS.finditer(text)]

    def stop(self) -> None:
        stop_process_groups(self.processes)
        for directory in self.dirs:
            shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module")
def nodes():
    # Every pod's environment as the chart sets it for a Spot group (and Ray 2.60's
    # default authentication, on)
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "PYTHONPATH": str(TESTS),
           "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32), "TF_CPP_MIN_LOG_LEVEL": "2",
           "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": str(DRAIN_S), "RAY_TRAIN_PREEMPTION_POLL_INTERVAL_S": "1",
           "HPSEARCH_LOG_LEVEL": "DEBUG", TRIAL_FUNCTION_RESOURCE_ENV: TRIAL_FUNCTIONS}
    env.pop("RAY_ADDRESS", None)
    cluster = Nodes(env)
    try:
        cluster.start("--num-cpus=1", f'--resources={{"{TRIAL_FUNCTIONS}": 1}}', head=True)
        # two nodes for a trial's workers, one to restart them on, and one that stands in
        # for the Spot pool's new node after the first reclaim: started together up front
        cluster.start("--num-cpus=1", count=4)
        yield cluster
    finally:
        cluster.stop()


def prestop_command(ray_start_pid: int) -> list[str]:
    """The preStop hook the chart renders for a Spot group's pods, run for the node whose
    `ray start` is ``ray_start_pid`` (in a pod, that node's processes are all under PID
    1: the rendered command's default)."""
    from support import scenario_raycluster

    cluster = scenario_raycluster("spot-values.yaml")
    (group,) = [g for g in cluster["spec"]["workerGroupSpecs"] if g["groupName"] == "gpu"]
    command = group["template"]["spec"]["containers"][0]["lifecycle"]["preStop"]["exec"]["command"]
    assert command[:3] == ["python", "-m", "cluster.drain"] and command[command.index("--deadline-s") + 1] == "13"
    deadline = command.index("--deadline-s") + 1
    return [sys.executable, *command[1:deadline], str(DRAIN_S), *command[deadline + 1:], "--node-of",
            str(ray_start_pid)]


def reclaim_rank_zeros_node_mid_epoch(nodes: Nodes, skip: frozenset, reclaimed: dict, stop: threading.Event,
                                      kill_after_s: float | None, prestop: bool = False) -> None:
    """Once rank 0 has trained 3 checks' worth of steps, SIGTERM the `ray start` of the
    node it runs on (a worker node: the trial function is on the head), or with
    ``prestop`` run the chart's preStop hook for that node and send no signal at all (a
    pod whose PID 1 drops SIGTERM); SIGKILL every process of the node ``kill_after_s``
    later (None: Ray stops it at the drain's deadline); then keep reading the workers'
    files until the search ends."""
    while not stop.wait(0.5):
        if kill_after_s is not None and "signalled_at" in reclaimed and "killed_at_s" not in reclaimed \
                and time.monotonic() - reclaimed["signalled_at"] >= kill_after_s:
            reclaimed["killed_at_s"] = round(time.monotonic() - reclaimed["signalled_at"], 1)
            kill_tree(nodes.processes[reclaimed["node"]].pid)
        first = [line for line in nodes.progress(skip) if line[2] == 0 and line[1] == 1]
        ahead = [line for line in first if line[4] >= 3 * CHECK_STEPS]
        if ahead and "node" not in reclaimed:
            reclaimed["at_step"] = max(line[4] for line in first)
            reclaimed["node"] = ahead[0][-1]
            if prestop:
                hook = subprocess.run(prestop_command(nodes.processes[reclaimed["node"]].pid), env=nodes.env,
                                      capture_output=True, text=True, timeout=60, cwd=str(TESTS.parent))
                reclaimed["hook"] = (hook.returncode, hook.stdout + hook.stderr)
            else:
                nodes.processes[reclaimed["node"]].send_signal(signal.SIGTERM)
            reclaimed["signalled_at"] = time.monotonic()


def kill_tree(pid: int) -> None:
    """SIGKILL a process and every process descended from it, whatever their process
    groups (what a pod's end does to its container's processes)."""
    from cluster.drain import descendants

    for member in descendants(pid):
        try:
            os.kill(member, signal.SIGKILL)
        except ProcessLookupError:
            pass


CONFIG = """
data: {{dataset: {data}, image_size: 32}}
space:
  backbones: [Tiny]
  warmup_epochs: {{low: 0, high: 0}}
  max_lr: {{low: 0.01, high: 0.02, log: true}}
recipe: {{batch_size: 32, head_epochs: 0, flat_epochs: 1, cooldown_epochs: 0, weights: none, flip: false}}
search: {{name: spot, num_trials: 1, max_concurrent_trials: 1, seed: 3, grace_epochs: 1}}
resources: {{strategy: mwms, workers: 2, cpus_per_worker: 1, steps_per_execution: {per_call},
             preemption_check_steps: {checks}}}
storage: {{path: {storage}}}
"""


def run_reclaimed_search(nodes: Nodes, tmp_path: Path, check_steps: int, kill_after_s: float | None = None,
                         prestop: bool = False, n_train: int = 3000) -> tuple:
    """`hpsearch run` of one trial on the cluster, its rank 0's node reclaimed mid-epoch;
    returns the trials table's row, the history, what was reclaimed, rank 0's lines and
    Ray Train's restart decisions (decision, the budget it spent)."""
    data = write_colour_batches(tmp_path / "colours", n_train=n_train, n_test=100)
    config = tmp_path / "spot.yaml"
    config.write_text(CONFIG.format(data=data, per_call=PER_CALL, checks=check_steps, storage=tmp_path / "exp"))
    reclaimed: dict = {}
    before = nodes.refresh()  # the earlier searches' workers
    stop = threading.Event()
    reclaimer = threading.Thread(target=reclaim_rank_zeros_node_mid_epoch,
                                 args=(nodes, before, reclaimed, stop, kill_after_s, prestop),
                                 daemon=True)
    reclaimer.start()
    try:
        done = subprocess.run([sys.executable, "-m", "search", "run", "--config", str(config)], capture_output=True,
                              text=True, timeout=600, env={**nodes.env, "RAY_ADDRESS": f"127.0.0.1:{nodes.port}"})
    finally:
        stop.set()
        reclaimer.join(timeout=5)
    assert done.returncode == 0, done.stderr[-4000:]
    (row,) = pq.read_table(tmp_path / "exp" / "spot" / "trials.parquet").to_pylist()
    history = pq.read_table(tmp_path / "exp" / "spot" / "history.parquet").to_pandas()
    lines = [line for line in nodes.progress(before) if line[2] == 0]  # rank 0's
    # Ray Train's failure policy logs each restart's budget in the controller's process
    decisions = re.findall(r"\[FailurePolicy\] (\w+)\s+Source: ([\w ]+)",
                           "".join(text for log, (_, text) in nodes.texts.items() if log not in before))
    return row, history, reclaimed, lines, decisions


def trained_twice(lines: list[tuple[int, ...]]) -> int:
    """Steps of epoch 1 that rank 0 trained more than once, over all its attempts."""
    (steps,) = {line[5] for line in lines}
    return sum(line[4] - line[3] for line in lines if line[0] == 1) - steps


def test_a_reclaimed_node_costs_no_step_with_checks_and_the_epochs_steps_without(nodes, tmp_path):
    """The first reclaim comes through the chart's preStop hook alone (no signal reaches
    `ray start`, as where the pod's PID 1 drops SIGTERM), its node killed whole at the
    drain's deadline as the kubelet would; the second by SIGTERM to `ray start`."""
    # the hook is a Python process of its own (Ray's import: a second or more here), so its
    # run has an epoch twice as long, for the notice to come while it trains
    row, history, reclaimed, lines, decisions = run_reclaimed_search(nodes, tmp_path / "checks", CHECK_STEPS,
                                                                     kill_after_s=DRAIN_S, prestop=True, n_train=6000)
    print(f"checks every {CHECK_STEPS}: reclaimed at step {reclaimed.get('at_step')}; restarts {decisions}; "
          f"lines {lines}; hook {reclaimed.get('hook')}")
    assert "node" in reclaimed, "no node was reclaimed"
    assert reclaimed["hook"][0] == 0 and "draining for preemption" in reclaimed["hook"][1], reclaimed["hook"]
    assert row["status"] == "TERMINATED", row["error"]
    # one restart. Ray Train charges it to its preemption budget when its controller acts
    # on the drain's deadline before the node's processes stop (seen in most runs), else,
    # Ray 2.60 seeing a worker death not marked as a preemption, to max_failures
    assert [decision for decision, _ in decisions] == ["RETRY"], decisions
    assert history["epoch"].tolist() == [1]  # reported once
    assert history["preemptions"].tolist() == [1] and row["preemptions"] == 1
    resumed_at = int(history["resumed_at_step"].iloc[0])
    assert resumed_at >= reclaimed["at_step"]  # the checkpoint holds every step trained before the notice
    assert sorted({line[1] for line in lines}) == [1, 2]
    assert min(line[3] for line in lines if line[1] == 2) == resumed_at
    twice = trained_twice(lines)
    assert 0 <= twice <= CHECK_STEPS, twice
    # the reclaimed node went, and rank 0 trained on another node after it
    wait_for(lambda: nodes.processes[reclaimed["node"]].poll() is not None, 60, "the reclaimed node's end")
    assert {line[-1] for line in lines if line[1] == 2} != {reclaimed["node"]}

    row, history, reclaimed, lines, decisions = run_reclaimed_search(nodes, tmp_path / "off", 0, KILL_UNCHECKED_AFTER_S)
    print(f"no checks: reclaimed {reclaimed}; restarts {decisions}; lines {lines}")
    assert "node" in reclaimed and row["status"] == "TERMINATED", row["error"]
    assert [decision for decision, _ in decisions] == ["RETRY"], decisions
    assert history["epoch"].tolist() == [1] and row["preemptions"] == 0
    assert int(history["resumed_at_step"].iloc[0]) == 0  # the epoch trained again from its start
    twice = trained_twice(lines)
    assert twice >= reclaimed["at_step"] > CHECK_STEPS, twice
