"""The backbone registry, and a contract every registered backbone keeps."""

import pytest

from trainables import backbones
from trainables.backbones import BACKBONES, input_resolution
from trainables.errors import InputError


def test_native_resolutions_follow_the_recipe():
    sizes = [input_resolution(b) for b in BACKBONES if BACKBONES[b].family == "efficientnet"]
    assert sizes == [224, 240, 260, 300, 380, 456, 528, 600]
    assert input_resolution("B3", override=32) == 32


def test_unknown_backbone():
    with pytest.raises(InputError, match="backbone must be one of"):
        input_resolution("B8")


@pytest.fixture(params=list(BACKBONES))
def backbone(request):
    return BACKBONES[request.param]


def test_each_backbone_declares_what_the_model_needs(backbone):
    assert backbones.get(backbone.name) is backbone
    assert 32 <= backbone.native_resolution <= 1024
    assert backbone.family and callable(backbone.build)


@pytest.fixture(params=sorted({b.family for b in BACKBONES.values()}))
def family_smallest(request):
    return next(b for b in BACKBONES.values() if b.family == request.param)


@pytest.mark.slow
def test_each_family_builds_a_headless_feature_extractor(family_smallest):
    """The family's smallest member, built at 32 px with random weights: a Keras model
    from images to a feature map (the classifier adds pooling and its own head)."""
    import numpy as np

    model = family_smallest.build(None, (32, 32, 3))
    features = model(np.zeros((2, 32, 32, 3), "float32"))
    assert len(features.shape) == 4 and features.shape[0] == 2
    check_backbone_contract(model)


def check_backbone_contract(model) -> None:
    """What the rest relies on (trainables.backbones.base.Backbone): it takes 0-255
    images, so it rescales them itself before its first convolution (the augmentation
    works in 0-255); and its layers are named <block>_<part>, so partial fine-tuning
    finds its blocks (trainables.model.top_blocks) in the order they run."""
    import keras

    from trainables.model import top_blocks

    convolutions = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D)
    first_conv = next(i for i, layer in enumerate(model.layers) if isinstance(layer, convolutions))
    assert any(isinstance(layer, (keras.layers.Rescaling, keras.layers.Normalization))
               for layer in model.layers[:first_conv]), "no rescaling of 0-255 input before the first convolution"
    blocks = top_blocks(model, 1.0)
    assert len(blocks) >= 2, f"layers not named <block>_<part>: found blocks {blocks}"
    convolved = {layer.name.split("_", 1)[0] for layer in model.layers if isinstance(layer, convolutions)}
    assert set(blocks) == convolved
    assert top_blocks(model, 0.5) == blocks[-len(top_blocks(model, 0.5)):] and len(top_blocks(model, 0.5)) < len(blocks)


def run_hpsearch(env_value: str | None, *args: str):
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != backbones.EXTRA_MODULES}
    if env_value is not None:
        env[backbones.EXTRA_MODULES] = env_value
    return subprocess.run([sys.executable, "-m", "search", *args], env=env, capture_output=True, text=True, timeout=120)


def test_a_family_outside_the_package_is_registered_by_the_environment(tmp_path):
    """tests/conftest.py registers the tiny test backbone this way; without the variable
    the registry holds the package's own families only, and a module that cannot be
    imported is bad input naming the variable and the fix."""
    assert BACKBONES["Tiny"].family == "tiny"
    config = tmp_path / "config.yaml"
    config.write_text("space: {backbones: [Tiny]}\n")
    without = run_hpsearch(None, "plan", "--config", str(config))
    assert without.returncode == 2 and "space.backbones[0]" in without.stderr and "'Tiny'" in without.stderr
    broken = run_hpsearch("no_such_family", "plan", "--config", str(config))
    assert broken.returncode == 2, broken.stderr[-2000:]
    assert "HPSEARCH_BACKBONE_MODULES names 'no_such_family', which cannot be imported" in broken.stderr
    assert "PYTHONPATH" in broken.stderr and "Traceback" not in broken.stderr
    registered = run_hpsearch("tiny_backbone", "plan", "--config", str(config))
    assert registered.returncode == 0, registered.stderr[-2000:]
    assert "Tiny" in registered.stdout
