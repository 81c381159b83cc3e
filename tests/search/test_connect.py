"""No search hangs on a Ray that is gone: a stale address file, an address nothing answers.

Each test's Ray (when one starts) lives in a temporary directory of its own
(``RAY_TMPDIR``), so the address file it reads and writes is the test's, never the
machine's.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

import pytest

from search.connect import GCS_WAIT_S

pytestmark = pytest.mark.slow

DEAD = "127.0.0.1:9"  # the discard port: nothing listens there


@pytest.fixture
def ray_tmpdir():
    path = tempfile.mkdtemp(prefix="rt-", dir="/tmp")  # short: Ray's socket paths must fit
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_a_stale_address_file_does_not_capture_a_local_search(ray_tmpdir):
    """A head that died without ``ray stop`` leaves Ray's address file behind; plain
    ``ray.init()`` joins it and retries for minutes. The search starts its own Ray."""
    os.makedirs(f"{ray_tmpdir}/ray")
    with open(f"{ray_tmpdir}/ray/ray_current_cluster", "w") as out:
        out.write(DEAD)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["RAY_TMPDIR"] = ray_tmpdir
    code = ("import ray; from search.connect import connect; connect(); "
            "print('connected to', ray.get_runtime_context().gcs_address, flush=True); ray.shutdown()")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    (address,) = re.findall(r"^connected to (\S+)$", done.stdout, re.MULTILINE)
    assert address != DEAD and address.startswith("127.0.0.1:"), address


def test_an_address_nothing_answers_ends_the_search_with_a_clear_error(tmp_path, ray_tmpdir):
    config = tmp_path / "config.yaml"
    config.write_text(json.dumps({
        "data": {"dataset": "digits", "image_size": 32},
        "space": {"backbones": ["B0"]},
        "recipe": {"weights": "none"},
        "search": {"name": "nowhere"},
        "storage": {"path": str(tmp_path / "experiments")},
    }))
    env = {**os.environ, "RAY_ADDRESS": DEAD, "RAY_TMPDIR": ray_tmpdir}
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "search", "run", "--config", str(config), "--smoke-test"],
                          env=env, capture_output=True, text=True, timeout=120)
    waited = time.monotonic() - started
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-3000:]
    assert f"RAY_ADDRESS={DEAD}: no Ray cluster answers there (tried for {GCS_WAIT_S:g} s" in done.stderr
    assert "unset RAY_ADDRESS" in done.stderr and "Traceback" not in done.stderr
    assert waited < 60, waited  # the bound; a hang would run into the 120 s above
    lease = tmp_path / "experiments" / "nowhere-smoke" / "driver.lease"
    assert lease.read_bytes() == b""  # released on the way out
