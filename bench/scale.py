"""Scale: what the search layer costs per trial as a search grows to 1,000 trials.

Runs hpsearch's real search (its Tuner, searcher, study, ASHA, checkpoint retention,
study uploads and tables: ``search.run.run_rounds``, then the tables ``hpsearch run``
writes) with stand-in trials: each reports up to 3 epochs, each with a checkpoint of a
few bytes, so what is measured is the driver and the storage, not training. Trials run
32 at once on a local Ray of 32 logical CPUs, on local storage and on the GCS emulator
(fake-gcs-server). Measured in the driver process, at 100, 300 and 1,000 finished
trials:

- driver CPU seconds (the whole process: Tune's loop, Ray's client threads, the study,
  the syncer), with the sampler's own suggestion time (Optuna's ``ask`` inside
  ``StudySearch.suggest``, the calling thread's CPU) reported apart, and Tune's
  experiment snapshot (``TuneController.save_to_dir``) apart too;
- wall time; the driver's RSS (sampled every 0.5 s);
- bytes written to storage, by kind (checkpoints, Tune's snapshot, the study, the
  rest), counted by a filesystem wrapper in every process that writes (driver and
  trials alike).

    python bench/scale.py [--trials 1000] [--concurrent 32] [--storage local gcs]

Writes ``bench/results/scale.json`` and ``bench/results/scale.png``.
"""

from __future__ import annotations

import argparse
import contextlib
import fnmatch
import json
import os
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import pyarrow.fs as pafs  # noqa: E402
from ray import tune  # noqa: E402

from searches import commit, machine  # noqa: E402
from storage_tally import CountingHandler  # noqa: E402

EPOCHS = 3
SIZES = (100, 300, 1000)
GOALS = {"driver_s_per_trial_outside_sampler": 0.05, "driver_rss_growth_mib": 200}
BUCKET = "hpsearch-bench"


def config_dict(trials: int, concurrent: int, storage: str) -> dict:
    return {
        "data": {"dataset": "digits", "image_size": 32},
        "space": {"backbones": ["B0"], "warmup_epochs": 1, "max_lr": {"low": 0.001, "high": 1.0, "log": True},
                  "dropout": {"low": 0.0, "high": 0.5}},
        "recipe": {"weights": "none", "head_epochs": 0, "flat_epochs": 1, "cooldown_epochs": 1},
        "search": {"name": "scale", "num_trials": trials, "max_concurrent_trials": concurrent, "seed": 0,
                   "startup_trials": 10, "grace_epochs": 1, "reduction_factor": 3},
        "storage": {"path": storage},
    }


def standin(config: dict) -> None:
    """A trial that trains nothing: each epoch reports a value of its max_lr and dropout
    (best near 0.03 and 0.2, so TPE and ASHA have something to tell apart) with a
    checkpoint of a few bytes."""
    import math

    from search.run import METRIC

    for epoch in range(1, EPOCHS + 1):
        value = 0.9 - 0.1 * abs(math.log10(config["max_lr"] / 0.03)) - 0.2 * abs(config["dropout"] - 0.2)
        with tempfile.TemporaryDirectory() as directory:
            Path(directory, "state.json").write_text(json.dumps({"epoch": epoch}))
            tune.report({"epoch": epoch, "finetune_epoch": epoch, "planned_epochs": EPOCHS,
                         METRIC: value + 0.02 * epoch},
                        checkpoint=tune.Checkpoint.from_directory(directory))


KINDS = (("checkpoint", "*/checkpoint_*"), ("snapshot", "*/experiment_state-*.json"),
         ("snapshot", "*/search_gen_state-*.json"), ("snapshot", "*/searcher-state-*.pkl"),
         ("snapshot", "*/callback-states-*.pkl"), ("study", "*/study.db"))


def kind_of(path: str) -> str:
    return next((kind for kind, pattern in KINDS if fnmatch.fnmatch(path, pattern)), "other")


def read_tally(tally: str) -> list[tuple[float, int, str]]:
    """Each file written to storage: when it was closed (wall clock), its bytes, its kind."""
    entries = []
    with open(tally) as lines:
        for line in lines:
            stamp, size, path = line.rstrip("\n").split(" ", 2)
            entries.append((float(stamp), int(size), kind_of(path)))
    return entries


