"""The best checkpoints of a finished search, combined into a TTA ensemble.

Members are chosen on the validation split only (top-k by validation accuracy, or
Caruana et al. 2004's greedy selection with replacement); the test split is read once,
after the members are fixed. docs/recipe.md section 4: averaging the TTA probabilities of
several models beat every single model (95.07% against 93.93-94.48%).
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from search.layout import ENSEMBLE_DIR, TRIALS_PARQUET
from search.layout import ENSEMBLE_MANIFEST as MANIFEST
from search.layout import ENSEMBLE_MODEL as MODEL_FILE
from search.layout import ENSEMBLE_TABLE_CSV as TABLE_CSV
from search.layout import ENSEMBLE_TABLE_MD as TABLE_MD
from trainables.errors import HpsearchError
from trainables.params import NAMES
from trainables.storage import Location

log = logging.getLogger(__name__)


class EnsembleError(HpsearchError):
    """The ensemble cannot be built; the message says why and what to do."""


@dataclass(frozen=True)
class Candidate:
    trial_id: str
    best_val_accuracy: float
    checkpoint: str
    config: dict[str, Any]


@dataclass
class Member:
    trial_id: str
    config: dict[str, Any]
    checkpoint: str
    search_val_accuracy: float
    weight: int = 1
    model: Any = field(default=None, repr=False)
    spec: Any = field(default=None, repr=False)


@dataclass(frozen=True)
class Row:
    name: str
    split: str
    tta_views: int
    accuracy: float


# ---------------------------------------------------------------------------- pure rules


def accuracy(probabilities: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(np.argmax(probabilities, axis=-1) == labels))


def average(probabilities: list[np.ndarray], weights: list[int] | None = None) -> np.ndarray:
    """Weighted mean of probability arrays (weights are member multiplicities)."""
    weights = weights or [1] * len(probabilities)
    return sum(w * p for w, p in zip(weights, probabilities)) / sum(weights)


def greedy_selection(val_probs: list[np.ndarray], labels: np.ndarray, rounds: int) -> list[int]:
    """Caruana et al. 2004: start empty; each round add, with replacement, the member
    whose addition gives the best validation accuracy (ties: lower log loss).

    Returns:
        How many times each member was picked (its weight); zero means left out.
    """
    counts = [0] * len(val_probs)
    total = np.zeros_like(val_probs[0])
    for _ in range(rounds):
        best, best_key = None, None
        for i, probs in enumerate(val_probs):
            mixed = (total + probs) / (sum(counts) + 1)
            loss = -np.mean(np.log(np.clip(mixed[np.arange(len(labels)), labels], 1e-12, 1)))
            key = (accuracy(mixed, labels), -loss)
            if best_key is None or key > best_key:
                best, best_key = i, key
        counts[best] += 1
        total = total + val_probs[best]
    return counts


# ---------------------------------------------------------------------------- experiment


def read_candidates(location: Location, experiment: str) -> list[Candidate]:
    """Trials of a finished search with a checkpoint, best validation accuracy first.

    Raises:
        EnsembleError: the experiment has no trials table (missing, or still running).
    """
    path = location.join(experiment, TRIALS_PARQUET)
    if not location.exists(path):
        raise EnsembleError(
            f"{location.uri}/{experiment} has no {TRIALS_PARQUET}: the search has not finished "
            "(or this is not an experiment directory). Finish it with `hpsearch run --resume` first"
        )
    rows = pq.read_table(path, filesystem=location.filesystem).to_pylist()

    candidates = [
        Candidate(
            trial_id=r["trial_id"],
            best_val_accuracy=r["best_val_accuracy"],
            checkpoint=r["best_checkpoint"],
            config={k: r[k] for k in NAMES if k in r},
        )
        for r in rows
        if r["best_checkpoint"] and r["best_val_accuracy"] is not None and not math.isnan(r["best_val_accuracy"])
    ]
    return sorted(candidates, key=lambda c: c.best_val_accuracy, reverse=True)


def _local_copy(location: Location, checkpoint: str, scratch: Path, trial_id: str) -> Path:
    """A local directory with the checkpoint (copied from remote storage when needed)."""
    if not location.is_remote:
        return Path(checkpoint)
    import pyarrow.fs as pafs

    # one directory per trial: the kept bests of two trials may share a name (epoch_0002)
    target = scratch / trial_id
    target.mkdir(parents=True, exist_ok=True)  # copy_files writes files, not their folder
    pafs.copy_files(checkpoint, str(target), source_filesystem=location.filesystem,
                    destination_filesystem=pafs.LocalFileSystem())
    return target


def load_members(location: Location, candidates: list[Candidate], limit: int, scratch: Path) -> list[Member]:
    """Load up to ``limit`` usable checkpoints in rank order; a missing or corrupt one is
    skipped with a warning that names its trial."""
    from trainables import checkpoint as ckpt

    members: list[Member] = []
    for candidate in candidates:
        if len(members) == limit:
            break
        try:
            directory = _local_copy(location, candidate.checkpoint, scratch, candidate.trial_id)
            model = ckpt.load_model(directory)
            spec = ckpt.read_state(directory).spec
        except Exception as exc:  # any unreadable checkpoint: skip it, keep the others
            log.warning("skipping trial %s: checkpoint %s is unusable (%s)", candidate.trial_id,
                        candidate.checkpoint, str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            continue
        model.name = f"member_{len(members)}"
        members.append(
            Member(candidate.trial_id, candidate.config, candidate.checkpoint, candidate.best_val_accuracy,
                   model=model, spec=spec)
        )
    return members


# ---------------------------------------------------------------------------- building


@dataclass
class EnsembleResult:
    members: list[Member]
    rows: list[Row]
    directory: str


def build(
    location: Location,
    experiment: str,
    *,
    top_k: int = 5,
    tta: int = 4,
    greedy_rounds: int = 0,
    progress: bool = True,
) -> EnsembleResult:
    """Choose members, measure them, save the ensemble and its table.

    Args:
        location, experiment: where the finished search lives.
        top_k: members (the top-k trials with usable checkpoints; with greedy selection,
            the pool it chooses from).
        tta: test-time views per image (1 = none).
        greedy_rounds: 0 for plain top-k; otherwise rounds of greedy selection.
        progress: show a progress bar over the prediction work.
    """
    candidates = read_candidates(location, experiment)  # before TensorFlow starts
    from tqdm import tqdm

    from trainables.data import load_configured, load_test
    from trainables.tta import predict_views, views

    with tempfile.TemporaryDirectory(prefix="hpsearch-ensemble-") as scratch:
        members = load_members(location, candidates, top_k, Path(scratch))
        if not members:
            raise EnsembleError(f"no usable checkpoint in {location.uri}/{experiment}: nothing to ensemble")
        spec = members[0].spec
        data = load_configured(spec.data)
        chosen_views = views(tta, flip=spec.recipe.flip)

        n = len(chosen_views)

        def predict(images: np.ndarray, desc: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
            """Each member's (single-view, TTA-mean) probabilities."""
            out = {}
            with tqdm(total=len(members) * n, desc=desc, unit="view", disable=not progress) as bar:
                for m in members:
                    per_view = predict_views(m.model, images, chosen_views)
                    out[m.trial_id] = (per_view[0], per_view.mean(axis=0))
                    bar.update(n)
            return out

        def ensemble_rows(split: str, probs: dict, labels: np.ndarray) -> list[Row]:
            weights = [m.weight for m in members]
            return [
                Row("ensemble", split, views_used, accuracy(average([probs[m.trial_id][i] for m in members], weights), labels))
                for i, views_used in ((0, 1), (1, n))
            ]

        def name(m: Member) -> str:
            return f"member {m.trial_id} ({m.config['backbone']})"

        # Validation predictions: they alone decide membership.
        val = predict(data.val.images, "validation")
        if greedy_rounds:
            counts = greedy_selection([val[m.trial_id][1] for m in members], data.val.labels, greedy_rounds)
            for m, c in zip(members, counts):
                m.weight = c
            members = [m for m in members if m.weight > 0]
        rows: list[Row] = []
        for m in members:
            single, tta_mean = val[m.trial_id]
            rows += [Row(name(m), "val", 1, accuracy(single, data.val.labels)),
                     Row(name(m), "val", n, accuracy(tta_mean, data.val.labels))]
        rows += ensemble_rows("val", val, data.val.labels)

        # The test split, read once, now that the members are fixed.
        test = load_test(spec.data.dataset)
        probs = predict(test.images, "test")
        for m in members:  # each member as the ensemble is measured: with and without TTA
            single, tta_mean = probs[m.trial_id]
            rows += [Row(name(m), "test", 1, accuracy(single, test.labels)),
                     Row(name(m), "test", n, accuracy(tta_mean, test.labels))]
        rows += ensemble_rows("test", probs, test.labels)

        directory = location.join(experiment, ENSEMBLE_DIR)
        save(location, directory, members, rows, tta=n, scratch=Path(scratch))
        return EnsembleResult(members=members, rows=rows, directory=directory)


