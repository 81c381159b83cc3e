"""The search: a Tune Tuner with Optuna's TPE sampler and ASHA over the trial function."""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import optuna
import pyarrow.fs as pafs
from ray import tune
from ray.tune.schedulers import ASHAScheduler

from search.config import Config
from search import rounds, strategies, study
from search.best import KEEP_LATEST, BestKeeper
from search.plan import BackbonePlan, make_plan
from search.resources import any_distributed, trial_resources
from search.space import param_space
from search.study import StudySearch, UploadStudy
from search.layout import TRAIN_RUNS
from trainables.checkpoint import resume_directory
from trainables.errors import HpsearchError
from trainables.metrics import FINETUNE_EPOCH, VAL_ACCURACY
from trainables.params import hyperparams_from
from trainables.spec import TrialSpec
from trainables.storage import Location, resolve, unreadable
from trainables.strategy import limit_threads

log = logging.getLogger(__name__)

METRIC = VAL_ACCURACY
MODE = "max"
TIME_ATTR = FINETUNE_EPOCH  # ASHA counts fine-tuning epochs (trainables.metrics)


def trial_plans(config: Config) -> dict[str, BackbonePlan]:
    """Each backbone's plan (micro-batches, precision: search.plan), made once by the
    driver and handed to every trial of that backbone."""
    return {plan.backbone: plan for plan in make_plan(config)}


def trial_spec(config: Config, sampled: dict[str, Any], plan: BackbonePlan) -> TrialSpec:
    """One trial's spec: the config's data and recipe sections, its sampled values, and
    the micro-batches its backbone's plan needs to fit a step on its device."""
    hp = hyperparams_from(sampled)
    micro_batches = plan.micro_batches or 1
    weights_root = config.storage.path if config.recipe.weights == "imagenet" else None
    return TrialSpec(config.data, config.recipe, hp, seed=config.search.seed, micro_batches=micro_batches,
                     weights_root=weights_root)


def make_searcher(config: Config, location: Location, round_number: int = 1) -> StudySearch:
    """Optuna TPE, seeded, over the search's study in ``study.db``.

    ``multivariate`` models the axes jointly (they interact: a bigger backbone wants a
    different peak rate). ``constant_liar`` makes concurrent suggestions avoid the points
    of trials still running, instead of piling onto the same region. A later round
    (search.rounds) loads the study its earlier rounds wrote, with a seed of its own so
    it does not replay their random draws.
    """
    sampler = optuna.samplers.TPESampler(
        seed=config.search.seed + round_number - 1,
        n_startup_trials=config.search.startup_trials,
        multivariate=True,
        constant_liar=True,
    )
    path = study.fetch(location, config.search.name)
    return StudySearch(metric=METRIC, mode=MODE, sampler=sampler, study_name=config.search.name,
                       storage=optuna.storages.RDBStorage(study.storage_url(path)))


def make_scheduler(config: Config) -> ASHAScheduler:
    """ASHA with the fine-tuning epoch as its time unit; the longest trial's fine-tuning
    bounds its rungs."""
    return ASHAScheduler(
        time_attr=TIME_ATTR,
        max_t=config.max_finetune_epochs,
        grace_period=config.search.grace_epochs,
        reduction_factor=config.search.reduction_factor,
    )


def run_trial(sampled: dict[str, Any], *, config: Config, experiment_uri: str,
              plans: dict[str, BackbonePlan]) -> None:
    """Tune's trial function: runs the trial by its backbone's strategy and plan."""
    plan = plans[sampled["backbone"]]
    if strategies.of(plan.shape).distributed:
        train_distributed(sampled, config=config, experiment_uri=experiment_uri, plan=plan)
    else:
        train_here(sampled, config=config, experiment_uri=experiment_uri, plan=plan)