def written(entries: list[tuple[float, int, str]], until: float) -> dict[str, int]:
    """Bytes written to storage by kind, up to ``until`` (wall clock)."""
    totals = {kind: 0 for kind in ("checkpoint", "snapshot", "study", "other")}
    for stamp, size, kind in entries:
        if stamp <= until:
            totals[kind] += size
    return totals


def rss_mib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class Meter:
    """CPU in the sampler's suggestions and in Tune's snapshots (the calling thread's),
    and the driver's RSS over the run."""

    def __init__(self) -> None:
        self.suggest_s = self.snapshot_s = 0.0
        self.suggestions = self.snapshots = 0
        self.rss: list[tuple[float, float]] = []
        self._stop = threading.Event()

    def install(self) -> None:
        from ray.tune.execution.tune_controller import TuneController

        from search.study import StudySearch

        meter = self

        def unmetered(cls, name: str):
            # the method as the class defined it: a second arm in this process wraps
            # that again, not the first arm's wrapper
            key = f"_unmetered_{name}"
            if key not in cls.__dict__:
                setattr(cls, key, getattr(cls, name))
            return getattr(cls, key)

        def timed(method, seconds: str, count: str):
            def wrapper(*args, **kwargs):
                start = time.thread_time()
                try:
                    return method(*args, **kwargs)
                finally:
                    setattr(meter, seconds, getattr(meter, seconds) + time.thread_time() - start)
                    setattr(meter, count, getattr(meter, count) + 1)
            return wrapper

        StudySearch.suggest = timed(unmetered(StudySearch, "suggest"), "suggest_s", "suggestions")
        TuneController.save_to_dir = timed(unmetered(TuneController, "save_to_dir"), "snapshot_s", "snapshots")
        threading.Thread(target=self._sample, daemon=True).start()

    def _sample(self) -> None:
        while not self._stop.wait(0.5):
            self.rss.append((time.time(), rss_mib()))

    def stop(self) -> None:
        self._stop.set()

    def __getstate__(self) -> dict:
        # Tune pickles its callbacks (Marks holds this) with the run; the copy needs no thread
        return {key: value for key, value in self.__dict__.items() if key != "_stop"}


@dataclass
class Mark:
    """The driver's totals when ``trials`` trials had finished."""

    trials: int
    wall_s: float
    driver_cpu_s: float
    suggest_cpu_s: float
    snapshot_cpu_s: float
    rss_mib: float
    at: float  # wall clock, for the storage tally


class Marks(tune.Callback):
    """Takes a Mark at each size in SIZES (and at the last trial)."""

    def __init__(self, meter: Meter, sizes: list[int]) -> None:
        self.meter, self.sizes = meter, sizes
        self.finished, self.marks = 0, []
        self.start_wall = self.start_cpu = self.first_rss = None

    def begin(self) -> None:
        self.start_wall, self.start_cpu = time.monotonic(), time.process_time()

    def on_trial_start(self, iteration, trials, trial, **info):
        if self.first_rss is None:
            self.first_rss = rss_mib()

    def _end(self) -> None:
        self.finished += 1
        if self.finished in self.sizes:
            self.marks.append(Mark(self.finished, time.monotonic() - self.start_wall,
                                   time.process_time() - self.start_cpu, self.meter.suggest_s,
                                   self.meter.snapshot_s, rss_mib(), time.time()))
            print(f"[scale] {self.finished} trials finished: {self.marks[-1]}", flush=True)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._end()

    def on_trial_error(self, iteration, trials, trial, **info):
        self._end()


