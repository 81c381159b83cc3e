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
        self.filesystem = None  # read only when the reports are empty
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


def test_a_diverged_trial_is_a_result_not_an_early_stop():
    reports = [{"epoch": 1, "attempt": 1, "val_accuracy": 0.1, "timestamp": 0, "diverged": False},
               {"epoch": 2, "attempt": 1, "val_accuracy": 0.1, "timestamp": 1, "diverged": True}]
    (row,) = trial_rows([Result("t2", reports)], "val_accuracy", "max", planned_epochs=lambda config: 5,
                        kept_best=lambda trial_id, epoch: None)
    assert row.status == "TERMINATED" and row.diverged and not row.stopped_early
    (healthy,) = trial_rows([rerun_trial()], "val_accuracy", "max", planned_epochs=lambda config: 5,
                            kept_best=lambda trial_id, epoch: None)
    assert not healthy.diverged and healthy.stopped_early  # 3 of 5 epochs: ASHA's


def test_the_study_says_what_pruned_a_trial(tmp_path):
    """A trial ended before its planned epochs is PRUNED in study.db, with the user
    attribute pruned_by: "diverged" (its loss) or "scheduler" (ASHA)."""
    import optuna

    from search.config import Config, SearchConfig, StorageConfig
    from search.run import make_searcher
    from search.space import param_space
    from search.study import PRUNED_BY
    from trainables.storage import resolve

    config = Config(search=SearchConfig(name="pruned"), storage=StorageConfig(path=str(tmp_path)))
    searcher = make_searcher(config, resolve(str(tmp_path)))
    searcher.set_search_properties("val_accuracy", "max", param_space(config.space))
    for trial_id, diverged in (("a", True), ("b", False)):
        searcher.suggest(trial_id)
        first = {"epoch": 1, "training_iteration": 1, "val_accuracy": 0.1, "planned_epochs": 5, "diverged": False}
        searcher.on_trial_result(trial_id, first)
        searcher.on_trial_complete(trial_id, {**first, "epoch": 2, "training_iteration": 2, "diverged": diverged})
    trials = optuna.load_study(study_name="pruned", storage=f"sqlite:///{tmp_path / 'pruned' / 'study.db'}").trials
    assert [t.state.name for t in trials] == ["PRUNED", "PRUNED"]
    assert [t.user_attrs[PRUNED_BY] for t in trials] == ["diverged", "scheduler"]


def test_a_parameter_the_space_fixes_gets_no_panel_in_the_report():
    from search.config import FloatRange, SpaceConfig
    from search.report import searched_params

    space = SpaceConfig(backbones=("B0",), unfreeze_fraction=FloatRange(1.0, 1.0))
    names = [p.name for p in searched_params(space)]
    assert "unfreeze_fraction" not in names and "backbone" not in names
    assert "max_lr" in names and "dropout" in names


def test_reports_emptied_by_a_restart_are_read_from_the_progress_csv(tmp_path):
    """A trial restarted after a failure can find its stored result.json emptied by Tune
    (search.results.reports_of); its progress.csv still has the rows, and the history
    and the trials table read them from there."""
    import pyarrow.fs

    trial_dir = tmp_path / "t3"
    trial_dir.mkdir()
    (trial_dir / "result.json").write_text("")
    (trial_dir / "progress.csv").write_text("epoch,attempt,val_accuracy,timestamp,planned_epochs,trial_id\n"
                                            "1,1,0.5,10,3,000123\n")
    result = Result("t3", [{"epoch": 1}])
    result.metrics_dataframe = pd.DataFrame()  # what Tune read from the empty result.json
    result.path, result.filesystem = str(trial_dir), pyarrow.fs.LocalFileSystem()
    history = history_table([result]).to_pandas()
    assert history["epoch"].tolist() == [1] and history["val_accuracy"].tolist() == [0.5]
    (row,) = trial_rows([result], "val_accuracy", "max", planned_epochs=lambda config: 3)
    assert row.epochs_run == 1 and row.best_val_accuracy == 0.5


def test_the_study_is_uploaded_at_most_once_a_minute_while_trials_end(monkeypatch):
    """The study file grows with every trial: uploaded whole after each, a search's
    traffic would grow with the square of its trials. Ten trials ending within a minute
    upload it once; the next one after the minute uploads it again."""
    from search import study

    uploads = []
    monkeypatch.setattr(study, "upload", lambda location, experiment: uploads.append(now[0]))
    now = [0.0]
    callback = study.UploadStudy(location=None, experiment="exp", clock=lambda: now[0])
    for second in range(10):
        now[0] = float(second)
        callback.on_trial_complete(0, [], None)
    assert uploads == [0.0]
    now[0] = study.UPLOAD_INTERVAL_S + 1
    callback.on_trial_error(0, [], None)
    assert uploads == [0.0, study.UPLOAD_INTERVAL_S + 1]
