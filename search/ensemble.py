"""The best checkpoints of a finished search, combined into a TTA ensemble.

The library is every trial's best checkpoint (``top_k`` caps it, best first). Members
are chosen on the validation split only, by Caruana et al. 2004's greedy selection with
replacement, started from the best single model and stopped when no addition improves
validation: once with one view per image and once with the TTA views. The result is
whichever of the best member, the best member with TTA, the ensemble and the ensemble
with TTA is best on validation (ties go to the simpler), so it is never worse than the
best member there; when nothing beats that member it is the member alone, and the table
says so. The test split is read once, after the choice. docs/recipe.md section 4:
averaging the TTA probabilities of several models beat every single model (95.07%
against 93.93-94.48%); on a wide search's library a plain top-k average can lose to its
best member, which is why the members are chosen.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
from collections.abc import Iterator
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

# The most additions greedy selection makes after its first member: a bound on the work,
# rarely reached (selection stops when validation stops improving).
DEFAULT_GREEDY_ROUNDS = 25


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
    directory: Path | None = None  # the checkpoint's local copy


@dataclass(frozen=True)
class Row:
    name: str
    split: str
    tta_views: int
    accuracy: float
    members: str = ""  # trial ids with their weights
    chosen: bool = False  # the option saved as the result


# ---------------------------------------------------------------------------- pure rules


def accuracy(probabilities: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(np.argmax(probabilities, axis=-1) == labels))


def average(probabilities: list[np.ndarray], weights: list[int] | None = None) -> np.ndarray:
    """Weighted mean of probability arrays (weights are member multiplicities)."""
    weights = weights or [1] * len(probabilities)
    return sum(w * p for w, p in zip(weights, probabilities)) / sum(weights)


def log_loss(probabilities: np.ndarray, labels: np.ndarray) -> float:
    return float(-np.mean(np.log(np.clip(probabilities[np.arange(len(labels)), labels], 1e-12, 1))))


def score(probabilities: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """What selection maximises: accuracy, then lower log loss (which breaks ties)."""
    return accuracy(probabilities, labels), -log_loss(probabilities, labels)


def greedy_selection(val_probs: list[np.ndarray], labels: np.ndarray, max_rounds: int) -> list[int]:
    """Caruana et al. 2004's ensemble selection with replacement, on validation.

    Starts from the best single model (by :func:`score`; ties: the earlier one), then
    each round adds, with replacement, the model whose addition scores best, as long as
    that beats the current ensemble's score; at most ``max_rounds`` additions. Accuracy
    is compared first, so the ensemble is never less accurate than its first member.

    Returns:
        How many times each model was picked (its weight); zero means left out.
    """
    scores = [score(p, labels) for p in val_probs]
    first = max(range(len(val_probs)), key=lambda i: (scores[i], -i))
    counts = [0] * len(val_probs)
    counts[first] = 1
    total, current = val_probs[first].copy(), scores[first]
    for _ in range(max_rounds):
        picks = [score((total + p) / (sum(counts) + 1), labels) for p in val_probs]
        best = max(range(len(val_probs)), key=lambda i: (picks[i], -i))
        if picks[best] <= current:
            break
        counts[best] += 1
        total, current = total + val_probs[best], picks[best]
    return counts


@dataclass(frozen=True)
class Option:
    """One way to predict: members with weights (indices into the library), and views."""

    name: str
    weights: tuple[int, ...]
    views: int


def choose(options: list[Option], val_scores: list[tuple[float, float]]) -> Option:
    """The option best on validation; ties go to the earlier (the simpler) one."""
    return options[max(range(len(options)), key=lambda i: (val_scores[i], -i))]


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


def iter_members(location: Location, candidates: list[Candidate], scratch: Path) -> Iterator[Member]:
    """Each usable checkpoint in rank order, loaded; a missing or corrupt one is skipped
    with a warning that names its trial."""
    from trainables import checkpoint as ckpt

    count = 0
    for candidate in candidates:
        try:
            directory = _local_copy(location, candidate.checkpoint, scratch, candidate.trial_id)
            model = ckpt.load_model(directory)
            spec = ckpt.read_state(directory).spec
        except Exception as exc:  # any unreadable checkpoint: skip it, keep the others
            log.warning("skipping trial %s: checkpoint %s is unusable (%s)", candidate.trial_id,
                        candidate.checkpoint, str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            continue
        model.name = f"member_{count}"
        count += 1
        yield Member(candidate.trial_id, candidate.config, candidate.checkpoint, candidate.best_val_accuracy,
                     model=model, spec=spec, directory=directory)


def load_members(location: Location, candidates: list[Candidate], limit: int | None, scratch: Path) -> list[Member]:
    """Up to ``limit`` (None: every) usable checkpoints in rank order, loaded."""
    return list(itertools.islice(iter_members(location, candidates, scratch), limit))


# ---------------------------------------------------------------------------- building


@dataclass
class EnsembleResult:
    members: list[Member]  # the chosen option's, with their weights
    rows: list[Row]
    directory: str
    chosen: Option
    library: int  # checkpoints selection chose from

    @property
    def best_alone(self) -> bool:
        """Nothing beat the best member on validation."""
        return self.chosen.name == "best member"


def options_of(val: list[tuple[np.ndarray, np.ndarray]], labels: np.ndarray, views: int,
               max_rounds: int) -> list[Option]:
    """The four ways to predict, from each library model's (one view, TTA) validation
    probabilities: the best member with one view and with TTA, then greedy ensembles
    with one view and with TTA. The best member is the best model with one view."""
    size = len(val)
    best = greedy_selection([v[0] for v in val], labels, 0).index(1)
    alone = tuple(int(i == best) for i in range(size))
    options = [Option("best member", alone, 1)]
    if views > 1:
        options.append(Option("best member", alone, views))
    options.append(Option("ensemble", tuple(greedy_selection([v[0] for v in val], labels, max_rounds)), 1))
    if views > 1:
        options.append(Option("ensemble", tuple(greedy_selection([v[1] for v in val], labels, max_rounds)), views))
    return options


def build(
    location: Location,
    experiment: str,
    *,
    top_k: int | None = None,
    tta: int = 4,
    greedy_rounds: int = DEFAULT_GREEDY_ROUNDS,
    progress: bool = True,
) -> EnsembleResult:
    """Choose on validation, then measure on test once; save the chosen ensemble and the table.

    Args:
        location, experiment: where the finished search lives.
        top_k: the library: the top-k trials with usable checkpoints (None: every one).
        tta: test-time views per image (1 = none).
        greedy_rounds: the most additions greedy selection makes after its first member.
        progress: show a progress bar over the prediction work.
    """
    candidates = read_candidates(location, experiment)  # before TensorFlow starts
    from tqdm import tqdm

    from trainables import checkpoint as ckpt
    from trainables.data import load_configured, load_test
    from trainables.tta import predict_views, views

    with tempfile.TemporaryDirectory(prefix="hpsearch-ensemble-") as scratch:
        data, chosen_views, library, val = None, None, [], []
        # Validation predictions, one checkpoint at a time (only one model held): they
        # alone decide membership.
        with tqdm(total=min(len(candidates), top_k or len(candidates)), desc="validation", unit="model",
                  disable=not progress) as bar:
            for member in itertools.islice(iter_members(location, candidates, Path(scratch)), top_k):
                if data is None:
                    data = load_configured(member.spec.data)
                    chosen_views = views(tta, flip=member.spec.recipe.flip)
                per_view = predict_views(member.model, data.val.images, chosen_views)
                val.append((per_view[0], per_view.mean(axis=0)))
                member.model = None
                library.append(member)
                bar.update(1)
        if not library:
            raise EnsembleError(f"no usable checkpoint in {location.uri}/{experiment}: nothing to ensemble")
        n = len(chosen_views)
        options = options_of(val, data.val.labels, n, greedy_rounds)

        def probs_of(option: Option, predictions: dict[int, tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
            index = 0 if option.views == 1 else 1
            used = [i for i, w in enumerate(option.weights) if w]
            return average([predictions[i][index] for i in used], [option.weights[i] for i in used])

        val_by_index = dict(enumerate(val))
        val_scores = [score(probs_of(o, val_by_index), data.val.labels) for o in options]
        chosen = choose(options, val_scores)

        # The test split, read once, now that every choice is made: the members of any
        # option, reloaded one at a time; the chosen option's are kept for the saved model.
        needed = sorted({i for o in options for i, w in enumerate(o.weights) if w})
        test = load_test(library[0].spec.data.dataset)
        test_preds: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        with tqdm(total=len(needed) * n, desc="test", unit="view", disable=not progress) as bar:
            for i in needed:
                model = ckpt.load_model(library[i].directory)
                if chosen.weights[i]:
                    library[i].model = model
                per_view = predict_views(model, test.images, chosen_views)
                test_preds[i] = (per_view[0], per_view.mean(axis=0))
                bar.update(n)

        def who(option: Option) -> str:
            return ", ".join(f"{library[i].trial_id} x{w}" for i, w in enumerate(option.weights) if w)

        rows: list[Row] = []
        for split, preds, labels in (("val", val_by_index, data.val.labels), ("test", test_preds, test.labels)):
            rows += [Row(o.name, split, o.views, accuracy(probs_of(o, preds), labels), who(o), o == chosen)
                     for o in options]
            for i in needed:  # each member as the ensembles use it: with and without TTA
                name = f"member {library[i].trial_id} ({library[i].config['backbone']})"
                rows += [Row(name, split, 1, accuracy(preds[i][0], labels), library[i].trial_id),
                         Row(name, split, n, accuracy(preds[i][1], labels), library[i].trial_id)]

        members = []
        for i, w in enumerate(chosen.weights):
            if w:
                library[i].model.name = f"member_{len(members)}"
                library[i].weight = w
                members.append(library[i])
        directory = location.join(experiment, ENSEMBLE_DIR)
        result = EnsembleResult(members=members, rows=rows, directory=directory, chosen=chosen,
                                library=len(library))
        save(location, result, scratch=Path(scratch))
        return result


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
    lines = ["| model | split | TTA views | accuracy | members (weights) | chosen |", "|---|---|---|---|---|---|"]
    lines += [f"| {r.name} | {r.split} | {r.tta_views} | {r.accuracy:.4f} | {r.members} | {'yes' if r.chosen else ''} |"
              for r in rows]
    return "\n".join(lines) + "\n"


def summary(result: EnsembleResult) -> str:
    """What was chosen, in words: the console's last lines."""
    chosen = result.chosen
    views = "with TTA" if chosen.views > 1 else "one view"
    val = next(r.accuracy for r in result.rows if r.chosen and r.split == "val")
    test = next(r.accuracy for r in result.rows if r.chosen and r.split == "test")
    first = next(r for r in result.rows if r.name == "best member" and r.split == "test" and r.tta_views == 1)
    members = ", ".join(f"{m.trial_id} x{m.weight}" for m in result.members)
    lines = [f"chosen on validation from {result.library} checkpoints: {chosen.name} ({views}): {members}; "
             f"validation {val:.4f}, test {test:.4f} (the best member alone, one view: test {first.accuracy:.4f})"]
    if result.best_alone:
        lines.append("no ensemble beat the best member on validation: the result is that member alone")
    return "\n".join(lines)


