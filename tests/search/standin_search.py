"""A search driver whose trials are stand-ins: each epoch reports a value chosen by the
test and writes a tiny checkpoint, so where the driver dies is decided exactly, not by
timing. The search itself is hpsearch's: its Tuner, checkpoint retention, searcher,
scheduler and study (search.run).

    python standin_search.py ARGS_JSON

ARGS_JSON: {"storage", "num_trials", "concurrent", "curve" (values per epoch, or null
for values from the sampled max_lr), "kill": [event, count] or null, "resume": bool,
"ledger": a file each trained epoch is appended to (trial id, epoch, the driver's Ray job,
the trial's process id), "fail": {"trial" (its index from 1),
"epoch", "message"} or null: that trial raises OSError(message) at that epoch, every
time, "address": a running Ray to join, or null for a local Ray of the driver's own}.
``kill`` SIGKILLs the driver's
process group (the driver, and the local Ray it started, if any) at the count-th ``start``,
``result`` or ``complete`` event Tune's callbacks see, before Tune's next experiment snapshot,
or (``save``) halfway through writing the snapshot that follows the count-th result,
or (``ahead``) as soon as the searcher's state that counts the count-th trial is stored
while the trials' state that holds it is not (Tune uploads a snapshot's files in
parallel; this is the order that loses the trial), first writing the event's trial id
and epoch (null unless a result) to ``<ledger>.killed``.
A run that is not killed prints the search's trials as JSON.
"""

from __future__ import annotations

import fnmatch
import json
import os
import pickle
import signal
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import optuna
import pyarrow as pa
import pyarrow.fs as pafs
import ray
from ray import tune

from search.config import config_from_dict
from search.results import history_table
from search import rounds, study
from search.experiment import summarise
from search.run import METRIC, all_results, run_rounds
from trainables.storage import SNAPSHOT_FILES, AtomicLocalHandler, resolve

EPOCHS = 3


def config_for(args: dict):
    return config_from_dict({
        "data": {"dataset": "digits", "image_size": 32},
        "space": {"backbones": ["B0"], "warmup_epochs": 1, "max_lr": {"low": 0.01, "high": 1.0, "log": True}},
        "recipe": {"weights": "none", "head_epochs": 0, "flat_epochs": 1, "cooldown_epochs": 1},
        "search": {"name": "standin", "num_trials": args["num_trials"], "max_concurrent_trials": args["concurrent"],
                   "seed": 7, "startup_trials": 2, "grace_epochs": 1, "reduction_factor": 2},
        "storage": {"path": args["storage"]},
    })


def make_standin(curve: list[float] | None, ledger: str, fail: dict | None = None):
    def standin(config: dict) -> None:
        # the trial's directory: standin_<id>_<index from 1>_<parameters>_<time>
        index = int(Path(tune.get_context().get_trial_dir()).name.split("_")[2])
        start = 0
        checkpoint = tune.get_checkpoint()
        if checkpoint is not None:
            with checkpoint.as_directory() as directory:
                start = json.loads((Path(directory) / "state.json").read_text())["epoch"]
        trial_id = tune.get_context().get_trial_id()
        for epoch in range(start + 1, EPOCHS + 1):
            time.sleep(0.2)
            if fail and fail["trial"] == index and fail["epoch"] == epoch:
                raise OSError(fail["message"])
            value = curve[epoch - 1] if curve else min(0.99, config["max_lr"] + 0.1 * epoch)
            with open(ledger, "a") as out:  # the job tells the drivers apart
                out.write(f"{trial_id} {epoch} {ray.get_runtime_context().get_job_id()} {os.getpid()}\n")
            with tempfile.TemporaryDirectory() as directory:
                Path(directory, "state.json").write_text(json.dumps({"epoch": epoch}))
                report = {"epoch": epoch, "finetune_epoch": epoch, "planned_epochs": EPOCHS, METRIC: value}  # no head phase
                tune.report(report, checkpoint=tune.Checkpoint.from_directory(directory))

    return standin


class KillWhileSaving(AtomicLocalHandler):
    """Local storage that, once armed, SIGKILLs this process group halfway through the
    next experiment state Tune writes to it (in the driver only: trials get a copy)."""

    def __init__(self) -> None:
        super().__init__()
        self.pid, self.armed = os.getpid(), False

    def open_output_stream(self, path: str, metadata) -> pa.NativeFile:
        stream = super().open_output_stream(path, metadata)
        if self.armed and os.getpid() == self.pid and fnmatch.fnmatch(os.path.basename(path), STATE_FILES):
            return pa.PythonFile(HalfThenKill(stream), mode="w")
        return stream


STATE_FILES = SNAPSHOT_FILES[0]  # Tune's experiment state
SEARCHER_FILES = SNAPSHOT_FILES[1]  # Tune's search generator's state (its count of trials created)


