"""Does the search pay? On the space a user writes before knowing the answer (the
offline default, ``configs/local.yaml``), four arms in the same wall-clock budget:

- ``tpe_asha``: what ``hpsearch run`` does (Optuna TPE, ASHA early stopping);
- ``random_fifo``: what a user does by hand (random draws, every trial to its end);
- ``tpe_fifo`` and ``random_asha``: the crossings, to attribute the gain.

Random search is the same TPE sampler with every trial a startup draw
(``search.startup_trials`` above the number of trials: Optuna's TPE samples those
independently at random); FIFO is Tune's ``FIFOScheduler``. Each arm runs with Tune's
own ``time_budget_s`` on a fresh local Ray, one arm at a time, each seed the same
sampler seed in every arm. For each seed the target is random+FIFO's final best
validation accuracy minus 0.5 point; each arm's time to reach it is read off its anytime
curve (best so far against wall time since the search started).

    python bench/search_pays.py [--seeds 0 1 2] [--budget-s 240] [--image-size 32]

Writes ``bench/results/search_pays.json`` (``ratio``: the median over seeds of
tpe_asha's time to the target over random_fifo's; goal at most 1/3; an arm that never
reached the target has ``null`` with ``reached: false``) and the curves as
``bench/results/search_pays.png``, and the table per seed as
``bench/results/search_pays.md`` and into README.md between its ``search-pays-table``
markers (``--table-only`` rewrites them and the plot from the JSON).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from ray.tune import Callback  # noqa: E402

from searches import commit, machine, run_search, save_panels, seed_panels, write_readme_table  # noqa: E402

TOLERANCE = 0.005
GOAL = 1 / 3
ARMS = ("tpe_asha", "random_fifo", "tpe_fifo", "random_asha")
# Enough trials that the budget, not the count, ends every arm.
TRIALS = 1000


class Anytime(Callback):
    """Tune callback: (seconds since Tune's run started, validation accuracy) per epoch
    result, in the order they reached the driver."""

    def __init__(self) -> None:
        self.start = time.monotonic()
        self.points: list[tuple[float, float]] = []

    def setup(self, **info) -> None:
        # the clock starts with Tune's run (and its time budget), not with the Ray start
        # or the weights staged before it
        self.start = time.monotonic()

    def on_trial_result(self, iteration, trials, trial, result, **info):
        from search.run import METRIC

        if METRIC in result:
            self.points.append((time.monotonic() - self.start, float(result[METRIC])))


def best_so_far(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The anytime curve: each point where the best so far rose."""
    curve, best = [], -math.inf
    for at, value in points:
        if value > best:
            best = value
            curve.append((round(at, 1), round(value, 4)))
    return curve


def time_to(curve: list[tuple[float, float]], target: float) -> float | None:
    """Seconds until the curve first reached ``target``; None if it never did."""
    return next((at for at, value in curve if value >= target - 1e-9), None)


def arm_config(base: dict, arm: str, seed: int) -> tuple[dict, object]:
    """The config dict and the scheduler (None: hpsearch's ASHA) of one arm and seed."""
    from ray.tune.schedulers import FIFOScheduler

    sampler, scheduler = arm.split("_")
    search = {**base["search"], "seed": seed, "name": f"pays-{arm}-{seed}", "num_trials": TRIALS}
    if sampler == "random":
        search["startup_trials"] = TRIALS + 1
    return {**base, "search": search}, (FIFOScheduler() if scheduler == "fifo" else None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "local.yaml"))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--budget-s", type=float, default=240.0)
    parser.add_argument("--image-size", type=int, default=None,
                        help="the side the model trains at (default: the config's data.image_size)")
    parser.add_argument("--table-only", action="store_true",
                        help="rewrite the Markdown table and the plot from the JSON of an earlier run")
    args = parser.parse_args()
    if args.table_only:
        result = json.loads(RESULT.read_text())
        write_tables(result)
        draw(result["per_seed"], result["budget_s"], RESULT.with_suffix(".png"))
        print(RESULT.with_suffix(".md").read_text(), end="")
        return

    from search.config import config_to_dict, load_config

    base = config_to_dict(load_config(args.config))  # validated, defaults filled
    if args.image_size:
        base = {**base, "data": {**base["data"], "image_size": args.image_size}}
    per_seed = []
    for seed in args.seeds:
        runs = {}
        for arm in ARMS:
            raw, scheduler = arm_config(base, arm, seed)
            anytime = Anytime()
            grid, _, _, _, wall = run_search(raw, scheduler=scheduler, callbacks=[anytime],
                                             time_budget_s=args.budget_s)
            curve = best_so_far(anytime.points)
            runs[arm] = {"wall_s": round(wall, 1), "trials": len(grid), "epochs": len(anytime.points),
                         "best_val_accuracy": curve[-1][1] if curve else None, "curve": curve}
            print(f"seed {seed} {arm}: {len(grid)} trials, {len(anytime.points)} epochs in {wall:.0f} s, "
                  f"best {runs[arm]['best_val_accuracy']}", flush=True)
        target = round(runs["random_fifo"]["best_val_accuracy"] - TOLERANCE, 4)
        for run in runs.values():
            run["seconds_to_target"] = time_to(run["curve"], target)
            run["reached"] = run["seconds_to_target"] is not None
        mine, baseline = runs["tpe_asha"]["seconds_to_target"], runs["random_fifo"]["seconds_to_target"]
        ratio = None if mine is None else round(mine / baseline, 3)
        per_seed.append({"seed": seed, "target_val_accuracy": target, "ratio": ratio, "reached": mine is not None,
                         "arms": runs})
        print(f"seed {seed}: target {target}; tpe_asha {mine} s / random_fifo {baseline} s = {ratio}", flush=True)
        # written after every seed: a run stopped later keeps the seeds it finished
        ratio = write(args, base, per_seed, complete=len(per_seed) == len(args.seeds))
    print(f"ratio (median over seeds, tpe_asha / random_fifo time to target): {ratio} (goal <= {GOAL:.3f}); "
          f"wrote {RESULT}")


