"""The recipe's learning-rate rule, as pure functions (docs/recipe.md section 1).

Phase 2 (full fine-tuning) runs a cosine warmup from ``min_lr`` to ``max_lr``, holds
``max_lr`` flat, then a cosine cooldown back to ``min_lr``. The article: warmup 10, flat
5, cooldown 20 epochs, min 0.001, max 0.025. Phase 1 (head only) uses a constant rate.
The training loop only calls these functions; nothing here imports TensorFlow.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class LRSchedule:
    """Warmup / flat / cooldown, in epochs of phase 2."""

    warmup_epochs: int
    flat_epochs: int
    cooldown_epochs: int
    min_lr: float
    max_lr: float

    def __post_init__(self) -> None:
        for name in ("warmup_epochs", "flat_epochs", "cooldown_epochs"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0 <= self.min_lr <= self.max_lr:
            raise ValueError(f"need 0 <= min_lr <= max_lr, got {self.min_lr}, {self.max_lr}")

    @property
    def total_epochs(self) -> int:
        return self.warmup_epochs + self.flat_epochs + self.cooldown_epochs


class PythonOps:
    """The operations :func:`rate_rule` needs, on Python floats."""

    cos = staticmethod(math.cos)

    @staticmethod
    def where(condition: bool, if_true: float, if_false: float) -> float:
        return if_true if condition else if_false


def rate_rule(schedule: LRSchedule, epoch: Any, ops: Any) -> Any:
    """The rule, written once over ``ops`` (``cos`` and ``where``): :class:`PythonOps`
    evaluates it on floats, ``trainables.schedule_graph`` on tensors inside the
    compiled training step. Every branch is evaluated (a graph computes them all), so
    each stays finite: ``max(..., 1)`` guards a zero-length warmup or cooldown, which
    ``where`` never selects."""
    lo, hi = schedule.min_lr, schedule.max_lr
    warmup, flat, cooldown = float(schedule.warmup_epochs), float(schedule.flat_epochs), float(schedule.cooldown_epochs)
    rising = lo + (hi - lo) * (1.0 - ops.cos(math.pi * epoch / max(warmup, 1.0))) / 2.0
    falling = lo + (hi - lo) * (1.0 + ops.cos(math.pi * (epoch - warmup - flat) / max(cooldown, 1.0))) / 2.0
    return ops.where(epoch < warmup, rising,
                     ops.where(epoch < warmup + flat, hi,
                               ops.where(epoch < warmup + flat + cooldown, falling, lo)))


def learning_rate(schedule: LRSchedule, epoch: float) -> float:
    """The learning rate at a (fractional) epoch of phase 2.

    Args:
        schedule: the phase-2 schedule.
        epoch: epochs elapsed since phase 2 began; 2.5 is halfway through the third epoch.

    Returns:
        The rate: ``min_lr`` at 0, rising on a half cosine to ``max_lr`` at the end of the
        warmup, flat, then falling on a half cosine to ``min_lr`` at the end.
    """
    if epoch < 0:
        raise ValueError(f"epoch must be >= 0, got {epoch}")
    return float(rate_rule(schedule, float(epoch), PythonOps))
