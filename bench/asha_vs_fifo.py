"""ASHA against FIFO: the same seeded TPE search on the same real task, once with ASHA
early stopping and once with every trial run to the end.

For each, counts the epochs trained (and the wall time) until some trial first reaches
FIFO's best validation accuracy minus 0.5 points. The task is the offline default
(``configs/local.yaml``: scikit-learn's digits, EfficientNet B0/B1 from scratch).

    python bench/asha_vs_fifo.py [--config configs/local.yaml]

Prints the ratio of epochs (goal: ASHA <= 1/3 of FIFO's) and writes
``bench/results/asha_vs_fifo.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from searches import machine, run_search  # noqa: E402

TOLERANCE = 0.005


def epoch_reports(grid):
    """Every epoch report of the search, in the order they happened."""
    import pandas as pd

    frames = [r.metrics_dataframe[["timestamp", "time_total_s", "epoch", "val_accuracy"]].assign(trial=i)
              for i, r in enumerate(grid) if r.metrics_dataframe is not None]
    return pd.concat(frames).sort_values(["timestamp", "time_total_s"], kind="stable").reset_index(drop=True)


def cost_to_reach(reports, target: float, start_timestamp: float):
    """Epochs trained, and seconds since the search started, until a report >= target."""
    hits = reports.index[reports["val_accuracy"] >= target]
    if len(hits) == 0:
        return None, None
    first = hits[0]
    return int(first + 1), float(reports["timestamp"][first] - start_timestamp)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "local.yaml"))
    args = parser.parse_args()
    from search.config import config_to_dict, load_config

    raw = config_to_dict(load_config(args.config))  # validated, defaults filled

    import time

    from ray.tune.schedulers import FIFOScheduler

    runs = {}
    for name, scheduler in (("fifo", FIFOScheduler()), ("asha", None)):
        raw_named = {**raw, "search": {**raw["search"], "name": f"bench-{name}"}}
        wall_start = time.time()
        grid, _, _, _, wall = run_search(raw_named, scheduler=scheduler)
        reports = epoch_reports(grid)
        runs[name] = {"grid": grid, "reports": reports, "wall_s": wall, "start": wall_start}
        print(f"{name}: {len(reports)} epochs in {wall:.0f} s, best {reports['val_accuracy'].max():.4f}", flush=True)

    target = runs["fifo"]["reports"]["val_accuracy"].max() - TOLERANCE
    result = {"benchmark": "asha_vs_fifo", "machine": machine(), "config": Path(args.config).name,
              "trials": raw["search"]["num_trials"], "seed": raw["search"].get("seed", 0),
              "target_val_accuracy": round(target, 4)}
    for name, run in runs.items():
        epochs, seconds = cost_to_reach(run["reports"], target, run["start"])
        result[name] = {"epochs_total": len(run["reports"]), "wall_s": round(run["wall_s"], 1),
                        "best_val_accuracy": round(float(run["reports"]["val_accuracy"].max()), 4),
                        "epochs_to_target": epochs, "seconds_to_target": None if seconds is None else round(seconds, 1)}
        print(f"{name}: reached {target:.4f} after {epochs} epochs, {seconds} s")
    fifo_epochs, asha_epochs = result["fifo"]["epochs_to_target"], result["asha"]["epochs_to_target"]
    result["ratio"] = None if asha_epochs is None else round(asha_epochs / fifo_epochs, 3)
    result["ratio_total_epochs"] = round(result["asha"]["epochs_total"] / result["fifo"]["epochs_total"], 3)
    result["goal"] = "ratio <= 0.333"
    print(f"ratio of epochs to reach FIFO's best - 0.5 pt, ASHA / FIFO: {result['ratio']}  (goal <= 1/3)")
    print(f"ratio of all epochs trained, ASHA / FIFO: {result['ratio_total_epochs']}")
    out = ROOT / "bench" / "results" / "asha_vs_fifo.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
