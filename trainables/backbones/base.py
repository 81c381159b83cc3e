"""What a backbone family declares: pure facts plus a lazy constructor."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

# build(weights, input_shape) -> a Keras model without its classification top. weights is
# None (random initialisation) or what the family's loader takes ("imagenet", a file).
BuildFn = Callable[[Any, tuple[int, int, int]], Any]


@dataclass(frozen=True)
class Backbone:
    """One searchable backbone.

    Attributes:
        name: what configs and trial tables call it (``B0``); unique across families.
        family: the family module it comes from (``efficientnet``).
        native_resolution: the side in pixels it was pretrained at; the model resizes its
            input to this unless ``data.image_size`` overrides it.
        build: constructs it; imports Keras only when called.
        imagenet_file: the file of its pretrained (ImageNet, no top) weights, as the
            family's loader names it; None when the family has none.
        imagenet_url: where that file is published.
        make_imagenet_file: writes that file at a local path from something installed
            (a converted checkpoint); None when it is downloaded from ``imagenet_url``.
        memory: its step's memory measurement in ``trainables/memory_table.json``'s
            per-backbone format (``{"small": {...}, "native": {...}}``), for a family kept
            outside this package; None reads the table.

    A backbone takes images in 0-255 (it rescales them itself, before its first
    convolution: the augmentation works in 0-255) and names its layers
    ``<block>_<part>`` (``stem_conv``, ``block3b_dwconv``): partial fine-tuning
    unfreezes whole blocks by that prefix (:func:`trainables.model.top_blocks`).
    ``tests/trainables/test_backbones.py`` checks both for every family.
    """

    name: str
    family: str
    native_resolution: int
    build: BuildFn
    imagenet_file: str | None = None
    imagenet_url: str | None = None
    make_imagenet_file: Callable[[str], Any] | None = None
    memory: Mapping[str, Mapping[str, float]] | None = None
