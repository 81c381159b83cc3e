"""Per-backbone trial shapes on a real (local) Ray: each trial holds its backbone's resources."""

from pathlib import Path

import pytest
import ray
from ray import tune

from search.config import Config, IntRange, SearchConfig, SpaceConfig, StorageConfig
from search.run import build_tuner
from trainables.storage import resolve

pytestmark = pytest.mark.slow


class ResourcesSeen(tune.Callback):
    """Reads each trial's resources back from Tune's own Trial objects."""

    def __init__(self):
        self.by_trial = {}

    def on_trial_start(self, iteration, trials, trial, **info):
        self.by_trial[trial.trial_id] = (trial.config["backbone"], trial.placement_group_factory.required_resources)


def report_assigned_resources(config):
    """Stand-in trial: reports the resources Ray assigned to this trial's process."""
    assigned = ray.get_runtime_context().get_assigned_resources()
    tune.report({"epoch": 1, "val_accuracy": 0.5, "gpus": assigned.get("GPU", 0.0), "cpus": assigned.get("CPU", 0.0)})


def test_each_backbone_runs_with_its_own_resources(tmp_path):
    """B1's trials hold the GPU its shape asks for (a GPU the local Ray declares, standing
    in for an accelerator); B0's hold CPUs only, read back from Tune's trials."""
    from search.config import ResourcesConfig, ShapeOverride
    from search.run import trial_resources

    here = Path(__file__).resolve().parent
    ray.init(num_cpus=2, num_gpus=1, logging_level="ERROR", _node_ip_address="127.0.0.1", dashboard_host="127.0.0.1",
             runtime_env={"env_vars": {"PYTHONPATH": f"{here}:{here.parent}"}})
    try:
        config = Config(
            space=SpaceConfig(backbones=("B0", "B1"), warmup_epochs=IntRange(1, 1)),
            search=SearchConfig(name="shapes", num_trials=6, max_concurrent_trials=2, seed=2, startup_trials=6,
                                grace_epochs=1),
            resources=ResourcesConfig(cpus_per_worker=1.0,
                                      backbones={"B1": ShapeOverride(cpus_per_worker=0.5, gpus_per_worker=1.0)}),
            storage=StorageConfig(path=str(tmp_path)),
        )
        seen = ResourcesSeen()
        trainable = tune.with_resources(report_assigned_resources, trial_resources(config))
        grid = build_tuner(config, resolve(config.storage.path), trainable=trainable, callbacks=[seen]).fit()
    finally:
        ray.shutdown()
    shapes = {backbone: resources for backbone, resources in seen.by_trial.values()}
    assert shapes == {"B0": {"CPU": 1.0}, "B1": {"CPU": 0.5, "GPU": 1.0}}, seen.by_trial
    for result in grid:  # and Ray gave each trial's process what Tune asked for
        expected_gpus = 1.0 if result.config["backbone"] == "B1" else 0.0
        assert result.metrics["gpus"] == expected_gpus
