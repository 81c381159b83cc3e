"""The declared search space as Tune domains: a declaration, no computation."""

from __future__ import annotations

from typing import Any

from ray import tune

from search.config import FloatRange, IntRange, SpaceConfig


def _float(r: FloatRange) -> Any:
    return tune.loguniform(r.low, r.high) if r.log else tune.uniform(r.low, r.high)


def _int(r: IntRange) -> Any:
    # tune.randint excludes its upper bound; the config's ranges are closed.
    return tune.randint(r.low, r.high + 1)


def param_space(space: SpaceConfig) -> dict[str, Any]:
    """Tune domains for the six searched axes (names match ``trainables.spec.SEARCHED``)."""
    return {
        "backbone": tune.choice(list(space.backbones)),
        "cutout_fraction": _float(space.cutout_fraction),
        "cutout_count": _int(space.cutout_count),
        "dropout": _float(space.dropout),
        "warmup_epochs": _int(space.warmup_epochs),
        "max_lr": _float(space.max_lr),
    }
