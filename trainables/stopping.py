"""How a trial's training ends when the search stops it.

Tune stops a trial (ASHA, the end of the search, SIGTERM) by raising ``SystemExit`` in the
thread that reports (if one waits on Tune then), and then ends the trial's actor: its
process exits. The training thread (Tune's, a daemon) may still be inside TensorFlow then. At interpreter shutdown Python
ends such a thread when it next takes the GIL, and TensorFlow's bindings turn that into
``std::terminate``: the trial printed a native crash dump (Ray's TerminateHandler and
SIGABRT, about 55 lines) instead of ending quietly. Measured with ``bench/stop_dumps.py``
(30 stand-in trials that trace tf.data functions in one thread and report from another,
each stopped after its first result): 6 dumps without what follows, none with it.

So the training ends cooperatively: a stop is requested (a report raised, or the process
is exiting), the loop ends at its next compiled call (trainables.train), and the process
does not go on exiting until it has, for at most ``STOP_WAIT_S``.
"""

from __future__ import annotations

import atexit
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)

# The longest the training may take to reach the end of its compiled call: by default a
# call is a whole epoch (search.config: resources.steps_per_execution).
STOP_WAIT_S = 120.0


@contextmanager
def ends_before_exit(stop: threading.Event, wait_s: float = STOP_WAIT_S) -> Iterator[None]:
    """Run the training in this block; a process exiting meanwhile sets ``stop`` and waits
    (at most ``wait_s``) for the block to end before it shuts the interpreter down."""
    ended = threading.Event()

    def wait_for_training() -> None:
        stop.set()
        if not ended.wait(wait_s):
            log.warning("the trial's training did not end within %.0f s of its process exiting; "
                        "it exits anyway, and TensorFlow may print a crash dump", wait_s)

    atexit.register(wait_for_training)
    try:
        yield
    finally:
        ended.set()
        atexit.unregister(wait_for_training)
