"""Stand-in trials for the autoscaling cluster: the resources of a real trial, no training.

Imported by Ray's worker processes (the test puts this directory on their PYTHONPATH).
A trial function holds what ``search.resources.trial_resources`` gives it; a distributed
one starts a Ray Train worker group with ``search.distributed.scaling_config`` of its
shape, as ``search.run.train_distributed`` does, through Ray Train's base trainer
instead of the TensorFlow one (same ScalingConfig, same placement group; no TensorFlow
import in every worker). Each process writes which node type it ran on
(``RAY_NODE_TYPE_NAME``, set by Ray's fake node provider) under ``ledger``.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from ray import tune

from search.config import Config
from search.distributed import scaling_config
from search import strategies


def _record(ledger: str, name: str, **facts) -> None:
    facts = {"node_type": os.environ.get("RAY_NODE_TYPE_NAME", ""), **facts}
    Path(ledger, f"{name}.json").write_text(json.dumps(facts))


def standin_worker(config: dict) -> None:
    """``epochs`` epochs of ``epoch_s`` seconds each, every one reported with a
    checkpoint (rank 0's); a restarted worker group resumes after the checkpoint's epoch.
    Each worker records each epoch it trains, with its raylet's pid (its parent)."""
    import tempfile

    import ray.train

    rank = ray.train.get_context().get_world_rank()
    start = 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            start = int(Path(directory, "epoch").read_text())
    for epoch in range(start + 1, config["epochs"] + 1):
        time.sleep(config["epoch_s"])
        _record(config["ledger"], f"{config['trial']}-worker{rank}-epoch{epoch}-pid{os.getpid()}",
                epoch=epoch, resumed_after=start, raylet_pid=os.getppid())
        with tempfile.TemporaryDirectory() as directory:
            Path(directory, "epoch").write_text(str(epoch))
            saved = ray.train.Checkpoint.from_directory(directory) if rank == 0 else None
            ray.train.report({"epoch": epoch}, checkpoint=saved)


def standin_trial(sampled: dict, *, config: Config, ledger: str, storage: str,
                  lengths: dict[str, tuple[int, float]]) -> None:
    import ray.train
    from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

    from search.distributed import failure_config, placement_wait

    trial = sampled["backbone"]
    epochs, epoch_s = lengths[trial]
    _record(ledger, f"{trial}-trial")
    shape = config.resources.shape_for(trial)
    if strategies.get(shape.strategy).distributed:
        trainer = DataParallelTrainer(
            standin_worker,
            train_loop_config={"ledger": ledger, "trial": trial, "epochs": epochs, "epoch_s": epoch_s},
            scaling_config=scaling_config(shape),
            run_config=ray.train.RunConfig(name=f"standin-{trial}", storage_path=storage,
                                           failure_config=failure_config()),
        )
        with placement_wait(shape, config.resources.placement_timeout_s):  # as search.run does
            trainer.fit()
    tune.report({"epoch": epochs})


def main(address: str, config_path: str, trials: list[str], workdir: str) -> None:
    """The search's driver: one stand-in trial per backbone, at once, with Tune's
    per-trial resources from ``trial_resources``; prints each trial's status. A trial is
    ``BACKBONE`` (one epoch of no time) or ``BACKBONE:EPOCHS:EPOCH_S``."""
    import ray

    from search.config import load_config
    from search.distributed import keep_train_coordinator_on_this_node
    from search.resources import trial_resources

    config = load_config(config_path)
    ledger = Path(workdir, "ledger")
    ledger.mkdir(parents=True, exist_ok=True)
    ray.init(address=address, logging_level="ERROR",
             runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(
                 p for p in (str(Path(__file__).parent), os.environ.get("PYTHONPATH")) if p)}})
    keep_train_coordinator_on_this_node()  # as hpsearch's driver does before its trials
    lengths = {name: (int(epochs), float(epoch_s)) for name, epochs, epoch_s in
               ((trial.split(":") + ["1", "0"])[:3] for trial in trials)}
    trainable = tune.with_resources(
        tune.with_parameters(standin_trial, config=config, ledger=str(ledger), storage=f"{workdir}/train",
                             lengths=lengths),
        trial_resources(config))
    grid = tune.Tuner(
        trainable,
        param_space={"backbone": tune.grid_search(list(lengths))},
        tune_config=tune.TuneConfig(max_concurrent_trials=len(lengths)),
        run_config=tune.RunConfig(name="standins", storage_path=f"{workdir}/tune", verbose=0),
    ).fit()
    print("finished:", json.dumps({r.config["backbone"]: (r.error is None) for r in grid}))


if __name__ == "__main__":
    import sys

    main(sys.argv[1], sys.argv[2], sys.argv[3].split(","), sys.argv[4])
