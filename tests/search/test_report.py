"""The report: one HTML page with every plot and the ensemble table, plots of real data."""

from __future__ import annotations

import base64
import io
import re
import shutil

import numpy as np
import pytest

from search.report import importances, make_report, read_experiment
from trainables.storage import resolve

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def experiment(trained_experiment):
    return trained_experiment[0]


def decode(png: bytes) -> np.ndarray:
    import matplotlib.image

    return matplotlib.image.imread(io.BytesIO(png), format="png")


def test_report_is_complete(experiment, tmp_path):
    from search.ensemble import build

    work = tmp_path / "copy"
    shutil.copytree(experiment, work / experiment.name)
    location = resolve(str(work))
    build(location, experiment.name, top_k=3, tta=2, progress=False)
    written = make_report(location, experiment.name)
    page = (work / experiment.name / "report" / "index.html").read_text()
    for name in ("anytime", "learning_curves", "accuracy_vs_params", "param_importance"):
        match = re.search(rf'<img id="{name}" alt="[^"]*" src="data:image/png;base64,([^"]+)"', page)
        assert match, name
        embedded = base64.b64decode(match.group(1))
        assert embedded == open(written[f"{name}.png"], "rb").read()
        pixels = decode(embedded)
        assert pixels.shape[0] > 200 and pixels.shape[1] > 300
        assert pixels.std() > 0.01  # drawn, not blank
    assert 'id="ensemble-table"' in page and "ensemble" in page and "test" in page
    for trial in ("t0", "t1", "t2"):
        assert trial in page


def test_plots_follow_the_data(experiment, tmp_path):
    """Learning curves drawn from different data differ: the plot is of this experiment."""
    import pandas as pd

    from search.report import plot_learning_curves

    exp = read_experiment(resolve(str(experiment.parent)), experiment.name)
    first = decode(plot_learning_curves(exp))
    exp.history = pd.concat([exp.history.assign(val_accuracy=lambda f: 1 - f["val_accuracy"])])
    second = decode(plot_learning_curves(exp))
    assert first.shape == second.shape and not np.array_equal(first, second)


def test_importance_is_rebuilt_from_trials():
    from search.config import FloatRange, IntRange, SpaceConfig

    rng = np.random.default_rng(0)
    trials = []
    for i in range(20):
        lr = float(10 ** rng.uniform(-3, -1))
        trials.append({"trial_id": str(i), "backbone": "B0", "cutout_fraction": float(rng.uniform(0.1, 0.5)),
                       "cutout_count": int(rng.integers(0, 4)), "dropout": float(rng.uniform(0.2, 0.6)),
                       "warmup_epochs": int(rng.integers(2, 11)), "max_lr": lr,
                       "best_val_accuracy": 1 - abs(np.log10(lr) + 2)})  # only max_lr matters
    space = SpaceConfig(backbones=("B0",), cutout_fraction=FloatRange(0.1, 0.5), cutout_count=IntRange(0, 3),
                        dropout=FloatRange(0.2, 0.6), warmup_epochs=IntRange(2, 10),
                        max_lr=FloatRange(0.001, 0.1, log=True))
    outside = dict(trials[0], trial_id="outside", max_lr=0.5)  # e.g. from before a config change
    values = importances(trials + [outside], space)
    assert "backbone" not in values  # one choice: no importance to measure
    assert max(values, key=values.get) == "max_lr"


def test_importance_of_equal_scores_is_undefined_not_an_error():
    from search.config import FloatRange, SpaceConfig

    space = SpaceConfig(backbones=("B0",), max_lr=FloatRange(0.001, 0.1, log=True))
    trials = [{"trial_id": str(i), "backbone": "B0", "cutout_fraction": 0.25, "cutout_count": 1, "dropout": 0.3,
               "warmup_epochs": 2, "max_lr": 0.001 * 10 ** (i / 2), "best_val_accuracy": 0.1} for i in range(5)]
    assert importances(trials, space) == {}  # fANOVA itself raises on zero variance
    assert importances([dict(trials[0]), dict(trials[1], best_val_accuracy=0.2)], space)


def test_unfinished_search_has_no_report(tmp_path):
    import subprocess
    import sys

    (tmp_path / "running").mkdir()
    done = subprocess.run([sys.executable, "-m", "search", "report", str(tmp_path / "running")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "has not finished" in done.stderr


def test_a_path_with_no_experiment_is_bad_input(tmp_path):
    import subprocess
    import sys

    for command in ("report", "ensemble"):
        done = subprocess.run([sys.executable, "-m", "search", command, str(tmp_path / "absent")],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 2, done.stderr
        assert f"no experiment at {tmp_path / 'absent'}" in done.stderr and "Traceback" not in done.stderr


def test_anytime_curve_orders_epochs_by_arrival_and_marks_stops():
    import pandas as pd

    from search.results import anytime_curve

    history = pd.DataFrame({
        "trial_id": ["a", "a", "a", "b", "c", "c"],
        "epoch": [1, 2, 3, 1, 1, 2],
        "timestamp": [10, 12, 14, 11, 12, 15],
        "val_accuracy": [0.5, 0.6, 0.7, 0.8, 0.55, 0.9],
    })
    curve = anytime_curve(history, stopped={"b"})
    # arrival: a1 b1 a2 c1 a3 c2 (a2 and c1 in the same second: by trial)
    assert curve.epochs == [1, 2, 3, 4, 5, 6]
    assert curve.best == [0.5, 0.8, 0.8, 0.8, 0.8, 0.9]
    assert curve.stops == [2]  # b's only epoch was the 2nd the search trained
    assert curve.epochs_to_reach(0.8) == 2 and curve.epochs_to_reach(0.9) == 6 and curve.epochs_to_reach(0.95) is None
