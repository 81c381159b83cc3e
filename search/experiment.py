"""A search's lifecycle, from a validated config to its tables: what is checked before
anything starts, the one-driver lease, a new search or a resumed one (its rounds), the
checks against the cluster, and the summary. The ``hpsearch`` command
(:mod:`search.cli`) parses arguments and calls :func:`run`; what the experiment's
directory holds is declared in :mod:`search.layout`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys

from search.config import STORAGE_ENV, Config, config_to_dict
from trainables.errors import InputError
from trainables.storage import Location, check_writable, resolve

log = logging.getLogger("hpsearch")

# `hpsearch run` finished, but some trials ended in ERROR (each is named on stderr); the
# tables hold every trial, and `--resume` retries the errored ones.
EXIT_TRIALS_FAILED = 3


class Refused(InputError):
    """A state that refuses the search: it exists already, or not; a changed config on
    resume; a cluster or storage that cannot run it (exit code 2)."""


def run(config: Config, *, resume: bool, resume_command: str) -> int:
    """Run (or resume) a search and write its tables; returns the exit code.

    Everything that can refuse the search is checked before Ray or TensorFlow start.
    ``resume_command`` is what a stopped search tells the user to run.
    """
    check_plan(config)
    on_kuberay = check_schedulable(config)
    location = resolve(config.storage.path)
    check_writable(location)
    # Trials run in directories of their own: from here on the storage path is absolute.
    config = dataclasses.replace(config, storage=dataclasses.replace(config.storage, path=location.uri))
    from trainables.data import check_available

    check_available(config.data.dataset)  # a data set no trial could read stops the search here
    from search.lease import hold

    # One driver per search: a second one is refused here, before Ray starts.
    with hold(location, config.search.name, takeover=resume, timeout_s=config.storage.lease_timeout_s) as lease:
        return _run_leased(config, location, on_kuberay, lease, resume=resume, resume_command=resume_command)


def _run_leased(config: Config, location: Location, on_kuberay: bool, lease, *, resume: bool,
                resume_command: str) -> int:
    """The search, once this driver holds its lease."""
    import ray
    from ray import tune

    from search import rounds
    from search import run as search_run

    experiment = search_run.experiment_path(config, location)
    exists = tune.Tuner.can_restore(location.join(config.search.name), storage_filesystem=location.filesystem)
    if resume and not exists:
        raise Refused(f"--resume: no search to resume at {experiment}")
    if exists and not resume:
        raise Refused(
            f"a search already exists at {experiment}: pass --resume to continue it, "
            "or set search.name to start another"
        )
    if resume:
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
                      f"{resume_command}", file=sys.stderr)
                return exit_code(stop.received)
        return summarise(config, location, search_run.all_results(config, location, grids))
    finally:
        if started_here:
            ray.shutdown()


def _check_unchanged(config: Config, location) -> None:
    """A resumed search keeps its recipe and space: refuse a config that changes them."""
    from search.resume_rules import RESUMABLE_FIELDS, resume_refusals
    from search.layout import CONFIG_JSON

    path = location.join(config.search.name, CONFIG_JSON)
    if not location.exists(path):
        return
    with location.filesystem.open_input_stream(path) as handle:
        recorded = json.loads(handle.read())
    current = json.loads(json.dumps(config_to_dict(config)))
    refused = resume_refusals(recorded, current)
    if refused:
        raise Refused(
            f"--resume with a changed config: {'; '.join(refused)}. Only {', '.join(RESUMABLE_FIELDS)} may "
            "change when a search is resumed: restore the others, or set search.name to start a new search")


def _discard_leftovers(config: Config, location) -> None:
    """A search killed before Tune saved any state leaves files behind; a new search by
    that name must not load its study or rounds."""
    from search import study
    from search.layout import ROUNDS_JSON, STUDY_DB

    for name in (STUDY_DB, ROUNDS_JSON):
        path = location.join(config.search.name, name)
        if location.exists(path):
            location.filesystem.delete_file(path)
    study.local_path(location, config.search.name).unlink(missing_ok=True)


def check_plan(config: Config) -> list:
    """Every backbone's step must fit its device, at one image per micro-batch at worst."""
    from search.plan import make_plan, unfit

    plans = make_plan(config)
    bad = unfit(plans)
    if bad:
        raise Refused("; ".join(
            f"{p.backbone} cannot fit its {p.device} even at 1 image per micro-batch "
            f"(estimated {p.estimate_mib / 1024:.1f} GiB of {p.capacity_mib / 1024:.0f} GiB at {p.side} px): give it a "
            f"larger accelerator or set resources.backbones.{p.backbone}.accelerator_memory_gib, or lower data.image_size"
            for p in bad))
    return plans


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
        raise Refused(
            f"storage.path {location.uri} is a local directory that {blind} of this Ray cluster's "
            f"{len(others) + 1} nodes cannot see: set storage.path (or {STORAGE_ENV}) to gs://BUCKET/experiments, "
            "or to a directory every node mounts")


def check_schedulable(config: Config) -> bool:
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
        raise Refused(
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
    raise Refused(
        f"resources: {message}. Lower resources.* or use a bigger cluster "
        "(on an autoscaling cluster set resources.wait_for_autoscaler: true)"
    )


def _record_config(config: Config, location) -> None:
    """Keep the search's config beside its trials (the report rebuilds the space from it)."""
    directory = location.join(config.search.name)
    location.filesystem.create_dir(directory, recursive=True)
    from search.layout import CONFIG_JSON

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
