"""EfficientNet B0-B7 from ``keras.applications`` (Tan & Le 2019)."""

from __future__ import annotations

import functools

from trainables.backbones.base import Backbone

# Native ImageNet resolution of each EfficientNet (Tan & Le 2019, table 1; the sizes
# keras.applications builds them at). docs/recipe.md section 1 resizes CIFAR's 32 px to these.
NATIVE_RESOLUTION: dict[str, int] = {
    "B0": 224,
    "B1": 240,
    "B2": 260,
    "B3": 300,
    "B4": 380,
    "B5": 456,
    "B6": 528,
    "B7": 600,
}


def _build(name: str, weights, input_shape):
    import keras  # deferred: importing Keras starts TensorFlow

    constructor = getattr(keras.applications, f"EfficientNet{name}")
    return constructor(include_top=False, weights=weights, input_shape=input_shape)


# keras.applications publishes its ImageNet weights here, one file per size (the
# "_notop" files are the backbones without the classification top).
WEIGHTS_URL = "https://storage.googleapis.com/keras-applications/"

BACKBONES = tuple(
    Backbone(name, "efficientnet", side, functools.partial(_build, name),
             imagenet_file=f"efficientnet{name.lower()}_notop.h5",
             imagenet_url=f"{WEIGHTS_URL}efficientnet{name.lower()}_notop.h5")
    for name, side in NATIVE_RESOLUTION.items()
)
