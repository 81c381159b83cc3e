"""A backbone family for tests of the search's machinery: a four-block CNN that traces
and trains in a second or two, where EfficientNet-B0 takes about 30 s to trace its
training step on this machine (each trial process traces its own). Tests that check
the search, its storage, faults and clusters use it; tests of the model and its weights
use the real backbones.

Registered by tests/conftest.py through ``HPSEARCH_BACKBONE_MODULES``, the way a user adds
a family kept outside hpsearch (trainables.backbones), so every process the tests start
(drivers, Ray nodes, trial workers) finds it.
"""

from __future__ import annotations

from trainables.backbones.base import Backbone

# Its step's memory, in memory_table.json's format (so `hpsearch plan` sizes its trials):
# a generous upper bound for 32-64 filters at these sides, not a measurement.
MEMORY = {"small": {"side": 32, "fixed_mib": 50.0, "per_image_mib": 0.5},
          "native": {"side": 64, "fixed_mib": 50.0, "per_image_mib": 2.0}}


def build(weights, input_shape):
    import keras

    if weights == "imagenet":
        raise ValueError("the tiny test backbone has no ImageNet weights (recipe.weights: none or a file)")
    inputs = keras.Input(input_shape)
    x = keras.layers.Rescaling(1 / 255.0, name="stem_rescale")(inputs)  # takes 0-255, as the contract says
    for block, (filters, stride) in enumerate([(16, 1), (32, 2), (32, 2), (64, 1)], start=1):
        name = "stem" if block == 1 else f"block{block - 1}"
        last = block == 4
        x = keras.layers.Conv2D(filters, 3, strides=stride, padding="same", use_bias=last, name=f"{name}_conv")(x)
        if not last:  # the top block's features are not normalised: a rate far too high blows them up
            x = keras.layers.BatchNormalization(name=f"{name}_bn")(x)
        x = keras.layers.Activation("relu", name=f"{name}_relu")(x)
    model = keras.Model(inputs, x, name="tiny")
    if weights is not None:  # a weights file it saved: "pretrained", so BatchNormalization stays frozen
        model.load_weights(weights)
    return model


BACKBONES = (Backbone("Tiny", "tiny", 32, build, memory=MEMORY),)
