"""The ``hpsearch`` command (also ``python -m search``, which ``ray job submit`` runs).

Exit codes: 0 success, 1 the work failed (no trial reported a result, a checkpoint would
not load), 2 bad input (config, storage, arguments), caught before Ray starts, 3 a search
that finished with some trials in ERROR, 130 / 143 a search stopped by SIGINT / SIGTERM
(its state saved: ``--resume`` continues it).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
from pathlib import Path

from search.config import STORAGE_ENV, Config, ConfigError, config_to_dict, load_config, smoke_config
from trainables.errors import HpsearchError, InputError

log = logging.getLogger("hpsearch")

# The offline default: the repository's configs/local.yaml (an editable install runs
# from the checkout).
DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "local.yaml"


# `hpsearch run` finished, but some trials ended in ERROR (each is named on stderr); the
# tables hold every trial, and `--resume` retries the errored ones.
EXIT_TRIALS_FAILED = 3


class UsageError(InputError):
    """A bad argument or a state that refuses the command (exit code 2)."""


def cmd_run(args: argparse.Namespace) -> int:
    """Run (or resume) a search and write its tables."""
    # Validate everything before importing Ray or TensorFlow (seconds of start-up).
    config = load_config(args.config or DEFAULT_CONFIG)
    if args.smoke_test:
        config = smoke_config(config)
    _check_plan(config)
    on_kuberay = _check_schedulable(config)
    from trainables.storage import check_writable, resolve

    location = resolve(config.storage.path)
    check_writable(location)
    # Trials run in directories of their own: from here on the storage path is absolute.
    config = dataclasses.replace(config, storage=dataclasses.replace(config.storage, path=location.uri))
    from trainables.data import check_available

    check_available(config.data.dataset)  # a data set no trial could read stops the search here
    from search.lease import hold

    # One driver per search: a second one is refused here, before Ray starts.
    with hold(location, config.search.name, takeover=args.resume, timeout_s=config.storage.lease_timeout_s) as lease:
        return _run_leased(args, config, location, on_kuberay, lease)


def _run_leased(args: argparse.Namespace, config: Config, location, on_kuberay: bool, lease) -> int:
    """The search, once this driver holds its lease."""
    import ray
    from ray import tune

    from search import rounds
    from search import run as search_run

    experiment = search_run.experiment_path(config, location)
    exists = tune.Tuner.can_restore(location.join(config.search.name), storage_filesystem=location.filesystem)
    if args.resume and not exists:
        raise UsageError(f"--resume: no search to resume at {experiment}")
    if exists and not args.resume:
        raise UsageError(
            f"a search already exists at {experiment}: pass --resume to continue it, "
            "or set search.name to start another"
        )
    if args.resume:
        _check_unchanged(config, location)
        steps = rounds.next_steps(rounds.read(location, config.search.name), config.search.num_trials)
    else:
        _discard_leftovers(config, location)
        steps = rounds.Steps(resume=None, add=rounds.Round(1, config.search.num_trials))
    _record_config(config, location)

    log.info("search %s: %d trials, %d at a time, up to %d epochs each, storage %s",
             config.search.name, config.search.num_trials, config.search.max_concurrent_trials,
             config.max_epochs, experiment)
    from search.connect import connect

    started_here = connect()
    from search.signals import GracefulStop, exit_code

    try:
        # A stopped driver steps down at once: a resubmitted --resume need not wait out
        # the lease (ray job stop kills a driver 3 s after its SIGTERM).
        with GracefulStop(on_signal=lease.step_down) as stop:
            _check_storage_on_every_node(location)
            from search.resources import any_distributed

            if any_distributed(config):
                from search.distributed import keep_train_coordinator_on_this_node

                keep_train_coordinator_on_this_node()
            if not on_kuberay:
                _check_resources(config)
            if config.recipe.weights == "imagenet":  # before any trial: one fetch, not one per trial
                from search.config import space_value
                from search.weights import stage_imagenet_weights

                stage_imagenet_weights(location.uri, space_value(config.space, "backbone"))
            grids = search_run.run_rounds(config, location, steps, stop)
            if stop.stopped:
                print(f"hpsearch: search stopped by {stop.name}; its state is saved. Resume with: "
                      f"{_resume_command(args)}", file=sys.stderr)
                return exit_code(stop.received)
        return summarise(config, location, search_run.all_results(config, location, grids))
    finally:
        if started_here:
            ray.shutdown()


def _resume_command(args: argparse.Namespace) -> str:
    import shlex

    words = ["hpsearch", "run"]
    if args.config:
        words += ["--config", args.config]
    if args.smoke_test:
        words.append("--smoke-test")
    return shlex.join([*words, "--resume"])


def _check_unchanged(config: Config, location) -> None:
    """A resumed search keeps its recipe and space: refuse a config that changes them."""
    from search.config import RESUMABLE_FIELDS, resume_refusals
    from search.results import CONFIG_JSON

    path = location.join(config.search.name, CONFIG_JSON)
    if not location.exists(path):
        return
    with location.filesystem.open_input_stream(path) as handle:
        recorded = json.loads(handle.read())
    current = json.loads(json.dumps(config_to_dict(config)))
    refused = resume_refusals(recorded, current)
    if refused:
        raise UsageError(
            f"--resume with a changed config: {'; '.join(refused)}. Only {', '.join(RESUMABLE_FIELDS)} may "
            "change when a search is resumed: restore the others, or set search.name to start a new search")


def _discard_leftovers(config: Config, location) -> None:
    """A search killed before Tune saved any state leaves files behind; a new search by
    that name must not load its study or rounds."""
    from search import rounds, study

    for name in (study.STUDY_DB, rounds.ROUNDS_JSON):
        path = location.join(config.search.name, name)
        if location.exists(path):
            location.filesystem.delete_file(path)
    study.local_path(location, config.search.name).unlink(missing_ok=True)


def _check_plan(config: Config) -> list:
    """Every backbone's step must fit its device, at one image per micro-batch at worst."""
    from search.plan import make_plan, unfit

    plans = make_plan(config)
    bad = unfit(plans)
    if bad:
        raise UsageError("; ".join(
            f"{p.backbone} cannot fit its {p.device} even at 1 image per micro-batch "
            f"(estimated {p.estimate_mib / 1024:.1f} GiB of {p.capacity_mib / 1024:.0f} GiB at {p.side} px): give it a "
            f"larger accelerator or set resources.backbones.{p.backbone}.accelerator_memory_gib, or lower data.image_size"
            for p in bad))
    return plans