def train_here(sampled: dict[str, Any], *, config: Config, experiment_uri: str, plan: BackbonePlan) -> None:
    """A single-strategy trial: it trains in this (the trial's) process.

    Resumes from Tune's checkpoint when the trial is restored (a retried failure or a
    resumed search), so a trial never starts over from epoch 0.

    Tune's function API persists a reported checkpoint before ``tune.report`` returns,
    and ``tune.report`` then waits until Tune's controller asks for the next result
    (its function trainables report synchronously). The epoch is therefore reported
    from a thread of its own (``InBackground``) while the next one trains, as Ray
    Train's asynchronous upload does for distributed trials. When Tune stops the trial,
    its training ends at the next compiled call, and the process waits for that before
    it exits (trainables.stopping).
    """
    limit_threads(plan.shape.cpus_per_worker)  # first: it imports TensorFlow without its notices
    from trainables.reporting import train_reporting_in_background
    from trainables.train import WorkerContext, train_trial

    spec = trial_spec(config, sampled, plan)
    best = BestKeeper(experiment_uri, tune.get_context().get_trial_id())

    def report(metrics: dict[str, Any], directory: Path | None) -> None:  # on InBackground's thread
        best.offer(metrics, directory)  # before Tune sees the epoch (search.best)
        checkpoint = tune.Checkpoint.from_directory(str(directory)) if directory else None
        try:
            tune.report(metrics, checkpoint=checkpoint)
        finally:
            if directory is not None:
                shutil.rmtree(directory, ignore_errors=True)

    def train(reporter: Any, stop_requested: Callable[[], bool]) -> None:
        context = WorkerContext(precision=plan.precision, steps_per_execution=config.resources.steps_per_execution,
                                stop_requested=stop_requested)
        with resume_directory(tune.get_checkpoint()) as resume_from:
            train_trial(spec, reporter, context=context, resume_from=resume_from)

    train_reporting_in_background(train, report)


def train_distributed(sampled: dict[str, Any], *, config: Config, experiment_uri: str, plan: BackbonePlan) -> None:
    """An mwms or tpu trial: it starts a Ray Train job of the trial's workers and waits
    for it.

    ``TuneReportCallback`` forwards rank 0's metrics, with the checkpoint's path as the
    ``checkpoint_path`` metric. The Train run is named after the trial, so when Tune
    retries the trial or a resumed search restarts it, the new job resumes from the
    run's latest checkpoint instead of epoch 0.
    """
    from search.distributed import epochs_to_tune, make_trainer, placement_wait

    location = resolve(experiment_uri)
    trial_id = tune.get_context().get_trial_id()
    trainer = make_trainer(
        trial_spec(config, sampled, plan),
        config.resources,
        precision=plan.precision,
        name=trial_id,
        keep_best=(experiment_uri, trial_id),
        storage_path=location.join(TRAIN_RUNS),
        storage_filesystem=location.filesystem,
        callbacks=[epochs_to_tune()],
    )
    with placement_wait(plan.shape, config.resources.placement_timeout_s):
        trainer.fit()


def make_trainable(config: Config, location: Location) -> Any:
    """The trial function bound to the config, with the resources the trial itself holds.

    A single-strategy trial trains in the trial's own process, which holds the worker's
    CPUs and GPUs. A distributed trial's process only waits for its Ray Train workers,
    which hold the resources, so it takes almost nothing.
    """
    bound = tune.with_parameters(run_trial, config=config, experiment_uri=experiment_path(config, location),
                                 plans=trial_plans(config))
    return tune.with_resources(bound, trial_resources(config))


def run_config(config: Config, location: Location, callbacks: list | None = None, round_number: int = 1) -> tune.RunConfig:
    storage, name = rounds.tune_location(location, config.search.name, round_number)
    return tune.RunConfig(
        name=name,
        callbacks=[*(callbacks or []), UploadStudy(location, config.search.name), *result_loggers()],
        storage_path=storage.root if storage.is_remote else storage.uri,
        storage_filesystem=storage.filesystem,
        # The latest checkpoints by time, never ranked by score: a ranking may delete the
        # very checkpoint Tune's last experiment snapshot names as a trial's latest, and a
        # search resumed from that snapshot could then not restore the trial. The best
        # epoch's checkpoint is kept apart (search.best).
        checkpoint_config=tune.CheckpointConfig(num_to_keep=KEEP_LATEST),
        # A trial whose worker dies is retried from its last checkpoint.
        failure_config=tune.FailureConfig(max_failures=2),
    )


def result_loggers() -> list[tune.Callback]:
    """The result files Tune's ResultGrid reads each trial's reports back from (its
    ``result.json`` and ``progress.csv``), and no TensorBoard event files.

    Tune adds a TensorBoard logger by default: each trial then runs a writer thread and a
    multiprocessing queue in the driver, and its event file, the largest of a trial's
    files, is uploaded again with the experiment directory at every snapshot (measured
    with bench/scale.py: 23% of the driver's samples in the writer threads, 32 MB of 110
    MB of trial files written at 100 trials). Nothing here reads it. A restored run keeps
    the loggers it was built with; see :func:`_no_default_loggers`.
    """
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

    return [JsonLoggerCallback(), CSVLoggerCallback()]


def _no_default_loggers() -> None:
    """Tune adds only the loggers a run lacks, unless told to add none (read when a run
    starts or is restored; a value the user set wins)."""
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")


