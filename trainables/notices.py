"""TensorFlow's start-up notices, kept off the console of every trial process.

TensorFlow 2.21 logs two lines through absl's C++ logging as it loads (twice per
import, here): "WARNING: All log messages before absl::InitializeLog() ..." and
"oneDNN custom operations are on ...". ``TF_CPP_MIN_LOG_LEVEL`` does not silence them
(checked: 2 and 3 alike), nor does ``TF_ENABLE_ONEDNN_OPTS=1``, so a search printed both
pairs once per trial process. Here the process's stderr (file descriptor 2, where native
code writes) goes to a temporary file while TensorFlow loads, and everything it received
is written back afterwards except those notices: a Python error during the import still
shows. (Other threads' lines in that window, Ray's for one, come a few seconds late; a
native crash during the import would take its message with the held file.)
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType

STARTUP_NOTICES = (
    "All log messages before absl::InitializeLog() is called are written to STDERR",
    "oneDNN custom operations are on",
)


def is_startup_notice(line: str) -> bool:
    return any(notice in line for notice in STARTUP_NOTICES)


@contextmanager
def startup_notices_dropped() -> Iterator[None]:
    """Within the block, what the process writes to stderr is held back; on leaving it
    (normally or by an exception) every held line but TensorFlow's start-up notices is
    written to stderr, in order."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            kept = [line for line in held.read().decode(errors="replace").splitlines(keepends=True)
                    if not is_startup_notice(line)]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()


def import_tensorflow() -> ModuleType:
    """``import tensorflow`` without its start-up notices (the first import loads it;
    later ones return the loaded module and print nothing anyway)."""
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    with startup_notices_dropped():
        import tensorflow

    return tensorflow
