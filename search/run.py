"""The search: a Tune Tuner with Optuna's TPE sampler and ASHA over the trial function."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.optuna import OptunaSearch

from search.config import Config
from search.space import param_space
from search.storage import Location
from trainables.spec import SEARCHED, TrialSpec

log = logging.getLogger(__name__)

METRIC = "val_accuracy"
MODE = "max"
TIME_ATTR = "epoch"


def fixed_spec_fields(config: Config) -> dict[str, Any]:
    """The TrialSpec fields every trial shares (everything except the searched axes)."""
    data, recipe = config.data, config.recipe
    return {
        "dataset": data.dataset,
        "validation_fraction": data.validation_fraction,
        "data_seed": data.seed,
        "image_size": data.image_size,
        "max_train_examples": data.max_train_examples,
        "batch_size": recipe.batch_size,
        "head_epochs": recipe.head_epochs,
        "head_lr": recipe.head_lr,
        "flat_epochs": recipe.flat_epochs,
        "cooldown_epochs": recipe.cooldown_epochs,
        "min_lr": recipe.min_lr,
        "momentum": recipe.momentum,
        "weights": recipe.weights,
        "shift_fraction": recipe.shift_fraction,
        "saturation_delta": recipe.saturation_delta,
        "contrast_delta": recipe.contrast_delta,
        "flip": recipe.flip,
        "seed": config.search.seed,
    }


def trial_spec(fixed: dict[str, Any], sampled: dict[str, Any]) -> TrialSpec:
    """Combine the fixed fields with one trial's sampled values."""
    return TrialSpec.from_dict({**fixed, **{k: sampled[k] for k in SEARCHED}})


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


def _limit_threads(cpus: float) -> None:
    # Ray workers see every core; without a cap, two concurrent trials each start a
    # thread pool the size of the machine and slow each other down.
    import tensorflow as tf

    threads = max(1, int(cpus))
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(max(2, threads))
    except RuntimeError:  # TensorFlow already initialised in this process
        pass


def run_trial(sampled: dict[str, Any], *, fixed: dict[str, Any], cpus: float) -> None:
    """Tune's trial function: one trial of the recipe in this process.

    Resumes from Tune's checkpoint when the trial is restored (a retried failure or a
    resumed search), so a trial never starts over from epoch 0.
    """
    from trainables.train import train_trial

    _limit_threads(cpus)
    spec = trial_spec(fixed, sampled)

    def report(metrics: dict[str, Any], directory: Path | None) -> None:
        checkpoint = tune.Checkpoint.from_directory(str(directory)) if directory else None
        tune.report(metrics, checkpoint=checkpoint)

    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        train_trial(spec, report)
        return
    with checkpoint.as_directory() as directory:
        train_trial(spec, report, resume_from=Path(directory))


def make_trainable(config: Config) -> Any:
    """The trial function bound to the config, with the resources one trial holds."""
    res = config.resources
    bound = tune.with_parameters(run_trial, fixed=fixed_spec_fields(config), cpus=res.cpus_per_worker)
    return tune.with_resources(bound, {"cpu": res.cpus_per_worker, "gpu": res.gpus_per_worker})


def run_config(config: Config, location: Location) -> tune.RunConfig:
    return tune.RunConfig(
        name=config.search.name,
        storage_path=location.root if location.uri.startswith("gs://") else location.uri,
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
) -> tune.Tuner:
    """A fresh Tuner for the config (see :func:`restore_tuner` to resume one)."""
    return tune.Tuner(
        trainable or make_trainable(config),
        param_space=param_space(config.space),
        tune_config=tune.TuneConfig(
            metric=METRIC,
            mode=MODE,
            search_alg=make_searcher(config),
            scheduler=make_scheduler(config),
            num_samples=config.search.num_trials,
            max_concurrent_trials=config.search.max_concurrent_trials,
        ),
        run_config=run_config(config, location),
    )


def experiment_path(config: Config, location: Location) -> str:
    """The experiment directory as Tune names it (storage root / search name)."""
    return f"{location.uri}/{config.search.name}"


def restore_tuner(config: Config, location: Location, *, trainable: Callable | None = None) -> tune.Tuner:
    """Resume an interrupted search: unfinished and errored trials carry on from their
    last checkpoints, finished trials are kept, and the searcher resumes its state."""
    return tune.Tuner.restore(
        experiment_path(config, location),
        trainable=trainable or make_trainable(config),
        resume_unfinished=True,
        resume_errored=True,
        storage_filesystem=location.filesystem,
    )