RESULT = ROOT / "bench" / "results" / "search_pays.json"


def median_ratio(per_seed: list[dict]) -> float | None:
    """The median over seeds of tpe_asha's time to the target over random_fifo's; an
    unreached target ranks above every reached ratio, and a median that lands on one
    is None."""
    ranked = sorted(per_seed, key=lambda e: math.inf if e["ratio"] is None else e["ratio"])
    middle = ranked[(len(ranked) - 1) // 2:len(ranked) // 2 + 1]
    return None if any(e["ratio"] is None for e in middle) else round(statistics.mean(e["ratio"] for e in middle), 3)


def write(args: argparse.Namespace, base: dict, per_seed: list[dict], *, complete: bool) -> float | None:
    """Write the JSON and the curves of the seeds run so far; returns the ratio."""
    ratio = median_ratio(per_seed)
    result = {
        "benchmark": "search_pays", "machine": machine(), "commit": commit(), "config": Path(args.config).name,
        "image_size": base["data"]["image_size"], "arms": list(ARMS), "seeds": [e["seed"] for e in per_seed],
        "seeds_planned": args.seeds, "complete": complete, "budget_s": args.budget_s,
        "max_concurrent_trials": base["search"]["max_concurrent_trials"], "tolerance": TOLERANCE,
        "per_seed": per_seed, "ratio": ratio, "ratio_reached": ratio is not None,
        "goal": f"ratio <= {GOAL:.3f}", "goal_met": ratio is not None and ratio <= GOAL,
    }
    RESULT.write_text(json.dumps(result, indent=2, allow_nan=False) + "\n")
    write_tables(result)
    draw(per_seed, args.budget_s, RESULT.with_suffix(".png"))
    return ratio


def write_tables(result: dict) -> None:
    """The table as ``search_pays.md`` and in README.md between its ``search-pays-table``
    markers."""
    markdown = table_markdown(result)
    RESULT.with_suffix(".md").write_text(markdown)
    write_readme_table("search-pays-table", markdown)


def table_markdown(result: dict) -> str:
    """Per seed: the target, each arm's best and its time to the target (the table
    docs/benchmarks.md shows)."""
    lines = [f"| seed | target (random_fifo best - {TOLERANCE * 100:g} pt) | "
             + " | ".join(f"{arm}: best, s to target" for arm in result["arms"]) + " | ratio |",
             "|" + "---|" * (len(result["arms"]) + 3)]
    for entry in result["per_seed"]:
        cells = []
        for arm in result["arms"]:
            run = entry["arms"][arm]
            reached = f"{run['seconds_to_target']:g}" if run["reached"] else "not reached"
            cells.append(f"{run['best_val_accuracy']}, {reached}")
        lines.append(f"| {entry['seed']} | {entry['target_val_accuracy']} | " + " | ".join(cells)
                     + f" | {entry['ratio']} |")
    lines.append(f"\nratio (median over seeds of tpe_asha's time to the target over random_fifo's): "
                 f"**{result['ratio']}** (goal {result['goal']}); {result['budget_s']:g} s per arm, "
                 f"{result['image_size']} px, {result['max_concurrent_trials']} trials at a time, "
                 f"commit {result['commit']}")
    return "\n".join(lines) + "\n"


COLOURS = {"tpe_asha": "tab:orange", "random_fifo": "tab:blue", "tpe_fifo": "tab:green", "random_asha": "tab:purple"}


def draw(per_seed: list[dict], budget_s: float, path: Path) -> None:
    fig, axes = seed_panels(len(per_seed))
    for ax, entry in zip(axes, per_seed):
        for arm, run in entry["arms"].items():
            if run["curve"]:
                times, values = zip(*run["curve"])
                ax.step([*times, budget_s], [*values, values[-1]], where="post", color=COLOURS[arm], label=arm)
        ax.axhline(entry["target_val_accuracy"], color="grey", linestyle="--", label="random_fifo best - 0.5 pt")
        ax.set_title(f"seed {entry['seed']}: ratio {entry['ratio']}")
    save_panels(fig, axes, "wall time of the search (s)", path)


if __name__ == "__main__":
    main()
