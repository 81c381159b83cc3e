"""Job submission for real: a Ray head on 127.0.0.1 with token authentication, a small
search submitted by `hpsearch cluster submit` and by the README's `ray job submit` line."""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from support import REPO, free_port, stop_process_groups

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent


def tiny_config(storage: Path, name: str) -> str:
    return f"""
data: {{dataset: digits, image_size: 32, max_train_examples: 64}}
space:
  backbones: [Tiny]
  warmup_epochs: {{low: 0, high: 0}}
  max_lr: {{low: 0.01, high: 0.02, log: true}}
recipe: {{weights: none, flip: false, batch_size: 16, head_epochs: 1, flat_epochs: 0, cooldown_epochs: 1}}
search: {{name: {name}, num_trials: 1, max_concurrent_trials: 1, grace_epochs: 1}}
storage: {{path: {storage}}}
"""


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A user's project directory: the packages plus their configs."""
    root = tmp_path_factory.mktemp("project")
    for name in ("search", "trainables", "cluster", "configs"):
        shutil.copytree(REPO / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    storage = tmp_path_factory.mktemp("storage")
    (root / "configs" / "tiny-a.yaml").write_text(tiny_config(storage, "via-hpsearch"))
    (root / "configs" / "tiny-b.yaml").write_text(tiny_config(storage, "via-ray-job-submit"))
    return root, storage


@pytest.fixture(scope="module")
def head():
    """`ray start --head --block` in its own process group, stopped by that group's id."""
    token = secrets.token_hex(32)
    env = {
        **os.environ,
        "PATH": f"{BIN}:{os.environ['PATH']}",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": token,
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    env.pop("RAY_ADDRESS", None)
    gcs, dashboard = free_port(), free_port()
    temp_dir = tempfile.mkdtemp(prefix="rayh-", dir="/tmp")
    process = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", "--num-cpus=2", f"--port={gcs}",
         "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}", "--node-ip-address=127.0.0.1",
         f"--temp-dir={temp_dir}", "--include-dashboard=true"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    address = f"http://127.0.0.1:{dashboard}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"{address}/api/version", timeout=2)
            break
        except urllib.error.HTTPError:  # any HTTP answer (401 without a token) means it is up
            break
        except OSError:
            if process.poll() is not None:
                pytest.fail("ray start --head exited")
            time.sleep(1)
    else:
        os.killpg(process.pid, signal.SIGTERM)
        pytest.fail("the Ray dashboard did not come up")
    yield address, env
    stop_process_groups([process])
    shutil.rmtree(temp_dir, ignore_errors=True)


def run(args, cwd, env, timeout=900):
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def trials_table(storage: Path, name: str):
    return pq.read_table(storage / name / "trials.parquet").to_pylist()


def test_hpsearch_cluster_submit_follow(head, project):
    address, env = head
    root, storage = project
    done = run(
        [str(BIN / "hpsearch"), "cluster", "submit", "--config", "configs/tiny-a.yaml", "--address", address, "--follow"],
        cwd=root, env=env,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    job_id = re.search(r"submitted job (\S+)", done.stdout).group(1)
    assert "best validation accuracy:" in done.stdout  # the search's own output, streamed
    assert f"job {job_id}: SUCCEEDED" in done.stdout
    assert len(trials_table(storage, "via-hpsearch")) == 1

    logs = run([str(BIN / "hpsearch"), "cluster", "logs", job_id, "--address", address], cwd=root, env=env)
    assert logs.returncode == 0 and "best validation accuracy:" in logs.stdout
    stop = run([str(BIN / "hpsearch"), "cluster", "stop", job_id, "--address", address], cwd=root, env=env)
    assert stop.returncode == 0 and "already finished" in stop.stdout


def test_readme_ray_job_submit_line(head, project):
    address, env = head
    root, storage = project
    readme = (REPO / "README.md").read_text()
    line = next(l.strip() for l in readme.splitlines() if l.strip().startswith("ray job submit --address"))
    command = line.replace("http://localhost:8265", address).replace("configs/cifar10.yaml", "configs/tiny-b.yaml")
    assert command != line
    done = run(["bash", "-c", command], cwd=root, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "succeeded" in (done.stdout + done.stderr).lower()
    assert len(trials_table(storage, "via-ray-job-submit")) == 1


def test_missing_token_is_one_clear_line(head, project):
    address, env = head
    root, _ = project
    no_token = {k: v for k, v in env.items() if k not in ("RAY_AUTH_TOKEN",)}
    no_token["HOME"] = str(root)  # and no ~/.ray/auth_token to fall back on
    done = run(
        [str(BIN / "hpsearch"), "cluster", "submit", "--config", "configs/tiny-a.yaml", "--address", address],
        cwd=root, env=no_token, timeout=120,
    )
    assert done.returncode == 2
    assert "token" in done.stderr and "RAY_AUTH_TOKEN" in done.stderr
    assert "Traceback" not in done.stderr


def test_unreachable_dashboard_is_one_clear_line(project):
    root, _ = project
    done = run(
        [str(BIN / "hpsearch"), "cluster", "submit", "--config", "configs/tiny-a.yaml",
         "--address", f"http://127.0.0.1:{free_port()}"],
        cwd=root, env={**os.environ, "RAY_AUTH_MODE": "disabled"}, timeout=120,
    )
    assert done.returncode == 2
    assert "cannot reach the Ray dashboard" in done.stderr and "port-forward" in done.stderr


def test_bad_config_is_refused_before_upload(project):
    root, _ = project
    (root / "configs" / "bad.yaml").write_text("search: {num_trails: 3}\n")
    done = run([str(BIN / "hpsearch"), "cluster", "submit", "--config", "configs/bad.yaml"], cwd=root, env=os.environ, timeout=120)
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
