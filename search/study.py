"""The search's trials as an Optuna study: ``study.db`` (SQLite) in the experiment directory.

The searcher (Ray Tune's ``OptunaSearch``) keeps its study in this database instead of in
memory, so:

- every result is in Optuna's own format: the sampled parameters, each epoch's validation
  accuracy as an intermediate value, and the trial's end (complete, pruned by ASHA, or
  failed); ``optuna-dashboard sqlite:///<experiment>/study.db`` shows the search;
- a continuation (``hpsearch run --resume`` with a larger ``search.num_trials``) is a new
  Tune run whose searcher loads the same study, so TPE starts from every result already
  measured, per-epoch values included.

SQLite needs a local file. With local storage the database lives in the experiment
directory; with gs:// it lives in a local working copy that is uploaded after each
finished trial and at the end of the run, and downloaded before a resumed run.
"""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs
from ray import tune
from ray.tune.search.optuna import OptunaSearch

from search.layout import STUDY_DB
from trainables.metrics import DIVERGED, EPOCH, PLANNED_EPOCHS
from trainables.storage import Location
from trainables.cache import CACHE_ROOT

log = logging.getLogger(__name__)


def local_path(location: Location, experiment: str) -> Path:
    """Where the driver keeps the study's SQLite file."""
    if not location.is_remote:
        return Path(location.join(experiment, STUDY_DB))
    # a working copy (SQLite cannot live on gs://), in this machine's hpsearch cache
    key = hashlib.sha256(location.join(experiment).encode()).hexdigest()[:16]
    return CACHE_ROOT / "studies" / key / STUDY_DB


def storage_url(path: Path) -> str:
    return f"sqlite:///{path.resolve()}"


def fetch(location: Location, experiment: str) -> Path:
    """The study's local file. This machine's working copy is kept when there is one: it
    is at least as new as anything this machine uploaded (a stopped or killed driver may
    not have uploaded its last suggestions). Otherwise the stored copy is brought down
    (a resume on another machine, e.g. a new head pod)."""
    path = local_path(location, experiment)
    path.parent.mkdir(parents=True, exist_ok=True)
    if location.is_remote and not path.exists():
        remote = location.join(experiment, STUDY_DB)
        if location.exists(remote):
            pafs.copy_files(remote, str(path), source_filesystem=location.filesystem,
                            destination_filesystem=pafs.LocalFileSystem())
    return path


def upload(location: Location, experiment: str) -> None:
    """Copy the local study to remote storage (nothing to do for local storage)."""
    if not location.is_remote:
        return
    path = local_path(location, experiment)
    if path.exists():
        pafs.copy_files(str(path), location.join(experiment, STUDY_DB), source_filesystem=pafs.LocalFileSystem(),
                        destination_filesystem=location.filesystem)


# Seconds between two uploads of the study while a run goes on.
UPLOAD_INTERVAL_S = 60.0


class UploadStudy(tune.Callback):
    """Uploads the study when a trial ends, at most once every ``interval_s`` (``run_rounds``
    uploads it once more when a run ends or is stopped).

    The study is one SQLite file that grows with every trial; uploaded whole after each
    trial, a search's traffic would grow with the square of its trials. At most one
    upload a minute bounds it by the run's duration instead. What a driver killed
    without warning can lose is the last minute of the stored copy: a resume on another
    machine starts TPE from the copy (trials it lacks are closed as FAIL by
    :func:`close_orphans`), while Tune's own state, the search's record, is whole.
    """

    def __init__(self, location: Location, experiment: str, interval_s: float = UPLOAD_INTERVAL_S,
                 clock: Any = time.monotonic) -> None:
        self.location = location
        self.experiment = experiment
        self.interval_s = interval_s
        self.clock = clock
        self.last: float | None = None

    def _maybe_upload(self) -> None:
        now = self.clock()
        if self.last is None or now - self.last >= self.interval_s:
            upload(self.location, self.experiment)
            self.last = now

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._maybe_upload()

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._maybe_upload()


# The user attribute of a PRUNED trial that says what ended it.
PRUNED_BY = "pruned_by"


class StudySearch(OptunaSearch):
    """``OptunaSearch`` that keeps every epoch in the study and tells pruned from complete.

    Tune hands the searcher each result except the one its scheduler stops the trial on
    (the last epoch of every trial, since ASHA stops a trial at ``max_t`` too), and ends
    the trial with that result either way. Here that last result is recorded as an
    intermediate value as well, and a trial that stopped before its planned epochs is
    PRUNED: Optuna's TPE then ranks it by the epoch it reached and its value there, the
    way it treats trials its own pruners stop, instead of taking an accuracy cut short
    at an early rung as a final one. The user attribute ``pruned_by`` says what ended it:
    ``scheduler`` (ASHA) or ``diverged`` (its loss; trainables.divergence).

    Ray has no public API to end a trial otherwise than COMPLETE or FAIL, so this uses
    three private attributes of OptunaSearch (``_ot_trials``, ``_ot_study``,
    ``_completed_trials``); tests/search/test_search.py fails, naming the one that
    changed, on a Ray version without them.
    """

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        from optuna.exceptions import UpdateFinishedTrialError

        try:
            super().on_trial_result(trial_id, result)
        except UpdateFinishedTrialError:
            # A resumed search trains again what its driver finished after Tune's last
            # snapshot; the study already holds that trial's end.
            log.debug("trial %s already finished in the study", trial_id)
        except Exception as exc:  # noqa: BLE001
            # The study mirrors the search; Tune's state is the record. A study that lost
            # a trial (a stale copy brought down on another machine) must not stop it.
            log.warning("study: epoch of trial %s not recorded: %s", trial_id, str(exc).splitlines()[0])

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        from optuna.trial import TrialState

        if error or not result or self.metric not in result or trial_id in self._completed_trials:
            super().on_trial_complete(trial_id, result=result, error=error)
            return
        self.on_trial_result(trial_id, result)
        planned = result.get(PLANNED_EPOCHS)
        if planned is None or result.get(EPOCH, planned) >= planned:
            super().on_trial_complete(trial_id, result=result, error=error)
            return
        try:
            trial = self._ot_trials[trial_id]
            trial.set_user_attr(PRUNED_BY, "diverged" if result.get(DIVERGED) else "scheduler")
            self._ot_study.tell(trial, state=TrialState.PRUNED)
        except Exception as exc:  # e.g. already told by a driver killed before its snapshot
            log.warning("trial %s: %s", trial_id, exc)
        self._completed_trials.add(trial_id)


def close_orphans(path: Path, study_name: str) -> int:
    """Mark FAIL the study's trials still RUNNING when no trial runs: suggestions a killed
    driver made after Tune's last snapshot, which the resumed searcher never knew. Left
    RUNNING, they would steer TPE's constant liar for good. Returns how many."""
    import optuna
    from optuna.trial import TrialState

    loaded = optuna.load_study(study_name=study_name, storage=storage_url(path))
    orphans = [t.number for t in loaded.get_trials(deepcopy=False, states=(TrialState.RUNNING,))]
    for number in orphans:
        loaded.tell(number, state=TrialState.FAIL)
    return len(orphans)
