"""Resume that cannot corrupt, continuation and the Optuna study, with stand-in trials.

The drivers here run ``standin_search.py``: hpsearch's Tuner, checkpoint retention,
searcher, scheduler, rounds and study, over trials that report values chosen by the test.
A driver is SIGKILLed from inside Tune's own callbacks at a chosen event, so where it
dies does not depend on timing. (The real-training resume on gs:// is in test_faults.py.)
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path

import pytest

from search.resume_rules import changed_fields, resume_refusals
from search.rounds import Round, Steps, after_resume, next_steps

DRIVER = Path(__file__).with_name("standin_search.py")
# The drivers and the shared head agree on no token authentication (unset, a process
# that ran ray.init() before, as this one may have, carries RAY_AUTH_MODE=token, and a
# head without tokens cannot start that driver's actors).
DRIVER_ENV = {**os.environ, "RAY_AUTH_MODE": "disabled"}
EPOCHS = 3  # standin_search.EPOCHS


# -- the rules --------------------------------------------------------------------------


def test_next_steps_resume_the_unfinished_round_then_add_the_missing_trials():
    assert next_steps([], 4) == Steps(resume=Round(1, 4), add=None)  # killed before it recorded a round
    assert next_steps([Round(1, 4)], 4) == Steps(resume=Round(1, 4), add=None)
    assert next_steps([Round(1, 4, True)], 4) == Steps(resume=None, add=None)
    assert next_steps([Round(1, 4, True)], 6) == Steps(resume=None, add=Round(2, 2))
    # an interrupted round is finished first, then the continuation adds the rest
    assert next_steps([Round(1, 4, True), Round(2, 2)], 9) == Steps(resume=Round(2, 2), add=Round(3, 3))
    assert next_steps([Round(1, 4, True)], 3) == Steps(resume=None, add=None)  # trials are never removed


def test_a_resumed_round_that_ends_short_hands_its_missing_trials_on():
    assert after_resume(Round(1, 3), 3, None) == (Round(1, 3), None)
    assert after_resume(Round(1, 3), 2, None) == (Round(1, 2), Round(2, 1))
    assert after_resume(Round(2, 4), 1, Round(3, 2)) == (Round(2, 1), Round(3, 5))
    # the round as recorded then makes next_steps add exactly the missing trials
    assert next_steps([Round(1, 2, True)], 3) == Steps(resume=None, add=Round(2, 1))


def test_changed_fields_name_every_difference_and_only_those():
    recorded = {"search": {"num_trials": 4, "seed": 1}, "recipe": {"head_lr": 0.01, "flip": True}}
    current = {"search": {"num_trials": 8, "seed": 1}, "recipe": {"head_lr": 0.02, "flip": True}}
    assert changed_fields(recorded, current) == ["search.num_trials", "recipe.head_lr"]
    assert resume_refusals(recorded, current) == ["recipe.head_lr: 0.01 -> 0.02"]
    concurrency = {"search": {"num_trials": 4, "seed": 1, "max_concurrent_trials": 9}, "recipe": recorded["recipe"]}
    assert resume_refusals({**recorded, "search": {**recorded["search"], "max_concurrent_trials": 2}}, concurrency) == []
    # steps per compiled call change no weight (tests/trainables/test_loop.py)
    assert resume_refusals({"resources": {"steps_per_execution": None}}, {"resources": {"steps_per_execution": 8}}) == []
    # every refused field is named, not only the first; the waits a resume may change are not
    several = {"search": {"num_trials": 4, "seed": 2}, "recipe": {"head_lr": 0.02, "flip": False},
               "resources": {"placement_timeout_s": 60}, "storage": {"lease_timeout_s": 30}}
    before = {**recorded, "resources": {"placement_timeout_s": 900}, "storage": {"lease_timeout_s": 120}}
    assert resume_refusals(before, several) == ["search.seed: 1 -> 2", "recipe.head_lr: 0.01 -> 0.02",
                                                "recipe.flip: True -> False"]


def test_a_round_whose_saved_state_is_cut_short_is_refused_naming_the_file(tmp_path):
    """Tune would log an unreadable state and start the round over; the resume is refused
    first. Tune pickles its searcher's state into a file named .json: both forms are read."""
    import pickle

    from search.run import RoundStateError, check_restorable
    from trainables.storage import resolve

    run = tmp_path / "standin"
    run.mkdir()
    state = json.dumps({"trial_data": [1, 2, 3]}).encode()
    searcher = pickle.dumps({"searcher": list(range(100))})
    (run / "experiment_state-1.json").write_bytes(state)
    (run / "search_gen_state-1.json").write_bytes(searcher)
    check_restorable(resolve(str(tmp_path)), "standin", 1)  # whole: nothing said
    for name, whole in (("experiment_state-1.json", state), ("search_gen_state-1.json", searcher)):
        (run / name).write_bytes(whole[: len(whole) // 2])
        with pytest.raises(RoundStateError, match=f"round 1 cannot be resumed: its saved state .*/{name} is unreadable"):
            check_restorable(resolve(str(tmp_path)), "standin", 1)
        (run / name).write_bytes(whole)


# -- stand-in searches ------------------------------------------------------------------


@pytest.fixture(scope="module")
def shared_ray():
    """A Ray head (2 CPUs) the drivers join instead of starting a Ray each. A killed
    driver's trials end with its job (Ray ends a job's actors when its driver dies); a
    line one of them writes late is told apart by its job in the ledger. Yields its
    address; stopped by its process group."""
    from search.connect import wait_for_gcs
    from support import free_port, stop_process_groups

    port = free_port()
    temp_dir = tempfile.mkdtemp(prefix="rayrs-", dir="/tmp")  # short: Ray's socket paths must fit
    head = subprocess.Popen(
        [str(Path(sys.executable).with_name("ray")), "start", "--head", "--block", "--num-cpus=2", f"--port={port}",
         "--node-ip-address=127.0.0.1", f"--temp-dir={temp_dir}", "--include-dashboard=false",
         "--disable-usage-stats"],
        env=DRIVER_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    address = f"127.0.0.1:{port}"
    try:
        wait_for_gcs(address, wait_s=120)
        assert head.poll() is None, "ray start --head exited"
        yield address
    finally:
        stop_process_groups([head])
        shutil.rmtree(temp_dir, ignore_errors=True)


def drive(tmp_path: Path, *, num_trials: int, concurrent: int = 1, curve=None, kill=None, resume=False, fail=None,
          address: str | None = None) -> tuple[int, dict | None]:
    """Run the stand-in driver in a session of its own, on the Ray at ``address`` or on a
    local Ray of its own; returns its exit code and result (with the driver's output under
    ``log``)."""
    args = {"storage": str(tmp_path / "experiments"), "num_trials": num_trials, "concurrent": concurrent,
            "curve": curve, "kill": kill, "resume": resume, "ledger": str(tmp_path / "ledger"),
            "fail": fail, "address": address}
    driver = subprocess.Popen([sys.executable, str(DRIVER), json.dumps(args)], env=DRIVER_ENV, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, start_new_session=True)
    timed_out = False
    try:
        output, _ = driver.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        timed_out = True
    finally:
        try:  # whatever of its local Ray is left
            os.killpg(driver.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if timed_out:
        output, _ = driver.communicate()
        raise AssertionError(f"the stand-in driver ran past 300 s ({args}); its output:\n{output[-6000:]}")
    driver.wait()
    if kill:
        # a killed driver's trials end with its job: a resubmitted search finds them gone
        # (they would hold this Ray's CPUs meanwhile)
        wait_for_processes_gone(trial_processes(tmp_path))
    lines = [line for line in output.splitlines() if line.startswith("RESULT ")]
    if driver.returncode == 0 and not lines:
        raise AssertionError(output[-3000:])
    result = json.loads(lines[-1].removeprefix("RESULT ")) if lines else {}
    return driver.returncode, {**result, "log": output}


def ledger_by_job(tmp_path: Path) -> list[tuple[str, int, str]]:
    """Every epoch a stand-in trained: (trial id, epoch, Ray job), in order. A killed
    driver's trial processes may outlive it for a moment and write a line late; the
    job (one per driver) still tells which driver's run trained it."""
    path = tmp_path / "ledger"
    if not path.exists():
        return []
    return [(trial, int(epoch), job) for trial, epoch, job, _ in (line.split() for line in path.read_text().splitlines())]


def trial_processes(tmp_path: Path) -> set[int]:
    """The process ids of every stand-in trial the ledger recorded."""
    path = tmp_path / "ledger"
    return {int(line.split()[3]) for line in path.read_text().splitlines()} if path.exists() else set()


def wait_for_processes_gone(pids: set[int], wait_s: float = 60) -> None:
    """Wait until none of ``pids`` runs (Ray ends a dead driver's actors shortly after)."""
    from support import wait_for

    def gone() -> bool:
        alive = set()
        for pid in pids:
            try:
                os.kill(pid, 0)
                alive.add(pid)
            except ProcessLookupError:
                pass
        return not alive

    wait_for(gone, wait_s, f"the killed driver's trial processes {sorted(pids)}")


def ledger(tmp_path: Path) -> list[tuple[str, int]]:
    """Every epoch a stand-in trained: (trial id, epoch), in order."""
    return [(trial, epoch) for trial, epoch, _ in ledger_by_job(tmp_path)]


def first_run(tmp_path: Path) -> list[tuple[str, int]]:
    """The epochs the first driver's job trained (read once its processes are all gone)."""
    entries = ledger_by_job(tmp_path)
    return [(trial, epoch) for trial, epoch, job in entries if job == entries[0][2]]


def in_flight(entries: list[tuple[str, int]]) -> set[tuple[str, int]]:
    """Each trial's last epoch in a killed driver's ledger: the one it had in flight."""
    return set(dict(entries).items())


def killed_result(tmp_path: Path) -> set[tuple[str, int]]:
    """The epoch result the driver was handling when it was killed (none unless killed at
    a result): Tune saves it in the next snapshot, which the kill prevented, so that epoch
    may be trained again too (its trial may already have started the next one)."""
    killed = json.loads((tmp_path / "ledger.killed").read_text())
    return set() if killed["epoch"] is None else {(killed["trial_id"], killed["epoch"])}


def check_whole(result: dict, num_trials: int, may_repeat: set[tuple[str, int]] = frozenset()) -> None:
    """The configured trials, each finished, each epoch in the history (which keeps every
    report) once, except an epoch in ``may_repeat`` (in flight when a driver was killed),
    which may show twice."""
    trials = result["trials"]
    assert len(trials) == num_trials, result
    for trial in trials:
        assert trial["status"] == "TERMINATED", trial
        epochs = trial["history_epochs"]
        assert sorted(set(epochs)) == list(range(1, max(epochs) + 1)) and max(epochs) <= EPOCHS, trial
        repeated = {(trial["trial_id"], e) for e, n in Counter(epochs).items() if n > 1}
        assert repeated <= may_repeat and max(Counter(epochs).values()) <= 2, (trial, may_repeat)
    ended = Counter(entry["state"] for entry in result["study"])
    assert ended["COMPLETE"] + ended["PRUNED"] == num_trials and ended["RUNNING"] == 0, result["study"]


@pytest.mark.slow
def test_a_trial_finished_just_before_the_driver_died_stays_finished(tmp_path, shared_ray):
    """Validation 0.5, 0.3, 0.6: the middle epoch is the worst. A retention ranked by
    score deletes its checkpoint when epoch 3 arrives, though Tune's snapshot may name it
    as the trial's latest; the resumed trial then cannot restore and ends in ERROR. Kept
    by time, it is there: the trial restores from it and ends finished."""
    code, _ = drive(tmp_path, num_trials=1, curve=[0.5, 0.3, 0.6], kill=["complete", 1], address=shared_ray)
    assert code == -signal.SIGKILL
    (trial_id,) = {trial for trial, _ in ledger(tmp_path)}

    code, result = drive(tmp_path, num_trials=1, curve=[0.5, 0.3, 0.6], resume=True, address=shared_ray)
    assert code == 0, result
    before = first_run(tmp_path)
    assert before == [(trial_id, 1), (trial_id, 2), (trial_id, 3)]
    check_whole(result, 1, may_repeat=in_flight(before))  # epoch 3 was in flight: its end was not saved
    (trial,) = result["trials"]
    assert trial["trial_id"] == trial_id and sorted(set(trial["history_epochs"])) == [1, 2, 3]
    # restored from a checkpoint at epoch 2 or 3, not started over: epochs 1 and 2 trained once
    trained = Counter(epoch for _, epoch in ledger(tmp_path))
    assert trained[1] == 1 and trained[2] == 1, ledger(tmp_path)


@pytest.mark.slow
def test_a_trial_that_keeps_failing_ends_in_error_and_the_search_says_so(tmp_path, shared_ray):
    """A write that fails mid-trial (storage full): Tune retries the trial from its last
    checkpoint (FailureConfig max_failures=2), then records it ERROR; the other trial
    finishes, every table is written, and `hpsearch run` exits 3 naming the trial."""
    fail = {"trial": 1, "epoch": 2, "message": "[Errno 28] No space left on device"}
    code, result = drive(tmp_path, num_trials=2, fail=fail, address=shared_ray)
    assert code == 0, result["log"][-3000:]
    assert result["exit_code"] == 3
    failed = [t for t in result["trials"] if t["status"] == "ERROR"]
    assert len(failed) == 1 and sum(t["status"] == "TERMINATED" for t in result["trials"]) == 1
    (trial,) = failed
    assert trial["history_epochs"] == [1]  # its finished epoch is kept
    # three starts at epoch 2, each from epoch 1's checkpoint: epoch 1 trained once
    trained = Counter(epoch for trial_id, epoch in ledger(tmp_path) if trial_id == trial["trial_id"])
    assert trained == {1: 1}
    summary = f"trial {trial['trial_id']} failed: "
    line = next(line for line in result["log"].splitlines() if line.startswith(summary))
    assert line.endswith("failed: OSError: [Errno 28] No space left on device"), line
    assert (tmp_path / "experiments" / "standin" / "trials.parquet").is_file()


@pytest.mark.slow
def test_a_trial_whose_checkpoints_were_deleted_ends_in_error_and_the_rest_finish(tmp_path, shared_ray):
    """Checkpoints deleted while the driver was down: the trial cannot be restored, and
    says why; the search still reaches its other trials and exits 3."""
    code, _ = drive(tmp_path, num_trials=2, kill=["result", 2], address=shared_ray)
    assert code == -signal.SIGKILL
    # drive waited for the killed driver's trial processes to end (Ray ends a dead
    # driver's actors): none can persist another checkpoint after the deletion below
    (trial_dir,) = (tmp_path / "experiments" / "standin").glob("standin_*")
    checkpoints = list(trial_dir.glob("checkpoint_*"))
    assert checkpoints
    for checkpoint in checkpoints:
        shutil.rmtree(checkpoint)

    code, result = drive(tmp_path, num_trials=2, resume=True, address=shared_ray)
    assert code == 0 and result["exit_code"] == 3, result["log"][-3000:]
    statuses = {t["trial_id"]: t["status"] for t in result["trials"]}
    gone = trial_dir.name.split("_")[1]
    assert statuses.pop(gone) == "ERROR" and list(statuses.values()) == ["TERMINATED"]
    assert f"trial {gone} failed: ValueError: Could not recover from checkpoint as it does not exist" in result["log"]


def in_flight_or_before(entries: list[tuple[str, int]]) -> set[tuple[str, int]]:
    """Each trial's last two epochs in a killed driver's ledger."""
    last = in_flight(entries)
    return last | {(trial, epoch - 1) for trial, epoch in last}


@pytest.mark.slow
@pytest.mark.parametrize("event,count", [("save", 4), ("start", 3), ("ahead", 3)])
def test_a_driver_killed_anywhere_resumes_to_the_configured_trials(tmp_path, shared_ray, event, count):
    """Tune's experiment state is saved at every step of its loop (search.run), so the
    resumed search retrains, per trial running at the kill, at most the epoch it had in
    flight (its last in the ledger then) and, when killed while handling an epoch's result,
    that epoch, and no other; counted in the stand-ins' ledger of every epoch trained.
    ("start", 3): killed as the third trial starts, while the first two may still train;
    a trial started just before the kill is kept too. ("save", 4): killed halfway through
    writing the experiment state that follows the fourth epoch result: local storage
    still holds the state saved before it, whole (trainables.storage), and the search
    resumes from that, each trial losing at most the epochs reported since, its last two
    at most; a cut-short state would make Tune start the run over.) ("ahead", 3): killed
    when the searcher's state counting the third trial is stored and the trials' state
    holding it is not (Tune uploads them in parallel): the restored run never creates
    that trial, and a continuation round runs it instead; its suggestion is closed."""
    code, _ = drive(tmp_path, num_trials=3, concurrent=2, kill=[event, count], address=shared_ray)
    assert code == -signal.SIGKILL
    started = {trial for trial, _ in ledger(tmp_path)}
    assert started
    if event == "save":  # the kill cut the experiment state short: local storage held it in memory
        # until closed (trainables.storage), so none of it is on disk, and what is there reads
        # whole. (Another file of the snapshot, uploaded in parallel, may have been between
        # its partial file and its rename: that partial is left, unpublished.)
        directory = tmp_path / "experiments" / "standin"
        assert not list(directory.glob(".experiment_state-*.partial"))
        states = list(directory.glob("experiment_state-*.json"))
        assert states and all(json.loads(path.read_text()) for path in states)

    code, result = drive(tmp_path, num_trials=3, concurrent=2, resume=True, address=shared_ray)
    assert code == 0, result["log"][-3000:]
    assert "Failed to restore the run state" not in result["log"]
    before = first_run(tmp_path)
    may_repeat = in_flight(before) | killed_result(tmp_path)
    if event == "save":
        may_repeat |= in_flight_or_before(before)
    check_whole(result, 3, may_repeat=may_repeat)  # the configured count: none lost, none added
    assert started <= {trial["trial_id"] for trial in result["trials"]}  # every trial begun is kept
    trained = Counter(ledger(tmp_path))
    again = {entry for entry, times in trained.items() if times > 1}
    assert again <= may_repeat and max(trained.values()) <= 2, (before, trained)
    for trial in result["trials"]:  # every epoch of the history was trained
        assert {(trial["trial_id"], e) for e in trial["history_epochs"]} <= set(trained)
    if event == "ahead":
        assert "round 1 was restored with 2 of its 3 trials" in result["log"], result["log"][-3000:]
        recorded = json.loads((tmp_path / "experiments" / "standin" / "rounds.json").read_text())
        assert recorded == [{"number": 1, "num_trials": 2, "finished": True},
                            {"number": 2, "num_trials": 1, "finished": True}]
        assert Counter(entry["state"] for entry in result["study"])["FAIL"] == 1, result["study"]


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


@pytest.mark.slow
def test_continuation_adds_trials_to_a_finished_search_over_the_same_study(tmp_path, shared_ray):
    code, first = drive(tmp_path, num_trials=2, concurrent=2, address=shared_ray)
    assert code == 0, first
    check_whole(first, 2)

    code, result = drive(tmp_path, num_trials=4, concurrent=2, resume=True, address=shared_ray)  # search.num_trials: 2 -> 4
    assert code == 0, result
    check_whole(result, 4)
    assert {t["trial_id"] for t in first["trials"]} < {t["trial_id"] for t in result["trials"]}
    experiment = tmp_path / "experiments" / "standin"
    rounds = json.loads((experiment / "rounds.json").read_text())
    assert rounds == [{"number": 1, "num_trials": 2, "finished": True}, {"number": 2, "num_trials": 2, "finished": True}]
    assert (experiment / "rounds" / "round-2").is_dir()
    # round 2's searcher continued round 1's study: one study, numbered on, every epoch kept
    study = result["study"]
    assert [entry["number"] for entry in study] == [0, 1, 2, 3]
    assert study[:2] == first["study"]
    for entry in study:
        assert entry["epochs"] and entry["epochs"] == list(range(1, len(entry["epochs"]) + 1))

    # Optuna's own dashboard reads the study through its HTTP API
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    dashboard = subprocess.Popen(
        [str(Path(sys.executable).with_name("optuna-dashboard")), f"sqlite:///{experiment / 'study.db'}",
         "--host", "127.0.0.1", "--port", str(port), "--quiet"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                studies = get_json(f"http://127.0.0.1:{port}/api/studies")["study_summaries"]
                break
            except OSError:
                assert dashboard.poll() is None and time.monotonic() < deadline, dashboard.stderr.read()
                time.sleep(0.5)
        (summary,) = studies
        assert summary["study_name"] == "standin"
        detail = get_json(f"http://127.0.0.1:{port}/api/studies/{summary['study_id']}")
        assert len(detail["trials"]) == 4
        states = {t["state"] for t in detail["trials"]}
        assert states <= {"Complete", "Pruned"}, states
        for trial in detail["trials"]:
            assert "max_lr" in {p["name"] for p in trial["params"]}
            assert [v["step"] for v in trial["intermediate_values"]][0] == 1
    finally:
        dashboard.terminate()
        dashboard.wait(timeout=30)
