"""Multi-worker trials: one Tune trial runs a Ray Train job of N TensorFlow workers.

Tune's trial function holds almost nothing (``DRIVER_CPU``); the workers hold the CPUs
and GPUs. The trainer's backend (search.tf_config) sets TF_CONFIG on every worker, each trains under
MultiWorkerMirroredStrategy on its own shard, rank 0 writes the checkpoints, and
``TuneReportCallback`` forwards rank 0's metrics (with the checkpoint's path) to Tune.
When ASHA stops the trial, Tune kills the trial actor (within
``search.run.TRIAL_CLEANUP_S``), the Train controller in it ends, and Ray Train's
placement-group cleaner frees the workers' resources.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from search import strategies
from search.config import ResourcesConfig, Shape
from search.best import KEEP_LATEST, BestKeeper
from trainables.metrics import MID_EPOCH_STEP
from trainables.spec import TrialSpec
from trainables.strategy import Precision


def worker_loop(config: dict[str, Any]) -> None:
    """The per-worker function Ray Train runs on every worker."""
    import ray.train

    from trainables.strategy import limit_threads, make_strategy

    limit_threads(config["cpus_per_worker"])  # first: it imports TensorFlow without its notices
    from trainables.checkpoint import resume_directory
    from trainables.train import train_trial

    context = ray.train.get_context()
    log_level_from_environment()
    worker = worker_context(config, make_strategy(config["strategy"]), context.get_world_size(),
                            context.get_world_rank())
    spec: TrialSpec = config["spec"]
    best = BestKeeper(*config["keep_best"]) if config.get("keep_best") and worker.is_chief else None

    def report(metrics: dict[str, Any], directory: Path | None) -> None:
        if best is not None:
            best.offer(metrics, directory)  # before Tune sees the epoch (search.best)
        checkpoint = ray.train.Checkpoint.from_directory(str(directory)) if directory else None
        # Uploaded on Ray Train's thread while the next epoch trains; Ray Train deletes
        # the local directory after the upload and reports the epoch to Tune then, so a
        # checkpoint Tune knows of is always complete in storage.
        ray.train.report(metrics, checkpoint=checkpoint, checkpoint_upload_mode=ray.train.CheckpointUploadMode.ASYNC)

    with resume_directory(ray.train.get_checkpoint()) as resume_from:
        train_trial(spec, report, context=worker, resume_from=resume_from)


def worker_context(config: dict[str, Any], strategy: Any, world_size: int, rank: int) -> Any:
    """A worker's place in its trial, from the trainer's loop config. Reclaim notices
    come from Ray Train unless ``preemption_check_steps`` is 0 (off); None (auto) checks
    at a step count sized by measurement, n every n steps."""
    from trainables.train import WorkerContext

    checks = config["preemption_check_steps"]
    return WorkerContext(strategy, world_size, rank, config["precision"],
                         steps_per_execution=config["steps_per_execution"],
                         notices=TrainNotices() if checks != 0 else None, check_steps=checks)


# Set to a logging level name (DEBUG: every compiled call's progress) for hpsearch's
# messages in the workers; unset, only warnings (a reclaim notice) are printed.
LOG_LEVEL_ENV = "HPSEARCH_LOG_LEVEL"


def log_level_from_environment() -> None:
    level = os.environ.get(LOG_LEVEL_ENV)
    if level:
        logger = logging.getLogger("trainables")
        logger.setLevel(level)
        if not logger.handlers:
            handler = logging.StreamHandler()
            handler.setFormatter(logging.Formatter("%(name)s %(levelname)s: %(message)s"))
            logger.addHandler(handler)
            logger.propagate = False  # once: Ray's worker has a root handler of its own


# How long after a notice's deadline a worker that checkpointed waits to be reclaimed:
# Ray Train restarts the worker group once the deadline passes (or, with no deadline
# given, DEFAULT_PREEMPTION_DEADLINE_S after the notice); past this margin the worker
# raises, and the group restarts from the checkpoint it took.
RECLAIM_MARGIN_S = 60.0


class TrainNotices:
    """trainables.preemption's notices from Ray Train: its preemption watcher marks
    every worker when a node of the group is draining (SIGTERM to a node's ``ray
    start``, as a Spot reclaim sends; ``ray drain-node``), with the reclaim deadline."""

    def notice(self) -> float | None:
        import ray.train

        info = ray.train.get_preemption_info()
        if info is None:
            return None
        return info.deadline_ms / 1000 if info.deadline_ms else math.inf

    def agree(self, steps: int) -> int:
        from ray.train.collective import broadcast_from_rank_zero

        return broadcast_from_rank_zero(steps)

    def checkpoint(self, metrics: dict[str, Any], directory: Path | None) -> None:
        import ray.train

        checkpoint = ray.train.Checkpoint.from_directory(str(directory)) if directory else None
        try:
            # Stored before report returns; EpochsToTune keeps it from Tune (not an epoch).
            ray.train.report(metrics, checkpoint=checkpoint, checkpoint_upload_mode=ray.train.CheckpointUploadMode.SYNC)
        finally:
            if directory is not None:
                shutil.rmtree(directory, ignore_errors=True)

    def await_reclaim(self, deadline_s: float) -> None:
        from ray.train.v2._internal.constants import DEFAULT_PREEMPTION_DEADLINE_S

        until = min(deadline_s, time.time() + DEFAULT_PREEMPTION_DEADLINE_S) + RECLAIM_MARGIN_S
        while time.time() < until:
            time.sleep(1.0)


def epochs_to_tune() -> Any:
    """Ray Train's TuneReportCallback for epochs only: a mid-epoch checkpoint's report
    (trainables.metrics.MID_EPOCH_STEP) stores the checkpoint for the restarted worker
    group and is not a result (Tune and ASHA see each epoch once)."""
    from ray.tune.integration.ray_train import TuneReportCallback

    class EpochsToTune(TuneReportCallback):
        def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
            if MID_EPOCH_STEP not in metrics[0]:
                super().after_report(run_context, metrics, checkpoint)

    return EpochsToTune()


def scaling_config(shape: Shape) -> Any:
    """Ray Train's worker group for one trial, as its strategy declares it
    (search.strategies: N CPU/GPU workers, or one whole TPU host)."""
    return strategies.of(shape).scaling_config(shape)


def worker_group_bundles(shape: Shape) -> list[dict[str, float]]:
    """The bundles of the placement group Ray Train asks for a trial's worker group,
    as Ray Train builds them from the ScalingConfig (its ``resources_per_worker`` with
    the keys Ray adds, once per worker)."""
    config = scaling_config(shape)
    # Ray Train's WorkerGroupContext takes the per-worker bundle from this property.
    return [dict(config._resources_per_worker_not_none)] * config.num_workers


def keep_train_coordinator_on_this_node() -> None:
    """Create Ray Train's autoscaling coordinator on the driver's node, before any trial.

    Ray Train (2.60) creates a detached actor, ``AutoscalingCoordinator``, when a Train
    controller first starts, pinned to that controller's node: a trial's node, a worker.
    A detached actor keeps its node busy for ever, so that worker group never scales back
    to zero (seen in ``tests/cluster/test_autoscaling_cluster.py``: one CPU node stayed).
    Created here first, on the driver's node (the head, on the chart's cluster), every
    controller finds it by name. The function is Ray's own, private (pinned ray==2.60.0).
    """
    from ray.data._internal.cluster_autoscaler.default_autoscaling_coordinator import (
        get_or_create_autoscaling_coordinator,
    )

    get_or_create_autoscaling_coordinator()


# Reclaims a trial's worker group survives: each resumes where its notice found it
# (search.distributed.TrainNotices), so a trial on a busy Spot pool still progresses; a
# bound so that one that is reclaimed over and over still ends.
MAX_PREEMPTIONS = 10


def failure_config() -> Any:
    """Ray Train's retries for a trial's worker group.

    A lost worker restarts the group from the latest checkpoint (twice). A reclaimed
    node (a worker lost after its node drained) spends a budget of its own,
    MAX_PREEMPTIONS. A worker group
    not placed within resources.placement_timeout_s (see :func:`placement_wait`) is not
    retried by Ray Train, whose default retries it for ever: the trial fails instead.
    """
    import ray.train

    return ray.train.FailureConfig(max_failures=2, controller_failure_limit=0,
                                   max_preemption_failures=MAX_PREEMPTIONS)


class PlacementTimeout(RuntimeError):
    """A trial's worker group was not placed within resources.placement_timeout_s."""


