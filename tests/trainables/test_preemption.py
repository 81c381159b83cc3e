"""Reclaim notices inside an epoch (trainables.preemption), without Ray: the check rules,
and a trial that gets a notice mid-epoch, checkpoints there and resumes at that step."""

import shutil

import keras
import numpy as np
import pytest

from support import tiny_spec
from trainables.checkpoint import MODEL_FILE, read_state
from trainables.preemption import CHECK_BUDGET_S, Checks, steps_within
from trainables.train import WorkerContext, train_trial


class Reclaimed(Exception):
    """The node went (what the fake notices' wait ends in)."""


class FakeNotices:
    """Notices that announce a reclaim at the ``at``-th check, and keep the checkpoint."""

    def __init__(self, root, at: int, deadline_s: float = 1e12, agreed: int = 3):
        self.root, self.at, self.deadline_s, self.agreed = root, at, deadline_s, agreed
        self.asks, self.agreements, self.saved, self.waited = 0, [], [], None

    def notice(self):
        self.asks += 1
        return self.deadline_s if self.asks >= self.at else None

    def agree(self, steps):
        self.agreements.append(steps)
        return self.agreed

    def checkpoint(self, metrics, directory):
        kept = self.root / f"jit_{len(self.saved)}"
        shutil.move(directory, kept)
        self.saved.append((metrics, kept))

    def await_reclaim(self, deadline_s):
        self.waited = deadline_s
        raise Reclaimed()


def test_steps_within_the_budget():
    assert steps_within(0.125) == int(CHECK_BUDGET_S * 8)
    assert steps_within(2 * CHECK_BUDGET_S) == 1  # a step longer than the budget: every step
    assert steps_within(0.0) == 1 and steps_within(float("nan")) == 1


def test_fixed_checks_end_calls_at_their_steps_and_not_at_the_epoch_end():
    checks = Checks(FakeNotices(None, at=99), every=4)
    # a call of up to 10 steps from step 0, 3 and 8 of a 10-step epoch
    assert [checks.call_size(done, 10, 10) for done in (0, 3, 8)] == [4, 1, 2]
    assert [checks.due(done, 10) for done in (4, 6, 8, 10)] == [True, False, True, False]
    assert checks.call_size(0, 10, 2) == 2  # steps_per_execution still bounds a call
    # an epoch whose length is a multiple of the interval: no check at its last step (its
    # epoch checkpoint follows at once), the ones before it as usual
    assert [checks.due(done, 12) for done in (4, 8, 12)] == [True, True, False]
    assert not Checks(FakeNotices(None, at=99)).due(12, 12)  # auto checks too


def test_auto_checks_start_at_one_step_then_take_rank_zeros_size():
    notices = FakeNotices(None, at=99, agreed=7)
    checks = Checks(notices)
    assert checks.call_size(0, 100, 100) == 1 and checks.due(1, 100)
    assert checks.ask(seconds_per_step=0.5) is None
    assert notices.agreements == [steps_within(0.5)]  # this worker's measurement, put to rank 0
    assert checks.call_size(1, 100, 100) == 7  # the agreed size, whatever this worker measured


class Keep:
    """A reporter that keeps each epoch's metrics, and its checkpoint under ``root``."""

    def __init__(self, root):
        self.root, self.reports = root, []

    def __call__(self, metrics, directory):
        kept = self.root / f"epoch_{metrics['epoch']}"
        shutil.move(directory, kept)
        self.reports.append((metrics, kept))


@pytest.mark.slow
def test_a_notice_mid_epoch_checkpoints_the_step_and_the_resumed_trial_trains_each_step_once(tmp_path):
    """A tiny trial (3 epochs of 4 steps; no dropout, whose masks a restarted process
    draws anew, so that the runs can be compared weight for weight) gets a notice at the
    second check of epoch 2, checking every step: it checkpoints epoch 2 at step 2 and
    waits for the reclaim. Resumed from that checkpoint (a new node, no notices), it
    skips exactly the two batches trained, takes the schedule's rates from step 2 on,
    and ends with the weights of the same trial never interrupted; epoch 2 is reported
    once, with the loss of all four of its steps."""
    spec = tiny_spec(dropout=0.0)
    whole = Keep(tmp_path / "whole")
    whole.root.mkdir()
    train_trial(spec, whole)

    notices = FakeNotices(tmp_path, at=2 + 3)  # epoch 1's three checks, then the second of epoch 2
    seen = []
    with pytest.raises(Reclaimed):
        train_trial(spec, lambda m, d: seen.append(m["epoch"]), context=WorkerContext(notices=notices, check_steps=1))
    assert seen == [1] and notices.asks == 5 and notices.waited == 1e12  # epoch 2 never finished; it waited
    ((metrics, jit),) = notices.saved
    state = read_state(jit)
    assert (state.epoch, state.step, state.phase) == (1, 2, "finetune")
    assert metrics["mid_epoch_step"] == 2 and metrics["preemptions"] == 1

    resumed = Keep(tmp_path / "resumed")
    resumed.root.mkdir()
    train_trial(spec, resumed, resume_from=jit)
    reports = [m for m, _ in resumed.reports]
    assert [m["epoch"] for m in reports] == [2, 3]
    assert [m["resumed_at_step"] for m in reports] == [2, 0] and [m["preemptions"] for m in reports] == [1, 1]
    assert [m["attempt"] for m in reports] == [2, 2]
    # the whole epoch's loss and accuracy, as the uninterrupted run measured them
    (_, before), (second, _), (third, third_dir) = whole.reports
    assert reports[0]["train_loss"] == pytest.approx(second["train_loss"], rel=1e-5)
    assert reports[0]["train_accuracy"] == pytest.approx(second["train_accuracy"])
    assert reports[1]["val_accuracy"] == pytest.approx(third["val_accuracy"])
    ours = keras.saving.load_model(resumed.reports[-1][1] / MODEL_FILE, compile=False)
    theirs = keras.saving.load_model(third_dir / MODEL_FILE, compile=False)
    for a, b in zip(ours.weights, theirs.weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6, err_msg=a.path)
