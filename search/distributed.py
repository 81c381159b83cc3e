"""Multi-worker trials: one Tune trial runs a Ray Train TensorflowTrainer of N workers.

Tune's trial function holds almost nothing (``DRIVER_CPU``); the workers hold the CPUs
and GPUs. Ray Train sets TF_CONFIG on every worker, each trains under
MultiWorkerMirroredStrategy on its own shard, rank 0 writes the checkpoints, and
``TuneReportCallback`` forwards rank 0's metrics (with the checkpoint's path) to Tune.
When ASHA stops the trial, the trial actor ends, and the Train controller, its workers
and their placement group end with it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from trainables.spec import TrialSpec


def worker_loop(config: dict[str, Any]) -> None:
    """The per-worker function Ray Train runs on every worker."""
    import ray.train

    from trainables.strategy import make_strategy
    from trainables.train import WorkerContext, train_trial

    context = ray.train.get_context()
    strategy = make_strategy(config["strategy"])
    worker = WorkerContext(strategy, context.get_world_size(), context.get_world_rank())
    spec = TrialSpec.from_dict(config["spec"])
    digest_dir = config.get("digest_dir")

    def report(metrics: dict[str, Any], directory: Path | None) -> None:
        if digest_dir:  # tests compare the replicas' weights through these files
            Path(digest_dir, f"rank{worker.worker_index}_epoch{metrics['epoch']}.txt").write_text(metrics["weights_digest"])
        checkpoint = ray.train.Checkpoint.from_directory(str(directory)) if directory else None
        ray.train.report(metrics, checkpoint=checkpoint)

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        train_trial(spec, report, context=worker)
        return
    with checkpoint.as_directory() as directory:
        train_trial(spec, report, context=worker, resume_from=Path(directory))


def make_trainer(
    spec: TrialSpec,
    *,
    strategy: str,
    workers: int,
    cpus_per_worker: float,
    gpus_per_worker: float,
    name: str,
    storage_path: str,
    callbacks: list | None = None,
    digest_dir: str | None = None,
) -> Any:
    """A TensorflowTrainer for one trial."""
    import ray.train
    from ray.train.tensorflow import TensorflowTrainer

    resources = {"CPU": cpus_per_worker}
    if gpus_per_worker:
        resources["GPU"] = gpus_per_worker
    return TensorflowTrainer(
        worker_loop,
        train_loop_config={"spec": spec.to_dict(), "strategy": strategy, "digest_dir": digest_dir},
        scaling_config=ray.train.ScalingConfig(
            num_workers=workers, use_gpu=bool(gpus_per_worker), resources_per_worker=resources
        ),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=storage_path,
            callbacks=callbacks or [],
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=2, checkpoint_score_attribute="val_accuracy", checkpoint_score_order="max"
            ),
            failure_config=ray.train.FailureConfig(max_failures=2),
        ),
    )
