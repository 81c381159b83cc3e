"""A distributed trial's wiring that needs no Ray: each worker's context from the
trainer's loop config, and the failure config Ray Train gets."""

from __future__ import annotations

import pytest

from search.distributed import MAX_PREEMPTIONS, TrainNotices, failure_config, worker_context
from trainables.strategy import Precision


def loop_config(checks: int | None) -> dict:
    return {"preemption_check_steps": checks, "precision": Precision(), "steps_per_execution": None}


@pytest.mark.parametrize("checks", [None, 1, 4])
def test_reclaim_checks_are_on_unless_turned_off(checks):
    """None is auto (sized by measurement), not off: only 0 turns the checks off."""
    context = worker_context(loop_config(checks), strategy=None, world_size=2, rank=1)
    assert isinstance(context.notices, TrainNotices) and context.check_steps == checks
    assert (context.num_workers, context.worker_index, context.is_chief) == (2, 1, False)


def test_zero_turns_reclaim_checks_off():
    assert worker_context(loop_config(0), strategy=None, world_size=2, rank=0).notices is None


def test_a_worker_group_that_cannot_start_is_not_retried():
    """Ray Train retries a controller failure (a worker group not placed in time) without
    limit by default: the trial would wait for ever instead of failing."""
    config = failure_config()
    assert config.controller_failure_limit == 0
    assert config.max_failures == 2 and config.max_preemption_failures == MAX_PREEMPTIONS
