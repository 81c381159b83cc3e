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
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from search import strategies
from search.config import ResourcesConfig, Shape
from search.best import KEEP_LATEST, BestKeeper
from trainables.spec import TrialSpec
from trainables.strategy import Precision


def worker_loop(config: dict[str, Any]) -> None:
    """The per-worker function Ray Train runs on every worker."""
    import ray.train

    from trainables.checkpoint import resume_directory
    from trainables.strategy import limit_threads, make_strategy
    from trainables.train import WorkerContext, train_trial

    context = ray.train.get_context()
    limit_threads(config["cpus_per_worker"])
    strategy = make_strategy(config["strategy"])
    worker = WorkerContext(strategy, context.get_world_size(), context.get_world_rank(), config["precision"],
                           steps_per_execution=config["steps_per_execution"])
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


def failure_config() -> Any:
    """Ray Train's retries for a trial's worker group.

    A lost worker restarts the group from the latest checkpoint (twice). A worker group
    not placed within resources.placement_timeout_s (see :func:`placement_wait`) is not
    retried by Ray Train, whose default retries it for ever: the trial fails instead.
    """
    import ray.train

    return ray.train.FailureConfig(max_failures=2, controller_failure_limit=0)


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
