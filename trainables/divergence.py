"""When a trial's training has diverged: the rule, and nothing else.

A rate far too high does not always give NaN: with ReLU6 activations and BatchNormalization
frozen the loss can stay finite while the weights blow up (a Lite0 at head rate 5.0, peak
2.0 went 6,447 -> 14,318 -> 49,929 at chance accuracy). So the rule looks at the size of
the loss, against a reference every trial shares: the cross-entropy of a uniform guess
over its classes, ln C (2.30 for 10 classes). A fresh classifier head starts near it and
a learning model goes below it; a mean loss of ten times that means logits tens of units
wrong. Measured (bench/divergence.py, the offline default's Lite0 on digits, head and
peak rates over 3.5 decades): the largest epoch loss of a trial that did not blow up was
5.95 (head rate 0.01, the noisy head the default's comment describes); head rates of 0.1,
1.0 and 5.0 gave 103, 1,249 and 6,188 in their first epoch. The threshold, 23.0 for 10
classes, sits 4x above the first and 4.5x below the second. A trial that collapses to
chance (loss about ln C) has not diverged: it is a poor result, and ASHA's to stop.
"""

from __future__ import annotations

import math

# A mean training loss above this many times ln(num_classes) is divergence.
FACTOR = 10.0


def threshold(num_classes: int) -> float:
    """The mean training loss above which a trial over ``num_classes`` has diverged."""
    return FACTOR * math.log(num_classes)


def diverged(mean_loss: float, num_classes: int) -> bool:
    """Whether a mean training loss (over the steps so far) says the trial diverged:
    not a number, infinite, or above :func:`threshold`."""
    return not math.isfinite(mean_loss) or mean_loss > threshold(num_classes)
