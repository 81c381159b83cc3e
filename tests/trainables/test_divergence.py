"""The divergence rule on its own."""

import math

from trainables.divergence import diverged, threshold


def test_the_threshold_is_ten_uniform_guesses():
    assert threshold(10) == 10 * math.log(10)  # 23.03: a uniform guess over 10 classes costs 2.30
    assert threshold(100) > threshold(10)


def test_a_loss_that_is_no_number_or_far_above_a_guess_has_diverged():
    for loss in (math.nan, math.inf, -math.inf, 6447.0, 23.1):
        assert diverged(loss, 10), loss
    for loss in (0.0, 0.05, 2.30, 4.6, 23.0):  # learning, at chance, a noisy start
        assert not diverged(loss, 10), loss
