"""The learning-rate rule of :mod:`trainables.schedule`, evaluated as TensorFlow ops.

The training loop runs several steps per compiled call, so the rate of each step is
computed inside the graph from the phase's step counter instead of being assigned from
Python. The rule itself is :func:`trainables.schedule.rate_rule`, written once; this
evaluates it on tensors (float64, then cast).
"""

from __future__ import annotations

import tensorflow as tf

from trainables.schedule import LRSchedule, rate_rule


class GraphOps:
    """The operations :func:`rate_rule` needs, on float64 tensors."""

    cos = staticmethod(tf.cos)

    @staticmethod
    def where(condition: tf.Tensor, if_true, if_false) -> tf.Tensor:
        return tf.where(condition, tf.cast(if_true, tf.float64), tf.cast(if_false, tf.float64))


def phase2_rate(schedule: LRSchedule, step: tf.Tensor, steps_per_epoch: int) -> tf.Tensor:
    """The rate at phase-2 step ``step`` (a scalar tensor counting from 0), float32."""
    epoch = tf.cast(step, tf.float64) / float(steps_per_epoch)
    return tf.cast(rate_rule(schedule, epoch, GraphOps), tf.float32)