def run_arm(storage_kind: str, trials: int, concurrent: int, work: Path) -> dict:
    """One search of ``trials`` stand-in trials on ``storage_kind`` (local or gcs)."""
    import ray

    from search import rounds
    from search.config import config_from_dict
    from search.experiment import summarise
    from search.run import all_results, run_rounds
    from trainables.storage import resolve

    path = str(work / "storage") if storage_kind == "local" else f"gs://{BUCKET}/{work.name}"
    config = config_from_dict(config_dict(trials, concurrent, path))
    location = resolve(config.storage.path)
    tally = str(work / "tally.txt")
    Path(tally).touch()
    location = replace(location, filesystem=pafs.PyFileSystem(CountingHandler(location.filesystem, tally)))
    meter = Meter()
    meter.install()
    sizes = sorted({s for s in SIZES if s <= trials} | {trials})
    marks = Marks(meter, sizes)
    # the trials import storage_tally by name (see there)
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "bench"), os.environ.get("PYTHONPATH")]))
    ray.init(address="local", num_cpus=concurrent, logging_level="ERROR", _node_ip_address="127.0.0.1",
             include_dashboard=False)
    try:
        marks.begin()
        grids = run_rounds(config, location, rounds.Steps(resume=None, add=rounds.Round(1, trials)),
                           trainable=standin, callbacks=[marks])
        search_end = time.monotonic()
        tables_cpu = time.process_time()
        with open(work / "summary.txt", "w") as out, contextlib.redirect_stdout(out):
            code = summarise(config, location, all_results(config, location, grids, trainable=standin))
        tables_cpu = time.process_time() - tables_cpu
        tables_wall = time.monotonic() - search_end
    finally:
        ray.shutdown()
        meter.stop()
    rows = []
    previous = Mark(0, 0.0, 0.0, 0.0, 0.0, marks.first_rss or 0.0, 0.0)
    previous_bytes = 0
    entries = read_tally(tally)
    for mark in marks.marks:
        by_kind = written(entries, mark.at)
        total = sum(by_kind.values())
        new = mark.trials - previous.trials
        rows.append({
            "trials": mark.trials,
            "wall_s": round(mark.wall_s, 1),
            "wall_s_per_trial": round(mark.wall_s / mark.trials, 3),
            "driver_cpu_s": round(mark.driver_cpu_s, 1),
            "driver_s_per_trial": round(mark.driver_cpu_s / mark.trials, 4),
            "suggest_s_per_trial": round(mark.suggest_cpu_s / mark.trials, 4),
            "snapshot_s_per_trial": round(mark.snapshot_cpu_s / mark.trials, 4),
            "outside_sampler_s_per_trial": round((mark.driver_cpu_s - mark.suggest_cpu_s) / mark.trials, 4),
            # the same, for the trials since the previous size only: growth shows here
            "since_previous": {
                "trials": new,
                "driver_s_per_trial": round((mark.driver_cpu_s - previous.driver_cpu_s) / new, 4),
                "suggest_s_per_trial": round((mark.suggest_cpu_s - previous.suggest_cpu_s) / new, 4),
                "snapshot_s_per_trial": round((mark.snapshot_cpu_s - previous.snapshot_cpu_s) / new, 4),
                "storage_bytes_per_trial": round((total - previous_bytes) / new),
            },
            "rss_mib": round(mark.rss_mib, 1),
            "storage_bytes": by_kind,
            "storage_bytes_per_trial": round(total / mark.trials),
        })
        previous, previous_bytes = mark, total
    peak = max((mib for _, mib in meter.rss), default=0.0)
    last = rows[-1]
    return {
        "storage": storage_kind,
        "commit": commit(),
        # Tune's experiment snapshot period as this run had it (search.run sets it)
        "snapshot_period": os.environ.get("TUNE_GLOBAL_CHECKPOINT_S", "auto"),
        "trials": trials,
        "finished": marks.finished,
        "exit_code": code,
        "driver_s_per_trial": last["driver_s_per_trial"],
        "suggest_s_per_trial": last["suggest_s_per_trial"],
        "outside_sampler_s_per_trial": last["outside_sampler_s_per_trial"],
        "snapshot_s_per_trial": last["snapshot_s_per_trial"],
        "snapshots": meter.snapshots,
        "suggestions": meter.suggestions,
        "driver_rss_start_mib": round(marks.first_rss or 0.0, 1),
        "driver_rss_peak_mib": round(peak, 1),
        "driver_rss_growth_mib": round(peak - (marks.first_rss or 0.0), 1),
        "tables_s": round(tables_wall, 1),
        "tables_cpu_s": round(tables_cpu, 1),
        "sizes": rows,
    }