def cmd_plan(args: argparse.Namespace) -> int:
    """Print how each backbone's trials will run, and exit 2 if one cannot fit."""
    from search.plan import make_plan, table_markdown

    config = load_config(args.config or DEFAULT_CONFIG)
    plans = make_plan(config)
    print(table_markdown(plans), end="")
    print(f"global batch {config.recipe.batch_size}; memory from trainables/memory_table.json "
          f"(measured {_memory_stamp()}); a step uses at most 90% of a device")
    _check_plan(config)
    return 0


def _memory_stamp() -> str:
    from trainables.memory import table

    return f"{table()['measured']} on {table()['machine']}"


def _check_storage_on_every_node(location) -> None:
    """A local storage path must be the same directory on every node of the cluster
    (trials write checkpoints where they run, and the driver reads them all): a probe
    written here must be visible to a task on each other node. Remote storage (gs://)
    is reached by every node."""
    if location.is_remote:
        return
    import uuid

    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = ray.get_runtime_context().get_node_id()
    others = [n["NodeID"] for n in ray.nodes() if n.get("Alive") and n["NodeID"] != here]
    if not others:
        return
    probe = location.join(f".hpsearch-node-probe-{uuid.uuid4().hex}")
    with location.filesystem.open_output_stream(probe) as out:
        out.write(b"probe")
    try:
        sees = ray.remote(num_cpus=0)(os.path.exists)
        seen = ray.get([sees.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)).remote(probe)
                        for node in others])
    finally:
        location.filesystem.delete_file(probe)
    blind = seen.count(False)
    if blind:
        raise UsageError(
            f"storage.path {location.uri} is a local directory that {blind} of this Ray cluster's "
            f"{len(others) + 1} nodes cannot see: set storage.path (or {STORAGE_ENV}) to gs://BUCKET/experiments, "
            "or to a directory every node mounts")


