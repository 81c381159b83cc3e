"""Each trial's best checkpoint, kept apart from Tune's rolling ones.

Tune keeps the latest few checkpoints of a trial (the ones a resumed or retried trial
restores from; see ``search.run.run_config``), so the best epoch's checkpoint may roll
off. The trial's reporter therefore copies every new best into the experiment's
``best/<trial id>/epoch_NNNN/`` (then removes the previous best), and the trials table
and the ensemble read it from there.

The copy runs on a thread of its own: the epoch's files are hard-linked into a private
directory first (instant), so the reporter may hand the checkpoint directory on (Ray
Train's asynchronous upload deletes it when done) at once. A reporter calls
:meth:`BestKeeper.flush` before it lets Tune see the epoch: Tune may stop the trial on
that result and kill its process, and a best copy still in flight would be lost.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

from trainables.checkpoint import STATE_FILE
from trainables.metrics import VAL_ACCURACY
from trainables.reporting import InBackground
from trainables.storage import Location, resolve

BEST_DIR = "best"
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
        # one copy at a time, in epoch order, its errors raised at the next offer or close
        self._copier = InBackground(self._keep)

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
        """Keep ``directory`` if its epoch is the best so far (ties keep the earlier).

        Returns once the files are linked aside; the copy into storage follows on this
        keeper's thread. A failed copy is raised here, at the next offer, or by
        :meth:`close`.
        """
        value = metrics.get(METRIC)
        if directory is None or value is None or not value > self.best:
            return
        staged = Path(tempfile.mkdtemp(prefix="hpsearch-best-")) / "checkpoint"
        shutil.copytree(directory, staged, copy_function=_link_or_copy)
        self.best = float(value)
        self._copier(metrics, staged)

    def flush(self) -> None:
        """Wait for the copy in flight, if any (raising its error)."""
        self._copier.flush()

    def close(self) -> None:
        """Wait for the last copy (raising its error, if any) and stop the thread."""
        self._copier.close()

    def _keep(self, metrics: dict[str, Any], staged: Path) -> None:
        try:
            older = self._kept()
            target = epoch_dir(self.directory, int(metrics["epoch"]))
            self.location.filesystem.create_dir(target, recursive=True)
            # The state file last: a copy without it is never taken for a best.
            files = sorted(p for p in staged.rglob("*") if p.is_file())
            for path in sorted(files, key=lambda p: p.name == STATE_FILE):
                relative = path.relative_to(staged).as_posix()
                pafs.copy_files(str(path), f"{target}/{relative}", source_filesystem=pafs.LocalFileSystem(),
                                destination_filesystem=self.location.filesystem)
            for info in older:
                if info.path.rstrip("/") != target.rstrip("/"):
                    self.location.filesystem.delete_dir(info.path)
        finally:
            shutil.rmtree(staged.parent, ignore_errors=True)


def _link_or_copy(source: str, destination: str) -> None:
    """A hard link (no bytes copied); a copy where the two paths are on different disks."""
    try:
        os.link(source, destination)
    except OSError:
        shutil.copy2(source, destination)


def kept_best(location: Location, experiment: str, trial_id: str, epoch: int) -> str | None:
    """The path of the trial's kept best checkpoint of ``epoch``, if it is there."""
    path = epoch_dir(best_dir(location, experiment, trial_id), epoch)
    return path if location.exists(f"{path}/{STATE_FILE}") else None
