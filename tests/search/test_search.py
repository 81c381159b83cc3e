"""The Tuner wiring: seeded TPE sampling, ASHA on epochs, per-backbone trial shapes on a real
(local) Ray, the tables a search writes."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import ray
from ray import tune

from search.config import Config, FloatRange, IntRange, SearchConfig, SpaceConfig, StorageConfig
from search.run import build_tuner
from search.space import param_space
from trainables.storage import resolve
from trainables.params import NAMES


def test_space_declares_every_searched_axis():
    space = param_space(SpaceConfig(backbones=("B0", "B2")))
    assert set(space) == set(NAMES)
    assert space["backbone"].categories == ["B0", "B2"]
    assert (space["cutout_count"].lower, space["cutout_count"].upper) == (0, 4)  # closed range [0, 3]


def test_every_search_setting_reaches_tune(tmp_path):
    """Build the Tuner from a config whose settings all differ from the defaults and read
    back what tune.run would receive: a setting dropped on the way fails here."""
    import numpy as np

    config = Config(search=SearchConfig(name="settings", num_trials=9, seed=7, startup_trials=3, grace_epochs=2,
                                        reduction_factor=3),
                    storage=StorageConfig(path=str(tmp_path)))
    assert config.max_epochs == 40 and SearchConfig().seed != 7 and SearchConfig().grace_epochs != 2
    tuner = build_tuner(config, resolve(str(tmp_path)), trainable=quadratic_trial)
    tune_config = tuner._local_tuner._tune_config  # what tune.run receives (TunerInternal._fit_internal)
    assert (tune_config.metric, tune_config.mode, tune_config.num_samples) == ("val_accuracy", "max", 9)

    sampler = tune_config.search_alg._sampler
    assert sampler._n_startup_trials == 3
    # seeded with search.seed: the sampler's random state is a fresh RandomState(7)'s
    assert np.array_equal(sampler._rng.rng.get_state()[1], np.random.RandomState(7).get_state()[1])
    # the study lives in the experiment directory, where optuna-dashboard can read it
    assert tune_config.search_alg._storage.url == f"sqlite:///{tmp_path / 'settings' / 'study.db'}"

    asha = tune_config.scheduler
    # counted in fine-tuning epochs: the longest trial's 40 less its 5 head epochs
    assert (asha._time_attr, asha._max_t) == ("finetune_epoch", 35)
    # ASHA's rungs: grace_epochs x reduction_factor^k below max_t, i.e. 2, 6, 18
    assert sorted(milestone for milestone, _ in asha._brackets[0]._rungs) == [2, 6, 18]


def test_tune_snapshots_small_rounds_at_every_step_and_large_ones_on_its_timer(tmp_path, monkeypatch):
    """The period Tune's controller reads (TUNE_GLOBAL_CHECKPOINT_S, at fit) follows the
    round's trial count, round after round in one process; a value the user set wins."""
    from search import run

    monkeypatch.setenv("TUNE_GLOBAL_CHECKPOINT_S", "")  # so that the test's end restores what was there
    monkeypatch.delenv("TUNE_GLOBAL_CHECKPOINT_S")
    monkeypatch.setattr(run, "_snapshot_period_set", None)
    periods = []
    for trials in (run.EVERY_STEP_UP_TO_TRIALS, run.EVERY_STEP_UP_TO_TRIALS + 1, 4):
        config = Config(search=SearchConfig(name=f"period-{trials}", num_trials=trials),
                        storage=StorageConfig(path=str(tmp_path)))
        build_tuner(config, resolve(str(tmp_path)), trainable=quadratic_trial)
        periods.append(os.environ["TUNE_GLOBAL_CHECKPOINT_S"])
    assert periods == ["0", "auto", "0"]
    monkeypatch.setenv("TUNE_GLOBAL_CHECKPOINT_S", "30")
    build_tuner(config, resolve(str(tmp_path)), trainable=quadratic_trial)
    assert os.environ["TUNE_GLOBAL_CHECKPOINT_S"] == "30"


