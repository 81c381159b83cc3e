"""What a finished search leaves in its experiment directory.

- ``trials.parquet`` and ``trials.csv``: one row per trial: its sampled configuration,
  status, epochs run, whether ASHA stopped it early or it diverged, best validation
  accuracy, the epoch of that best, and the path of its best checkpoint;
- ``history.parquet``: every epoch report of every trial as Tune received it (learning
  curves), with the attempt that made it: an epoch trained again after a restart shows
  twice; :func:`latest_per_epoch` is the one-report-per-epoch view;
- ``best_config.json``: the best trial's configuration, accuracy and checkpoint.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from search.layout import BEST_JSON, CONFIG_JSON, HISTORY_PARQUET, TRIALS_CSV, TRIALS_PARQUET
from trainables.metrics import ATTEMPT, DIVERGED, PREEMPTIONS, RESUMED_AT_STEP
from trainables.params import NAMES
from trainables.storage import Location

# Tune's per-trial CSV of every report (beside its result.json).
PROGRESS_CSV = "progress.csv"
# The metric under which Ray Train's TuneReportCallback forwards a checkpoint's path.
CHECKPOINT_PATH = "checkpoint_path"


@dataclass(frozen=True)
class TrialRow:
    trial_id: str
    status: str
    config: dict[str, Any]
    epochs_run: int
    planned_epochs: int
    best_val_accuracy: float
    best_epoch: int
    best_checkpoint: str | None
    error: str | None
    attempts: int = 1  # the most starts of its training (trainables.metrics.ATTEMPT)
    diverged: bool = False  # its training loss diverged (trainables.divergence); a result
    preemptions: int = 0  # of its attempts, those resumed from a reclaim notice's checkpoint

    @property
    def stopped_early(self) -> bool:
        """Stopped by the scheduler (ASHA) before its planned epochs."""
        return self.status == "TERMINATED" and not self.diverged and self.epochs_run < self.planned_epochs


def latest_per_epoch(reports: Any) -> Any:
    """One trial's reports, one per epoch: the last one, where a restarted trial trained
    an epoch again; in epoch order."""
    return reports.drop_duplicates("epoch", keep="last").sort_values("epoch").reset_index(drop=True)


def reports_of(result: Any) -> Any:
    """Every report of a trial as Tune recorded it (a DataFrame; None or empty when it
    reported nothing).

    Tune reads a trial's reports from its stored ``result.json``, and a trial restarted
    after a failure can find that file emptied: at a restart Tune's JSON logger copies the
    stored ``result.json`` over its own (``ray.tune.logger``'s ``_restore_from_remote``),
    and the stored copy may have been synced before its first line was flushed, while
    ``progress.csv``, written through per row, kept the rows (seen under load:
    tests/search/test_resume.py). An empty ``result.json`` is then read from
    ``progress.csv`` (Tune itself falls back to it only when ``result.json`` is missing).
    """
    frame = result.metrics_dataframe
    if (frame is None or frame.empty) and getattr(result, "path", None):
        import io

        import pandas as pd

        try:
            with result.filesystem.open_input_stream(f"{result.path}/{PROGRESS_CSV}") as handle:
                text = handle.read().decode()
        except (FileNotFoundError, OSError):
            return frame
        if text.strip():
            frame = pd.read_csv(io.StringIO(text), dtype={"trial_id": str})
    return frame


def epochs_of(result: Any) -> Any:
    """A trial's reports, one per epoch (:func:`latest_per_epoch`); None when it reported
    nothing."""
    frame = reports_of(result)
    if frame is None or frame.empty or "epoch" not in frame:
        return frame
    return latest_per_epoch(frame)


def trial_rows(result_grid: Any, metric: str, mode: str, planned_epochs: Any,
               kept_best: Any = None) -> list[TrialRow]:
    """One row per trial of a Tune ResultGrid.

    Args:
        result_grid: what ``Tuner.fit()`` returned.
        metric, mode: the search's metric, e.g. ``val_accuracy``, ``max``.
        planned_epochs: function of a trial's config giving the epochs it would run
            unstopped (the warmup axis makes it differ per trial).
        kept_best: function of (trial id, epoch) giving the path of the trial's kept
            best checkpoint (search.best); None reads the checkpoints Tune still holds.
    """
    rows = []
    for result in result_grid:
        frame = epochs_of(result)
        has_metric = frame is not None and metric in frame and frame[metric].notna().any()
        if has_metric:
            best_index = frame[metric].idxmax() if mode == "max" else frame[metric].idxmin()
            best_value = float(frame[metric][best_index])
            best_epoch = int(frame["epoch"][best_index])
            epochs_run = int(frame["epoch"].max())
        else:
            best_value, best_epoch, epochs_run = math.nan, 0, 0
        if kept_best is not None:
            best_path = kept_best(_trial_id(result), best_epoch) if has_metric else None
        else:
            best = result.get_best_checkpoint(metric, mode) if has_metric and result.best_checkpoints else None
            best_path = best.path if best is not None else None
        if best_path is None and kept_best is None and has_metric and CHECKPOINT_PATH in frame:
            # A distributed trial's checkpoints live in its Ray Train run; Tune only
            # receives their paths as a metric.
            value = frame[CHECKPOINT_PATH][best_index]
            best_path = value if isinstance(value, str) else None
        config = {k: result.config[k] for k in NAMES if k in result.config}
        rows.append(
            TrialRow(
                trial_id=_trial_id(result),
                status="ERROR" if result.error else "TERMINATED",
                config=config,
                epochs_run=epochs_run,
                planned_epochs=int(planned_epochs(config)),
                best_val_accuracy=best_value,
                best_epoch=best_epoch,
                best_checkpoint=best_path,
                error=error_summary(result.error) if result.error else None,
                attempts=int(frame[ATTEMPT].max()) if has_metric and ATTEMPT in frame else 1,
                diverged=bool(has_metric and DIVERGED in frame and frame[DIVERGED].fillna(False).astype(bool).any()),
                preemptions=int(frame[PREEMPTIONS].max()) if has_metric and PREEMPTIONS in frame else 0,
            )
        )
    return sorted(rows, key=lambda r: r.trial_id)


def error_summary(error: BaseException) -> str:
    """One line that says what went wrong: the exception raised in the trial (Ray wraps
    it, and the wrapper's first line only names the actor), its type and message."""
    cause = getattr(error, "cause", None) or error
    lines = [line for line in str(cause).strip().splitlines() if line.strip()]
    if cause is error and len(lines) > 1:  # a traceback as text: its last line is the error
        return lines[-1].strip()
    return f"{type(cause).__name__}: {lines[0].strip() if lines else ''}".rstrip(": ")


def _trial_id(result: Any) -> str:
    return str(result.metrics.get("trial_id") or result.path.rstrip("/").rsplit("/", 1)[-1])


def rows_table(rows: list[TrialRow]) -> pa.Table:
    columns: dict[str, list[Any]] = {"trial_id": [r.trial_id for r in rows], "status": [r.status for r in rows]}
    for name in NAMES:
        columns[name] = [r.config.get(name) for r in rows]
    columns.update(
        epochs_run=[r.epochs_run for r in rows],
        planned_epochs=[r.planned_epochs for r in rows],
        stopped_early=[r.stopped_early for r in rows],
        diverged=[r.diverged for r in rows],
        best_val_accuracy=[r.best_val_accuracy for r in rows],
        best_epoch=[r.best_epoch for r in rows],
        best_checkpoint=[r.best_checkpoint for r in rows],
        error=[r.error for r in rows],
        attempts=[r.attempts for r in rows],
        preemptions=[r.preemptions for r in rows],
    )
    return pa.table(columns)


def history_table(result_grid: Any) -> pa.Table:
    """Every report of every trial, in the order Tune received them, with the attempt that
    made it and the trial's sampled configuration. Nothing is dropped: an epoch reported
    twice (trained again after a restart) is two rows."""
    frames = []
    for result in result_grid:
        frame = reports_of(result)
        if frame is None or frame.empty or "epoch" not in frame:
            continue
        frame = frame.copy()
        frame["trial_id"] = _trial_id(result)
        for name in NAMES:
            frame[name] = result.config.get(name)
        # timestamp: when the epoch's result reached Tune (seconds), ordering the epochs of
        # concurrent trials for the anytime curve
        keep = ["trial_id", "epoch", ATTEMPT, PREEMPTIONS, RESUMED_AT_STEP, "timestamp", "phase", "lr", "train_loss",
                "train_accuracy", "val_accuracy", DIVERGED, *NAMES]
        frames.append(frame[[c for c in keep if c in frame]])
    if not frames:
        return pa.table({"trial_id": pa.array([], pa.string())})
    import pandas as pd

    return pa.Table.from_pandas(pd.concat(frames, ignore_index=True), preserve_index=False)


@dataclass(frozen=True)
class AnytimeCurve:
    """What the search bought as it spent epochs: after each epoch trained (all trials
    together, in the order they finished), the best validation accuracy so far."""

    epochs: list[int]  # cumulative epochs, 1..N
    best: list[float]  # best validation accuracy after that many
    stops: list[int]  # the cumulative epoch at which each early-stopped trial ended

    def epochs_to_reach(self, target: float) -> int | None:
        """Epochs spent until some trial first reached ``target``; None if none did."""
        return next((e for e, b in zip(self.epochs, self.best) if b >= target), None)


def anytime_curve(history: Any, stopped: set[str] = frozenset()) -> AnytimeCurve:
    """The anytime curve of a search's ``history`` (a DataFrame of epoch reports with
    ``trial_id``, ``epoch``, ``timestamp``, ``val_accuracy``); ``stopped`` names the trials
    ASHA stopped early. Epochs are ordered by when their result arrived (then by trial and
    epoch, for reports within the same second)."""
    ordered = history.sort_values(["timestamp", "trial_id", "epoch"], kind="stable").reset_index(drop=True)
    best = ordered["val_accuracy"].cummax().astype(float).tolist()
    last_epoch = ordered.groupby("trial_id")["epoch"].transform("max")
    ends = ordered.index[(ordered["epoch"] == last_epoch) & ordered["trial_id"].isin(stopped)]
    return AnytimeCurve(epochs=list(range(1, len(ordered) + 1)), best=best, stops=[int(i) + 1 for i in ends])


def best_row(rows: list[TrialRow]) -> TrialRow | None:
    scored = [r for r in rows if not math.isnan(r.best_val_accuracy)]
    return max(scored, key=lambda r: r.best_val_accuracy) if scored else None


def write_results(location: Location, experiment: str, rows: list[TrialRow], history: pa.Table) -> dict[str, str]:
    """Write the tables and best configuration into the experiment directory.

    Returns:
        The written paths by name.
    """
    fs = location.filesystem
    base = location.join(experiment)
    paths = {name: f"{base}/{name}" for name in (TRIALS_PARQUET, TRIALS_CSV, HISTORY_PARQUET, BEST_JSON)}
    table = rows_table(rows)
    pq.write_table(table, paths[TRIALS_PARQUET], filesystem=fs)
    with fs.open_output_stream(paths[TRIALS_CSV]) as out:
        pacsv.write_csv(table, out)
    pq.write_table(history, paths[HISTORY_PARQUET], filesystem=fs)
    best = best_row(rows)
    payload = (
        {
            "trial_id": best.trial_id,
            "config": best.config,
            "best_val_accuracy": best.best_val_accuracy,
            "best_epoch": best.best_epoch,
            "best_checkpoint": best.best_checkpoint,
        }
        if best
        else {}
    )
    with fs.open_output_stream(paths[BEST_JSON]) as out:
        out.write(json.dumps(payload, indent=2).encode())
    return paths
