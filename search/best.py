"""Each trial's best checkpoint, kept apart from Tune's rolling ones.

Tune keeps the latest few checkpoints of a trial (the ones a resumed or retried trial
restores from; see ``search.run.run_config``), so the best epoch's checkpoint may roll
off. The trial's reporter therefore copies every new best into the experiment's
``best/<trial id>/epoch_NNNN/`` (then removes the previous best), and the trials table
and the ensemble read it from there.

A reporter offers an epoch before Tune sees it: Tune may stop the trial on that result
and kill its processes, so the copy is complete by then. (A ``single`` trial reports
from a thread of its own, so the copy is off its training thread there too.)
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

from search.layout import BEST_DIR
from trainables.checkpoint import STATE_FILE
from trainables.metrics import VAL_ACCURACY
from trainables.storage import Location, resolve

# Checkpoints Tune (and Ray Train) keep per trial: the latest ones, by time. The
# checkpoint Tune's last experiment snapshot names as a trial's latest is deleted only
# once this many newer ones exist, and Tune forces a snapshot as soon as a trial has
# written this many since the last one (ray/tune/execution/experiment_state.py).
KEEP_LATEST = 3
METRIC = VAL_ACCURACY


def best_dir(location: Location, experiment: str, trial_id: str) -> str:
    return location.join(experiment, BEST_DIR, trial_id)


def epoch_dir(directory: str, epoch: int) -> str:
    return f"{directory}/epoch_{epoch:04d}"


class BestKeeper:
    """Called with every epoch's metrics and checkpoint; keeps a copy of the best.

    Args:
        experiment_uri: the experiment directory (local path or gs://).
        trial_id: Tune's id of the trial.
    """

    def __init__(self, experiment_uri: str, trial_id: str) -> None:
        self.location = resolve(experiment_uri)
        self.directory = self.location.join(BEST_DIR, trial_id)
        self.best = self._recorded_best()  # a resumed trial continues from what it kept

    def _kept(self) -> list[pafs.FileInfo]:
        selector = pafs.FileSelector(self.directory, allow_not_found=True)
        return [i for i in self.location.filesystem.get_file_info(selector) if i.type == pafs.FileType.Directory]

    def _recorded_best(self) -> float:
        best = -math.inf
        for info in self._kept():
            try:
                with self.location.filesystem.open_input_stream(f"{info.path}/{STATE_FILE}") as handle:
                    best = max(best, float(json.loads(handle.read())["metrics"][METRIC]))
            except (OSError, KeyError, ValueError):  # a copy cut short: not a best
                continue
        return best

    def offer(self, metrics: dict[str, Any], directory: Path | None) -> None:
        """Keep ``directory`` if its epoch is the best so far (ties keep the earlier)."""
        value = metrics.get(METRIC)
        if directory is None or value is None or not value > self.best:
            return
        older = self._kept()
        target = epoch_dir(self.directory, int(metrics["epoch"]))
        self.location.filesystem.create_dir(target, recursive=True)
        # The state file last: a copy without it is never taken for a best.
        files = sorted(p for p in Path(directory).rglob("*") if p.is_file())
        for path in sorted(files, key=lambda p: p.name == STATE_FILE):
            relative = path.relative_to(directory).as_posix()
            pafs.copy_files(str(path), f"{target}/{relative}", source_filesystem=pafs.LocalFileSystem(),
                            destination_filesystem=self.location.filesystem)
        self.best = float(value)
        for info in older:
            if info.path.rstrip("/") != target.rstrip("/"):
                self.location.filesystem.delete_dir(info.path)


def kept_best(location: Location, experiment: str, trial_id: str, epoch: int) -> str | None:
    """The path of the trial's kept best checkpoint of ``epoch``, if it is there."""
    path = epoch_dir(best_dir(location, experiment, trial_id), epoch)
    return path if location.exists(f"{path}/{STATE_FILE}") else None
