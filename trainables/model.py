"""The classifier: an EfficientNet backbone with the input resized inside the model.

docs/recipe.md section 1: CIFAR's 32 px images are resized inside the model to the
backbone's resolution, the backbone is called with ``training=False`` so its
BatchNormalization layers stay in inference mode (also after unfreezing: fine-tuning
must not overwrite the pretrained statistics, docs/recipe.md section 5), and the head is
GlobalAveragePooling -> Dropout -> Dense -> softmax.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import keras

from trainables import backbones
from trainables.params import Hyperparams
from trainables.spec import batchnorm_frozen
from trainables.weights import local_copy

BACKBONE_LAYER = "backbone"


@dataclass(frozen=True)
class ModelSpec:
    """What :func:`build_model` and :func:`set_phase` need."""

    hp: Hyperparams  # the trial's values: backbone, dropout, ...
    num_classes: int
    # "imagenet", "none", or a path to a backbone weights file.
    weights: str = "imagenet"
    # Resize target; None means the backbone's native resolution.
    image_size: int | None = None
    input_side: int = 32
    # Where "imagenet" weights are staged (trainables.weights); None: Keras downloads.
    weights_root: str | None = None

    @property
    def freeze_batchnorm(self) -> bool:
        return batchnorm_frozen(self.weights)


def build_model(spec: ModelSpec) -> keras.Model:
    """Build the classifier with its backbone frozen (phase 1).

    Args:
        spec: backbone name, classes, dropout, weights and resize target.

    Returns:
        A Keras model mapping (B, 32, 32, 3) images in 0-255 to class probabilities. Its
        backbone is the layer named ``backbone``.
    """
    hp = spec.hp
    if not 0 <= hp.dropout < 1:
        raise ValueError(f"dropout must be in [0, 1), got {hp.dropout}")
    if spec.num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {spec.num_classes}")
    side = backbones.input_resolution(hp.backbone, spec.image_size)
    weights = None if spec.weights == "none" else spec.weights
    if weights == "imagenet" and spec.weights_root is not None:
        weights = local_copy(spec.weights_root, hp.backbone)  # staged by the driver
    base = backbones.get(hp.backbone).build(weights, (side, side, 3))
    base.name = BACKBONE_LAYER
    if not spec.freeze_batchnorm:
        _speed_up_batchnorm(base)
    base.trainable = False

    inputs = keras.Input(shape=(spec.input_side, spec.input_side, 3), name="image")
    x = inputs
    if side != spec.input_side:
        x = keras.layers.Resizing(side, side, interpolation="bilinear", name="resize")(x)
    # training=False: BatchNormalization in inference mode in both phases; set_phase
    # also freezes those layers, since Keras 3 overrides this flag during training.
    x = base(x, training=False) if spec.freeze_batchnorm else base(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    x = keras.layers.Dropout(hp.dropout, name="dropout")(x)
    # Softmax in float32 even under mixed precision, for a stable loss.
    outputs = keras.layers.Dense(spec.num_classes, activation="softmax", dtype="float32", name="head")(x)
    family = backbones.get(hp.backbone).family
    return keras.Model(inputs, outputs, name=f"{family}_{hp.backbone.lower()}_classifier")


# BatchNormalization momentum for backbones trained from scratch. Keras's 0.99 averages
# over ~100 steps; in a short run from random weights the statistics then lag the
# weights so far that inference-mode predictions collapse to one class (measured on
# digits: 0.6 training accuracy, 0.10 validation accuracy after 12 epochs).
SCRATCH_BATCHNORM_MOMENTUM = 0.9


def _speed_up_batchnorm(backbone: keras.Model) -> None:
    for layer in backbone.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = SCRATCH_BATCHNORM_MOMENTUM


def backbone_of(model: keras.Model) -> keras.Model:
    """The backbone sub-model of a classifier built by :func:`build_model`."""
    return model.get_layer(BACKBONE_LAYER)


def set_phase(model: keras.Model, phase: str, spec: ModelSpec) -> None:
    """Freeze the backbone for ``"head"``; unfreeze it for ``"finetune"``.

    With pretrained weights (``spec.freeze_batchnorm``) the BatchNormalization layers stay frozen when the rest of
    the backbone is unfrozen. ``training=False`` on the backbone call is not enough in
    Keras 3: a Functional model passes its own ``training`` argument to every nested
    layer (``keras/src/models/functional.py``, ``operation_fn``), so ``model(x,
    training=True)`` would update the pretrained statistics. A BatchNormalization layer
    with ``trainable=False`` runs in inference mode whatever ``training`` says (docs/recipe.md
    section 5), as in keras-io's EfficientNet fine-tuning example.

    Unfreezing changes ``trainable_variables``, so the training step must be rebuilt (the
    Keras equivalent of compiling again).
    """
    if phase not in ("head", "finetune"):
        raise ValueError(f"phase must be 'head' or 'finetune', got {phase!r}")
    backbone = backbone_of(model)
    backbone.trainable = phase == "finetune"
    if phase == "finetune" and spec.hp.unfreeze_fraction < 1.0:
        # Partial fine-tuning (docs/recipe.md sections 2 and 5): only the top blocks train.
        kept = set(top_blocks(backbone, spec.hp.unfreeze_fraction))
        for layer in backbone.layers:
            if _block_name(layer) not in kept:
                layer.trainable = False
    if phase == "finetune" and spec.freeze_batchnorm:
        for layer in backbone.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.trainable = False


def _block_name(layer: keras.layers.Layer) -> str:
    # Keras names a block's layers <block>_<part>: stem_conv, block3b_dwconv, top_bn.
    return layer.name.split("_", 1)[0]


def top_blocks(backbone: keras.Model, fraction: float) -> list[str]:
    """The names of the top ``fraction`` of the backbone's blocks (at least one).

    A block is a group of layers sharing a name prefix that holds a convolution (stem,
    block1a ... block7a, top in EfficientNet), in the order the layers run.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"unfreeze_fraction must be in (0, 1], got {fraction}")
    blocks: list[str] = []
    for layer in backbone.layers:
        name = _block_name(layer)
        if isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D)) and name not in blocks:
            blocks.append(name)
    keep = max(1, math.ceil(fraction * len(blocks)))
    return blocks[-keep:]
