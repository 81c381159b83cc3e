"""Each trial's best checkpoint is copied apart on a thread of its own."""

import json
import threading

import pytest

import search.best as best_module
from search.best import BestKeeper, kept_best
from trainables.checkpoint import STATE_FILE
from trainables.storage import resolve


def checkpoint(root, epoch, value):
    """A checkpoint directory as train_trial writes it (a model file and the state)."""
    directory = root / f"ckpt_{epoch}"
    directory.mkdir()
    (directory / "model.keras").write_bytes(bytes([epoch]) * 100_000)
    (directory / STATE_FILE).write_text(json.dumps({"epoch": epoch, "metrics": {"val_accuracy": value}}))
    return directory


def test_offer_returns_before_the_copy_and_the_source_may_go_at_once(tmp_path, monkeypatch):
    """The copy into storage is held back; offer has returned, the reporter deletes its
    directory (as Ray Train's asynchronous upload does), and the kept copy is still
    whole once the copy runs: its files were linked aside before offer returned."""
    import shutil

    release, copying = threading.Event(), threading.Event()
    real_copy = best_module.pafs.copy_files

    def held_copy(*args, **kwargs):
        copying.set()
        assert release.wait(30)
        return real_copy(*args, **kwargs)

    monkeypatch.setattr(best_module.pafs, "copy_files", held_copy)
    keeper = BestKeeper(str(tmp_path / "experiment"), "trial_a")
    source = checkpoint(tmp_path, 1, 0.5)
    keeper.offer({"epoch": 1, "val_accuracy": 0.5}, source)
    assert copying.wait(30)  # the copy started on the keeper's thread, and waits
    shutil.rmtree(source)
    release.set()
    keeper.close()
    path = kept_best(resolve(str(tmp_path)), "experiment", "trial_a", 1)
    assert path is not None
    kept = tmp_path / "experiment" / "best" / "trial_a" / "epoch_0001"
    assert (kept / "model.keras").read_bytes() == bytes([1]) * 100_000


def test_only_the_best_epoch_is_kept(tmp_path):
    keeper = BestKeeper(str(tmp_path / "experiment"), "trial_a")
    for epoch, value in [(1, 0.5), (2, 0.4), (3, 0.7), (4, 0.7)]:
        keeper.offer({"epoch": epoch, "val_accuracy": value}, checkpoint(tmp_path, epoch, value))
    keeper.close()
    kept = sorted(p.name for p in (tmp_path / "experiment" / "best" / "trial_a").iterdir())
    assert kept == ["epoch_0003"]  # 0.4 is worse, the tie at epoch 4 keeps the earlier
    # a keeper made again (a resumed trial) knows the best it kept
    assert BestKeeper(str(tmp_path / "experiment"), "trial_a").best == 0.7


def test_a_failed_copy_is_raised(tmp_path, monkeypatch):
    def failing_copy(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(best_module.pafs, "copy_files", failing_copy)
    keeper = BestKeeper(str(tmp_path / "experiment"), "trial_a")
    keeper.offer({"epoch": 1, "val_accuracy": 0.5}, checkpoint(tmp_path, 1, 0.5))
    with pytest.raises(OSError, match="No space left"):
        keeper.flush()  # what a reporter calls before Tune sees the epoch
    keeper.offer({"epoch": 2, "val_accuracy": 0.6}, checkpoint(tmp_path, 2, 0.6))
    with pytest.raises(OSError, match="No space left"):
        keeper.close()
