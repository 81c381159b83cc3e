"""What running a trial under Tune + Ray Train costs over the same training bare.

Runs, side by side in one invocation, one trial (EfficientNet-B0 from scratch on
scikit-learn's digits at 32 px, the same seed and the same sampled values):

- **bare**: a fresh Python process that trains the trial with ``train_trial`` under the
  same tf.distribute strategy (``single``: the default strategy; ``mwms``: a
  MultiWorkerMirroredStrategy of one worker), no Ray;
- **tune+train**: a one-trial search on a local Ray started beforehand (a cluster is
  already up when users search): ``single`` trains in Tune's trial process, ``mwms`` in
  a Ray Train ``TensorflowTrainer`` of one worker holding the same CPUs.

Both wall times run from "go" to the last epoch's result, so both include starting
Python, importing TensorFlow, loading data, building and tracing the model. Both sides
run with ``TF_DETERMINISTIC_OPS=1``, so the same work gives the same accuracy. Prints
the ratio and writes ``bench/results/overhead_<strategy>_<N>epochs.json``.

    python bench/overhead.py [--strategy mwms] [--epochs 2] [--repeats 3]

The sides alternate for ``--repeats`` rounds; the median ratio is kept.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

CPUS = os.cpu_count() or 1
# Same seed, same work, same result: TensorFlow's deterministic kernels on both sides.
ENV = {"TF_DETERMINISTIC_OPS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
SAMPLED = {"backbone": "B0", "cutout_fraction": 0.2, "cutout_count": 1, "dropout": 0.2, "warmup_epochs": 0,
           "max_lr": 0.01}


def resources(strategy: str) -> dict:
    if strategy == "single":
        return {"strategy": "single", "cpus_per_worker": CPUS}
    # the trial's own process holds 0.01 CPU beside its Train worker
    return {"strategy": "mwms", "workers": 1, "cpus_per_worker": CPUS - 0.01}


def config_dict(epochs: int, storage: str, strategy: str = "mwms") -> dict:
    return {
        "data": {"dataset": "digits", "image_size": 32},
        # One point: the same trial either way.
        "space": {"backbones": ["B0"], "cutout_fraction": 0.2, "cutout_count": 1, "dropout": 0.2,
                  "warmup_epochs": 0, "max_lr": 0.01},
        "recipe": {"batch_size": 32, "head_epochs": 0, "flat_epochs": epochs - 1, "cooldown_epochs": 1,
                   "weights": "none", "flip": False},
        "search": {"name": "overhead", "num_trials": 1, "max_concurrent_trials": 1, "seed": 0,
                   "grace_epochs": epochs},
        "resources": resources(strategy),
        "storage": {"path": storage},
    }


def bare(epochs: int, strategy: str) -> None:
    """The trial in this process, no Ray (run as a subprocess by main)."""
    from search.config import config_from_dict
    from search.plan import plan_backbone
    from search.run import trial_spec
    from trainables.strategy import limit_threads, make_strategy
    from trainables.train import WorkerContext, train_trial

    config = config_from_dict(config_dict(epochs, tempfile.mkdtemp(), strategy))
    shape = config.resources.shape_for("B0")
    limit_threads(shape.cpus_per_worker)
    # without TF_CONFIG, MultiWorkerMirroredStrategy is one local worker
    context = WorkerContext(make_strategy(strategy))
    stamps = []
    metrics = train_trial(trial_spec(config, SAMPLED, plan_backbone(config, SAMPLED["backbone"])),
                          lambda m, d: (stamps.append(time.time()), shutil.rmtree(d)), context=context)
    print(json.dumps({"val_accuracy": metrics["val_accuracy"], "epoch_stamps": stamps}))


def time_bare(epochs: int, strategy: str) -> tuple[float, float, list[float]]:
    start, wall_start = time.perf_counter(), time.time()
    out = subprocess.run([sys.executable, __file__, "--bare", "--epochs", str(epochs), "--strategy", strategy],
                         check=True, capture_output=True, text=True, cwd=ROOT, env={**os.environ, **ENV}).stdout
    wall = time.perf_counter() - start
    result = json.loads(out.strip().splitlines()[-1])
    return wall, result["val_accuracy"], [round(t - wall_start, 1) for t in result["epoch_stamps"]]


def time_tune_train(epochs: int, strategy: str) -> tuple[float, float, float, list[float]]:
    import ray

    from searches import EpochClock

    from search.config import config_from_dict
    from search.run import build_tuner
    from trainables.storage import resolve

    start = time.perf_counter()
    ray.init(num_cpus=CPUS, logging_level="ERROR", _node_ip_address="127.0.0.1", include_dashboard=False,
             runtime_env={"env_vars": ENV})
    ray_start = time.perf_counter() - start
    try:
        config = config_from_dict(config_dict(epochs, tempfile.mkdtemp(), strategy))
        clock = EpochClock()
        start, wall_start = time.perf_counter(), time.time()
        grid = build_tuner(config, resolve(config.storage.path), callbacks=[clock]).fit()
        wall = time.perf_counter() - start
        result = grid[0]
        if result.error:
            raise RuntimeError(result.error)
        return wall, ray_start, result.metrics["val_accuracy"], [round(t - wall_start, 1) for t in clock.stamps]
    finally:
        ray.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--strategy", choices=["single", "mwms"], default="mwms")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of bare then tune+train")
    parser.add_argument("--bare", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bare:
        bare(args.epochs, args.strategy)
        return
    from searches import commit, machine

    runs = []
    for round_ in range(1, args.repeats + 1):  # the two sides alternate, round by round
        bare_s, bare_acc, bare_epochs = time_bare(args.epochs, args.strategy)
        print(f"round {round_}: bare:       {bare_s:7.1f} s  epochs done at {bare_epochs} s "
              f"(val_accuracy {bare_acc:.3f})", flush=True)
        tuned_s, ray_start_s, tuned_acc, tuned_epochs = time_tune_train(args.epochs, args.strategy)
        print(f"round {round_}: tune+train: {tuned_s:7.1f} s  epochs done at {tuned_epochs} s "
              f"(val_accuracy {tuned_acc:.3f}; ray.init {ray_start_s:.1f} s not counted)", flush=True)
        runs.append({
            "bare_s": round(bare_s, 2),
            "tune_train_s": round(tuned_s, 2),
            "ratio": round(tuned_s / bare_s, 3),
            "ray_init_s": round(ray_start_s, 2),
            "epochs_done_at_s": {"bare": bare_epochs, "tune_train": tuned_epochs},
            "val_accuracy": {"bare": bare_acc, "tune_train": tuned_acc},
        })
    ratio = statistics.median(run["ratio"] for run in runs)
    print(f"ratio tune+train / bare, median of {len(runs)}: {ratio:.2f} "
          f"({', '.join(str(run['ratio']) for run in runs)})  (goal <= 1.15)")
    result = {
        "benchmark": "overhead",
        "machine": machine(),
        "strategy": args.strategy,
        "epochs": args.epochs,
        "commit": commit(),
        "ratio": round(ratio, 3),
        "goal": 1.15,
        "runs": runs,
    }
    out = ROOT / "bench" / "results" / f"overhead_{args.strategy}_{args.epochs}epochs.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