@contextlib.contextmanager
def placement_wait(shape: Shape, timeout_s: float) -> Iterator[None]:
    """Bound the wait for a trial's worker group, and name what was missing if it ends.

    Ray Train reads its worker-group start timeout from the environment of the process
    that calls ``fit()`` and passes it on to its controller (``ray.train.v2``'s
    ``ENV_VARS_TO_PROPAGATE``); each trial function runs in a process of its own.
    """
    from ray.train.v2._internal.constants import WORKER_GROUP_START_TIMEOUT_S_ENV_VAR
    from ray.train.v2._internal.exceptions import WorkerGroupStartupTimeoutError

    previous = os.environ.get(WORKER_GROUP_START_TIMEOUT_S_ENV_VAR)
    os.environ[WORKER_GROUP_START_TIMEOUT_S_ENV_VAR] = str(timeout_s)
    try:
        yield
    except Exception as exc:
        if not isinstance(getattr(exc, "controller_failure", None), WorkerGroupStartupTimeoutError):
            raise
        bundles = worker_group_bundles(shape)
        raise PlacementTimeout(
            f"the trial's worker group ({len(bundles)} x {bundles[0]}) was not placed within {timeout_s:g} s "
            "(resources.placement_timeout_s): no node of the cluster had those resources free and none was "
            "added. Check that a worker group can hold it and that its node pool can scale up (quota, "
            "stock-outs: the autoscaler's log in the head pod says why)") from exc
    finally:
        if previous is None:
            os.environ.pop(WORKER_GROUP_START_TIMEOUT_S_ENV_VAR, None)
        else:
            os.environ[WORKER_GROUP_START_TIMEOUT_S_ENV_VAR] = previous


