"""Data sources and splits: digits (shipped with scikit-learn) and CIFAR batch directories."""

import shutil

import numpy as np
import pytest

from support import write_cifar_batches
from trainables.data import load_test, load_train_val
from trainables.errors import InputError
from trainables.splits import Split


def test_digits_are_32px_rgb_and_split_by_seed():
    a = load_train_val("digits", 0.2, seed=1)
    b = load_train_val("digits", 0.2, seed=1)
    c = load_train_val("digits", 0.2, seed=2)
    assert a.train.images.shape[1:] == (32, 32, 3) and a.train.images.dtype == np.uint8
    assert a.num_classes == 10
    assert np.array_equal(a.val.labels, b.val.labels) and np.array_equal(a.val.images, b.val.images)
    assert not np.array_equal(a.val.images, c.val.images)
    # every class appears in validation (stratified)
    assert set(np.unique(a.val.labels)) == set(range(10))
    # real digits: ink in the middle, background at the edges, grey (R == G == B)
    assert a.train.images[:, 12:20, 12:20].mean() > a.train.images[:, :2, :2].mean()
    assert np.array_equal(a.train.images[..., 0], a.train.images[..., 2])


def test_digits_test_split_is_fixed_and_disjoint():
    test = load_test("digits")
    tv = load_train_val("digits", 0.2, seed=5)
    assert len(test) + len(tv.train) + len(tv.val) == 1797
    seen = {img.tobytes() for img in np.concatenate([tv.train.images, tv.val.images])}
    # digits has a few exact duplicate images; nearly all test images are unseen
    assert sum(img.tobytes() in seen for img in test.images) < 0.05 * len(test)
    assert np.array_equal(load_test("digits").labels, test.labels)


def test_max_train_examples():
    tv = load_train_val("digits", 0.2, seed=0, max_train_examples=100)
    assert len(tv.train) == 100


def test_cifar_batch_directory_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    train = Split(rng.integers(0, 256, (50, 32, 32, 3), dtype=np.uint8), np.arange(50) % 10)
    test = Split(rng.integers(0, 256, (20, 32, 32, 3), dtype=np.uint8), np.arange(20) % 10)
    write_cifar_batches(tmp_path, train, test, per_batch=20)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "batches.meta", "data_batch_1", "data_batch_2", "data_batch_3", "test_batch",
    ]
    loaded_test = load_test(str(tmp_path))
    assert np.array_equal(loaded_test.images, test.images)
    tv = load_train_val(str(tmp_path), 0.2, seed=0)
    assert len(tv.train) + len(tv.val) == 50
    together = np.concatenate([tv.train.images, tv.val.images])
    assert {x.tobytes() for x in together} == {x.tobytes() for x in train.images}


def test_cifar_directory_layout_matches_keras_reader(tmp_path):
    """The files read back with Keras's own CIFAR batch reader, image for image."""
    from keras.src.datasets.cifar import load_batch

    rng = np.random.default_rng(1)
    train = Split(rng.integers(0, 256, (10, 32, 32, 3), dtype=np.uint8), np.arange(10) % 10)
    write_cifar_batches(tmp_path, train, train)
    data, labels = load_batch(str(tmp_path / "data_batch_1"))
    assert np.array_equal(data.transpose(0, 2, 3, 1), train.images)
    assert list(labels) == list(train.labels)


def test_missing_directory_is_a_clear_error(tmp_path):
    with pytest.raises(InputError, match="data.dataset"):
        load_train_val(str(tmp_path / "absent"), 0.2, seed=0)


# ---------------------------------------------------------------------------- contract

def _colour_set(root):
    from support import write_colour_batches

    return write_colour_batches(root, n_train=200, n_test=50)


def _prepare(name: str, tmp_path, monkeypatch) -> str:
    """A ``data.dataset`` value that selects source ``name``, backed by real files in
    that source's own format (cifar10: Keras's loader, answering from a CIFAR batch
    directory the test wrote, since nothing can be downloaded here)."""
    if name == "digits":
        return "digits"
    if name == "cifar-directory":
        return str(_colour_set(tmp_path / "cifar"))
    if name == "staged":
        from search.stage import stage

        stage(str(_colour_set(tmp_path / "cifar")), str(tmp_path / "staged"), validation_fraction=0.2,
              shard_size=64, progress=lambda _: None)
        return str(tmp_path / "staged")
    if name == "cifar10":
        import keras

        from trainables.data import _cifar_directory

        root = str(_colour_set(tmp_path / "cifar"))

        def load_data():
            train, test = _cifar_directory(root, False)[0], _cifar_directory(root, True)[0]
            return (train.images, train.labels[:, None]), (test.images, test.labels[:, None])

        monkeypatch.setattr(keras.datasets.cifar10, "load_data", load_data)
        # and Keras's cache holds the set, as after a first download (what the check sees)
        cached = tmp_path / "keras" / "datasets" / "cifar-10-batches-py-target" / "cifar-10-batches-py"
        shutil.copytree(root, cached)
        monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
        return "cifar10"
    raise AssertionError(f"no fixture for data source {name!r}: add one here")


@pytest.fixture(params=[s.name for s in __import__("trainables.data", fromlist=["SOURCES"]).SOURCES])
def source_dataset(request, tmp_path, monkeypatch):
    return request.param, _prepare(request.param, tmp_path, monkeypatch)


def test_each_source_is_found_and_gives_disjoint_32px_splits(source_dataset):
    from trainables.data import find_source

    name, dataset = source_dataset
    assert find_source(dataset).name == name
    data = load_train_val(dataset, 0.2, seed=0)
    test = load_test(dataset)
    for split in (data.train, data.val, test):
        assert split.images.shape[1:] == (32, 32, 3) and split.images.dtype == np.uint8 and len(split) > 0
        assert split.labels.min() >= 0 and split.labels.max() < data.num_classes
    assert data.train_size == len(data.train)
    train = {x.tobytes() for x in data.train.images}
    assert not any(x.tobytes() in train for x in data.val.images[:50])  # validation is held out


def test_an_unknown_dataset_names_the_accepted_ones():
    from trainables.data import find_source

    assert find_source("mnist") is None
    with pytest.raises(InputError, match="data.dataset must be one of digits, cifar10"):
        load_train_val("mnist", 0.2, seed=0)


def test_each_source_checks_its_data_cheaply_before_any_trial(source_dataset):
    from trainables.data import check_available

    check_available(source_dataset[1])  # prepared: readable


@pytest.mark.parametrize(("dataset", "message"), [
    ("/nonexistent/cifar", "no such directory"),
    ("cifar10", "not in Keras's cache and https://www.cs.toronto.edu"),
])
def test_unreadable_data_is_bad_input_before_any_trial(dataset, message, tmp_path, monkeypatch):
    from trainables.data import check_available

    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "empty-keras"))  # no cached CIFAR-10; offline here
    with pytest.raises(InputError, match=message):
        check_available(dataset)


def test_a_staging_that_never_finished_is_bad_input(fake_gcs):
    from trainables.data import check_available

    with pytest.raises(InputError, match="no manifest.json"):
        check_available("gs://hpsearch-test/never-staged")
