"""`hpsearch cluster` against a dashboard that is not there or never answers, and a bad
config: each one clear line, exit 2, before anything is uploaded. (Submitting, following,
stopping and a missing token, against a cluster with token authentication, are in
test_miniature.py.)"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from support import REPO, free_port

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent


def run(args, cwd, env, timeout=900):
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_unreachable_dashboard_is_one_clear_line():
    done = run(
        [str(BIN / "hpsearch"), "cluster", "submit", "--config", "configs/local.yaml",
         "--address", f"http://127.0.0.1:{free_port()}"],
        cwd=REPO, env={**os.environ, "RAY_AUTH_MODE": "disabled"}, timeout=120,
    )
    assert done.returncode == 2
    assert "cannot reach the Ray dashboard" in done.stderr and "port-forward" in done.stderr


def test_bad_config_is_refused_before_upload(tmp_path):
    (tmp_path / "bad.yaml").write_text("search: {num_trails: 3}\n")
    done = run([str(BIN / "hpsearch"), "cluster", "submit", "--config", str(tmp_path / "bad.yaml")], cwd=REPO,
               env=os.environ, timeout=120)
    assert done.returncode == 2 and "search.num_trails" in done.stderr


def test_the_job_command_is_quoted_and_outputs_stay_home():
    import shlex

    from cluster.jobs import EXCLUDES, search_entrypoint

    command = search_entrypoint("configs/my search.yaml", ["--resume"])
    assert shlex.split(command) == ["python", "-m", "search", "run", "--config", "configs/my search.yaml", "--resume"]
    assert {"*.whl", ".venv/", "experiments/", ".git/"} <= set(EXCLUDES)


def test_a_dashboard_that_never_answers_is_one_clear_line():
    """A dashboard that accepts connections and never answers (a hung head, a stale
    port-forward) ends the command within its bound, naming the address."""
    from cluster.jobs import DASHBOARD_TIMEOUT_S

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # the kernel accepts; nothing ever reads or answers
        address = f"http://127.0.0.1:{silent.getsockname()[1]}"
        started = time.monotonic()
        done = run([str(BIN / "hpsearch"), "cluster", "logs", "raysubmit_x", "--address", address],
                   cwd=REPO, env={**os.environ, "RAY_AUTH_MODE": "disabled"}, timeout=120)
        waited = time.monotonic() - started
    assert done.returncode == 2, done.stderr[-2000:]
    assert f"the Ray dashboard at {address} did not answer within {DASHBOARD_TIMEOUT_S:g} s" in done.stderr
    assert "Traceback" not in done.stderr
    assert waited < 60, waited  # bounded (not a speed goal: a hang would run into the 120 s above)
