"""The declared search space as Tune domains: a declaration, no computation.

One domain per row of the parameter table (``trainables.params.PARAMS``): a range
becomes a uniform or log-uniform domain, a tuple of choices a ``tune.choice``, and a
single value stays a constant that every trial receives. Optuna's distributions come
from these domains through Ray's own converter (:func:`distributions`).
"""

from __future__ import annotations

from typing import Any

from ray import tune
from ray.tune.search.optuna import OptunaSearch

from search.config import SpaceConfig, space_value
from trainables.params import PARAMS, FloatRange, IntRange


def domain(value: Any) -> Any:
    """The Tune domain of one declared space value."""
    if isinstance(value, FloatRange):
        return tune.loguniform(value.low, value.high) if value.log else tune.uniform(value.low, value.high)
    if isinstance(value, IntRange):
        # tune.randint excludes its upper bound; the config's ranges are closed.
        return tune.randint(value.low, value.high + 1)
    if isinstance(value, tuple):
        return tune.choice(list(value))
    return value  # fixed: a constant in every trial's config


def param_space(space: SpaceConfig) -> dict[str, Any]:
    """Tune's ``param_space``: every parameter of the table, by its trial-side name."""
    return {p.name: domain(space_value(space, p.name)) for p in PARAMS}


def distributions(space: SpaceConfig) -> dict[str, Any]:
    """Optuna distributions of the searched parameters (the ones OptunaSearch samples),
    converted by Ray's ``OptunaSearch.convert_search_space``; fixed values are left out."""
    return OptunaSearch.convert_search_space(param_space(space))
