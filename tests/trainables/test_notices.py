"""TensorFlow's start-up notices stay off a trial's console; everything else written
to stderr while TensorFlow loads still shows, in order, even when the import fails.
(That a trial process of a real search prints none: tests/search/test_faults.py.)"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from trainables.notices import STARTUP_NOTICES, is_startup_notice

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
    # Which notices a bare import prints depends on the machine: oneDNN's only where its
    # optimisations are on by default (not on an AMD EPYC without AVX-512, say), absl's on
    # every machine seen. The check below needs at least one printed here to remove.
    printed = [line for line in bare.stderr.splitlines() if is_startup_notice(line)]
    assert printed, f"a bare import printed none of {STARTUP_NOTICES} on this machine:\n{bare.stderr}"
    quiet = run_python("""
        from trainables.strategy import limit_threads
        limit_threads(1)
        import keras, tensorflow
        """)
    assert quiet.returncode == 0, quiet.stderr
    assert not any(is_startup_notice(line) for line in quiet.stderr.splitlines()), quiet.stderr


def test_a_users_own_keras_backend_does_not_reach_the_trials(tmp_path):
    """Keras 3 reads its backend from KERAS_BACKEND or ~/.keras/keras.json: a user whose
    default is JAX still gets TensorFlow in every module of trainables."""
    (tmp_path / ".keras").mkdir()
    (tmp_path / ".keras" / "keras.json").write_text('{"backend": "jax"}')
    code = "import trainables.model, keras; print(keras.backend.backend())"
    for env in ({"HOME": str(tmp_path)}, {"HOME": str(tmp_path), "KERAS_BACKEND": "jax"}):
        done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                              env={**os.environ, **env})
        assert done.returncode == 0, done.stderr[-2000:]
        assert done.stdout.split() == ["tensorflow"], env
