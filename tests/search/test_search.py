"""The Tuner wiring: seeded TPE sampling, ASHA on epochs, the tables a search writes."""

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
    assert (asha._time_attr, asha._max_t) == ("epoch", 40)
    # ASHA's rungs: grace_epochs x reduction_factor^k below max_t, i.e. 2, 6, 18
    assert sorted(milestone for milestone, _ in asha._brackets[0]._rungs) == [2, 6, 18]


def quadratic_trial(config):
    """A cheap deterministic stand-in for training, so sampling can be compared exactly."""
    score = 1.0 - (config["max_lr"] - 0.03) ** 2 * 100 - (config["dropout"] - 0.4) ** 2
    score -= 0.01 * config["cutout_count"] + 0.02 * ("B1" == config["backbone"])
    for epoch in range(1, 7):
        tune.report({"epoch": epoch, "val_accuracy": score * epoch / 6})


@pytest.fixture(scope="module")
def local_ray():
    # Workers import this module's trial function by name.
    here = Path(__file__).resolve().parent
    tests = f"{here}:{here.parent}"  # this module (its trial functions) and support.py
    ray.init(
        num_cpus=2,
        logging_level="ERROR",
        runtime_env={"env_vars": {"PYTHONPATH": tests}},
        _node_ip_address="127.0.0.1",
        dashboard_host="127.0.0.1",
    )
    yield
    ray.shutdown()


def sampled_sequence(tmp_path, seed, name, num_trials=6):
    config = Config(
        space=SpaceConfig(
            backbones=("B0", "B1"),
            cutout_fraction=FloatRange(0.1, 0.5),
            cutout_count=IntRange(0, 3),
            warmup_epochs=IntRange(1, 3),
        ),
        search=SearchConfig(
            name=name, num_trials=num_trials, max_concurrent_trials=1, seed=seed, startup_trials=3, grace_epochs=2
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
    """Six trials: three random startup draws, then three of TPE's, which read the study
    (so the whole sequence repeats only if the sampler's state does). Another seed
    differs from its first draw on."""
    first, stopped = sampled_sequence(tmp_path, seed=7, name="a")
    second, _ = sampled_sequence(tmp_path, seed=7, name="b")
    other, _ = sampled_sequence(tmp_path, seed=8, name="c", num_trials=1)
    assert len(first) == 6 and len(set(first)) == 6
    assert first == second
    assert other[0] != first[0]
    assert stopped >= 1  # ASHA stopped weak trials at a rung


IMPOSSIBLE = {
    "gpus where none exist": ("{gpus_per_worker: 1, gpu_type: nvidia-l4}", "a trial needs 1 GPUs"),
    "tpu with no TPU": ("{strategy: tpu, tpu_chips_per_worker: 4}", "a trial needs 4 TPU chips"),
    "more workers than CPUs": ("{strategy: mwms, workers: 4, cpus_per_worker: 1}", "a trial needs 4.01 CPUs"),
}


@pytest.mark.slow
@pytest.mark.parametrize(("resources", "message"), IMPOSSIBLE.values(), ids=IMPOSSIBLE.keys())
def test_impossible_resources_fail_within_seconds(tmp_path, resources, message):
    import time

    config_file = tmp_path / "config.yaml"
    config_file.write_text(f"resources: {resources}\nstorage: {{path: {tmp_path}}}\n")
    started = time.time()
    done = subprocess.run([sys.executable, "-m", "search", "run", "--config", str(config_file)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    # the default space: every backbone shares the default shape, and is named
    assert f"resources: B0, B1, B2, B3, B4, B5, B6, B7: {message}" in done.stderr, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert time.time() - started < 120  # Ray's start-up, not a scheduling timeout
