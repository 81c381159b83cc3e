"""ASHA against FIFO: the same seeded TPE search on the same real task, once with ASHA
early stopping and once with every trial run to its end, for several seeds.

The task is the offline default's over its refined space (``configs/local_refined.yaml``:
fine-tuning ImageNet-pretrained EfficientNet-Lite0/1/2 on scikit-learn's digits), with a
budget where ASHA can act:
16 trials, a grace period of 1 fine-tuning epoch against a longest trial's fine-tuning
of 11 (at most a ninth), reduction factor 3 (rungs at fine-tuning epochs 1, 3 and 9).
(``bench/results/asha_vs_fifo.json`` was measured when ASHA counted every epoch, the
head phase's included.) Each pair of runs shares its sampler
seed. For each seed: the epochs and wall time until some trial first reaches FIFO's
best validation accuracy minus 0.5 point, for each scheduler, and their ratio; then the
median ratio over seeds. Also each run's anytime curve (best validation accuracy so far
against epochs spent), drawn into ``bench/results/asha_vs_fifo.png``.

    python bench/asha_vs_fifo.py [--seeds 0 1 2] [--trials 16] [--grace 1]

Writes ``bench/results/asha_vs_fifo.json`` (goal: ASHA needs at most a third of FIFO's
epochs, median over seeds).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from searches import EpochClock, machine, run_search, save_panels, seed_panels  # noqa: E402

TOLERANCE = 0.005
GOAL = 1 / 3


def history_of(grid, planned_epochs) -> tuple[object, set[str]]:
    """The search's epoch reports (as the trials table's history) and its stopped trials."""
    from search.results import history_table, trial_rows
    from search.run import METRIC, MODE

    rows = trial_rows(grid, METRIC, MODE, planned_epochs=planned_epochs)
    return history_table(grid).to_pandas(), {r.trial_id for r in rows if r.stopped_early}


def seconds_to(clock: EpochClock, epochs: int | None, start: float) -> float | None:
    """Wall time from the search's start until its ``epochs``-th epoch result arrived."""
    return None if epochs is None else round(clock.stamps[epochs - 1] - start, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "local_refined.yaml"))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--grace", type=int, default=1)
    args = parser.parse_args()

    from ray.tune.schedulers import FIFOScheduler

    from search.config import config_from_dict, config_to_dict, load_config
    from search.results import anytime_curve

    base = config_to_dict(load_config(args.config))  # validated, defaults filled
    base["search"].update(num_trials=args.trials, grace_epochs=args.grace, reduction_factor=3)
    longest = config_from_dict(base).max_finetune_epochs  # ASHA counts fine-tuning epochs
    if args.grace * 9 > longest:
        raise SystemExit(f"grace {args.grace} is more than a ninth of the longest trial's fine-tuning "
                         f"({longest} epochs)")
    recipe = config_from_dict(base).recipe

    per_seed, curves = [], {}
    for seed in args.seeds:
        runs = {}
        for name, scheduler in (("fifo", FIFOScheduler()), ("asha", None)):
            raw = {**base, "search": {**base["search"], "seed": seed, "name": f"bench-{name}-{seed}"}}
            clock = EpochClock()
            wall_start = time.time()
            grid, _, _, _, wall = run_search(raw, scheduler=scheduler, callbacks=[clock])
            history, stopped = history_of(grid, lambda c: recipe.epochs(c["warmup_epochs"]))
            curve = anytime_curve(history, stopped)
            runs[name] = {"curve": curve, "clock": clock, "start": wall_start, "wall_s": wall, "stopped": len(stopped)}
            print(f"seed {seed} {name}: {len(curve.epochs)} epochs in {wall:.0f} s, best {max(curve.best):.4f}, "
                  f"{len(stopped)} stopped early", flush=True)
        target = max(runs["fifo"]["curve"].best) - TOLERANCE
        entry = {"seed": seed, "target_val_accuracy": round(target, 4)}
        for name, run in runs.items():
            epochs = run["curve"].epochs_to_reach(target)
            entry[name] = {"epochs_total": len(run["curve"].epochs), "wall_s": round(run["wall_s"], 1),
                           "best_val_accuracy": round(max(run["curve"].best), 4), "stopped_early": run["stopped"],
                           "epochs_to_target": epochs, "seconds_to_target": seconds_to(run["clock"], epochs, run["start"])}
            curves[(seed, name)] = run["curve"]
        fifo, asha = entry["fifo"], entry["asha"]
        entry["epoch_ratio"] = None if asha["epochs_to_target"] is None else round(
            asha["epochs_to_target"] / fifo["epochs_to_target"], 3)
        entry["time_ratio"] = None if asha["seconds_to_target"] is None else round(
            asha["seconds_to_target"] / fifo["seconds_to_target"], 3)
        print(f"seed {seed}: target {target:.4f}; epochs ASHA {asha['epochs_to_target']} / FIFO "
              f"{fifo['epochs_to_target']} = {entry['epoch_ratio']}; time ratio {entry['time_ratio']}", flush=True)
        per_seed.append(entry)

    # a seed where ASHA never reached the target counts as infinitely worse
    ratios = [e["epoch_ratio"] if e["epoch_ratio"] is not None else float("inf") for e in per_seed]
    times = [e["time_ratio"] if e["time_ratio"] is not None else float("inf") for e in per_seed]
    result = {
        "benchmark": "asha_vs_fifo", "machine": machine(), "config": Path(args.config).name,
        "trials": args.trials, "grace_epochs": args.grace, "reduction_factor": 3, "longest_trial_epochs": longest,
        "max_concurrent_trials": base["search"]["max_concurrent_trials"], "tolerance": TOLERANCE,
        "per_seed": per_seed,
        "median_epoch_ratio": statistics.median(ratios), "median_time_ratio": statistics.median(times),
        "goal": f"median epoch ratio <= {GOAL:.3f}",
    }
    result["goal_met"] = result["median_epoch_ratio"] <= GOAL
    out = ROOT / "bench" / "results" / "asha_vs_fifo.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    draw(curves, per_seed, out.with_suffix(".png"))
    print(f"median epoch ratio ASHA / FIFO: {result['median_epoch_ratio']} (goal <= {GOAL:.3f}); "
          f"median time ratio {result['median_time_ratio']}; wrote {out} and {out.with_suffix('.png')}")


def draw(curves: dict, per_seed: list[dict], path: Path) -> None:
    fig, axes = seed_panels(len(per_seed))
    for ax, entry in zip(axes, per_seed):
        seed = entry["seed"]
        for name, colour in (("fifo", "tab:blue"), ("asha", "tab:orange")):
            curve = curves[(seed, name)]
            ax.step(curve.epochs, curve.best, where="post", color=colour, label=name.upper())
            for stop in curve.stops:
                ax.axvline(stop, color=colour, alpha=0.15, linewidth=1)
        ax.axhline(entry["target_val_accuracy"], color="grey", linestyle="--", label="FIFO best - 0.5 pt")
        ax.set_title(f"seed {seed}: epoch ratio {entry['epoch_ratio']}")
    save_panels(fig, axes, "epochs trained by the search", path)


if __name__ == "__main__":
    main()
