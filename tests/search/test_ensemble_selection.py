"""Choosing an ensemble on validation (pure rules, no model): greedy selection with
replacement from the best member, and the choice among best member, TTA and ensembles."""

from __future__ import annotations

import numpy as np

from search.ensemble import Option, accuracy, average, choose, greedy_selection, options_of, score


def one_hot_like(predicted: list[int], classes: int = 3, confidence: float = 0.6) -> np.ndarray:
    """Probabilities that put ``confidence`` on each predicted class, the rest spread."""
    probs = np.full((len(predicted), classes), (1 - confidence) / (classes - 1))
    probs[np.arange(len(predicted)), predicted] = confidence
    return probs


LABELS = np.array([0, 1, 2, 0, 1, 2])


def test_a_library_whose_plain_average_loses_gets_an_ensemble_at_least_as_good_as_its_best_member():
    best = one_hot_like([0, 1, 2, 0, 1, 1], confidence=0.6)  # 5 of 6
    # two weaker models, wrong together and sure of it: they outvote the best one
    weak = one_hot_like([1, 1, 2, 1, 2, 0], confidence=0.95)  # 2 of 6
    library = [best, weak, weak.copy()]
    plain = accuracy(average(library), LABELS)
    assert plain < accuracy(best, LABELS)  # the trap the default used to fall into
    counts = greedy_selection(library, LABELS, max_rounds=10)
    chosen = average(library, counts)
    assert accuracy(chosen, LABELS) >= accuracy(best, LABELS)
    assert counts == [1, 0, 0]  # nothing helped: the best member alone


def test_a_library_where_averaging_helps_still_averages():
    # each model is wrong on a different third; any two outvote the third's errors
    a = one_hot_like([0, 1, 2, 0, 2, 0])
    b = one_hot_like([0, 2, 2, 1, 1, 2])
    c = one_hot_like([1, 1, 0, 0, 1, 2])
    counts = greedy_selection([a, b, c], LABELS, max_rounds=10)
    assert sum(1 for n in counts if n) >= 2, counts
    assert accuracy(average([a, b, c], counts), LABELS) == 1.0 > max(accuracy(p, LABELS) for p in (a, b, c))


def test_greedy_selection_starts_from_the_best_member_and_must_add_a_second():
    labels = np.array([0, 1, 0, 1])
    best = np.array([[0.9, 0.1], [0.45, 0.55], [0.55, 0.45], [0.6, 0.4]])  # 3 of 4, unsure on the last
    helper = np.array([[0.6, 0.4], [0.4, 0.6], [0.4, 0.6], [0.1, 0.9]])  # 3 of 4, sure where best is wrong
    bad = np.array([[0.2, 0.8], [0.9, 0.1], [0.3, 0.7], [0.6, 0.4]])  # 0 of 4
    counts = greedy_selection([bad, best, helper], labels, max_rounds=5)
    assert counts[1] >= 1 and counts[2] >= 1 and counts[0] == 0, counts
    assert accuracy(average([bad, best, helper], counts), labels) == 1.0


def test_the_choice_is_never_worse_than_the_best_member_on_validation():
    rng = np.random.default_rng(0)
    for _ in range(200):
        size, n = rng.integers(1, 6), 40
        labels = rng.integers(0, 4, n)
        val = []
        for _ in range(size):
            one = rng.dirichlet(np.ones(4), n)
            tta = (one + rng.dirichlet(np.ones(4), n)) / 2
            val.append((one, tta))
        options = options_of(val, labels, views=4, max_rounds=8)
        scores = [score(average([v[int(o.views > 1)] for v in val], list(o.weights)), labels) for o in options]
        chosen = choose(options, scores)
        best_member = max(accuracy(v[0], labels) for v in val)
        assert scores[options.index(chosen)][0] >= best_member
        assert [o.name for o in options] == ["best member", "best member", "ensemble", "ensemble"]


def test_ties_go_to_the_simpler_option():
    options = [Option("best member", (1, 0), 1), Option("best member", (1, 0), 4), Option("ensemble", (1, 1), 1)]
    assert choose(options, [(0.9, -0.3)] * 3) == options[0]
    assert choose(options, [(0.9, -0.3), (0.9, -0.3), (0.95, -0.5)]) == options[2]
