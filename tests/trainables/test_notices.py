"""TensorFlow's start-up notices stay off a trial's console; everything else written
to stderr while TensorFlow loads still shows, in order, even when the import fails.
(That a trial process of a real search prints none: tests/search/test_faults.py.)"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from trainables.notices import is_startup_notice

REPO = Path(__file__).resolve().parents[2]

ABSL = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"
ONEDNN = ("I0000 00:00:1796176170.792390   26907 port.cc:153] oneDNN custom operations are on. You may see "
          "slightly different numerical results due to floating-point round-off errors from different "
          "computation orders. To turn them off, set the environment variable `TF_ENABLE_ONEDNN_OPTS=0`.")


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO, capture_output=True,
                          text=True, timeout=120)


def test_held_stderr_is_written_back_without_the_notices_in_order_on_error_too():
    done = run_python(f"""
        import os
        from trainables.notices import startup_notices_dropped
        try:
            with startup_notices_dropped():
                os.write(2, b{ABSL!r} + b"\\nfirst line\\n" + b{ONEDNN!r} + b"\\n")
                print("second line", file=__import__("sys").stderr)
                raise RuntimeError("the import failed")
        except RuntimeError:
            pass
        os.write(2, b"after\\n")
        """)
    assert done.returncode == 0, done.stderr
    assert done.stderr == "first line\nsecond line\nafter\n"


def test_tensorflow_imported_through_a_trials_first_call_prints_no_notice():
    bare = run_python("import tensorflow")
    # TensorFlow prints them on a bare import (so the check below can see them)
    assert sum(is_startup_notice(line) for line in bare.stderr.splitlines()) >= 2, bare.stderr
    quiet = run_python("""
        from trainables.strategy import limit_threads
        limit_threads(1)
        import keras, tensorflow
        """)
    assert quiet.returncode == 0, quiet.stderr
    assert not any(is_startup_notice(line) for line in quiet.stderr.splitlines()), quiet.stderr
