"""The learning-rate rule of :mod:`trainables.schedule`, as TensorFlow ops.

The training loop runs several steps per compiled call, so the rate of each step is
computed inside the graph from the phase's step counter instead of being assigned from
Python. :func:`trainables.schedule.learning_rate` stays the rule's definition; this is
the same formula in ops (float64, then cast), and the tests compare the two.
"""

from __future__ import annotations

import math

import tensorflow as tf

from trainables.schedule import LRSchedule


def phase2_rate(schedule: LRSchedule, step: tf.Tensor, steps_per_epoch: int) -> tf.Tensor:
    """The rate at phase-2 step ``step`` (a scalar tensor counting from 0), float32."""
    epoch = tf.cast(step, tf.float64) / float(steps_per_epoch)
    lo, hi = schedule.min_lr, schedule.max_lr
    warmup, flat, cooldown = (float(schedule.warmup_epochs), float(schedule.flat_epochs),
                              float(schedule.cooldown_epochs))

    def half_cosine(progress: tf.Tensor, rising: bool) -> tf.Tensor:
        sign = -1.0 if rising else 1.0
        return lo + (hi - lo) * (1.0 + sign * tf.cos(math.pi * progress)) / 2.0

    # max(…, 1) keeps each branch finite; a zero-length part is never selected.
    rising = half_cosine(epoch / max(warmup, 1.0), rising=True)
    falling = half_cosine((epoch - warmup - flat) / max(cooldown, 1.0), rising=False)
    rate = tf.where(
        epoch < warmup,
        rising,
        tf.where(epoch < warmup + flat, tf.constant(hi, tf.float64),
                 tf.where(epoch < warmup + flat + cooldown, falling, tf.constant(lo, tf.float64))),
    )
    return tf.cast(rate, tf.float32)
