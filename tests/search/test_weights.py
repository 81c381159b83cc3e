"""Pretrained weights: fetched once by the driver into storage, read from there by trials,
and a clear, fast refusal when they cannot be had."""

import subprocess
import sys
import time

import pytest

from search.weights import stage_imagenet_weights
from trainables.errors import InputError
from trainables.weights import local_copy, staged_uri


def test_offline_machine_exits_2_within_a_minute_naming_the_weights(tmp_path):
    """This machine cannot reach storage.googleapis.com: the search stops before Ray or
    any trial starts, naming each backbone's file and what to do."""
    config = tmp_path / "config.yaml"
    config.write_text(f"space: {{backbones: [B0, B3]}}\nstorage: {{path: {tmp_path / 'exp'}}}\n")
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "search", "run", "--config", str(config)],
                          capture_output=True, text=True, timeout=120)
    elapsed = time.monotonic() - started
    assert done.returncode == 2, done.stderr[-2000:]
    assert elapsed < 60
    for name, file in (("B0", "efficientnetb0_notop.h5"), ("B3", "efficientnetb3_notop.h5")):
        assert f"{name} ({file} from https://storage.googleapis.com/keras-applications/{file}" in done.stderr
    assert f"Put the files in {tmp_path / 'exp'}/weights/" in done.stderr
    assert "Traceback" not in done.stderr and "Trial" not in done.stdout


@pytest.fixture(params=["local", "gs"])
def storage(request, tmp_path):
    if request.param == "gs":
        request.getfixturevalue("fake_gcs")
        return "gs://hpsearch-test/weights-test"
    return str(tmp_path / "storage")


def test_fetched_once_then_read_from_storage(storage, tmp_path, monkeypatch):
    fetched = []

    def fake_fetch(url, destination):  # the published file, as the network would give it
        fetched.append(url)
        with open(destination, "wb") as out:
            out.write(b"weights of " + url.encode())

    staged = stage_imagenet_weights(storage, ("B0", "B1"), fetch_file=fake_fetch)
    assert staged == [staged_uri(storage, "B0"), staged_uri(storage, "B1")]
    assert len(fetched) == 2
    assert stage_imagenet_weights(storage, ("B0", "B1"), fetch_file=fake_fetch) == staged
    assert len(fetched) == 2  # already staged: not fetched again

    monkeypatch.setattr("trainables.weights.WEIGHTS_CACHE", tmp_path / "cache")
    local = local_copy(storage, "B1")
    assert open(local, "rb").read() == b"weights of " + fetched[1].encode()


def test_a_trial_refuses_weights_that_were_never_staged(tmp_path):
    with pytest.raises(InputError, match="ImageNet weights of B2 are not staged"):
        local_copy(str(tmp_path), "B2")


@pytest.mark.slow
def test_the_model_loads_the_staged_file(tmp_path, monkeypatch):
    """A weights file put in storage (a stand-in for the ImageNet file, which cannot be
    downloaded here) is what the backbone of a trial's model holds."""
    import keras
    import numpy as np

    from trainables.model import ModelSpec, backbone_of, build_model
    from trainables.params import Hyperparams

    import h5py
    from keras.src.legacy.saving import legacy_h5_format

    stand_in = keras.applications.EfficientNetB0(include_top=False, weights=None, input_shape=(32, 32, 3))
    (tmp_path / "weights").mkdir()
    # the published files are in the legacy HDF5 weights format, which Keras reads by name
    with h5py.File(tmp_path / "weights" / "efficientnetb0_notop.h5", "w") as handle:
        legacy_h5_format.save_weights_to_hdf5_group(handle, stand_in)
    monkeypatch.setattr("trainables.weights.WEIGHTS_CACHE", tmp_path / "cache")
    model = build_model(ModelSpec(Hyperparams("B0"), 10, weights="imagenet", image_size=32, weights_root=str(tmp_path)))
    for ours, theirs in zip(backbone_of(model).weights, stand_in.weights):
        assert np.array_equal(ours.numpy(), theirs.numpy())
