"""Trials as 2-worker MultiWorkerMirroredStrategy jobs under Ray Train, on this 2-core machine."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest
import ray
from ray import tune

from search.config import ResourcesConfig, config_from_dict
from search.results import trial_rows
from search.run import METRIC, MODE, build_tuner
from trainables.storage import resolve

TWO_WORKERS = ResourcesConfig(strategy="mwms", workers=2, cpus_per_worker=0.99)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def local_ray():
    here = Path(__file__).resolve().parent
    tests = f"{here}:{here.parent}"  # this module (its trial functions) and support.py
    ray.init(address="local", num_cpus=2, logging_level="ERROR", _node_ip_address="127.0.0.1", dashboard_host="127.0.0.1",
             runtime_env={"env_vars": {"PYTHONPATH": tests, "TF_CPP_MIN_LOG_LEVEL": "2"}})
    yield
    ray.shutdown()


# A worker group restarted from its checkpoint reports its next epoch within this time on
# this 2-core machine: the new group's start-up, the restore and one epoch of training.
RESTART_WITHIN_S = 180


def all_resources_free(timeout_s: float = 30.0) -> bool:
    """Every reservation released (placement groups go asynchronously after a trial).

    Compared on the schedulable resources; the object store may still hold a few bytes.
    """

    def schedulable(resources):
        return {k: v for k, v in resources.items() if k != "object_store_memory"}

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if schedulable(ray.available_resources()) == schedulable(ray.cluster_resources()):
            return True
        time.sleep(0.5)
    return False


# Set once Tune has a healthy trial's first epoch: Ray Train reports an epoch only after
# it registered the epoch's checkpoint, so a worker group restarted from then on resumes
# from it. (A module global: Tune keeps its callbacks in its saved state, and an Event
# does not pickle.)
FIRST_REPORT = threading.Event()


class FirstReport(tune.Callback):
    def on_trial_result(self, iteration, trials, trial, result, **info):
        if not result.get("diverged"):
            FIRST_REPORT.set()


def kill_one_worker_after_first_report(killed: dict) -> None:
    """Wait for a healthy trial's first reported epoch, then SIGKILL one of its Train workers."""
    from ray.util.state import list_actors

    if not FIRST_REPORT.wait(timeout=600):
        return
    # this Ray's address, named: with another Ray on the machine, Ray's own guess refuses
    alive = list_actors(address=ray.get_runtime_context().gcs_address, filters=[("state", "=", "ALIVE")])
    workers = [a for a in alive if a.class_name == "RayTrainWorker"]
    if workers:
        killed["pid"] = workers[-1].pid
        os.kill(killed["pid"], signal.SIGKILL)
        killed["at"] = time.time()