def make_trainer(
    spec: TrialSpec,
    resources: ResourcesConfig,
    *,
    precision: Precision,
    name: str,
    storage_path: str,
    storage_filesystem: Any = None,
    callbacks: list | None = None,
    keep_best: tuple[str, str] | None = None,
) -> Any:
    """A Ray Train trainer of TensorFlow workers for one trial (what Ray's
    TensorflowTrainer is, with a backend that keeps TensorFlow out of this process and
    Train's controller: search.tf_config).

    The worker group has the shape ``resources`` gives the trial's backbone. A trainer
    made again with the same ``name`` and ``storage_path`` resumes from the latest
    checkpoint Ray Train recorded there, which is how a retried trial continues.
    """
    shape = resources.shape_for(spec.hp.backbone)
    import ray.train
    from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

    from search.tf_config import TFConfig

    return DataParallelTrainer(
        worker_loop,
        backend_config=TFConfig(),
        train_loop_config={
            "spec": spec,
            "strategy": shape.strategy,
            "cpus_per_worker": shape.cpus_per_worker,
            "precision": precision,
            "steps_per_execution": resources.steps_per_execution,
            "preemption_check_steps": resources.preemption_check_steps,
            # (experiment URI, trial id): rank 0 keeps the best epoch's checkpoint there
            "keep_best": keep_best,
        },
        scaling_config=scaling_config(shape),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=storage_path,
            storage_filesystem=storage_filesystem,
            callbacks=callbacks or [],
            # The latest, by time (see search.best.KEEP_LATEST); the best is kept apart.
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=KEEP_LATEST),
            failure_config=failure_config(),
        ),
    )
