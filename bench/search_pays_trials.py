"""What each arm of ``bench/search_pays.py`` spent its budget on, read from the arms'
own Optuna studies: per arm and seed, its trials by how they ended (ran to their end,
stopped by ASHA, diverged, cut by the time budget), the epochs each kind took, the
epochs spent on trials that ended at chance level, which trial became the arm's best
and when it started, the epochs the arm trained until it reached the seed's target
(machine speed factored out), and how long the two trials every arm of a seed starts
with took for their first 4 epochs (how fast the machine ran during the arm).

``search_pays.py`` leaves each arm's experiment (its ``study.db`` included) in a
temporary directory named ``hpsearch-bench-*``; this reads the newest study of each
arm and seed there.

    python bench/search_pays_trials.py [--root /tmp]

Writes ``bench/results/search_pays_trials.json`` and prints one line per arm and seed.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from searches import commit  # noqa: E402

from search.study import PRUNED_BY, storage_url  # noqa: E402

PAYS = ROOT / "bench" / "results" / "search_pays.json"
RESULT = ROOT / "bench" / "results" / "search_pays_trials.json"
# Ten classes: a trial whose last accuracy is at or below this ended at chance (a
# fine-tuning rate that collapsed what the head phase had learnt).
CHANCE = 0.15


def ending(state: str, pruned_by: str | None) -> str:
    """How a trial ended, from its study record."""
    if state == "COMPLETE":
        return "finished"
    if state == "PRUNED":
        return "diverged" if pruned_by == "diverged" else "stopped"  # search.study's values
    return "cut by the budget"  # still running (or failed) when the time budget ended the search


def summarise(study_path: str) -> dict:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = storage_url(Path(study_path))
    (name,) = optuna.get_all_study_names(storage)
    trials = optuna.load_study(study_name=name, storage=storage).trials
    start = min(t.datetime_start for t in trials if t.datetime_start)
    rows = []
    for t in trials:
        values = list(t.intermediate_values.values())
        rows.append({
            "number": t.number, "ending": ending(t.state.name, t.user_attrs.get(PRUNED_BY)),
            "backbone": t.params.get("backbone"), "max_lr": t.params.get("max_lr") and round(t.params["max_lr"], 5),
            "epochs": len(values), "best": round(max(values), 4) if values else None,
            "last": round(values[-1], 4) if values else None,
            "started_s": round((t.datetime_start - start).total_seconds(), 1) if t.datetime_start else None,
        })
    by_ending: dict[str, dict[str, int]] = {}
    for row in rows:
        kind = by_ending.setdefault(row["ending"], {"trials": 0, "epochs": 0})
        kind["trials"] += 1
        kind["epochs"] += row["epochs"]
    reported = [row for row in rows if row["best"] is not None]
    best = max(reported, key=lambda row: row["best"])
    return {
        "study": study_path, "trials": len(rows), "epochs": sum(row["epochs"] for row in rows),
        "by_ending": by_ending,
        "epochs_ending_at_chance": sum(row["epochs"] for row in reported if row["last"] <= CHANCE),
        "best_trial": best, "per_trial": rows,
    }


def epoch_results(experiment: str) -> dict[int, list[dict]]:
    """Each trial's epoch results (Tune's ``result.json``), by the trial's place in the
    order Tune created them (1 for the first)."""
    results = {}
    for directory in glob.glob(os.path.join(experiment, "run_trial_*")):
        match = re.match(r"run_trial_[0-9a-f]+_(\d+)_", os.path.basename(directory))
        path = os.path.join(directory, "result.json")
        if match and os.path.isfile(path):
            with open(path) as handle:
                results[int(match.group(1))] = [json.loads(line) for line in handle if line.strip()]
    return results


def epochs_to(results: dict[int, list[dict]], target: float) -> int | None:
    """Epochs the arm trained, all trials together in the order they reached the driver
    (Tune's whole-second timestamps, ties by trial), until one first reached ``target``;
    None if none did."""
    ordered = sorted((r["timestamp"], place, r["training_iteration"], r.get("val_accuracy", 0.0))
                     for place, rows in results.items() for r in rows)
    return next((i + 1 for i, (*_, accuracy) in enumerate(ordered) if accuracy >= target - 1e-9), None)


def first_epochs_s(results: dict[int, list[dict]], place: int, epochs: int) -> float | None:
    """Seconds the ``place``-th trial took for its first ``epochs`` epochs (the first two
    trials are the same configurations in every arm of a seed: a measure of how fast
    the machine ran during the arm)."""
    rows = results.get(place, [])
    return round(rows[epochs - 1]["time_total_s"], 1) if len(rows) >= epochs else None


def newest_study(root: str, arm: str, seed: int) -> str | None:
    found = glob.glob(os.path.join(root, "hpsearch-bench-*", f"pays-{arm}-{seed}", "study.db"))
    return max(found, key=os.path.getmtime) if found else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=tempfile.gettempdir(),
                        help="where search_pays.py's hpsearch-bench-* directories are (default: the temp dir)")
    args = parser.parse_args()
    pays = json.loads(PAYS.read_text())
    arms: dict[str, dict[str, dict]] = {}
    for seed in pays["seeds"]:
        for arm in pays["arms"]:
            path = newest_study(args.root, arm, seed)
            if path is None:
                sys.exit(f"no study of arm {arm}, seed {seed} under {args.root}/hpsearch-bench-*")
            summary = summarise(path)
            results = epoch_results(os.path.dirname(path))
            target = next(e["target_val_accuracy"] for e in pays["per_seed"] if e["seed"] == seed)
            summary["epochs_to_target"] = epochs_to(results, target)
            summary["first_trials_4_epochs_s"] = [first_epochs_s(results, place, 4) for place in (1, 2)]
            arms.setdefault(arm, {})[str(seed)] = summary
            kinds = ", ".join(f"{kind} {v['trials']} ({v['epochs']} epochs)" for kind, v in summary["by_ending"].items())
            best = summary["best_trial"]
            print(f"seed {seed} {arm}: {summary['trials']} trials, {summary['epochs']} epochs: {kinds}; "
                  f"{summary['epochs_ending_at_chance']} epochs of trials ending at chance; best {best['best']} by trial {best['number']} "
                  f"({best['backbone']}, peak {best['max_lr']}, started at {best['started_s']} s); "
                  f"{summary['epochs_to_target']} epochs to the target {target}; the two first trials' "
                  f"first 4 epochs took {summary['first_trials_4_epochs_s']} s")
    RESULT.write_text(json.dumps({"benchmark": "search_pays_trials", "commit": commit(),
                                  "search_pays_commit": pays["commit"], "chance": CHANCE, "arms": arms},
                                 indent=2, allow_nan=False) + "\n")
    print(f"wrote {RESULT}")


if __name__ == "__main__":
    main()