def test_distributed_trial_survives_a_killed_worker_then_diverges_on_both_workers(local_ray, tmp_path):
    """One trial of two MultiWorkerMirrored workers on 2 cores: a head epoch at a sane
    rate (0.01), then fine-tuning at a peak rate far too high (5.62, no warmup).

    - One worker is killed after the head epoch's report: Ray Train restarts the worker
      group from that epoch's checkpoint, so the trial's epochs go 1, 2 and never back to
      1, and the trials table counts two attempts.
    - The restarted group's first fine-tuning epoch diverges (mean loss above
      trainables.divergence's threshold, decided on the loss both workers all-reduced:
      were it decided per worker, one would stop and the other wait in its next
      collective for ever). The trial reports it and ends itself, a result, not an error.
    - Every epoch ends with both workers holding the same weights, checked by the trial
      itself through a collective (replicas_in_sync, trainables.train), and the weights
      change between epochs.
    """
    from support import write_colour_batches

    data = write_colour_batches(tmp_path / "colours", n_train=1000)
    config = config_from_dict({
        "data": {"dataset": str(data), "image_size": 32},
        "space": {"backbones": ["Tiny"], "cutout_count": {"low": 0, "high": 1}, "warmup_epochs": {"low": 0, "high": 0},
                  "max_lr": {"low": 5.0, "high": 6.0, "log": True}},
        "recipe": {"batch_size": 32, "head_epochs": 1, "head_lr": 0.01, "flat_epochs": 1, "cooldown_epochs": 1,
                   "weights": "none", "flip": False},
        "search": {"name": "mwms", "num_trials": 1, "max_concurrent_trials": 1, "seed": 71, "startup_trials": 1,
                   "grace_epochs": 1, "reduction_factor": 2},
        "resources": {"strategy": "mwms", "workers": 2, "cpus_per_worker": 0.99},
        "storage": {"path": str(tmp_path / "experiments")},
    })
    killed: dict = {}
    FIRST_REPORT.clear()
    killer = threading.Thread(target=kill_one_worker_after_first_report, args=(killed,), daemon=True)
    killer.start()
    grid = build_tuner(config, resolve(config.storage.path), callbacks=[FirstReport()]).fit()
    killer.join(timeout=5)
    (row,) = trial_rows(grid, METRIC, MODE, planned_epochs=lambda c: config.recipe.epochs(c["warmup_epochs"]))
    (result,) = grid

    assert row.status == "TERMINATED", row.error
    # the killed worker: really killed, and its trial resumed from the head epoch's checkpoint
    assert "pid" in killed, "no worker was killed"
    with pytest.raises(ProcessLookupError):
        os.kill(killed["pid"], 0)
    history = result.metrics_dataframe
    assert history["epoch"].tolist() == [1, 2], history["epoch"].tolist()
    assert history["attempt"].tolist() == [1, 2] and row.attempts == 2
    # and came back within RESTART_WITHIN_S: its first epoch after the kill was reported by then
    restarted = history[history["attempt"] == 2]["timestamp"].min() - killed["at"]
    print(f"killed worker: trial reported its next epoch {restarted:.0f} s after the kill")
    assert restarted < RESTART_WITHIN_S
    # then its first fine-tuning epoch diverged, on both workers at once: the trial ended
    # itself there (a result, not an error), before its planned 3 epochs
    assert history["diverged"].tolist() == [False, True]
    assert row.diverged and row.epochs_run == 2 and row.planned_epochs == 3 and not row.stopped_early
    # both workers held the same weights after every epoch, and they trained: a new digest each epoch
    assert history["replicas_in_sync"].all()
    digests = history["weights_digest"].tolist()
    assert len(set(digests)) == len(digests), digests
    assert (Path(row.best_checkpoint) / "model.keras").is_file()  # the chief's checkpoint, found by path
    assert all_resources_free(), (ray.available_resources(), ray.cluster_resources())


def never_runs(config: dict) -> None:
    raise AssertionError("a worker group that was never placed ran")


# A worker group never placed within a 2 s timeout ends its run within this bound (the
# controller's start-up and teardown included): a "never hangs" bound, not a speed.
UNPLACED_ENDS_WITHIN_S = 120


def test_a_worker_group_never_placed_ends_the_trial_in_time_naming_what_it_waited_for(local_ray, tmp_path):
    """Ray Train retries a worker group that cannot start for ever by default; with
    hpsearch's failure config and placement_wait, the run ends after the timeout with an
    error naming the bundle that could not be placed (here a GPU this Ray does not have:
    an autoscaling cluster whose pool never scales up looks the same to the trial)."""
    from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

    from search.config import Shape
    from search.distributed import PlacementTimeout, failure_config, placement_wait, scaling_config

    shape = Shape(strategy="mwms", workers=1, cpus_per_worker=1.0, gpus_per_worker=1.0, gpu_type="nvidia-l4")
    trainer = DataParallelTrainer(
        never_runs, scaling_config=scaling_config(shape),
        run_config=ray.train.RunConfig(name="unplaced", storage_path=str(tmp_path), failure_config=failure_config()))
    before = os.environ.get("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S")
    started = time.monotonic()
    with pytest.raises(PlacementTimeout) as raised:
        with placement_wait(shape, timeout_s=2):
            trainer.fit()
    # The bound of its own: the timeout plus the controller's start and one retry poll,
    # far below a retry for ever (which only pytest's timeout would end).
    waited = time.monotonic() - started
    assert waited < UNPLACED_ENDS_WITHIN_S, f"an unplaced worker group took {waited:.0f} s to end the run"
    assert "worker group (1 x {'CPU': 1.0, 'GPU': 1.0}) was not placed within 2 s" in str(raised.value)
    assert "resources.placement_timeout_s" in str(raised.value)
    assert os.environ.get("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S") == before  # restored
