"""Shared by the search benchmarks: run a real search on local Ray and time its trials."""

from __future__ import annotations

import os
import platform
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

from ray.tune import Callback

# The repository: the checkout a result was measured on, and the README its tables go into.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"


def commit() -> str:
    """The code a result was measured on: the working tree's HEAD, with '+' if tracked
    files other than the benchmarks' own results had changed."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    changed = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":!bench/results")
    return git("rev-parse", "--short", "HEAD") + ("+" if changed else "")


def write_readme_table(name: str, markdown: str) -> None:
    """Put a benchmark's table into README.md between its ``<!-- name -->`` and
    ``<!-- /name -->`` markers, so the README shows what the script measured."""
    readme = os.path.join(ROOT, "README.md")
    with open(readme) as handle:
        text = handle.read()
    opening, closing = f"<!-- {name} -->", f"<!-- /{name} -->"
    start, end = text.index(opening) + len(opening), text.index(closing)
    with open(readme, "w") as handle:
        handle.write(text[:start] + "\n" + markdown.rstrip("\n") + "\n" + text[end:])


@dataclass
class TrialClock(Callback):
    """Tune callback: when each trial started and ended (driver clock)."""

    started: dict[str, float] = field(default_factory=dict)
    ended: dict[str, float] = field(default_factory=dict)

    def on_trial_start(self, iteration, trials, trial, **info):
        self.started[trial.trial_id] = time.monotonic()

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.ended[trial.trial_id] = time.monotonic()

    def on_trial_error(self, iteration, trials, trial, **info):
        self.ended[trial.trial_id] = time.monotonic()


class EpochClock(Callback):
    """Tune callback: when each epoch's result reached the driver (wall clock)."""

    def __init__(self):
        self.stamps: list[float] = []

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.stamps.append(time.time())


def busy_fraction(intervals: list[tuple[float, float]], start: float, end: float, at_least: int) -> float:
    """Share of [start, end] during which at least ``at_least`` intervals overlap."""
    clipped = [(max(s, start), min(e, end)) for s, e in intervals]
    clipped = [(s, e) for s, e in clipped if e > s]
    events = sorted([(s, 1) for s, _ in clipped] + [(e, -1) for _, e in clipped])
    running, last, covered = 0, start, 0.0
    for moment, change in events:
        if running >= at_least:
            covered += moment - last
        running += change
        last = moment
    if running >= at_least:
        covered += end - last
    return covered / (end - start) if end > start else 0.0


def run_search(raw: dict[str, Any], *, scheduler: Any = None, callbacks: list | None = None,
               time_budget_s: float | None = None) -> tuple[Any, TrialClock, float, float, float]:
    """Run the search described by ``raw`` (a config dict) on a fresh local Ray, its
    pretrained weights staged first as ``hpsearch run`` stages them; ``time_budget_s``
    ends it after that long (Tune's own budget).

    Returns:
        The ResultGrid, the trial clock, the search's start and end (monotonic) and the
        wall time of ``Tuner.fit``.
    """
    import ray

    from search.config import config_from_dict
    from search.run import build_tuner
    from trainables.storage import resolve

    raw = {**raw, "storage": {"path": tempfile.mkdtemp(prefix="hpsearch-bench-")}}
    config = config_from_dict(raw)
    if config.recipe.weights == "imagenet":
        from search.config import space_value
        from search.weights import stage_imagenet_weights

        stage_imagenet_weights(config.storage.path, space_value(config.space, "backbone"))
    clock = TrialClock()
    ray.init(logging_level="ERROR", _node_ip_address="127.0.0.1", include_dashboard=False,
             runtime_env={"env_vars": {"TF_CPP_MIN_LOG_LEVEL": "2"}})
    try:
        tuner = build_tuner(config, resolve(config.storage.path), scheduler=scheduler,
                            callbacks=[clock, *(callbacks or [])], time_budget_s=time_budget_s)
        start = time.monotonic()
        grid = tuner.fit()
        end = time.monotonic()
    finally:
        ray.shutdown()
    return grid, clock, start, end, end - start


def seed_panels(count: int):
    """A figure of ``count`` side-by-side panels (one per seed) sharing the accuracy axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, count, figsize=(5 * count, 4), sharey=True, squeeze=False)
    return fig, list(axes[0])


def save_panels(fig, axes, xlabel: str, path) -> None:
    """Label, grid and legend the anytime panels, write them to ``path`` and close."""
    import matplotlib.pyplot as plt

    for ax in axes:
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("best validation accuracy so far")
    axes[0].legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
