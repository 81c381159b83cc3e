"""The search driver sent SIGTERM mid-search, a second driver refused while it runs, and
``hpsearch run --resume`` finishing it from storage on a GCS emulator: no finished trial
lost or run again, the configured number of trials in the end, the tables a search
writes, and a resume with a changed config refused.

(Stand-in drivers SIGKILLed at chosen points are in test_resume.py, a killed driver's
lease on the GCS emulator taken over in test_lease.py, a worker killed mid-trial in
test_distributed.py, a job stopped on a cluster in tests/cluster/test_miniature.py.)"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import optuna
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from support import assert_each_epoch_trained_once
from trainables.notices import is_startup_notice
from trainables.storage import resolve

pytestmark = pytest.mark.slow


def finished_trials(lines: list[str]) -> set[str]:
    # Tune's progress output: "Trial run_trial_1a2b3c4d completed after 3 iterations at ..."
    return {line.split()[1] for line in lines if line.startswith("Trial ") and " completed after " in line}


def started_trials(lines: list[str]) -> int:
    # Tune's progress output: "Trial run_trial_1a2b3c4d started with configuration:"
    return sum(line.startswith("Trial ") and " started with configuration" in line for line in lines)


def wait_for_checkpoints(location, experiment: str, finished, count: int = 2, timeout_s: float = 300) -> str:
    """Poll storage (every 0.1 s: a tiny trial's epochs take under a second) until a trial
    has finished and another, not in ``finished()`` (the trials finished so far), has
    stored ``count`` checkpoints; returns the latter's name (run_trial_<id>). A trial
    reports an epoch only once Tune has taken its last (trainables.reporting), so Tune
    holds all but the newest of them."""
    import pyarrow.fs as pafs

    deadline = time.monotonic() + timeout_s
    selector = pafs.FileSelector(location.join(experiment), recursive=True, allow_not_found=True)
    while time.monotonic() < deadline:
        done, stored = finished(), {}
        for info in location.filesystem.get_file_info(selector) if done else ():
            parts = info.path.split("/")
            at = next((i for i, part in enumerate(parts) if part.startswith("checkpoint_")), None)
            if at:
                stored.setdefault("_".join(parts[at - 1].split("_")[:3]), set()).add(parts[at])
        for name, checkpoints in stored.items():
            if name.startswith("run_trial_") and name not in done and len(checkpoints) >= count:
                return name
        time.sleep(0.1)
    raise AssertionError(f"no finished trial and {count} checkpoints of another within {timeout_s} s")


def run_until(command: list[str], condition, timeout_s: float = 900) -> tuple[subprocess.Popen, list[str],
                                                                              threading.Thread]:
    """Start the driver in a session of its own (with the local Ray it starts), read its
    output on a thread of its own to its end (so the driver never blocks on a full pipe),
    and wait until ``condition(lines)``; returns the still running driver, its lines
    (still growing) and the reading thread."""
    driver = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              start_new_session=True)
    lines: list[str] = []

    def read() -> None:
        for line in driver.stdout:
            lines.append(line.strip())

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    deadline = time.monotonic() + timeout_s
    while not condition(lines):
        if time.monotonic() > deadline or not reader.is_alive():
            # if the condition never holds, end the driver rather than wait on it for ever
            os.killpg(driver.pid, signal.SIGKILL)
            raise AssertionError(f"the driver's output did not show what was waited for within {timeout_s} s "
                                 "(or it ended):\n" + "\n".join(lines[-40:]))
        time.sleep(0.1)
    return driver, lines, reader


def test_a_stopped_driver_resumes_on_gcs_without_losing_or_rerunning_trials(tmp_path, fake_gcs):
    config = tmp_path / "config.yaml"
    # 2 trials of 7-8 tiny epochs, one at a time, none stopped by ASHA (its first rung is
    # the last fine-tuning epoch): the second is interrupted with epochs still to train
    config.write_text(json.dumps({
        "data": {"dataset": "digits", "image_size": 32, "max_train_examples": 512},
        "space": {"backbones": ["Tiny"], "warmup_epochs": {"low": 0, "high": 1}},
        "recipe": {"weights": "none", "flip": False, "batch_size": 32, "head_epochs": 1, "flat_epochs": 4,
                   "cooldown_epochs": 2},
        "search": {"name": "resumed", "num_trials": 2, "seed": 3, "max_concurrent_trials": 1, "grace_epochs": 7},
        "storage": {"path": "gs://hpsearch-test/experiments"},
    }))
    command = [sys.executable, "-m", "search", "run", "--config", str(config)]
    # the driver runs until its first trial has started
    driver, lines, reader = run_until(command, started_trials)
    # a second driver while this one runs (a retried ray job submit): refused before
    # Ray starts, naming the one that runs; the tables below hold that one's trials only
    second = subprocess.run([*command, "--resume"], capture_output=True, text=True, timeout=300)
    assert second.returncode == 2, second.stderr[-3000:]
    assert f"is being run by another driver (pid {driver.pid} on " in second.stderr
    assert "Traceback" not in second.stderr and "Started a local Ray instance" not in second.stderr
    # SIGTERM (what Kubernetes sends a stopped RayJob, `ray job stop` first) once the
    # next trial has stored two checkpoints, so that the resume must continue it from a
    # checkpoint: Tune's graceful stop, one line, exit 143, the lease released
    interrupted = wait_for_checkpoints(resolve("gs://hpsearch-test/experiments"), "resumed",
                                       lambda: finished_trials(lines))
    finished_before = finished_trials(lines)
    driver.send_signal(signal.SIGTERM)
    assert len(finished_before) == 1, "\n".join(lines[-40:])
    try:
        driver.wait(timeout=300)
    finally:
        try:
            os.killpg(driver.pid, signal.SIGKILL)  # whatever of its process group is left
        except ProcessLookupError:
            pass
        driver.wait()
    reader.join(timeout=60)
    output = "\n".join(lines)
    assert driver.returncode == 143, output[-3000:]
    assert "search stopped by SIGTERM; its state is saved. Resume with: hpsearch run --config " in output
    assert f"{config} --resume" in output
    assert "*** SIGTERM received" not in output  # Ray's native crash handler did not fire
    # the stopped trial's process waited for its training to end (trainables.stopping)
    assert "SIGABRT" not in output and "Fatal Python error" not in output, output[-3000:]
    # the trial processes' lines reach the console, without TensorFlow's start-up notices
    trial_lines = [line for line in output.splitlines() if "(run_trial pid=" in line]
    assert trial_lines, output[-3000:]
    assert not [line for line in trial_lines if is_startup_notice(line)]
    location = resolve("gs://hpsearch-test/experiments")
    assert not location.exists(location.join("resumed", "driver.lease"))  # released on the way out

    resumed = subprocess.run([*command, "--resume"], capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "best validation accuracy:" in resumed.stdout

    location = resolve("gs://hpsearch-test/experiments")
    fs, experiment = location.filesystem, location.join("resumed")
    table = pq.read_table(f"{experiment}/trials.parquet", filesystem=fs).to_pylist()
    assert len(table) == 2  # the configured number, no more
    assert {f"run_trial_{row['trial_id']}" for row in table} >= finished_before  # nothing lost
    for row in table:
        assert row["status"] == "TERMINATED"
        assert row["epochs_run"] == row["planned_epochs"] or row["stopped_early"]
        assert fs.get_file_info(f"{row['best_checkpoint']}/model.keras").is_file
    history = pq.read_table(f"{experiment}/history.parquet", filesystem=fs).to_pandas()
    assert set(history["trial_id"]) == {row["trial_id"] for row in table}
    assert_each_epoch_trained_once(history, interruptions=1)  # the SIGTERM
    # the trial interrupted after two checkpoints went on from one: its first epoch was
    # reported once, by its first attempt, and a later attempt trained on
    resumed = history[history["trial_id"] == interrupted.removeprefix("run_trial_")]
    assert resumed[resumed["epoch"] == 1]["attempt"].tolist() == [1], resumed[["epoch", "attempt"]].values.tolist()
    assert resumed["attempt"].max() >= 2, resumed[["epoch", "attempt"]].values.tolist()
    with fs.open_input_stream(f"{experiment}/best_config.json") as handle:
        best = json.loads(handle.read())
    assert best["best_val_accuracy"] == max(row["best_val_accuracy"] for row in table)
    with fs.open_input_stream(f"{experiment}/trials.csv") as handle:
        assert pacsv.read_csv(handle).num_rows == 2
    # the Optuna study went up with the search, and holds each trial once, each epoch kept
    local_study = tmp_path / "study.db"
    with fs.open_input_stream(f"{experiment}/study.db") as handle:
        local_study.write_bytes(handle.read())
    study = optuna.load_study(study_name="resumed", storage=f"sqlite:///{local_study}")
    ended = [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(ended) == 2 and all(t.state.name == "FAIL" for t in study.trials if t not in ended)
    by_epochs = sorted(len(t.intermediate_values) for t in ended)
    assert by_epochs == sorted(row["epochs_run"] for row in table)

    # starting the same search again without --resume is refused, not mixed in
    again = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert again.returncode == 2 and "--resume" in again.stderr

    # resuming with a changed recipe is refused, naming the field; more trials would be
    # a continuation (test_resume.py), so it is not named
    raw = json.loads(config.read_text())
    raw["recipe"]["head_lr"] = 0.5
    raw["search"]["num_trials"] = 5
    config.write_text(json.dumps(raw))
    changed = subprocess.run([*command, "--resume"], capture_output=True, text=True, timeout=300)
    assert changed.returncode == 2, changed.stderr
    assert "recipe.head_lr: 0.01 -> 0.5" in changed.stderr and "num_trials" not in changed.stderr.split(". Only")[0]

