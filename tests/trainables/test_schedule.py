"""The recipe's learning-rate rule at chosen points (docs/recipe.md section 1)."""

import math

import pytest

from trainables.schedule import LRSchedule, learning_rate

# The article's schedule: 0.001 -> 0.025 over 10 warmup epochs, 5 flat, 20 cooldown.
RECIPE = LRSchedule(warmup_epochs=10, flat_epochs=5, cooldown_epochs=20, min_lr=0.001, max_lr=0.025)


@pytest.mark.parametrize(
    ("epoch", "expected"),
    [
        (0.0, 0.001),  # warmup starts at min
        (5.0, 0.013),  # half way up the half cosine: the mean of min and max
        (2.5, 0.001 + 0.024 * (1 - math.cos(math.pi / 4)) / 2),
        (10.0, 0.025),  # warmup ends at max
        (12.5, 0.025),  # flat
        (14.999, 0.025),
        (15.0, 0.025),  # cooldown starts at max
        (25.0, 0.013),  # half way down
        (30.0, 0.001 + 0.024 * (1 + math.cos(math.pi * 0.75)) / 2),
        (35.0, 0.001),  # ends at min
        (40.0, 0.001),  # and stays there
    ],
)
def test_recipe_schedule_points(epoch, expected):
    assert learning_rate(RECIPE, epoch) == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_schedule_is_monotone_in_each_part():
    up = [learning_rate(RECIPE, e / 10) for e in range(0, 101)]
    down = [learning_rate(RECIPE, 15 + e / 10) for e in range(0, 201)]
    assert up == sorted(up)
    assert down == sorted(down, reverse=True)
    assert RECIPE.total_epochs == 35


def test_zero_length_parts():
    no_warmup = LRSchedule(warmup_epochs=0, flat_epochs=0, cooldown_epochs=4, min_lr=0.0, max_lr=1.0)
    assert learning_rate(no_warmup, 0) == pytest.approx(1.0)
    assert learning_rate(no_warmup, 2) == pytest.approx(0.5)


def test_bad_schedules_are_rejected():
    with pytest.raises(ValueError, match="min_lr <= max_lr"):
        LRSchedule(warmup_epochs=1, flat_epochs=1, cooldown_epochs=1, min_lr=0.1, max_lr=0.01)
    with pytest.raises(ValueError, match="warmup_epochs"):
        LRSchedule(warmup_epochs=-1, flat_epochs=1, cooldown_epochs=1, min_lr=0.0, max_lr=0.01)
    with pytest.raises(ValueError, match="epoch"):
        learning_rate(RECIPE, -0.5)