def _check_schedulable(config: Config) -> bool:
    """On the chart's RayCluster, refuse a backbone whose trials no worker group can
    ever hold, from the autoscaler's own view of the cluster (every accelerator pool
    may be at zero nodes, so the live cluster says nothing). Returns whether the view
    was read; elsewhere :func:`_check_resources` checks the live cluster."""
    from cluster.autoscaling import cluster_in_env, read_autoscaling_config

    where = cluster_in_env()
    if where is None:
        return False
    name, namespace = where
    try:
        view = read_autoscaling_config(name, namespace)
    except Exception as exc:  # noqa: BLE001 - any failure to read is reported, then the live check runs
        log.warning("could not read RayCluster %s/%s to check every trial against its worker groups (%s); "
                    "checking the live cluster instead", namespace, name, exc)
        return False
    from search.schedulable import unschedulable

    problems = unschedulable(config, view)
    if problems:
        raise UsageError(
            f"resources: on RayCluster {namespace}/{name} these trials could never start: {'; '.join(problems)}. "
            "Give the cluster a worker group that holds them (helm upgrade with a values file that has the pool, "
            "e.g. helm/hpsearch/ci/gke-values.yaml), or change resources.backbones.<name> to a shape a group holds")
    log.info("every backbone's trial fits a worker group of RayCluster %s/%s (the autoscaler's view)", namespace, name)
    return True


def _check_resources(config: Config) -> None:
    """Refuse a trial shape the connected cluster can never hold (it would wait forever)."""
    import ray

    from search.config import space_value
    from search.resources import cluster_shortfalls

    res = config.resources
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    problems = cluster_shortfalls(res, space_value(config.space, "backbone"), ray.cluster_resources(), nodes)
    if not problems:
        return
    message = "; ".join(problems)
    if res.wait_for_autoscaler:
        log.warning("%s; waiting for the autoscaler to add nodes", message)
        return
    raise UsageError(
        f"resources: {message}. Lower resources.* or use a bigger cluster "
        "(on an autoscaling cluster set resources.wait_for_autoscaler: true)"
    )


def _record_config(config: Config, location) -> None:
    """Keep the search's config beside its trials (the report rebuilds the space from it)."""
    directory = location.join(config.search.name)
    location.filesystem.create_dir(directory, recursive=True)
    from search.results import CONFIG_JSON

    with location.filesystem.open_output_stream(f"{directory}/{CONFIG_JSON}") as out:
        out.write(json.dumps(config_to_dict(config), indent=2).encode())


