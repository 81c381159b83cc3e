"""Everything one trial needs, as one frozen dataclass (plain data, JSON round-trips)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from trainables.schedule import LRSchedule

@dataclass(frozen=True)
class AugmentParams:
    """One trial's augmentation settings."""

    shift_fraction: float = 0.1
    cutout_fraction: float = 0.4
    cutout_count: int = 2
    saturation_delta: float = 0.2
    contrast_delta: float = 0.2
    flip: bool = True


# The axes the search samples; everything else in a TrialSpec is fixed by the config.
SEARCHED = ("backbone", "cutout_fraction", "cutout_count", "dropout", "warmup_epochs", "max_lr")


@dataclass(frozen=True)
class TrialSpec:
    """One trial: data, the fixed recipe, and the sampled hyperparameters."""

    # data
    dataset: str
    validation_fraction: float
    data_seed: int
    image_size: int | None
    max_train_examples: int | None
    # fixed recipe
    batch_size: int
    head_epochs: int
    head_lr: float
    flat_epochs: int
    cooldown_epochs: int
    min_lr: float
    momentum: float
    weights: str
    shift_fraction: float
    saturation_delta: float
    contrast_delta: float
    flip: bool
    # sampled
    backbone: str
    cutout_fraction: float
    cutout_count: int
    dropout: float
    warmup_epochs: int
    max_lr: float
    # seeds weight initialisation, shuffling and augmentation
    seed: int = 0

    @property
    def total_epochs(self) -> int:
        return self.head_epochs + self.schedule.total_epochs

    @property
    def schedule(self) -> LRSchedule:
        return LRSchedule(
            warmup_epochs=self.warmup_epochs,
            flat_epochs=self.flat_epochs,
            cooldown_epochs=self.cooldown_epochs,
            min_lr=self.min_lr,
            max_lr=self.max_lr,
        )

    @property
    def augment(self) -> AugmentParams:
        return AugmentParams(
            shift_fraction=self.shift_fraction,
            cutout_fraction=self.cutout_fraction,
            cutout_count=self.cutout_count,
            saturation_delta=self.saturation_delta,
            contrast_delta=self.contrast_delta,
            flip=self.flip,
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrialSpec":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"unknown trial fields: {sorted(unknown)}")
        return cls(**data)
