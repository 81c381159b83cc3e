"""EfficientNet backbones by name: pure facts, no TensorFlow import."""

from __future__ import annotations

# Native ImageNet resolution of each EfficientNet (Tan & Le 2019, table 1; the sizes
# keras.applications builds them at). RECIPE.md section 1 resizes CIFAR's 32 px to these.
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

BACKBONES: tuple[str, ...] = tuple(NATIVE_RESOLUTION)


def input_resolution(backbone: str, override: int | None = None) -> int:
    """Side in pixels that the model resizes its input to.

    Args:
        backbone: one of ``BACKBONES``.
        override: a configured size (small machines use 32); None for the native size.

    Returns:
        The side in pixels.
    """
    if backbone not in NATIVE_RESOLUTION:
        raise ValueError(f"backbone must be one of {list(BACKBONES)}, got {backbone!r}")
    return override if override is not None else NATIVE_RESOLUTION[backbone]


def application_name(backbone: str) -> str:
    """The keras.applications constructor name, e.g. ``EfficientNetB3``."""
    if backbone not in NATIVE_RESOLUTION:
        raise ValueError(f"backbone must be one of {list(BACKBONES)}, got {backbone!r}")
    return f"EfficientNet{backbone}"
