"""Crash dumps when Tune stops trials: hpsearch's stopping (trainables.stopping) against none.

Each arm runs a Tune search on a local Ray (127.0.0.1, 2 CPUs, 2 trials at a time) of
``--trials`` stand-in trials shaped like hpsearch's single-strategy trial: the training
thread traces tf.data functions (where the dump was seen) while each epoch is reported
from ``trainables.reporting.InBackground``'s thread, and Tune stops every trial after its
first result. Arms, side by side in one run:

- **none**: the reporter alone; the trial's process exits while its training runs on;
- **hpsearch**: what ``search.run.train_here`` does: the reporter sets the stop event,
  the loop ends when it is set, and ``ends_before_exit`` holds the process's exit until
  the training has ended.

Counts, per arm, the native crash dumps in the search's output (``*** SIGABRT received``
lines of Ray's handler). Writes ``bench/results/stop_dumps.json``.

    python bench/stop_dumps.py [--trials 10]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from searches import ROOT, commit, machine  # noqa: E402

ARM_ENV = "HPSEARCH_BENCH_STOP_ARM"


def trial(config: dict) -> None:
    """A stand-in trial: trains (traces tf.data functions) until asked to stop, reporting
    an epoch every half second from a thread of its own."""
    import threading
    import time

    from ray import tune

    from trainables.notices import import_tensorflow
    from trainables.reporting import InBackground
    from trainables.stopping import ends_before_exit

    tf = import_tensorflow()
    hpsearch = os.environ[ARM_ENV] == "hpsearch"
    stop = threading.Event()
    reporter = InBackground(lambda metrics, directory: tune.report(metrics), stopped=stop if hpsearch else None)

    def train() -> None:
        for epoch in range(1, 100):
            started = time.monotonic()
            while time.monotonic() - started < 0.5 and not stop.is_set():
                dataset = tf.data.Dataset.range(100).map(lambda x: tf.sin(tf.cast(x, tf.float32)) * 2.0)
                for _ in dataset.take(2):
                    pass
            if stop.is_set():
                return
            reporter({"epoch": epoch}, None)

    with ends_before_exit(stop) if hpsearch else contextlib.nullcontext():
        try:
            train()
        finally:
            reporter.close()


def search(trials: int, storage: str) -> None:
    import ray
    from ray import tune

    ray.init(address="local", num_cpus=2, _node_ip_address="127.0.0.1", include_dashboard=False,
             logging_level="ERROR", runtime_env={"env_vars": {ARM_ENV: os.environ[ARM_ENV]}})
    try:
        tune.Tuner(trial, param_space={"x": tune.grid_search(list(range(trials)))},
                   tune_config=tune.TuneConfig(max_concurrent_trials=2, reuse_actors=False),
                   run_config=tune.RunConfig(stop={"training_iteration": 1}, storage_path=storage,
                                             verbose=1)).fit()
    finally:
        ray.shutdown()


def run_arm(arm: str, trials: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="hpsearch-bench-stop-") as storage:
        done = subprocess.run([sys.executable, __file__, "--search", "--trials", str(trials), "--storage", storage],
                              env={**os.environ, ARM_ENV: arm, "PYTHONPATH": ROOT}, capture_output=True, text=True,
                              timeout=1200)
    output = done.stdout + done.stderr
    dumps = sum("*** SIGABRT received" in line and "logging.cc" not in line for line in output.splitlines())
    print(f"{arm}: exit {done.returncode}, {dumps} crash dumps in {trials} stopped trials", flush=True)
    return {"exit_code": done.returncode, "trials": trials, "crash_dumps": dumps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--search", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--storage", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.search:
        search(args.trials, args.storage)
        return
    arms = {arm: run_arm(arm, args.trials) for arm in ("none", "hpsearch")}
    result = {"benchmark": "stop_dumps", "machine": machine(), "commit": commit(), "arms": arms}
    path = os.path.join(ROOT, "bench", "results", "stop_dumps.json")
    with open(path, "w") as out:
        json.dump(result, out, indent=2)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
