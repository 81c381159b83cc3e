"""The Spot pods' preStop drain (cluster/drain.py) without a cluster: what it reads from a
raylet's command line, its refusal when it cannot tell which node is its own, and the
private parts of Ray it calls. (The hook draining a node under a running trial, with no
signal to `ray start`: tests/cluster/test_spot.py.)"""

from __future__ import annotations

import subprocess
import sys

from cluster.drain import flag, main
from support import REPO


def test_a_raylets_flags_are_read_from_its_command_line():
    cmdline = ["/x/ray/core/src/ray/raylet/raylet", "--node_id=0a1b", "--gcs-address=127.0.0.1:6379", "--foo"]
    assert (flag(cmdline, "node_id"), flag(cmdline, "gcs-address"), flag(cmdline, "bar")) == (
        "0a1b", "127.0.0.1:6379", None)


def test_no_raylet_under_the_pod_drains_nothing_and_says_so(capsys):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert main(["--deadline-s", "13", "--node-of", str(sleeper.pid)]) == 1
    finally:
        sleeper.kill()
        sleeper.wait()
    assert f"expected one raylet under pid {sleeper.pid}, found 0: nothing drained" in capsys.readouterr().err


def test_the_private_parts_of_ray_the_drain_uses_are_there():
    """Ray's drain call is outside its API guarantee (`ray drain-node` is a hidden
    command): a Ray upgrade that renames a part fails here by name, not on a reclaim."""
    from ray._private import state
    from ray._raylet import InnerGcsClient
    from ray.core.generated import autoscaler_pb2

    assert callable(getattr(InnerGcsClient, "drain_node", None)), "ray._raylet.GcsClient.drain_node is gone"
    assert autoscaler_pb2.DrainNodeReason.Value("DRAIN_NODE_REASON_PREEMPTION")
    # what Ray Train's preemption watcher reads (ray/train/v2/_internal/execution/preemption.py)
    assert callable(getattr(state.state, "get_draining_nodes", None))


def test_the_command_line_works_as_the_hook_runs_it():
    done = subprocess.run([sys.executable, "-m", "cluster.drain", "--help"], cwd=REPO, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0 and "--deadline-s" in done.stdout and "--node-of" in done.stdout


def fake_process(proc, pid: int, ppid: int, *cmdline: str) -> None:
    (proc / str(pid)).mkdir(parents=True)
    (proc / str(pid) / "stat").write_text(f"{pid} (x y) S {ppid} 0 0\n")  # a name with a space, as comm can be
    (proc / str(pid) / "cmdline").write_bytes("\0".join(cmdline).encode() + b"\0")


def test_the_pods_node_is_the_one_raylet_under_pid_1(tmp_path):
    """In a pod, PID 1 (KubeRay's bash) has `ray start` and its raylet under it; a raylet
    elsewhere (another node's, on a shared machine) is not this pod's."""
    from cluster.drain import Raylet, raylets_under

    proc = tmp_path / "proc"
    fake_process(proc, 1, 0, "/bin/bash", "-lc", "ray start --block")
    fake_process(proc, 7, 1, "/usr/bin/python", "/usr/bin/ray", "start", "--block")
    fake_process(proc, 12, 7, "/ray/core/src/ray/raylet/raylet", "--node_id=aa11", "--gcs-address=head:6379")
    fake_process(proc, 40, 3, "/ray/core/src/ray/raylet/raylet", "--node_id=bb22", "--gcs-address=head:6379")
    assert raylets_under(1, proc) == [Raylet("aa11", "head:6379")]
    assert raylets_under(3, proc) == [Raylet("bb22", "head:6379")]  # the other node's own