class SearcherAhead(AtomicLocalHandler):
    """Local storage that stores the searcher's state counting the ``count``-th trial, never
    a trials' state holding it, and SIGKILLs this process group once the former is stored:
    whichever of the two files Tune's parallel upload writes first (in the driver only)."""

    def __init__(self, count: int, record: str) -> None:
        super().__init__()
        self.pid, self.count, self.record = os.getpid(), count, record

    def open_output_stream(self, path: str, metadata) -> pa.NativeFile:
        name = os.path.basename(path)
        if os.getpid() == self.pid and fnmatch.fnmatch(name, STATE_FILES):
            return pa.PythonFile(HeldUntilClose(lambda data: self._trials_state(path, metadata, data)), mode="w")
        if os.getpid() == self.pid and fnmatch.fnmatch(name, SEARCHER_FILES):
            return pa.PythonFile(HeldUntilClose(lambda data: self._searcher_state(path, metadata, data)), mode="w")
        return super().open_output_stream(path, metadata)

    def _store(self, path: str, metadata, data: bytes) -> None:
        with super().open_output_stream(path, metadata) as stream:
            stream.write(data)

    def _trials_state(self, path: str, metadata, data: bytes) -> None:
        if len(json.loads(data)["trial_data"]) < self.count:
            self._store(path, metadata, data)

    def _searcher_state(self, path: str, metadata, data: bytes) -> None:
        self._store(path, metadata, data)
        if pickle.loads(data)["counter"] >= self.count:
            Path(self.record).write_text(json.dumps({"trial_id": None, "epoch": None}))
            os.killpg(0, signal.SIGKILL)


class HeldUntilClose:
    """A stream that keeps what it is given and hands it all to ``closing`` on close."""

    def __init__(self, closing) -> None:
        self.closing, self.chunks, self.closed = closing, [], False

    def write(self, data: bytes) -> int:
        self.chunks.append(bytes(data))
        return len(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.closing(b"".join(self.chunks))


class HalfThenKill:
    """A stream that writes half of what it is first given, then SIGKILLs the group."""

    def __init__(self, stream: pa.NativeFile) -> None:
        self.stream, self.closed = stream, False

    def write(self, data: bytes) -> int:
        self.stream.write(bytes(data)[: len(data) // 2])
        self.stream.flush()
        os.killpg(0, signal.SIGKILL)
        return len(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True


class KillAt(tune.Callback):
    """SIGKILL this process group at the count-th event of a kind; at a ``save`` event,
    the count-th result arms ``saving``, which kills halfway through the experiment state
    Tune writes next.

    Tune keeps a run's callbacks in its saved state and restores them with it; only the
    driver that was given this one acts on it.
    """

    def __init__(self, event: str, count: int, record: str, saving: KillWhileSaving | None = None) -> None:
        self.event, self.count, self.seen = event, count, 0
        self.record = record
        self.saving = saving
        self.pid = os.getpid()

    def _tick(self, event: str, trial, epoch: int | None = None) -> None:
        counted = "result" if self.event == "save" else self.event
        if event == counted and os.getpid() == self.pid:
            self.seen += 1
            if self.seen == self.count:
                Path(self.record).write_text(json.dumps({"trial_id": trial.trial_id, "epoch": epoch}))
                if self.event == "save":
                    self.saving.armed = True
                else:
                    os.killpg(0, signal.SIGKILL)

    def on_trial_start(self, iteration, trials, trial, **info):
        self._tick("start", trial)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self._tick("result", trial, result.get("epoch"))

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._tick("complete", trial)


def main() -> None:
    args = json.loads(sys.argv[1])
    config = config_for(args)
    location = resolve(config.storage.path)
    saving = None
    if args["kill"] and args["kill"][0] == "save":
        saving = KillWhileSaving()
        location = replace(location, filesystem=pafs.PyFileSystem(saving))
    if args["kill"] and args["kill"][0] == "ahead":
        ahead = SearcherAhead(args["kill"][1], record=args["ledger"] + ".killed")
        location = replace(location, filesystem=pafs.PyFileSystem(ahead))
    trainable = make_standin(args["curve"], args["ledger"], args.get("fail"))
    if args.get("address"):
        ray.init(address=args["address"], logging_level="ERROR")
    else:  # "local": a new Ray, never one an address file names
        ray.init(address="local", num_cpus=2, logging_level="ERROR", _node_ip_address="127.0.0.1",
                 include_dashboard=False)
    try:
        if args["resume"]:  # what `hpsearch run --resume` does
            steps = rounds.next_steps(rounds.read(location, config.search.name), config.search.num_trials)
        else:
            steps = rounds.Steps(resume=None, add=rounds.Round(1, config.search.num_trials))
        kill_at = args["kill"] and args["kill"][0] != "ahead"
        callbacks = [KillAt(*args["kill"], record=args["ledger"] + ".killed", saving=saving)] if kill_at else None
        grids = run_rounds(config, location, steps, trainable=trainable, callbacks=callbacks)
        results = all_results(config, location, grids, trainable=trainable)
    finally:
        ray.shutdown()
    history = history_table(results).to_pylist()
    trials = []
    for result in results:
        trial_id = result.metrics["trial_id"]
        trials.append({
            "trial_id": trial_id,
            "status": "ERROR" if result.error else "TERMINATED",
            "error": str(result.error) if result.error else None,
            "history_epochs": [row["epoch"] for row in history if row["trial_id"] == trial_id],
        })
    loaded = optuna.load_study(study_name=config.search.name,
                               storage=study.storage_url(study.local_path(location, config.search.name)))
    studied = [{"number": t.number, "state": t.state.name, "epochs": sorted(t.intermediate_values)}
               for t in loaded.get_trials(deepcopy=False)]
    # what `hpsearch run` prints and exits with at the end (its stdout goes to the log)
    code = summarise(config, location, results)
    print("RESULT " + json.dumps({"trials": trials, "study": studied, "exit_code": code}))


if __name__ == "__main__":
    main()