def test_trials_write_the_result_files_tune_reads_back_and_no_tensorboard_events(tmp_path, monkeypatch):
    """Tune's own default callbacks, made from the run's: the JSON and CSV loggers that
    ResultGrid reads reports from, no TensorBoard logger (a writer thread per trial)."""
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback, TBXLoggerCallback
    from ray.tune.utils.callback import _create_default_callbacks

    monkeypatch.setenv("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "")  # so that the test's end restores what was there
    monkeypatch.delenv("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS")
    config = Config(search=SearchConfig(name="loggers", num_trials=2), storage=StorageConfig(path=str(tmp_path)))
    tuner = build_tuner(config, resolve(str(tmp_path)), trainable=quadratic_trial)
    callbacks = _create_default_callbacks(list(tuner._local_tuner._run_config.callbacks))
    kinds = {type(c) for c in callbacks}
    assert {JsonLoggerCallback, CSVLoggerCallback} <= kinds and TBXLoggerCallback not in kinds


def quadratic_trial(config):
    """A cheap deterministic stand-in for training, so sampling can be compared exactly."""
    score = 1.0 - (config["max_lr"] - 0.03) ** 2 * 100 - (config["dropout"] - 0.4) ** 2
    score -= 0.01 * config["cutout_count"] + 0.02 * ("B1" == config["backbone"])
    for epoch in range(1, 7):
        tune.report({"epoch": epoch, "finetune_epoch": epoch, "val_accuracy": score * epoch / 6})  # no head phase


@pytest.fixture(scope="module")
def local_ray():
    # Workers import this module's trial function by name.
    here = Path(__file__).resolve().parent
    tests = f"{here}:{here.parent}"  # this module (its trial functions) and support.py
    ray.init(
        address="local",  # a Ray of its own, whatever else runs on the machine
        num_cpus=2,
        num_gpus=1,  # a logical one, standing in for an accelerator (test_each_backbone_runs_with_its_own_resources)
        logging_level="ERROR",
        runtime_env={"env_vars": {"PYTHONPATH": tests}},
        _node_ip_address="127.0.0.1",
        dashboard_host="127.0.0.1",
    )
    yield
    ray.shutdown()


def sampled_sequence(tmp_path, seed, name, num_trials=3):
    config = Config(
        space=SpaceConfig(
            backbones=("B0", "B1"),
            cutout_fraction=FloatRange(0.1, 0.5),
            cutout_count=IntRange(0, 3),
            warmup_epochs=IntRange(1, 3),
        ),
        search=SearchConfig(
            name=name, num_trials=num_trials, max_concurrent_trials=1, seed=seed, startup_trials=2, grace_epochs=2
        ),
        storage=StorageConfig(path=str(tmp_path)),
    )
    trainable = tune.with_resources(quadratic_trial, {"cpu": 1})
    grid = build_tuner(config, resolve(config.storage.path), trainable=trainable).fit()
    results = list(grid)  # in the order Tune created the trials
    stopped = sum(r.metrics["epoch"] < 6 for r in results)
    return [tuple(r.config[k] for k in NAMES) for r in results], stopped


@pytest.mark.slow
def test_same_seed_same_sampled_configurations(local_ray, tmp_path):
    """Three trials: two random startup draws, then one of TPE's, which reads the study
    (so the whole sequence repeats only if the sampler's state does). Another seed
    differs from its first draw on."""
    first, stopped = sampled_sequence(tmp_path, seed=7, name="a")
    second, _ = sampled_sequence(tmp_path, seed=7, name="b")
    other, _ = sampled_sequence(tmp_path, seed=8, name="c", num_trials=1)
    assert len(first) == 3 and len(set(first)) == 3
    assert first == second
    assert other[0] != first[0]
    assert stopped >= 1  # ASHA stopped weak trials at a rung


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


@pytest.mark.slow
def test_each_backbone_runs_with_its_own_resources(local_ray, tmp_path):
    """B1's trials hold the GPU its shape asks for (a GPU the local Ray declares, standing
    in for an accelerator); B0's hold CPUs only, read back from Tune's trials."""
    from search.config import ResourcesConfig, ShapeOverride
    from search.run import trial_resources

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
    shapes = {backbone: resources for backbone, resources in seen.by_trial.values()}
    assert shapes == {"B0": {"CPU": 1.0}, "B1": {"CPU": 0.5, "GPU": 1.0}}, seen.by_trial
    for result in grid:  # and Ray gave each trial's process what Tune asked for
        expected_gpus = 1.0 if result.config["backbone"] == "B1" else 0.0
        assert result.metrics["gpus"] == expected_gpus


@pytest.mark.slow
def test_impossible_resources_fail_within_seconds(tmp_path):
    """A shape this machine's Ray cannot hold (a GPU where there is none) ends the search
    at start-up, exit 2, naming the backbones and what a trial needs: the preflight wired
    into `hpsearch run` against a live Ray. (Each kind of shortfall, GPUs, TPU chips,
    CPUs, one node: tests/search/test_resources.py.)"""
    import time

    config_file = tmp_path / "config.yaml"
    config_file.write_text(f"resources: {{gpus_per_worker: 1, gpu_type: nvidia-l4}}\nstorage: {{path: {tmp_path}}}\n")
    started = time.time()
    done = subprocess.run([sys.executable, "-m", "search", "run", "--config", str(config_file)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    # the default space: every backbone shares the default shape, and is named
    assert "resources: B0, B1, B2, B3, B4, B5, B6, B7: a trial needs 1 GPUs" in done.stderr, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert time.time() - started < 120  # Ray's start-up, not a scheduling timeout


def test_the_private_parts_of_ray_that_the_study_searcher_uses_are_there(tmp_path):
    """StudySearch (search/study.py) tells Optuna a trial was pruned through three private
    attributes of Ray's OptunaSearch, which Ray has no public API for. A Ray upgrade that
    renames one fails here, naming it, instead of silently leaving pruned trials running
    in the study."""
    from search.config import config_from_dict
    from search.run import make_searcher
    from search.space import param_space
    from trainables.storage import resolve

    config = config_from_dict({"space": {"backbones": ["B0"]}, "storage": {"path": str(tmp_path)}})
    searcher = make_searcher(config, resolve(str(tmp_path)))
    searcher.set_search_properties("val_accuracy", "max", param_space(config.space))
    assert searcher.suggest("t1") is not None
    for name, kind in (("_ot_trials", dict), ("_ot_study", object), ("_completed_trials", set)):
        assert isinstance(getattr(searcher, name, None), kind), (
            f"ray.tune.search.optuna.OptunaSearch no longer has {name} ({kind.__name__}), which StudySearch uses "
            "to mark a trial pruned: adapt search/study.py to this Ray version")
    assert "t1" in searcher._ot_trials
