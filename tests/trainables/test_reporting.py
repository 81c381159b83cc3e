"""A reporter on a thread of its own: training goes on while an epoch is reported."""

import subprocess
import sys
import textwrap
import threading
import time

import pytest

from trainables.reporting import InBackground


def test_a_call_returns_while_the_report_runs_and_epochs_stay_in_order():
    release = threading.Event()
    reported, threads = [], set()

    def slow_report(metrics, directory):
        threads.add(threading.get_ident())
        assert release.wait(30)
        reported.append(metrics["epoch"])

    reporter = InBackground(slow_report)
    reporter({"epoch": 1}, None)
    assert reported == []  # returned while epoch 1's report is still held
    release.set()
    reporter({"epoch": 2}, None)  # waits for epoch 1 first
    assert reported[0] == 1
    reporter.close()  # the last epoch is reported before close returns
    assert reported == [1, 2]
    assert threading.get_ident() not in threads


@pytest.mark.parametrize("error", [OSError("upload failed"), SystemExit(0)])
def test_what_a_report_raised_is_raised_in_the_training_thread(error):
    def failing(metrics, directory):
        raise error

    reporter = InBackground(failing)
    reporter({"epoch": 1}, None)
    with pytest.raises(type(error)):
        reporter({"epoch": 2}, None)
    reporter.close()

    reporter = InBackground(failing)
    reporter({"epoch": 1}, None)
    with pytest.raises(type(error)):
        reporter.close()


def test_a_report_that_raises_asks_the_training_to_stop_at_once():
    """Tune ends a stopped trial by raising SystemExit in the report: the training learns
    it then (trainables.stopping), not at its next report an epoch later."""
    stopped = threading.Event()
    reporter = InBackground(lambda metrics, directory: None, stopped=stopped)
    reporter({"epoch": 1}, None)
    reporter.close()
    assert not stopped.is_set()

    def stopping(metrics, directory):
        raise SystemExit(0)

    reporter = InBackground(stopping, stopped=stopped)
    reporter({"epoch": 1}, None)
    assert stopped.wait(30)  # set by the report's thread, before any other call
    with pytest.raises(SystemExit):
        reporter.close()


def test_a_trial_trained_with_background_reports_stops_at_tunes_stop():
    """As a single-strategy trial wires it (search.run.train_here): the report that Tune
    stops raises SystemExit, and the training loop's own stop check turns True while it
    is still training, before any further report."""
    from trainables.reporting import train_reporting_in_background

    def stopped_by_tune(metrics, directory):
        raise SystemExit(0)

    seen = []

    def train(reporter, stop_requested):
        reporter({"epoch": 1}, None)
        deadline = time.monotonic() + 30
        while not stop_requested() and time.monotonic() < deadline:  # the loop's compiled calls
            time.sleep(0.01)
        seen.append(stop_requested())

    with pytest.raises(SystemExit):
        train_reporting_in_background(train, stopped_by_tune)
    assert seen == [True]


EXITING = textwrap.dedent("""
    import threading, time
    from trainables.reporting import train_reporting_in_background

    def train(reporter, stop_requested):
        while not stop_requested():
            time.sleep(0.01)
        time.sleep(0.3)  # the rest of its compiled call
        print("training ended", flush=True)

    started = threading.Event()
    threading.Thread(target=lambda: (started.set(), train_reporting_in_background(train, lambda m, d: None)),
                     daemon=True).start()
    started.wait(10)
    time.sleep(0.2)
""")


def test_a_process_exiting_under_background_reports_waits_for_the_training():
    """Tune's function trainables train in a daemon thread: when the process exits, the
    training is asked to stop and the exit waits for it (trainables.stopping)."""
    done = subprocess.run([sys.executable, "-c", EXITING], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout == "training ended\n"
