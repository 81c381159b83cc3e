"""Concurrency: with room for 2 trials, do 2 trials run at once for the whole search?

Ray fixed a bug where Tune searchers ran one trial at a time (ray-project/ray#63770).
This runs a real seeded TPE + ASHA search of short trials (scikit-learn's digits,
EfficientNet-B0 from scratch, 1 CPU per trial, 2 CPUs, ``max_concurrent_trials: 2``),
records each trial's start and end with a Tune callback, and measures the share of the
search's wall time during which 2 trials were running.

    python bench/concurrency.py [--trials 8]

Writes ``bench/results/concurrency.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from searches import busy_fraction, commit, machine, run_search  # noqa: E402


def config(trials: int) -> dict:
    return {
        "data": {"dataset": "digits", "image_size": 32, "max_train_examples": 512},
        "space": {"backbones": ["B0"], "warmup_epochs": {"low": 0, "high": 1},
                  "max_lr": {"low": 0.006, "high": 0.016, "log": True}},
        "recipe": {"batch_size": 32, "head_epochs": 0, "flat_epochs": 1, "cooldown_epochs": 2,
                   "weights": "none", "flip": False},
        "search": {"name": "bench-concurrency", "num_trials": trials, "max_concurrent_trials": 2, "seed": 0,
                   "startup_trials": 4, "grace_epochs": 2, "reduction_factor": 3},
        "resources": {"strategy": "single", "cpus_per_worker": 1},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=8)
    args = parser.parse_args()
    grid, clock, start, end, wall = run_search(config(args.trials))
    intervals = [(clock.started[t], clock.ended[t]) for t in clock.started if t in clock.ended]
    two = busy_fraction(intervals, start, end, 2)
    # From the first trial's start to the last trial's start: the span in which the
    # searcher always had a trial to add. After it, one trial finishing alone is the tail.
    last_start = max(s for s, _ in intervals)
    two_until_last_start = busy_fraction(intervals, min(s for s, _ in intervals), last_start, 2)
    first_start, last_end = min(s for s, _ in intervals), max(e for _, e in intervals)
    second_last_end = sorted(e for _, e in intervals)[-2]
    # Hand-overs: each trial after the first two starts in the slot the latest trial end
    # before it freed; the gap is the time Tune took to start it there.
    ends = sorted(e for _, e in intervals)
    handovers = [s - max(e for e in ends if e <= s) for s, _ in sorted(intervals)[2:] if any(e <= s for e in ends)]
    two_while_trials_ran = busy_fraction(intervals, first_start, last_end, 2)
    print(f"{len(intervals)} trials in {wall:.0f} s")
    print(f"before the first trial started: {first_start - start:.1f} s; last trial alone at the end: "
          f"{last_end - second_last_end:.1f} s; after the last trial: {end - last_end:.1f} s")
    print(f"hand-overs (a trial's end to the next trial's start): "
          f"{', '.join(f'{h:.1f}' for h in handovers)} s, {sum(handovers):.1f} s in all")
    print(f"share of the search's wall time with 2 trials running: {two:.3f}  (goal >= 0.90)")
    print(f"same, from the first trial's start to the last trial's start: {two_until_last_start:.3f}")
    print(f"same, from the first trial's start to the last trial's end: {two_while_trials_ran:.3f}")
    result = {
        "benchmark": "concurrency",
        "machine": machine(),
        "commit": commit(),
        "trials": len(intervals),
        "max_concurrent_trials": 2,
        "wall_s": round(wall, 1),
        "ratio": round(two, 3),
        "ratio_until_last_trial_start": round(two_until_last_start, 3),
        "ratio_first_start_to_last_end": round(two_while_trials_ran, 3),
        "seconds_before_first_trial": round(first_start - start, 1),
        "seconds_last_trial_alone": round(last_end - second_last_end, 1),
        "seconds_after_last_trial": round(end - last_end, 1),
        "handover_seconds": [round(h, 2) for h in handovers],
        "goal": 0.9,
        "trial_seconds": sorted(round(e - s, 1) for s, e in intervals),
    }
    out = ROOT / "bench" / "results" / "concurrency.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
