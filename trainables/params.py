"""The searched parameters, declared once.

:class:`Hyperparams` is the table: one field per parameter the search may sample, whose
metadata gives its kind (from the field's type), the recipe's value (the field's
default), the default search range, hard bounds, log scale and its description.
Everything else derives from it: the config's ``space`` section (``search.config``) and
its JSON Schema (``search.schema``), the Tune domains and through them Optuna's
distributions (``search.space``), the sampled part of a trial's spec
(:class:`Hyperparams` itself), the columns of the trials table and the report's plots.

A parameter whose space is a single value (``unfreeze_fraction: 1.0``) is fixed; a range
(``{low: 0.25, high: 1.0}``) makes it searched.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from trainables import backbones


@dataclass(frozen=True)
class FloatRange:
    """A closed interval searched uniformly, or log-uniformly when ``log`` is true."""

    low: float
    high: float
    log: bool = False


@dataclass(frozen=True)
class IntRange:
    """A closed integer interval searched uniformly."""

    low: int
    high: int


@dataclass(frozen=True)
class Bounds:
    """The interval a number (or both ends of a range) must lie in."""

    low: float | None = None
    high: float | None = None
    open_low: bool = False

    def problem(self, value: float) -> str | None:
        """Why ``value`` is out of bounds, or None."""
        low, high = self.low, self.high
        if low is not None and (value <= low if self.open_low else value < low):
            return f"must be {'>' if self.open_low else '>='} {low}, got {value}"
        if high is not None and value > high:
            return f"must be <= {high}, got {value}"
        return None


def bounds(low: float | None = None, high: float | None = None, *, open_low: bool = False) -> dict[str, Bounds]:
    """Field metadata declaring a number's allowed interval (read by the config loader)."""
    return {"bounds": Bounds(low, high, open_low)}


@dataclass(frozen=True)
class Param:
    """One row of the table (built from a :class:`Hyperparams` field)."""

    name: str  # the trial's name for it (a Tune config key, a trials-table column)
    kind: str  # "choice", "float" or "int"
    space: Any  # default space: a range, a tuple of choices, or one fixed value
    bounds: Bounds | None
    log: bool  # plotted and searched on a log scale by default
    doc: str  # the config schema's description of it (search.schema)
    config_name: str  # its key in the config's space section
    choices: Callable[[], tuple[str, ...]] | None = None  # allowed values of a choice

    @property
    def config_type(self) -> Any:
        """The type of its field in the config's space section."""
        return {"choice": tuple[str, ...], "float": FloatRange | float, "int": IntRange | int}[self.kind]


def _param(*, value: Any, space: Any, doc: str, bounds: Bounds | None = None,
           config_name: str | None = None, choices: Callable[[], tuple[str, ...]] | None = None) -> Any:
    meta = {"space": space, "doc": doc, "bounds": bounds,
            "config_name": config_name, "choices": choices}
    return field(default=value, metadata={"param": meta})


@dataclass(frozen=True)
class Hyperparams:
    """The values one trial runs with: sampled where the space is a range, else fixed.

    Each field's default is the recipe's value (docs/recipe.md section 1).
    """

    backbone: str = _param(
        value="B0", space=backbones.DEFAULT_SPACE, choices=lambda: tuple(backbones.BACKBONES),
        config_name="backbones", doc="backbones to choose from")
    cutout_fraction: float = _param(
        value=0.4, space=FloatRange(0.1, 0.5), bounds=Bounds(0.0, 1.0),
        doc="side of each Cutout square as a fraction of the image side (article: 0.4)")
    cutout_count: int = _param(
        value=2, space=IntRange(0, 3), bounds=Bounds(0, 16),
        doc="Cutout squares per image (article: 2)")
    dropout: float = _param(
        value=0.5, space=FloatRange(0.2, 0.6), bounds=Bounds(0.0, 0.95),
        doc="dropout before the classifier (article: 0.5)")
    warmup_epochs: int = _param(
        value=10, space=IntRange(2, 10), bounds=Bounds(0, 1000),
        doc="cosine warmup length of phase 2 (article: 10)")
    max_lr: float = _param(
        value=0.025, space=FloatRange(0.005, 0.1, log=True), bounds=Bounds(0.0, 10.0, open_low=True), doc="peak learning rate of phase 2 (article: 0.025 at batch 200)")
    unfreeze_fraction: float = _param(
        value=1.0, space=1.0, bounds=Bounds(0.0, 1.0, open_low=True),
        doc="share of the backbone's top blocks trained in phase 2; 1.0 trains all (docs/recipe.md section 2)")


def _kind(hint: Any) -> str:
    return {str: "choice", float: "float", int: "int"}[hint]


def _table() -> tuple[Param, ...]:
    hints = typing.get_type_hints(Hyperparams)
    rows = []
    for f in dataclasses.fields(Hyperparams):
        meta = f.metadata["param"]
        space = meta["space"]
        rows.append(Param(
            name=f.name, kind=_kind(hints[f.name]), space=space, bounds=meta["bounds"],
            log=bool(getattr(space, "log", False)), doc=meta["doc"],
            config_name=meta["config_name"] or f.name, choices=meta["choices"],
        ))
    return tuple(rows)


PARAMS: tuple[Param, ...] = _table()
NAMES: tuple[str, ...] = tuple(p.name for p in PARAMS)


def upper(space_value: Any) -> Any:
    """The largest value a declared space can give (its ``high``, or the fixed value)."""
    return space_value.high if isinstance(space_value, (FloatRange, IntRange)) else space_value


def hyperparams_from(values: dict[str, Any]) -> Hyperparams:
    """The :class:`Hyperparams` of a trial config (Tune's ``config``; extra keys ignored)."""
    return Hyperparams(**{name: values[name] for name in NAMES if name in values})
