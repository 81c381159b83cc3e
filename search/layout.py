"""An experiment's directory, declared once: every file and folder a search writes under
``storage.path/search.name`` (docs/fault-tolerance.md describes each). The modules that
write them import their names from here.
"""

from __future__ import annotations

# Written by the search (search.results, search.experiment)
TRIALS_PARQUET = "trials.parquet"  # one row per trial
TRIALS_CSV = "trials.csv"  # the same, for spreadsheets
HISTORY_PARQUET = "history.parquet"  # every epoch report as Tune received it
BEST_JSON = "best_config.json"  # the best trial's configuration and accuracy
CONFIG_JSON = "search_config.json"  # the config as validated; a resume compares with it
STUDY_DB = "study.db"  # the Optuna study (search.study)
ROUNDS_JSON = "rounds.json"  # the Tune runs a search is made of (search.rounds)
ROUNDS_DIR = "rounds"  # rounds/round-K: the runs after the first
LEASE_FILE = "driver.lease"  # the driver that runs the search (search.lease)
BEST_DIR = "best"  # best/<trial id>/epoch_NNNN: each trial's best checkpoint (search.best)
TRAIN_RUNS = "train_runs"  # train_runs/<trial id>: a distributed trial's Ray Train runs

# Written by `hpsearch ensemble` (search.ensemble)
ENSEMBLE_DIR = "ensemble"
ENSEMBLE_MODEL = "ensemble.keras"
ENSEMBLE_MANIFEST = "manifest.json"
ENSEMBLE_TABLE_CSV = "ensemble_table.csv"
ENSEMBLE_TABLE_MD = "ensemble_table.md"

# Written by `hpsearch report` (search.report)
REPORT_DIR = "report"
