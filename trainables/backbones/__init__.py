"""The backbone registry: every family module in this package, by backbone name.

A family is one module here that defines ``BACKBONES``, a tuple of
:class:`~trainables.backbones.base.Backbone`. Modules are found by listing the package,
so adding a family is adding its module; config validation, the CLI and the report read
the names from :data:`BACKBONES`. Nothing here imports TensorFlow.

A family kept outside this package is named in the environment variable
``HPSEARCH_BACKBONE_MODULES`` (importable module names, comma-separated), set wherever
hpsearch runs: the driver and every Ray node, since trials build their models there.
"""

from __future__ import annotations

import importlib
import os
import pkgutil

from trainables.backbones.base import Backbone
from trainables.errors import InputError

EXTRA_MODULES = "HPSEARCH_BACKBONE_MODULES"


def _families() -> list:
    """This package's family modules, then those named in :data:`EXTRA_MODULES`."""
    here = [importlib.import_module(f"{__name__}.{m.name}")
            for m in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name) if m.name != "base"]
    extra = [name.strip() for name in os.environ.get(EXTRA_MODULES, "").split(",") if name.strip()]
    return here + [_import_extra(name) for name in extra]


def _import_extra(module: str):
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise InputError(f"{EXTRA_MODULES} names {module!r}, which cannot be imported ({error}): "
                         "put its directory on PYTHONPATH or remove it from the variable") from None


def _discover() -> dict[str, Backbone]:
    found: dict[str, Backbone] = {}
    for module in _families():
        declared = getattr(module, "BACKBONES", None)
        if declared is None:
            raise InputError(f"backbone module {module.__name__!r} defines no BACKBONES (a tuple of Backbone)")
        for backbone in declared:
            if backbone.name in found:
                raise InputError(f"backbone {backbone.name!r} is declared by two families "
                                 f"(the second in {module.__name__})")
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


__all__ = ["BACKBONES", "DEFAULT_SPACE", "EXTRA_MODULES", "Backbone", "get", "input_resolution"]
