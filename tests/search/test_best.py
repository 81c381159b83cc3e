"""Each trial's best checkpoint is copied apart."""

import json

import pytest

import search.best as best_module
from search.best import BestKeeper
from trainables.checkpoint import STATE_FILE


def checkpoint(root, epoch, value):
    """A checkpoint directory as train_trial writes it (a model file and the state)."""
    directory = root / f"ckpt_{epoch}"
    directory.mkdir()
    (directory / "model.keras").write_bytes(bytes([epoch]) * 100_000)
    (directory / STATE_FILE).write_text(json.dumps({"epoch": epoch, "metrics": {"val_accuracy": value}}))
    return directory


def test_only_the_best_epoch_is_kept(tmp_path):
    keeper = BestKeeper(str(tmp_path / "experiment"), "trial_a")
    for epoch, value in [(1, 0.5), (2, 0.4), (3, 0.7), (4, 0.7)]:
        keeper.offer({"epoch": epoch, "val_accuracy": value}, checkpoint(tmp_path, epoch, value))
    kept = sorted(p.name for p in (tmp_path / "experiment" / "best" / "trial_a").iterdir())
    assert kept == ["epoch_0003"]  # 0.4 is worse, the tie at epoch 4 keeps the earlier
    # a keeper made again (a resumed trial) knows the best it kept
    assert BestKeeper(str(tmp_path / "experiment"), "trial_a").best == 0.7


def test_a_failed_copy_is_raised(tmp_path, monkeypatch):
    def failing_copy(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(best_module.pafs, "copy_files", failing_copy)
    keeper = BestKeeper(str(tmp_path / "experiment"), "trial_a")
    with pytest.raises(OSError, match="No space left"):
        keeper.offer({"epoch": 1, "val_accuracy": 0.5}, checkpoint(tmp_path, 1, 0.5))