def ensemble_model(members: list[Member]) -> Any:
    """One Keras model that averages its members' probabilities (weights as repeats)."""
    import keras

    inputs = keras.Input(shape=members[0].model.input_shape[1:], name="image")
    outputs = []
    for m in members:
        out = m.model(inputs, training=False)
        outputs += [out] * m.weight
    averaged = outputs[0] if len(outputs) == 1 else keras.layers.Average(name="average")(outputs)
    return keras.Model(inputs, averaged, name="hpsearch_ensemble")


def table_markdown(rows: list[Row]) -> str:
    lines = ["| model | split | TTA views | accuracy |", "|---|---|---|---|"]
    lines += [f"| {r.name} | {r.split} | {r.tta_views} | {r.accuracy:.4f} |" for r in rows]
    return "\n".join(lines) + "\n"


def save(location: Location, directory: str, members: list[Member], rows: list[Row], *, tta: int, scratch: Path) -> None:
    """Write ensemble.keras, manifest.json and the table (CSV and Markdown)."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.fs as pafs

    fs = location.filesystem
    fs.create_dir(directory, recursive=True)
    local_model = scratch / MODEL_FILE
    ensemble_model(members).save(local_model)
    pafs.copy_files(str(local_model), f"{directory}/{MODEL_FILE}", source_filesystem=pafs.LocalFileSystem(),
                    destination_filesystem=fs)
    manifest = {
        "tta_views": tta,
        "members": [
            {"trial_id": m.trial_id, "weight": m.weight, "checkpoint": m.checkpoint,
             "search_val_accuracy": m.search_val_accuracy, "config": m.config}
            for m in members
        ],
        "table": [asdict(r) for r in rows],
    }
    with fs.open_output_stream(f"{directory}/{MANIFEST}") as out:
        out.write(json.dumps(manifest, indent=2).encode())
    table = pa.table({k: [getattr(r, k) for r in rows] for k in ("name", "split", "tta_views", "accuracy")})
    with fs.open_output_stream(f"{directory}/{TABLE_CSV}") as out:
        pacsv.write_csv(table, out)
    with fs.open_output_stream(f"{directory}/{TABLE_MD}") as out:
        out.write(table_markdown(rows).encode())