def save(location: Location, result: EnsembleResult, *, scratch: Path) -> None:
    """Write ensemble.keras (the chosen option), manifest.json and the table (CSV and Markdown)."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.fs as pafs

    fs, directory, rows = location.filesystem, result.directory, result.rows
    fs.create_dir(directory, recursive=True)
    local_model = scratch / MODEL_FILE
    ensemble_model(result.members).save(local_model)
    pafs.copy_files(str(local_model), f"{directory}/{MODEL_FILE}", source_filesystem=pafs.LocalFileSystem(),
                    destination_filesystem=fs)
    manifest = {
        "chosen": result.chosen.name,
        "tta_views": result.chosen.views,
        "library": result.library,
        "best_member_alone": result.best_alone,
        "members": [
            {"trial_id": m.trial_id, "weight": m.weight, "checkpoint": m.checkpoint,
             "search_val_accuracy": m.search_val_accuracy, "config": m.config}
            for m in result.members
        ],
        "table": [asdict(r) for r in rows],
    }
    with fs.open_output_stream(f"{directory}/{MANIFEST}") as out:
        out.write(json.dumps(manifest, indent=2).encode())
    columns = ("name", "split", "tta_views", "accuracy", "members", "chosen")
    table = pa.table({k: [getattr(r, k) for r in rows] for k in columns})
    with fs.open_output_stream(f"{directory}/{TABLE_CSV}") as out:
        pacsv.write_csv(table, out)
    with fs.open_output_stream(f"{directory}/{TABLE_MD}") as out:
        out.write(table_markdown(rows).encode())
