"""Shared test helpers: a tiny trial spec."""

from __future__ import annotations

import dataclasses

from trainables.spec import TrialSpec


def tiny_spec(**overrides) -> TrialSpec:
    """A trial of a few seconds per epoch: 64 digits at 32 px, head 1 + warmup 1 + cooldown 1."""
    spec = TrialSpec(
        dataset="digits",
        validation_fraction=0.2,
        data_seed=0,
        image_size=32,
        max_train_examples=64,
        batch_size=16,
        head_epochs=1,
        head_lr=0.01,
        flat_epochs=0,
        cooldown_epochs=1,
        min_lr=0.001,
        momentum=0.9,
        weights="none",
        shift_fraction=0.1,
        saturation_delta=0.2,
        contrast_delta=0.2,
        flip=False,
        backbone="B0",
        cutout_fraction=0.25,
        cutout_count=1,
        dropout=0.2,
        warmup_epochs=1,
        max_lr=0.02,
        seed=0,
    )
    return dataclasses.replace(spec, **overrides)
