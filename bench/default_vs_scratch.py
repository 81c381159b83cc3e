"""The offline task's refined search against the from-scratch search, in the same wall
time.

Runs ``configs/local_refined.yaml`` (fine-tuning ImageNet-pretrained EfficientNet-Lite0/1/2 on
digits) as configured and times it; then ``configs/scratch.yaml`` (EfficientNet B0/B1
from random weights on the same digits and validation split) with as many trials as it
can start, stopped by Tune's time budget at the same wall time. Compares their best
validation accuracies.

    python bench/default_vs_scratch.py

Writes ``bench/results/default_vs_scratch.json``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from searches import commit, machine, run_search  # noqa: E402

SCRATCH_TRIALS = 64  # more than fit in the budget: the budget, not the count, ends it


def summary(grid, wall: float) -> dict:
    # a trial the budget ended before its first epoch has no reports
    frames = [r.metrics_dataframe for r in grid
              if r.metrics_dataframe is not None and "val_accuracy" in r.metrics_dataframe]
    best = max((frame["val_accuracy"].max() for frame in frames), default=float("nan"))
    backbones = sorted({r.config["backbone"] for r in grid})
    epochs = sum(len(frame) for frame in frames)
    return {"wall_s": round(wall, 1), "trials_started": len(grid), "epochs": epochs, "backbones": backbones,
            "best_val_accuracy": round(float(best), 4)}


def main() -> None:
    from search.config import config_to_dict, load_config

    pretrained = config_to_dict(load_config(ROOT / "configs" / "local_refined.yaml"))
    grid, _, _, _, wall = run_search(pretrained)
    default = summary(grid, wall)
    print(f"default (pretrained Lite): {default}", flush=True)

    scratch = config_to_dict(load_config(ROOT / "configs" / "scratch.yaml"))
    scratch["search"]["num_trials"] = SCRATCH_TRIALS
    grid, _, _, _, wall = run_search(scratch, time_budget_s=default["wall_s"])
    from_scratch = summary(grid, wall)
    print(f"from scratch, same budget: {from_scratch}", flush=True)

    result = {"benchmark": "default_vs_scratch", "machine": machine(), "commit": commit(), "default": default,
              "scratch": {**from_scratch, "time_budget_s": default["wall_s"]},
              "difference_points": round(100 * (default["best_val_accuracy"] - from_scratch["best_val_accuracy"]), 2)}
    out = ROOT / "bench" / "results" / "default_vs_scratch.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"pretrained best {default['best_val_accuracy']} vs from scratch {from_scratch['best_val_accuracy']} in "
          f"{default['wall_s']} s: {result['difference_points']:+} points; wrote {out}")


if __name__ == "__main__":
    main()
