"""The TTA ensemble: members, saved model round trip, TTA on a known case, bad checkpoints."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pyarrow.parquet as pq
import pytest

from search.ensemble import average, build, ensemble_model, load_members, read_candidates
from trainables.storage import resolve
from trainables.data import load_train_val
from trainables.errors import InputError
from trainables.tta import apply_view, predict_views, views

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def experiment(trained_experiment):
    return trained_experiment[0]


def ranked(experiment: Path) -> list[str]:
    rows = pq.read_table(experiment / "trials.parquet").to_pylist()
    return [r["trial_id"] for r in sorted(rows, key=lambda r: -r["best_val_accuracy"])]


def test_candidates_are_ranked_and_loaded(experiment, tmp_path):
    location = resolve(str(experiment.parent))
    candidates = read_candidates(location, experiment.name)
    assert [c.trial_id for c in candidates] == ranked(experiment)
    members = load_members(location, candidates, 2, tmp_path)
    assert [m.trial_id for m in members] == ranked(experiment)[:2]


def test_ensemble_chosen_on_validation_then_test_read_once_and_round_trip(experiment, tmp_path, monkeypatch):
    import search.ensemble
    import trainables.data

    work = tmp_path / "copy"
    shutil.copytree(experiment, work / experiment.name)
    location = resolve(str(work))
    events: list[str] = []
    real_test, real_configured = trainables.data.load_test, trainables.data.load_configured
    real_greedy = search.ensemble.greedy_selection
    val_labels = []

    def counted(kind, load):
        def wrapper(*args, **kwargs):
            events.append(kind)
            split = load(*args, **kwargs)
            if kind == "train_val":
                val_labels.append(split.val.labels)
            return split
        return wrapper

    def greedy(probs, labels, rounds):
        events.append("greedy")
        assert labels is val_labels[0]  # chosen on validation, never on test
        return real_greedy(probs, labels, rounds)

    monkeypatch.setattr(trainables.data, "load_test", counted("test", real_test))
    monkeypatch.setattr(trainables.data, "load_configured", counted("train_val", real_configured))
    monkeypatch.setattr(search.ensemble, "greedy_selection", greedy)
    result = build(location, experiment.name, tta=3, progress=False)  # the defaults: greedy, every trial
    # one read of each split, and the test split only after every selection was made
    assert events.count("test") == 1 and events.count("train_val") == 1, events
    assert events[-1] == "test" and events.count("greedy") >= 3, events
    assert result.library == 3  # every trial's checkpoint, not a top-k
    options = {(r.name, r.split, r.tta_views) for r in result.rows if not r.name.startswith("member")}
    # like with like: best member and ensemble, with and without TTA, on both splits
    assert options == {(who, split, views) for who in ("best member", "ensemble") for split in ("val", "test")
                       for views in (1, 3)}
    val = {(r.name, r.tta_views): r.accuracy for r in result.rows if r.split == "val" and not r.name.startswith("member")}
    (chosen,) = [r for r in result.rows if r.chosen and r.split == "val"]
    assert chosen.accuracy == max(val.values()) >= val[("best member", 1)]
    assert (chosen.name, chosen.tta_views) == (result.chosen.name, result.chosen.views)
    assert result.members and all(m.weight >= 1 for m in result.members)
    saved = work / experiment.name / "ensemble"
    manifest = json.loads((saved / "manifest.json").read_text())
    assert [(m["trial_id"], m["weight"]) for m in manifest["members"]] == [(m.trial_id, m.weight) for m in result.members]
    assert manifest["tta_views"] == result.chosen.views and manifest["library"] == 3
    assert "backbone" in manifest["members"][0]["config"]
    assert (saved / "ensemble_table.csv").read_text().count("\n") == len(result.rows) + 1

    images = load_train_val("digits", 0.2, 0).val.images[:32].astype(np.float32)
    in_memory = ensemble_model(result.members)(images, training=False).numpy()
    by_hand = average([m.model(images, training=False).numpy() for m in result.members],
                      [m.weight for m in result.members])
    np.testing.assert_allclose(in_memory, by_hand, atol=1e-6)
    np.save(tmp_path / "images.npy", images)
    code = (
        "import numpy as np, keras, sys; "
        f"m = keras.saving.load_model({str(saved / 'ensemble.keras')!r}, compile=False); "
        f"np.save({str(tmp_path / 'fresh.npy')!r}, m(np.load({str(tmp_path / 'images.npy')!r}), training=False).numpy())"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert np.max(np.abs(np.load(tmp_path / "fresh.npy") - in_memory)) <= 1e-5


def test_the_command_says_what_it_chose(experiment, tmp_path):
    work = tmp_path / "copy"
    shutil.copytree(experiment, work / experiment.name)
    done = subprocess.run([sys.executable, "-m", "search", "ensemble", str(work / experiment.name), "--tta", "2"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "chosen on validation from 3 checkpoints: " in done.stdout
    assert "| best member | test | 1 |" in done.stdout and "| ensemble | val | 2 |" in done.stdout


def test_tta_of_a_flip_invariant_model_equals_no_tta():
    inputs = keras.Input((32, 32, 3))
    symmetric = keras.layers.Lambda(lambda x: x + keras.ops.flip(x, axis=2))(inputs)
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(symmetric)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(10, activation="softmax")(x)
    model = keras.Model(inputs, outputs)
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (16, 32, 32, 3)).astype(np.float32)
    plain = predict_views(model, images, views(1))
    flipped = predict_views(model, images, views(2, flip=True))
    assert flipped.shape == (2, 16, 10)
    np.testing.assert_allclose(flipped.mean(axis=0), plain[0], atol=1e-5)
    # and the views themselves differ, so the check is not vacuous
    assert not np.array_equal(apply_view(images, views(2)[1]), images)


def test_views_are_deterministic_and_respect_flip():
    assert [v.name for v in views(3)] == ["identity", "flip", "shift(+2,+0)"]
    assert all(not v.flip for v in views(5, flip=False))
    image = np.arange(32 * 32 * 3, dtype=np.float32).reshape(1, 32, 32, 3)
    shifted = apply_view(image, views(3)[2])
    np.testing.assert_array_equal(shifted[0, 2:], image[0, :-2])
    with pytest.raises(InputError, match="--tta"):
        views(50)


def corrupt(checkpoint: str) -> None:
    (Path(checkpoint) / "model.keras").write_bytes(b"not a keras file")


def test_one_corrupt_checkpoint_is_skipped_with_a_warning(experiment, tmp_path, caplog):
    work = tmp_path / "copy"
    shutil.copytree(experiment, work / experiment.name)
    table = pq.read_table(work / experiment.name / "trials.parquet").to_pylist()
    moved = {r["trial_id"]: r["best_checkpoint"].replace(str(experiment.parent), str(work)) for r in table}
    for row in table:
        row["best_checkpoint"] = moved[row["trial_id"]]
    import pyarrow as pa

    pq.write_table(pa.Table.from_pylist(table), work / experiment.name / "trials.parquet")
    first, second, third = ranked(experiment)
    corrupt(moved[second])
    location = resolve(str(work))
    with caplog.at_level(logging.WARNING):
        members = load_members(location, read_candidates(location, experiment.name), 3, tmp_path)
    assert [m.trial_id for m in members] == [first, third]
    assert any(f"skipping trial {second}" in r.getMessage() for r in caplog.records)

    for checkpoint in moved.values():
        corrupt(checkpoint)
    done = subprocess.run([sys.executable, "-m", "search", "ensemble", str(work / experiment.name)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert "no usable checkpoint" in done.stderr
    assert all(f"skipping trial t{i}" in done.stderr for i in range(3))


def test_unfinished_search_is_refused(tmp_path):
    (tmp_path / "running").mkdir()
    done = subprocess.run([sys.executable, "-m", "search", "ensemble", str(tmp_path / "running")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "has not finished" in done.stderr
