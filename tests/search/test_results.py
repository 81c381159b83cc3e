"""The tables a search writes: the history keeps every report, the trials table one view."""

from __future__ import annotations

import pandas as pd

from search.results import history_table, latest_per_epoch, trial_rows


class Result:
    """What the tables read from a Tune result."""

    def __init__(self, trial_id: str, reports: list[dict]):
        self.metrics_dataframe = pd.DataFrame(reports)
        self.metrics = {"trial_id": trial_id, **reports[-1]}
        self.config = {"backbone": "B0", "max_lr": 0.01}
        self.path = f"/experiments/{trial_id}"
        self.error = None
        self.checkpoint = None
        self.best_checkpoints = []


def rerun_trial() -> Result:
    """Epoch 2 was in flight when its driver died: the trial's next start (attempt 2),
    resumed from epoch 1's checkpoint, trained and reported it again."""
    reports = [(1, 1, 0.50), (2, 1, 0.55), (2, 2, 0.60), (3, 2, 0.70)]
    return Result("t1", [{"epoch": e, "attempt": a, "val_accuracy": v, "timestamp": i, "planned_epochs": 3}
                         for i, (e, a, v) in enumerate(reports)])


def test_the_history_keeps_every_report_and_the_attempt_that_made_it():
    history = history_table([rerun_trial()]).to_pandas()
    assert history[["epoch", "attempt"]].values.tolist() == [[1, 1], [2, 1], [2, 2], [3, 2]]
    latest = latest_per_epoch(history)
    assert latest[["epoch", "val_accuracy"]].values.tolist() == [[1, 0.50], [2, 0.60], [3, 0.70]]


def test_the_trials_table_counts_each_epoch_once():
    (row,) = trial_rows([rerun_trial()], "val_accuracy", "max", planned_epochs=lambda config: 3,
                        kept_best=lambda trial_id, epoch: f"/best/{trial_id}/{epoch}")
    assert (row.epochs_run, row.best_epoch, row.attempts) == (3, 3, 2)
