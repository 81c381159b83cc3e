"""The search: a Tune Tuner with Optuna's TPE sampler and ASHA over the trial function."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.optuna import OptunaSearch

from search.config import Config
from search.resources import DRIVER_CPU, worker_precision
from search.space import param_space
from trainables import strategy as strategies
from trainables.params import hyperparams_from
from trainables.spec import TrialSpec
from trainables.storage import Location, resolve
from trainables.strategy import limit_threads

log = logging.getLogger(__name__)

METRIC = "val_accuracy"
MODE = "max"
TIME_ATTR = "epoch"


def trial_spec(config: Config, sampled: dict[str, Any]) -> TrialSpec:
    """One trial's spec: the config's data and recipe sections, its sampled values."""
    return TrialSpec(config.data, config.recipe, hyperparams_from(sampled), seed=config.search.seed)


def make_searcher(config: Config) -> OptunaSearch:
    """Optuna TPE, seeded.

    ``multivariate`` models the axes jointly (they interact: a bigger backbone wants a
    different peak rate). ``constant_liar`` makes concurrent suggestions avoid the points
    of trials still running, instead of piling onto the same region.
    """
    sampler = optuna.samplers.TPESampler(
        seed=config.search.seed,
        n_startup_trials=config.search.startup_trials,
        multivariate=True,
        constant_liar=True,
    )
    return OptunaSearch(metric=METRIC, mode=MODE, sampler=sampler)


def make_scheduler(config: Config) -> ASHAScheduler:
    """ASHA with the epoch as its time unit; the longest trial bounds its rungs."""
    return ASHAScheduler(
        time_attr=TIME_ATTR,
        max_t=config.max_epochs,
        grace_period=config.search.grace_epochs,
        reduction_factor=config.search.reduction_factor,
    )


def run_trial(sampled: dict[str, Any], *, config: Config) -> None:
    """Tune's trial function for the single strategy: one trial in this process.

    Resumes from Tune's checkpoint when the trial is restored (a retried failure or a
    resumed search), so a trial never starts over from epoch 0.
    """
    from trainables.train import WorkerContext, train_trial

    limit_threads(config.resources.cpus_per_worker)
    spec = trial_spec(config, sampled)
    context = WorkerContext(precision=worker_precision(config.resources))

    def report(metrics: dict[str, Any], directory: Path | None) -> None:
        checkpoint = tune.Checkpoint.from_directory(str(directory)) if directory else None
        tune.report(metrics, checkpoint=checkpoint)

    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        train_trial(spec, report, context=context)
        return
    with checkpoint.as_directory() as directory:
        train_trial(spec, report, context=context, resume_from=Path(directory))


# Ray Train keeps each distributed trial's runs here, inside the experiment directory.
TRAIN_RUNS = "train_runs"


def run_distributed_trial(sampled: dict[str, Any], *, config: Config, experiment_uri: str) -> None:
    """Tune's trial function for the mwms and tpu strategies: it starts a Ray Train job
    of the trial's workers and waits for it.

    ``TuneReportCallback`` forwards rank 0's metrics, with the checkpoint's path as the
    ``checkpoint_path`` metric. The Train run is named after the trial, so when Tune
    retries the trial or a resumed search restarts it, the new job resumes from the
    run's latest checkpoint instead of epoch 0.
    """
    from ray.tune.integration.ray_train import TuneReportCallback

    from search.distributed import make_trainer

    location = resolve(experiment_uri)
    trainer = make_trainer(
        trial_spec(config, sampled),
        config.resources,
        name=tune.get_context().get_trial_id(),
        storage_path=location.join(TRAIN_RUNS),
        storage_filesystem=location.filesystem,
        callbacks=[TuneReportCallback()],
    )
    trainer.fit()


def make_trainable(config: Config, location: Location) -> Any:
    """The trial function bound to the config, with the resources the trial itself holds.

    A single-strategy trial trains in the trial's own process, which holds the worker's
    CPUs and GPUs. A distributed trial's process only waits for its Ray Train workers,
    which hold the resources, so it takes almost nothing.
    """
    res = config.resources
    if not strategies.get(res.strategy).distributed:
        bound = tune.with_parameters(run_trial, config=config)
        return tune.with_resources(bound, {"cpu": res.cpus_per_worker, "gpu": res.gpus_per_worker})
    bound = tune.with_parameters(run_distributed_trial, config=config, experiment_uri=experiment_path(config, location))
    return tune.with_resources(bound, {"cpu": DRIVER_CPU})


def run_config(config: Config, location: Location, callbacks: list | None = None) -> tune.RunConfig:
    return tune.RunConfig(
        name=config.search.name,
        callbacks=callbacks,
        storage_path=location.root if location.is_remote else location.uri,
        storage_filesystem=location.filesystem,
        checkpoint_config=tune.CheckpointConfig(
            # The best two by validation accuracy; Tune also always keeps the latest,
            # which a retried trial resumes from.
            num_to_keep=2,
            checkpoint_score_attribute=METRIC,
            checkpoint_score_order=MODE,
        ),
        # A trial whose worker dies is retried from its last checkpoint.
        failure_config=tune.FailureConfig(max_failures=2),
    )


def build_tuner(
    config: Config,
    location: Location,
    *,
    trainable: Callable | None = None,
    scheduler: Any = None,
    callbacks: list | None = None,
) -> tune.Tuner:
    """A fresh Tuner for the config (see :func:`restore_tuner` to resume one).

    ``scheduler`` replaces ASHA (the benchmarks compare it with FIFO); ``callbacks`` are
    Tune callbacks (the benchmarks time trials with them).
    """
    _bound_trial_cleanup(config)
    return tune.Tuner(
        trainable or make_trainable(config, location),
        param_space=param_space(config.space),
        tune_config=tune.TuneConfig(
            metric=METRIC,
            mode=MODE,
            search_alg=make_searcher(config),
            scheduler=scheduler or make_scheduler(config),
            num_samples=config.search.num_trials,
            max_concurrent_trials=config.search.max_concurrent_trials,
        ),
        run_config=run_config(config, location, callbacks),
    )


# How long Tune waits for a stopped trial's actor to exit before killing it.
TRIAL_CLEANUP_S = 15


def _bound_trial_cleanup(config: Config) -> None:
    """Free a stopped distributed trial's workers within seconds.

    When ASHA stops a distributed trial, the trial function is still blocked in
    ``trainer.fit()``: Tune's graceful stop cannot interrupt it, so the Train run keeps
    its workers until Tune force-kills the trial actor (after 600 s by default; Ray
    issue #54305). Killing the actor ends the Train controller in it; Ray Train's
    placement-group cleaner then frees the workers' bundles for the next trial.
    Read by Tune's controller when the Tuner starts; an explicit setting wins.
    """
    if strategies.get(config.resources.strategy).distributed:
        os.environ.setdefault("TUNE_FORCE_TRIAL_CLEANUP_S", str(TRIAL_CLEANUP_S))


def experiment_path(config: Config, location: Location) -> str:
    """The experiment directory as Tune names it (storage root / search name)."""
    return f"{location.uri}/{config.search.name}"


def restore_tuner(config: Config, location: Location, *, trainable: Callable | None = None) -> tune.Tuner:
    """Resume an interrupted search: unfinished and errored trials carry on from their
    last checkpoints, finished trials are kept, and the searcher resumes its state."""
    _bound_trial_cleanup(config)
    return tune.Tuner.restore(
        # with an explicit filesystem, Tune takes the path inside it (bucket/key for GCS)
        location.join(config.search.name),
        trainable=trainable or make_trainable(config, location),
        resume_unfinished=True,
        resume_errored=True,
        storage_filesystem=location.filesystem,
    )