def goals_met(arm: dict) -> dict:
    """Each goal against an arm: the driver's CPU per trial outside the sampler (over the
    whole run, and over the last size's trials alone), its RSS growth, and whether the
    bytes written per trial stay flat (the last size's trials against the first's, within
    25%)."""
    first, last = arm["sizes"][0]["since_previous"], arm["sizes"][-1]["since_previous"]
    last_outside = last["driver_s_per_trial"] - last["suggest_s_per_trial"]
    growth = last["storage_bytes_per_trial"] / max(first["storage_bytes_per_trial"], 1)
    return {
        "driver_s_per_trial_outside_sampler":
            arm["outside_sampler_s_per_trial"] <= GOALS["driver_s_per_trial_outside_sampler"],
        "driver_s_per_trial_outside_sampler_last_size": round(last_outside, 4),
        "driver_rss_growth_mib": arm["driver_rss_growth_mib"] <= GOALS["driver_rss_growth_mib"],
        "storage_bytes_per_trial_last_over_first_size": round(growth, 2),
        "storage_flat": growth <= 1.25,
    }


def plot(arms: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for arm in arms:
        sizes = [row["trials"] for row in arm["sizes"]]
        since = [row["since_previous"] for row in arm["sizes"]]
        axes[0].plot(sizes, [s["driver_s_per_trial"] * 1000 for s in since], "o-", label=f"{arm['storage']}: driver")
        axes[0].plot(sizes, [s["suggest_s_per_trial"] * 1000 for s in since], "s--", label=f"{arm['storage']}: sampler")
        axes[0].plot(sizes, [s["snapshot_s_per_trial"] * 1000 for s in since], "^:",
                     label=f"{arm['storage']}: snapshot")
        axes[1].plot(sizes, [row["rss_mib"] for row in arm["sizes"]], "o-", label=arm["storage"])
        axes[2].plot(sizes, [s["storage_bytes_per_trial"] / 1024 for s in since], "o-", label=arm["storage"])
    axes[0].set_ylabel("driver CPU ms per trial")
    axes[1].set_ylabel("driver RSS (MiB)")
    axes[2].set_ylabel("KiB written to storage per trial")
    fig.suptitle("per trial over the trials since the previous size (left, right); at each size (middle)")
    for ax in axes:
        ax.set_xlabel("trials finished")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=1000)
    parser.add_argument("--concurrent", type=int, default=32)
    parser.add_argument("--storage", nargs="+", choices=("local", "gcs"), default=["local", "gcs"])
    parser.add_argument("--snapshot-period", default=None,
                        help="Tune's experiment snapshot period (TUNE_GLOBAL_CHECKPOINT_S: seconds or 'auto'); "
                             "default: what hpsearch sets")
    parser.add_argument("--include-arm", action="append", default=[], metavar="FILE",
                        help="an arm's JSON as an earlier run of this script printed it, added to the results "
                             "(an arm on other storage measured in a run of its own)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "scale.json"))
    args = parser.parse_args()
    if args.snapshot_period is not None:
        os.environ["TUNE_GLOBAL_CHECKPOINT_S"] = args.snapshot_period
    arms = [json.loads(Path(path).read_text()) for path in args.include_arm]
    for kind in args.storage:
        work = Path(tempfile.mkdtemp(prefix=f"hpsearch-scale-{kind}-"))
        server = None
        if kind == "gcs":
            from tests.support import create_bucket, start_fake_gcs

            server, endpoint = start_fake_gcs(work / "fake-gcs.log")
            os.environ["HPSEARCH_GCS_ENDPOINT"] = endpoint
            create_bucket(endpoint, BUCKET)
        try:
            arms.append(run_arm(kind, args.trials, args.concurrent, work))
        finally:
            if server is not None:
                server.stop()
        print(json.dumps(arms[-1], indent=1), flush=True)
    for arm in arms:
        arm["goals_met"] = goals_met(arm)
    result = {
        "benchmark": "scale",
        "machine": machine(),
        "commit": commit(),
        "trials": {arm["storage"]: arm["trials"] for arm in arms},
        "concurrent": args.concurrent,
        "epochs_per_trial": f"up to {EPOCHS} (ASHA: grace 1, reduction factor 3)",
        "driver_s_per_trial": {arm["storage"]: arm["driver_s_per_trial"] for arm in arms},
        "driver_rss_growth_mib": {arm["storage"]: arm["driver_rss_growth_mib"] for arm in arms},
        "goals": GOALS,
        "arms": arms,
    }
    out = Path(args.out)
    out.write_text(json.dumps(result, indent=2) + "\n")
    plot(arms, out.with_suffix(".png"))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
