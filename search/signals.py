"""SIGTERM and SIGINT stop a search the way Tune stops it, instead of crashing it.

Kubernetes sends SIGTERM when a RayJob is stopped or a Spot node is reclaimed; so do
``timeout`` and CI runners. Ray's core worker would answer it with a native crash. Here
either signal is recorded and handed to Tune's own graceful stop (its SIGUSR1 handler,
installed while a run is in ``fit``): Tune saves the experiment state one last time and
stops the trials at their last checkpoints. The driver then shuts down the Ray it
started, prints how to resume, and exits with ``exit_code``.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from types import FrameType

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def exit_code(signum: int) -> int:
    """The shell's convention for a process ended by a signal: 128 + its number
    (143 for SIGTERM, 130 for SIGINT)."""
    return 128 + signum


class GracefulStop:
    """While active, SIGTERM and SIGINT set :attr:`received`, call ``on_signal`` (which
    must be safe in a signal handler) and ask Tune to stop.

    Enter it after ``ray.init`` (Ray installs its own SIGTERM handler there).
    """

    def __init__(self, on_signal: Callable[[], None] | None = None) -> None:
        self.received: int | None = None
        self._on_signal = on_signal
        self._previous: dict[int, object] = {}
        self._tune_sigint: str | None = None

    def __enter__(self) -> GracefulStop:
        # Tune would otherwise take SIGINT for itself inside fit(); it keeps SIGUSR1.
        self._tune_sigint = os.environ.get("TUNE_DISABLE_SIGINT_HANDLER")
        os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
        for signum in STOP_SIGNALS:
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        if self._tune_sigint is None:
            os.environ.pop("TUNE_DISABLE_SIGINT_HANDLER", None)
        else:
            os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = self._tune_sigint

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.received = signum
        if self._on_signal is not None:
            self._on_signal()
        # Outside fit() SIGUSR1 still has its default action (terminate): the caller checks
        # `received` before it starts a run instead.
        if callable(signal.getsignal(signal.SIGUSR1)):
            os.kill(os.getpid(), signal.SIGUSR1)

    @property
    def stopped(self) -> bool:
        return self.received is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.received).name if self.received else ""
