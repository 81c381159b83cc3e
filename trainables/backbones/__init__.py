"""The backbone registry: every family module in this package, by backbone name.

A family is one module here that defines ``BACKBONES``, a tuple of
:class:`~trainables.backbones.base.Backbone`. Modules are found by listing the package,
so adding a family is adding its module; config validation, the CLI and the report read
the names from :data:`BACKBONES`. Nothing here imports TensorFlow.
"""

from __future__ import annotations

import importlib
import pkgutil

from trainables.backbones.base import Backbone
from trainables.errors import InputError


def _discover() -> dict[str, Backbone]:
    found: dict[str, Backbone] = {}
    for module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
        if module == "base":
            continue
        for backbone in importlib.import_module(f"{__name__}.{module}").BACKBONES:
            if backbone.name in found:
                raise RuntimeError(f"backbone {backbone.name!r} is declared by two families")  # a bug here
            found[backbone.name] = backbone
    return found


BACKBONES: dict[str, Backbone] = _discover()
# What a config's space searches when it names no backbones: EfficientNet B0-B7 (other
# families are chosen by name, e.g. the offline default's Lite0-2).
DEFAULT_FAMILY = "efficientnet"
DEFAULT_SPACE: tuple[str, ...] = tuple(name for name, b in BACKBONES.items() if b.family == DEFAULT_FAMILY)


def get(name: str) -> Backbone:
    """The backbone called ``name``.

    Raises:
        InputError: no family declares it; the message lists the known names.
    """
    if name not in BACKBONES:
        raise InputError(f"backbone must be one of {', '.join(BACKBONES)}, got {name!r}")
    return BACKBONES[name]


def input_resolution(name: str, override: int | None = None) -> int:
    """Side in pixels the model resizes its input to: ``override`` or the native size."""
    backbone = get(name)
    return override if override is not None else backbone.native_resolution


__all__ = ["BACKBONES", "DEFAULT_SPACE", "Backbone", "get", "input_resolution"]
