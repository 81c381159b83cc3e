"""How a trial hands each epoch on: the reporter protocol, and a reporter that runs
another on a thread of its own so training never waits for the hand-off."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

# Called once per epoch with the metrics and the checkpoint directory of that epoch
# (None on workers that do not write checkpoints). The reporter takes the directory
# over: it may hand it to an upload that runs while the next epoch trains, and it
# deletes it (or has it deleted) when done with it.
Reporter = Callable[[dict[str, Any], "Path | None"], None]


class InBackground:
    """A :data:`Reporter` that runs ``report`` on a thread of its own.

    Epochs are reported one at a time and in order: a call waits for the previous
    epoch's report (at most one epoch behind), then returns while this one runs. What
    the report raised (an upload error; the ``SystemExit`` by which Tune's function API
    ends a stopped trial) is raised in the training thread at the next call or by
    :meth:`close`, which the caller must reach (``finally``) so that the last epoch is
    reported before the trial function returns. ``stopped`` is set as soon as a report
    raises, so that the training can end at its next compiled call instead of at the
    next report (trainables.stopping).
    """

    def __init__(self, report: Reporter, stopped: threading.Event | None = None) -> None:
        self._report = report
        self._stopped = stopped
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hpsearch-report")
        self._pending: Future | None = None

    def __call__(self, metrics: dict[str, Any], directory: Path | None) -> None:
        self._wait()
        self._pending = self._thread.submit(self._run, metrics, directory)

    def _run(self, metrics: dict[str, Any], directory: Path | None) -> None:
        try:
            self._report(metrics, directory)
        except BaseException:
            if self._stopped is not None:
                self._stopped.set()
            raise

    def close(self) -> None:
        try:
            self._wait()
        finally:
            self._thread.shutdown(wait=True)

    def _wait(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()


def train_reporting_in_background(train: Callable[[Reporter, Callable[[], bool]], Any], report: Reporter) -> Any:
    """Run ``train(reporter, stop_requested)`` in this thread, its epochs reported by
    ``report`` on a thread of its own (:class:`InBackground`), wired for a stop:

    - a report that raises (Tune's ``SystemExit`` for a stopped trial) sets the stop
      that ``stop_requested`` reads, so the training ends at its next compiled call;
    - a process that exits meanwhile sets it too and waits for the training to end
      (trainables.stopping: no native crash dump);
    - the last epoch is reported before this returns, and what a report raised is
      raised here.
    """
    from trainables.stopping import ends_before_exit

    stop = threading.Event()
    reporter = InBackground(report, stopped=stop)
    with ends_before_exit(stop):
        try:
            return train(reporter, stop.is_set)
        finally:
            reporter.close()
