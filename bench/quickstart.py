"""The README's quickstart, timed: `hpsearch run` (the offline default search) as a user
runs it, on two commits side by side on this machine.

Each round runs both arms one after the other (their order alternating by round), each
in its own checkout with a fresh ``experiments/`` directory and nothing else running:
the command a user types, timed from start to exit. Each arm is a git worktree of its
commit (``--base``, and ``--head``, default HEAD) made for the run and removed after it,
so edits to the working tree meanwhile change nothing; both use this environment's
packages (``PYTHONPATH`` names the checkout). ``--keep DIR`` keeps the last head run's
experiment there (for `hpsearch ensemble`). Reports each run's wall time and what the
search decided (its best trial and accuracy, trials stopped by ASHA, epochs trained),
and the ratio of the median wall times. Resumable: finished runs are kept in the JSON
and skipped.

    python bench/quickstart.py --base 1cb3378 --rounds 2 --keep /tmp/quickstart-experiment
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from searches import ROOT, machine  # noqa: E402

RESULTS = Path(ROOT) / "bench" / "results" / "quickstart.json"


def git(*args: str, cwd: str = ROOT) -> str:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()


def stamp() -> dict:
    """The code measured, read at the start: HEAD, and whether the tree differed from it
    (tracked changes, or untracked files outside bench/results)."""
    dirty = [line for line in git("status", "--porcelain").splitlines() if "bench/results/" not in line]
    return {"commit": git("rev-parse", "--short", "HEAD"), "dirty": bool(dirty)}


def summary_of(stdout: str) -> dict:
    """What the search decided, from the summary `hpsearch run` prints at its end."""
    trials = re.search(r"trials: (\d+) \((\d+) stopped early by ASHA, (\d+) diverged, (\d+) errored\)", stdout)
    best = re.search(r"best validation accuracy: ([0-9.]+) \(trial (\w+), epoch (\d+)\)", stdout)
    if not (trials and best):
        raise RuntimeError(f"no summary in the search's output:\n{stdout[-3000:]}")
    return {"trials": int(trials[1]), "stopped_by_asha": int(trials[2]), "diverged": int(trials[3]),
            "errored": int(trials[4]), "best_val_accuracy": float(best[1]), "best_epoch": int(best[3])}


def epochs_trained(experiment: Path) -> int:
    import pyarrow.parquet as pq

    return int(sum(pq.read_table(experiment / "trials.parquet", columns=["epochs_run"]).column(0).to_pylist()))


def run_arm(checkout: str, timeout_s: float, keep: str | None = None) -> dict:
    experiments = Path(checkout) / "experiments"
    shutil.rmtree(experiments, ignore_errors=True)
    env = {**os.environ, "PYTHONPATH": checkout}
    env.pop("RAY_ADDRESS", None)
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "search", "run"], cwd=checkout, env=env, capture_output=True,
                          text=True, timeout=timeout_s)
    wall = time.monotonic() - started
    if done.returncode != 0:
        raise RuntimeError(f"`hpsearch run` in {checkout} exited {done.returncode}:\n{done.stderr[-3000:]}")
    result = {"wall_s": round(wall, 1), **summary_of(done.stdout),
              "epochs": epochs_trained(experiments / "local"),
              "crash_dumps": done.stderr.count("*** SIGABRT received")}
    if keep:
        shutil.rmtree(keep, ignore_errors=True)
        shutil.move(str(experiments), keep)
    shutil.rmtree(experiments, ignore_errors=True)
    return result


def median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="the commit compared with --head")
    parser.add_argument("--head", default="HEAD", help="the commit measured against --base (default HEAD)")
    parser.add_argument("--keep", help="move the last head run's experiments/ directory here")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--timeout-s", type=float, default=1800, help="bound on one search")
    args = parser.parse_args()

    commits = {"base": git("rev-parse", "--short", args.base), "head": git("rev-parse", "--short", args.head)}
    saved = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    if saved.get("commits") != commits:
        saved = {}
    results = {"benchmark": "quickstart", "machine": machine(), "commits": commits,
               "tree_at_start": saved.get("tree_at_start", stamp()),  # the first sitting's
               "started": saved.get("started", time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())),
               "runs": saved.get("runs", [])}
    worktrees = {arm: tempfile.mkdtemp(prefix=f"hpsearch-{arm}-") for arm in commits}
    for arm, commit_ in commits.items():
        git("worktree", "add", "--detach", worktrees[arm], commit_)
    try:
        for round_ in range(args.rounds):
            arms = ["base", "head"] if round_ % 2 == 0 else ["head", "base"]
            for arm in arms:
                if any(r["round"] == round_ and r["arm"] == arm for r in results["runs"]):
                    continue
                print(f"round {round_ + 1}/{args.rounds}: {arm} ({commits[arm]})", flush=True)
                keep = args.keep if arm == "head" and round_ == args.rounds - 1 else None
                run = {"round": round_, "arm": arm, **run_arm(worktrees[arm], args.timeout_s, keep)}
                print(json.dumps(run), flush=True)
                results["runs"].append(run)
                RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    finally:
        for path in worktrees.values():
            git("worktree", "remove", "--force", path)
    # ASHA's stops depend on the order two concurrent trials' results arrive, so runs of
    # the same search may train different numbers of epochs: the wall time per epoch
    # trained compares them like with like as well.
    walls = {arm: [r["wall_s"] for r in results["runs"] if r["arm"] == arm] for arm in commits}
    per_epoch = {arm: [r["wall_s"] / r["epochs"] for r in results["runs"] if r["arm"] == arm] for arm in commits}
    results["median_wall_s"] = {arm: median(values) for arm, values in walls.items()}
    results["median_s_per_epoch"] = {arm: round(median(values), 3) for arm, values in per_epoch.items()}
    results["speedup"] = round(results["median_wall_s"]["base"] / results["median_wall_s"]["head"], 3)
    results["speedup_per_epoch"] = round(results["median_s_per_epoch"]["base"] / results["median_s_per_epoch"]["head"], 3)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"median wall: base {results['median_wall_s']['base']:.0f} s, head {results['median_wall_s']['head']:.0f} s: "
          f"{results['speedup']:.2f}x; per epoch trained {results['speedup_per_epoch']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