def build_tuner(
    config: Config,
    location: Location,
    *,
    round_: rounds.Round | None = None,
    trainable: Callable | None = None,
    scheduler: Any = None,
    callbacks: list | None = None,
    time_budget_s: float | None = None,
) -> tune.Tuner:
    """A fresh Tuner for one round of the search (default: round 1 with every trial);
    see :func:`restore_tuner` to resume one.

    ``scheduler`` replaces ASHA (the benchmarks compare it with FIFO); ``callbacks`` are
    Tune callbacks (the benchmarks time trials with them); ``time_budget_s`` ends the
    run after that long (a benchmark compares searches in the same wall time).
    """
    round_ = round_ or rounds.Round(1, config.search.num_trials)
    _bound_trial_cleanup(config)
    _set_snapshot_period(round_.num_trials)
    _no_default_loggers()
    return tune.Tuner(
        trainable or make_trainable(config, location),
        param_space=param_space(config.space),
        tune_config=tune.TuneConfig(
            metric=METRIC,
            mode=MODE,
            search_alg=make_searcher(config, location, round_.number),
            scheduler=scheduler or make_scheduler(config),
            num_samples=round_.num_trials,
            max_concurrent_trials=config.search.max_concurrent_trials,
            time_budget_s=time_budget_s,
            # No actor reuse, though it would save each trial a process start and a
            # TensorFlow import (about 2.5 s of each hand-over in bench/concurrency.py).
            # Tune reuses a stopped trial's actor only if its training thread ends within
            # 2 s of the stop; a trial ASHA stops ends at its next compiled call (a whole
            # epoch by default: trainables.stopping), so the reset fails and Tune fails the
            # *next* trial instead. Measured with bench/concurrency.py and reuse on: 2 of
            # 8 trials ERROR ("Could not re-use actor ... reset_config()"), and the search
            # did not end within 15 minutes. Distributed trials could not use it anyway:
            # a stopped one's actor must be killed to free its workers.
            reuse_actors=False,
        ),
        run_config=run_config(config, location, callbacks, round_.number),
    )


# Up to this many trials in a round, Tune snapshots the experiment at every step of its
# loop; above it, on its own adaptive timer. Measured with bench/scale.py (stand-in
# trials, 32 at once, local storage): at 100 trials, every step cost the driver 0.89 s
# of CPU and 5.4 MB written per trial, the timer 0.18 s and 0.6 MB. Each snapshot holds
# every trial of the round (about 18 KB each) and re-uploads every trial's files, so
# either way the cost per trial grows with the round; every step, with every result.
EVERY_STEP_UP_TO_TRIALS = 100


def snapshot_period(num_trials: int) -> str:
    """Tune's experiment snapshot period for a round of ``num_trials`` trials.

    "0": at every step of Tune's loop. A driver killed anywhere then resumes each trial
    from the checkpoint of its last reported epoch, so what is trained twice is at most
    the epoch each running trial had in flight, and every trial started is kept
    (measured: with the timer, stand-in trials killed after their second epoch started
    over from the first). Each snapshot holds every trial of the round, so its cost per
    trial grows with the round's size.
    "auto": Tune's own timer (10 s or more, at most 5% of the loop's time, and whenever a
    trial has written CheckpointConfig.num_to_keep checkpoints since): a killed driver's
    resume retrains at most what the running trials reported in that period, and loses a
    trial started within it (its suggestion is closed as FAIL, a new one takes its place).
    """
    return "0" if num_trials <= EVERY_STEP_UP_TO_TRIALS else "auto"


_SNAPSHOT_PERIOD_ENV = "TUNE_GLOBAL_CHECKPOINT_S"
_snapshot_period_set: str | None = None  # the value this process set last, if any


def _set_snapshot_period(num_trials: int) -> None:
    """Tune reads TUNE_GLOBAL_CHECKPOINT_S when a run starts. A value the user set wins;
    one set here for an earlier round of this process is set again for this one."""
    global _snapshot_period_set
    current = os.environ.get(_SNAPSHOT_PERIOD_ENV)
    if current is None or current == _snapshot_period_set:
        _snapshot_period_set = os.environ[_SNAPSHOT_PERIOD_ENV] = snapshot_period(num_trials)


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
    if any_distributed(config):
        os.environ.setdefault("TUNE_FORCE_TRIAL_CLEANUP_S", str(TRIAL_CLEANUP_S))


def experiment_path(config: Config, location: Location) -> str:
    """The experiment directory as Tune names it (storage root / search name)."""
    return f"{location.uri}/{config.search.name}"


