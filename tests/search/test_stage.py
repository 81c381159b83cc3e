"""hpsearch data stage: CIFAR batch directory -> Parquet shards, local and on a GCS emulator."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from search.stage import StageError, stage
from trainables import staged
from trainables.data import load_test, load_train_val


@pytest.fixture(scope="module")
def cifar_dir(tmp_path_factory):
    """A small directory in the real CIFAR python-batch layout (two training batches)."""
    from support import write_cifar_batches
    from trainables.splits import Split

    rng = np.random.default_rng(1)

    def split(n):
        return Split(rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), np.arange(n, dtype=np.int64) % 10)

    root = tmp_path_factory.mktemp("cifar-batches")
    write_cifar_batches(root, split(300), split(50), per_batch=200)
    assert sorted(p.name for p in root.iterdir()) == ["batches.meta", "data_batch_1", "data_batch_2", "test_batch"]
    return root


def test_shard_rules():
    assert staged.shard_ranges(5, 2) == [(0, 2), (2, 4), (4, 5)]
    assert staged.worker_shards(["a", "b", "c", "d", "e"], 2, 1) == ["b", "d"]
    with pytest.raises(staged.StagedDataError, match="fewer than the 3 workers"):
        staged.worker_shards(["a", "b"], 3, 0)


def check_round_trip(uri, source):
    """The staged splits are exactly the loader's splits, and workers split the shards."""
    expected = load_train_val(str(source), 0.2, 5)
    whole = load_train_val(uri, 0.2, 5)
    assert whole.presharded and whole.train_size == len(expected.train) == 240
    np.testing.assert_array_equal(whole.train.images, expected.train.images)
    np.testing.assert_array_equal(whole.val.labels, expected.val.labels)
    np.testing.assert_array_equal(load_test(uri).images, load_test(str(source)).images)
    parts = [load_train_val(uri, 0.2, 5, shard=(2, i)) for i in range(2)]
    assert [len(p.train) for p in parts] == [140, 100]  # shards 100, 100, 40: worker 0 reads 0 and 2
    assert all(p.train_size == 240 for p in parts)
    both = np.concatenate([p.train.labels for p in parts])
    assert sorted(both.tolist()) == sorted(expected.train.labels.tolist())  # disjoint, complete


def test_stage_to_a_local_directory(cifar_dir, tmp_path):
    target = tmp_path / "staged"
    manifest = stage(str(cifar_dir), str(target), validation_fraction=0.2, seed=5, shard_size=100)
    assert manifest.examples == {"train": 240, "val": 60, "test": 50}
    assert (target / "manifest.json").is_file() and len(list(target.glob("g-*/train/*.parquet"))) == 3
    check_round_trip(str(target), cifar_dir)
    with pytest.raises(StageError, match="--overwrite"):
        stage(str(cifar_dir), str(target))


def test_an_interrupted_overwrite_leaves_the_old_set_and_a_finished_one_the_new(cifar_dir, tmp_path, monkeypatch):
    target = tmp_path / "staged"
    stage(str(cifar_dir), str(target), validation_fraction=0.2, seed=5, shard_size=100)
    old_train = load_train_val(str(target), 0.2, 5).train
    (old_generation,) = [p.name for p in target.glob("g-*")]

    real_write_split = staged.write_split

    def dies_at_the_test_split(location, generation, name, split, shard_size):
        if name == "test":
            raise OSError("disk full")
        return real_write_split(location, generation, name, split, shard_size)

    monkeypatch.setattr(staged, "write_split", dies_at_the_test_split)
    with pytest.raises(OSError, match="disk full"):  # a new split (seed 6) half written
        stage(str(cifar_dir), str(target), validation_fraction=0.2, seed=6, shard_size=100, overwrite=True)
    again = load_train_val(str(target), 0.2, 5)  # still the old set, whole
    np.testing.assert_array_equal(again.train.images, old_train.images)
    assert staged.open_staged(str(target))[1].seed == 5

    monkeypatch.setattr(staged, "write_split", real_write_split)
    stage(str(cifar_dir), str(target), validation_fraction=0.2, seed=6, shard_size=100, overwrite=True)
    manifest = staged.open_staged(str(target))[1]
    assert manifest.seed == 6 and not manifest.shards["train"][0].startswith(old_generation)
    expected = load_train_val(str(cifar_dir), 0.2, 6)
    np.testing.assert_array_equal(load_train_val(str(target), 0.2, 6).train.images, expected.train.images)
    # the replaced shards are gone, and so are the interrupted staging's
    assert [p.name for p in target.glob("g-*")] == [manifest.shards["train"][0].split("/")[0]]
    assert not list(target.glob(".manifest.json.*"))


def test_stage_to_fake_gcs(cifar_dir, fake_gcs):
    stage(str(cifar_dir), "gs://hpsearch-test/cifar", validation_fraction=0.2, seed=5, shard_size=100)
    check_round_trip("gs://hpsearch-test/cifar", cifar_dir)


def test_unfinished_staging_is_refused(tmp_path):
    (tmp_path / "half" / "train").mkdir(parents=True)
    with pytest.raises(staged.StagedDataError, match="no manifest.json"):
        staged.open_staged(str(tmp_path / "half"))


def test_cli_stage_and_bad_arguments(cifar_dir, tmp_path):
    def cli(*args):
        return subprocess.run([sys.executable, "-m", "search", "data", "stage", *args],
                              capture_output=True, text=True, timeout=300)

    done = cli("--dataset", str(cifar_dir), "--to", str(tmp_path / "out"), "--shard-size", "120")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["examples"] == {"train": 270, "val": 30, "test": 50} and summary["shards"]["train"] == 3
    bad = cli("--dataset", "imagenet", "--to", str(tmp_path / "x"))
    assert bad.returncode == 2 and "--dataset" in bad.stderr and "Traceback" not in bad.stderr
    bad = cli("--dataset", str(cifar_dir), "--to", "s3://bucket/x")
    assert bad.returncode == 2 and "--to" in bad.stderr


def test_a_trial_trains_on_staged_shards(cifar_dir, tmp_path):
    from support import tiny_spec
    from trainables.train import train_trial

    target = tmp_path / "staged"
    stage(str(cifar_dir), str(target), validation_fraction=0.2, seed=5, shard_size=100)
    reports = []
    spec = tiny_spec(dataset=str(target), max_train_examples=None, head_epochs=0, warmup_epochs=0)
    train_trial(spec, lambda metrics, directory: (reports.append(metrics), shutil.rmtree(directory)))
    assert [m["epoch"] for m in reports] == [1]
    assert 0.0 <= reports[0]["val_accuracy"] <= 1.0
