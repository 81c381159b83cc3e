"""`hpsearch cluster ...`: status of the RayCluster, and search jobs on it."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path


def cmd_status(args: argparse.Namespace) -> int:
    from cluster.status import api_client, context_namespace, find_cluster, get_status

    api = api_client(args.context, args.kubeconfig)
    namespace = args.namespace or context_namespace(args.context, args.kubeconfig)
    status = get_status(args.name or find_cluster(namespace, api), namespace, api)
    print("\n".join(status.lines()))
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    from cluster import jobs

    config_path = Path(args.config)
    args.validate_config(config_path)  # a bad config fails here, before anything is uploaded
    address = jobs.address_from(args.address)
    client = jobs.connect(address)
    job_id = jobs.submit(client, address, config_path, Path(args.working_dir), args.extra,
                         say=lambda text: print(f"hpsearch: {text}", file=sys.stderr, flush=True))
    print(f"submitted job {job_id} to {address}")
    print(f"  logs: hpsearch cluster logs {job_id}    stop: hpsearch cluster stop {job_id}")
    if not args.follow:
        return 0
    status = jobs.follow(client, address, job_id, lambda text: print(text, end="", flush=True))
    print(f"job {job_id}: {status}")
    return 0 if status == "SUCCEEDED" else 1


def cmd_logs(args: argparse.Namespace) -> int:
    from cluster import jobs

    address = jobs.address_from(args.address)
    print(jobs.logs(jobs.connect(address), address, args.job_id), end="")
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    from cluster import jobs

    address = jobs.address_from(args.address)
    stopped = jobs.stop(jobs.connect(address), address, args.job_id)
    print(f"job {args.job_id}: {'stop requested' if stopped else 'already finished'}")
    return 0


def add_parser(sub: argparse._SubParsersAction, validate_config: Callable[[Path], object]) -> None:
    """Add ``cluster ...`` to the top-level parser.

    Args:
        sub: the top-level subparsers.
        validate_config: raises on a bad search config (the caller owns configs; this
            package only talks to the cluster).
    """
    cluster = sub.add_parser("cluster", help="the Ray cluster on Kubernetes and search jobs on it")
    commands = cluster.add_subparsers(dest="cluster_command", required=True)
    address_help = "Ray dashboard URL (default: $RAY_ADDRESS, else http://127.0.0.1:8265)"

    status = commands.add_parser("status", help="state, ready workers per group, dashboard endpoint")
    status.add_argument("--name", help="RayCluster name (default: the one hpsearch cluster in the namespace, "
                                       "whatever its helm release is called)")
    status.add_argument("--namespace", help="namespace (default: the kubeconfig context's, else default)")
    status.add_argument("--context", help="kubeconfig context (default: the current one)")
    status.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG or ~/.kube/config)")
    status.set_defaults(func=cmd_status)

    submit = commands.add_parser("submit", help="submit a search with this directory as its working directory")
    submit.add_argument("--config", required=True, help="config file inside the working directory")
    submit.add_argument("--address", help=address_help)
    submit.add_argument("--working-dir", default=".", help="directory uploaded with the job (default: .)")
    submit.add_argument("--follow", action="store_true", help="stream the logs until the job ends")
    submit.add_argument("extra", nargs="*", help="more arguments for `hpsearch run`, after --, e.g. -- --resume")
    submit.set_defaults(func=cmd_submit, validate_config=validate_config)

    logs = commands.add_parser("logs", help="print a job's logs")
    logs.add_argument("job_id")
    logs.add_argument("--address", help=address_help)
    logs.set_defaults(func=cmd_logs)

    stop = commands.add_parser("stop", help="stop a job")
    stop.add_argument("job_id")
    stop.add_argument("--address", help=address_help)
    stop.set_defaults(func=cmd_stop)