def restore_tuner(config: Config, location: Location, round_: rounds.Round, *,
                  trainable: Callable | None = None) -> tune.Tuner:
    """Resume an interrupted round: unfinished and errored trials carry on from their
    last checkpoints, finished trials are kept, and the searcher resumes its state
    (its study first brought down from storage)."""
    _bound_trial_cleanup(config)
    _set_snapshot_period(round_.num_trials)
    _no_default_loggers()
    study.fetch(location, config.search.name)
    storage, name = rounds.tune_location(location, config.search.name, round_.number)
    check_restorable(storage, name, round_.number)
    return tune.Tuner.restore(
        # with an explicit filesystem, Tune takes the path inside it (bucket/key for GCS)
        storage.join(name),
        trainable=trainable or make_trainable(config, location),
        resume_unfinished=True,
        resume_errored=True,
        storage_filesystem=storage.filesystem,
    )


class RoundStateError(HpsearchError):
    """A round's saved Tune state that Tune could not restore."""


def check_restorable(storage: Location, name: str, round_number: int) -> None:
    """Refuse a round whose saved state Tune could not read.

    Tune reads the experiment state, the searcher's and the callbacks' (the JSON and
    pickle files at the top of the run's directory); when one is unreadable it logs the
    failure and starts the round over, training every trial again. Local storage writes
    whole files only (trainables.storage), so this finds state damaged otherwise.
    """
    directory = storage.join(name)
    selector = pafs.FileSelector(directory, allow_not_found=True)
    for info in storage.filesystem.get_file_info(selector):
        if info.type != pafs.FileType.File or not info.base_name.endswith((".json", ".pkl")):
            continue
        with storage.filesystem.open_input_stream(info.path) as handle:
            reason = unreadable(handle.read())
        if reason:
            raise RoundStateError(
                f"round {round_number} cannot be resumed: its saved state {info.path} is unreadable ({reason}); "
                "Tune would start the round over and train its trials again. Restore the file from a copy, "
                "or start the search afresh under another search.name")


def round_results(config: Config, location: Location, round_number: int, *,
                  trainable: Callable | None = None) -> Any:
    """The ResultGrid of a round that is not running now (read from its stored state)."""
    storage, name = rounds.tune_location(location, config.search.name, round_number)
    return tune.Tuner.restore(storage.join(name), trainable=trainable or make_trainable(config, location),
                              storage_filesystem=storage.filesystem).get_results()


def run_rounds(config: Config, location: Location, steps: rounds.Steps, stop: Any = None, *,
               trainable: Callable | None = None, callbacks: list | None = None) -> dict[int, Any]:
    """Finish the unfinished round, then start the new one (search.rounds).

    Returns each round run here's ResultGrid by number. ``stop`` (search.signals) ends
    the running round and starts no other. A round that ends with no trial in ERROR is
    recorded finished, and the study's trials a killed driver left RUNNING are closed. A
    resumed round that ends short of its trials hands the rest on (rounds.after_resume).
    """
    stopped = lambda: stop is not None and stop.stopped  # noqa: E731
    grids = {}
    add = steps.add
    if steps.resume is not None and not stopped():
        grid = grids[steps.resume.number] = restore_tuner(config, location, steps.resume, trainable=trainable).fit()
        if not stopped():
            held, add = rounds.after_resume(steps.resume, len(grid), add)
            if held != steps.resume:
                log.warning("round %d was restored with %d of its %d trials (the driver died between the files "
                            "of a snapshot); the other %d run in round %d", held.number, held.num_trials,
                            steps.resume.num_trials, steps.resume.num_trials - held.num_trials, add.number)
            _end_round(config, location, held, grid)
        study.upload(location, config.search.name)  # stopped too: the resume may run elsewhere
    if add is not None and not stopped():
        rounds.record(location, config.search.name, add)
        if add.number > 1:
            log.info("continuation: round %d adds %d trials", add.number, add.num_trials)
        tuner = build_tuner(config, location, round_=add, trainable=trainable, callbacks=callbacks)
        grid = grids[add.number] = tuner.fit()
        if not stopped():
            _end_round(config, location, add, grid)
        study.upload(location, config.search.name)
    return grids


def _end_round(config: Config, location: Location, round_: rounds.Round, grid: Any) -> None:
    """Record a round that ran to its end (finished when no trial ended in ERROR; an
    errored round is resumed) and close the study's trials a killed driver left RUNNING."""
    closed = study.close_orphans(study.local_path(location, config.search.name), config.search.name)
    if closed:
        log.info("study: %d suggestions of an interrupted driver marked failed", closed)
    rounds.record(location, config.search.name, replace(round_, finished=grid.num_errors == 0))


def all_results(config: Config, location: Location, grids: dict[int, Any], *,
                trainable: Callable | None = None) -> list[Any]:
    """Every trial of every round: the grids of rounds run here, the others read back."""
    results = []
    for round_ in rounds.read(location, config.search.name) or [rounds.Round(1, config.search.num_trials)]:
        grid = grids.get(round_.number)
        if grid is None:
            grid = round_results(config, location, round_.number, trainable=trainable)
        results.extend(grid)
    return results
