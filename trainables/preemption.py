"""Spot reclaims inside an epoch: when a distributed trial asks whether one of its nodes
will go, and how many steps it trains between two asks.

A Spot or preemptible node gets a short notice before it is reclaimed (GKE: about 15 s
for a pod, best effort). The training loop (trainables.train) ends its compiled calls at
check steps and asks :class:`Notices`, a collective every worker of the trial joins at
the same step; on a notice every worker takes part in a checkpoint of the step reached
and then waits for the reclaim, so the trial loses no step it trained. What answers the
asks (Ray Train's ``get_preemption_info``) lives with the Ray code in search.distributed:
this module knows nothing of Ray.

Checks every ``steps`` steps are a fixed interval. Checks ``auto`` size each interval so
that it takes about :data:`CHECK_BUDGET_S` seconds at the step time measured on the last
interval (rank 0's measurement, agreed by every worker), starting at one step, since the
first call of a phase includes tracing and compiling.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol

# The time an auto interval aims at. GKE's notice is about 15 s; Ray Train's preemption
# watcher polls for drained nodes every RAY_TRAIN_PREEMPTION_POLL_INTERVAL_S (the chart
# sets 1 s); this leaves the rest of the notice for writing the checkpoint.
CHECK_BUDGET_S = 5.0


class Notices(Protocol):
    """What a trial's workers ask at each check (all of them, at the same steps)."""

    def notice(self) -> float | None:
        """The reclaim deadline (UNIX seconds; ``math.inf`` when none was given) once a
        node of the trial is being reclaimed, else None. A collective."""

    def agree(self, steps: int) -> int:
        """Rank 0's value, on every worker. A collective."""

    def checkpoint(self, metrics: dict[str, Any], directory: Any) -> None:
        """Store a mid-epoch checkpoint (the chief's directory; None on the others) before
        returning. A collective."""

    def await_reclaim(self, deadline_s: float) -> None:
        """Wait, training no further, until the node goes and the trial is restarted
        elsewhere; returns (or raises) only if that did not happen in time."""


def steps_within(seconds_per_step: float, budget_s: float = CHECK_BUDGET_S) -> int:
    """The most steps that fit ``budget_s`` at ``seconds_per_step``, at least one."""
    if seconds_per_step <= 0 or not math.isfinite(seconds_per_step):
        return 1
    return max(1, int(budget_s // seconds_per_step))


@dataclass
class Checks:
    """A trial attempt's check interval: ``every`` steps fixed, or sized by measurement
    (``every=None``)."""

    notices: Notices
    every: int | None = None
    # auto: the interval now in force (one step until a call has been timed)
    current: int = 1

    def call_size(self, done: int, steps: int, chunk: int) -> int:
        """Steps in the next compiled call: at most ``chunk``, ending at the next check."""
        to_check = self.every - done % self.every if self.every is not None else self.current
        return max(1, min(chunk, to_check, steps - done))

    def due(self, done: int, steps: int) -> bool:
        """Whether the call that reached ``done`` ends at a check. The epoch's last step
        does not: its epoch checkpoint follows at once."""
        if done >= steps:
            return False
        return self.every is None or done % self.every == 0

    def ask(self, seconds_per_step: float) -> float | None:
        """At a check: the reclaim deadline, if a notice came, and (auto) the next interval."""
        deadline = self.notices.notice()
        if self.every is None:
            self.current = self.notices.agree(steps_within(seconds_per_step))
        return deadline
