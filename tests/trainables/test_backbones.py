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