def summarise(config: Config, location, grid) -> int:
    from search import results
    from search.best import kept_best
    from search.run import METRIC, MODE

    rows = results.trial_rows(
        grid, METRIC, MODE, planned_epochs=lambda c: config.recipe.epochs(c.get("warmup_epochs", 0)),
        kept_best=lambda trial_id, epoch: kept_best(location, config.search.name, trial_id, epoch),
    )
    paths = results.write_results(location, config.search.name, rows, results.history_table(grid))
    best = results.best_row(rows)
    stopped = sum(r.stopped_early for r in rows)
    diverged = sum(r.diverged for r in rows)
    errored = sum(r.status == "ERROR" for r in rows)
    print(f"trials: {len(rows)} ({stopped} stopped early by ASHA, {diverged} diverged, {errored} errored)")
    print(f"trials table: {paths[results.TRIALS_PARQUET]}")
    if best is None:
        print("no trial reported a validation accuracy", file=sys.stderr)
        return 1
    if errored:
        for row in rows:
            if row.status == "ERROR":
                print(f"trial {row.trial_id} failed: {row.error}", file=sys.stderr)
    print(f"best validation accuracy: {best.best_val_accuracy:.4f} (trial {best.trial_id}, epoch {best.best_epoch})")
    print(f"best configuration: {json.dumps(best.config, sort_keys=True)}")
    print(f"best checkpoint: {best.best_checkpoint}")
    return EXIT_TRIALS_FAILED if errored else 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Load a checkpoint in this process and measure it on its validation split."""
    from trainables.evaluate import evaluate_checkpoint

    path = Path(args.checkpoint)
    if not (path / "model.keras").is_file():
        raise UsageError(f"{path} is not a checkpoint directory (no model.keras)")
    accuracy = evaluate_checkpoint(path)
    print(json.dumps({"checkpoint": str(path), "val_accuracy": accuracy}))
    return 0


def _experiment(uri: str):
    """Split an experiment URI (local path or gs://) into its storage and name."""
    from trainables.storage import resolve

    uri = uri.rstrip("/")
    parent, _, name = uri.rpartition("/")
    if not name:
        raise UsageError(f"not an experiment directory: {uri!r}")
    location = resolve(parent or ".")
    if not location.exists(location.join(name)):
        raise UsageError(f"no experiment at {uri}: pass the directory `hpsearch run` wrote "
                         "(storage.path/search.name)")
    return location, name


def cmd_ensemble(args: argparse.Namespace) -> int:
    """Build the TTA ensemble of a finished search and print its table."""
    if args.top_k < 1:
        raise UsageError(f"--top-k must be >= 1, got {args.top_k}")
    if args.greedy_rounds < 0:
        raise UsageError(f"--greedy-rounds must be >= 0, got {args.greedy_rounds}")
    from search.ensemble import build, table_markdown

    location, name = _experiment(args.experiment)
    result = build(location, name, top_k=args.top_k, tta=args.tta, greedy_rounds=args.greedy_rounds)
    print(table_markdown(result.rows), end="")
    print(f"members: {', '.join(f'{m.trial_id} x{m.weight}' for m in result.members)}")
    print(f"saved: {result.directory}/ensemble.keras (+ manifest.json, ensemble_table.csv)")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """Write the HTML report and plots of a finished search."""
    from search.report import make_report

    location, name = _experiment(args.experiment)
    written = make_report(location, name)
    print(f"report: {written['index.html']}")
    return 0


def cmd_show_config(args: argparse.Namespace) -> int:
    """Validate a config and print it with every default filled in; with ``--schema``,
    print the JSON Schema of a config file instead."""
    if args.schema:
        from search.schema import schema_text

        print(schema_text(), end="")
        return 0
    import yaml

    print(yaml.safe_dump(config_to_dict(load_config(args.config or DEFAULT_CONFIG)), sort_keys=False), end="")
    return 0


def cmd_data_stage(args: argparse.Namespace) -> int:
    """Write a data set as Parquet shards that every worker reads from storage."""
    from search.stage import stage
    from trainables.data import NAMED_SOURCES
    from trainables.storage import is_supported, supported_schemes

    if args.dataset not in NAMED_SOURCES and not Path(args.dataset).is_dir():
        raise UsageError(f"--dataset must be one of {', '.join(NAMED_SOURCES)} or a CIFAR batch directory, "
                         f"got {args.dataset!r}")
    if not is_supported(args.to):
        raise UsageError(f"--to must be {supported_schemes()}, got {args.to!r}")
    manifest = stage(args.dataset, args.to, validation_fraction=args.validation_fraction, seed=args.seed,
                     shard_size=args.shard_size, overwrite=args.overwrite, progress=print)
    print(json.dumps({"staged": args.to, "examples": manifest.examples,
                      "shards": {k: len(v) for k, v in manifest.shards.items()}}))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hpsearch",
        description="Hyperparameter search for fine-tuning image classifiers on Ray.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run or resume a search")
    run.add_argument("--config", help="YAML config (default: the offline configs/local.yaml)")
    run.add_argument("--resume", action="store_true", help="continue an interrupted search")
    run.add_argument("--smoke-test", action="store_true", help="2 tiny trials through every code path")
    run.set_defaults(func=cmd_run)

    evaluate = sub.add_parser("evaluate", help="validation accuracy of a checkpoint, in a fresh process")
    evaluate.add_argument("checkpoint", help="a checkpoint directory (holds model.keras)")
    evaluate.set_defaults(func=cmd_evaluate)

    ensemble = sub.add_parser("ensemble", help="TTA ensemble of a finished search's best checkpoints")
    ensemble.add_argument("experiment", help="experiment directory (local path or gs://...)")
    ensemble.add_argument("--top-k", type=int, default=5, help="members: the top-k trials by validation accuracy")
    ensemble.add_argument("--tta", type=int, default=4, help="test-time views per image; 1 means no TTA (default 4)")
    ensemble.add_argument("--greedy-rounds", type=int, default=0,
                          help="choose members from the top-k by greedy selection on validation (Caruana 2004)")
    ensemble.set_defaults(func=cmd_ensemble)

    report = sub.add_parser("report", help="HTML report and plots of a finished search")
    report.add_argument("experiment", help="experiment directory (local path or gs://...)")
    report.set_defaults(func=cmd_report)

    plan = sub.add_parser("plan", help="each backbone's shape, micro-batches and memory per replica; exit 2 if one cannot fit")
    plan.add_argument("--config", help="YAML config (default: configs/local.yaml)")
    plan.set_defaults(func=cmd_plan)

    show = sub.add_parser("config", help="validate a config and print it with defaults filled in")
    show.add_argument("--config", help="YAML config (default: configs/local.yaml)")
    show.add_argument("--schema", action="store_true",
                      help="print the JSON Schema of a config file (configs/hpsearch.schema.json), for editors")
    show.set_defaults(func=cmd_show_config)

    from search.stage import DEFAULT_SHARD_SIZE

    data = sub.add_parser("data", help="prepare data sets for cluster-scale searches")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    stage = data_sub.add_parser(
        "stage", help="write a data set as Parquet shards (train/val/test) to a local path or gs://",
        description="Reads the data set through hpsearch's loader and writes train, validation and test "
                    "as Parquet shards with a manifest. Point data.dataset at the same URI to search on it.")
    stage.add_argument("--dataset", default="cifar10",
                       help="cifar10 (Keras's downloader), digits, or a directory in the CIFAR python-batch layout")
    stage.add_argument("--to", required=True, help="destination: a local directory or gs://bucket/path")
    stage.add_argument("--validation-fraction", type=float, default=0.1,
                       help="share of the training split held out for validation (default 0.1)")
    stage.add_argument("--seed", type=int, default=0, help="seed of the validation split (default 0)")
    stage.add_argument("--shard-size", type=int, default=DEFAULT_SHARD_SIZE,
                       help=f"images per Parquet shard (default {DEFAULT_SHARD_SIZE}; a trial's workers need one "
                            "train shard each)")
    stage.add_argument("--overwrite", action="store_true", help="replace a data set already staged there")
    stage.set_defaults(func=cmd_data_stage)

    from cluster.cli import add_parser as add_cluster_parser

    add_cluster_parser(sub, validate_config=load_config)
    return parser


def main(argv: list[str] | None = None) -> int:
    # TensorFlow's C++ start-up chatter (CUDA probes on CPU machines) drowns the progress
    # display; Ray workers inherit this.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return args.func(args)
    except HpsearchError as exc:  # every expected failure; its class carries the exit code
        kind = "config error: " if isinstance(exc, ConfigError) else ""
        print(f"hpsearch: {kind}{exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
