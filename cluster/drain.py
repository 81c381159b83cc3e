"""A Spot pod drains its own Ray node when Kubernetes stops it (the chart's preStop hook).

A Spot reclaim's notice reaches a trial's workers only if Ray marks their node draining.
SIGTERM to ``ray start`` does that, but KubeRay runs it as ``bash -lc "ulimit ...; ray
start ... --block"``: whether the SIGTERM the kubelet sends to the pod's PID 1 reaches
``ray start`` depends on whether that bash replaces itself with its last command, which
varies with its version. A preStop hook runs before that SIGTERM whatever PID 1 is, so
the hook asks Ray's GCS itself to drain this node, with reason preemption and the
deadline the pod has left (what Ray Train's preemption watcher reads).

The node is found from its raylet: the only raylet among the processes under
``--node-of`` (in a pod, PID 1: every process of the pod), whose command line carries its
node id and the GCS address. Ray's ``ray drain-node`` cannot be used as it stands: without
``--node-id`` it asks Ray's runtime context for the node without connecting, which fails
(Ray 2.60); with it, the hook would still need the id. The GCS call is the one
``ray drain-node`` makes (``ray._raylet.GcsClient.drain_node``), a surface outside Ray's
API guarantee: tests/cluster/test_drain.py fails by name if it changes.

    python -m cluster.drain --deadline-s 13 [--node-of 1]
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

# How the reclaim is described to Ray (shown in `ray list nodes` and Ray's logs).
REASON_MESSAGE = "Kubernetes is stopping this pod (a Spot reclaim, or the node drained)"


@dataclass(frozen=True)
class Raylet:
    node_id: str
    gcs_address: str


def flag(cmdline: list[str], name: str) -> str | None:
    """The value of ``--name=value`` in a command line."""
    prefix = f"--{name}="
    return next((arg[len(prefix):] for arg in cmdline if arg.startswith(prefix)), None)


def descendants(pid: int, proc: Path = Path("/proc")) -> list[int]:
    """``pid`` and every process descended from it (Linux's /proc: a pod's container)."""
    children: dict[int, list[int]] = {}
    for stat in proc.glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # ended meanwhile
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    tree, todo = [], [pid]
    while todo:
        tree.append(todo.pop())
        todo.extend(children.get(tree[-1], []))
    return tree


def raylets_under(pid: int, proc: Path = Path("/proc")) -> list[Raylet]:
    """The raylets among ``pid`` and its descendants, from their command lines."""
    found = []
    for member in descendants(pid, proc):
        try:
            cmdline = (proc / str(member) / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if cmdline and cmdline[0].endswith("/raylet"):
            node_id, gcs = flag(cmdline, "node_id"), flag(cmdline, "gcs-address")
            if node_id and gcs:
                found.append(Raylet(node_id, gcs))
    return found


def drain(raylet: Raylet, deadline_s: int) -> None:
    """Ask the GCS to drain the raylet's node for preemption, its processes killed
    ``deadline_s`` from now.

    Raises:
        RuntimeError: the GCS refused the drain.
    """
    from ray._raylet import GcsClient
    from ray.core.generated import autoscaler_pb2

    deadline_ms = time.time_ns() // 1_000_000 + deadline_s * 1000
    accepted, why = GcsClient(address=raylet.gcs_address).drain_node(
        raylet.node_id, autoscaler_pb2.DrainNodeReason.Value("DRAIN_NODE_REASON_PREEMPTION"), REASON_MESSAGE,
        deadline_ms)
    if not accepted:
        raise RuntimeError(f"the GCS refused to drain node {raylet.node_id}: {why}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cluster.drain", description=__doc__.splitlines()[0])
    parser.add_argument("--deadline-s", type=int, required=True,
                        help="seconds until the node's processes are killed (the chart's spot.drainSeconds)")
    parser.add_argument("--node-of", type=int, default=1,
                        help="the process whose descendants hold this node's raylet (default 1: the pod)")
    args = parser.parse_args(argv)
    raylets = raylets_under(args.node_of)
    if len(raylets) != 1:
        print(f"cluster.drain: expected one raylet under pid {args.node_of}, found {len(raylets)}: nothing drained",
              file=sys.stderr)
        return 1
    drain(raylets[0], args.deadline_s)
    print(f"cluster.drain: node {raylets[0].node_id} draining for preemption, deadline in {args.deadline_s} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
