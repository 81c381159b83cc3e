"""Data sources, and the train/validation/test splits a trial reads from them.

Every source ends as ``(N, 32, 32, 3)`` uint8 images and int labels. :data:`SOURCES`
is the registry, asked in order which source a ``data.dataset`` value names:

- ``staged``: a data set written by ``hpsearch data stage`` (a storage URI such as
  ``gs://``, or a local directory holding a manifest); its validation split was fixed at
  staging, and each worker reads only its own training shards.
- ``digits``: scikit-learn's bundled handwritten digits (1,797 8x8 grey images, shipped
  inside the package, so it works offline), upsampled to 32x32 RGB.
- ``cifar10``: ``keras.datasets.cifar10.load_data()`` (downloads once to ~/.keras).
- ``cifar-directory``: a directory in the CIFAR python-batch format (``data_batch_1..5``,
  ``test_batch``, each a pickled dict with ``b"data"`` rows of 3072 bytes, channels
  first, and ``b"labels"``): what the CIFAR-10 tarball unpacks to.

The validation split is carved from the training split with the configured seed. Only
:func:`load_test` reads the test split; the search never calls it.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trainables import staged
from trainables.errors import InputError
from trainables.spec import DataConfig
from trainables.splits import CIFAR_SIDE, Split, TrainVal, stratified_split

# The digits set has no test split of its own; this fixed seed carves one, so the test
# images never change with the search's data seed.
DIGITS_TEST_SEED = 20040
DIGITS_TEST_FRACTION = 0.2


@dataclass(frozen=True)
class DataSource:
    """One kind of data set.

    Attributes:
        name: what messages and the CLI call it.
        named: True when ``data.dataset`` names it by ``name`` (``digits``); False when a
            path or URI selects it.
        matches: whether a ``data.dataset`` value selects this source (cheap: no reads
            of remote storage).
        train_val: (dataset, validation fraction, seed, (workers, index)) -> the splits.
        test: dataset -> the test split.
        check: dataset -> None, raising InputError when the data cannot be read; cheap,
            so the driver runs it before any trial (a failure every trial would repeat).
    """

    name: str
    named: bool
    matches: Callable[[str], bool]
    train_val: Callable[[str, float, int, tuple[int, int]], TrainVal]
    test: Callable[[str], Split]
    check: Callable[[str], object] = lambda dataset: None


def _carved(load: Callable[[str, bool], tuple[Split, int]]):
    """train_val for a source with one training split: hold out a stratified share."""

    def train_val(dataset: str, fraction: float, seed: int, shard: tuple[int, int]) -> TrainVal:
        full, num_classes = load(dataset, False)
        train, val = stratified_split(full, fraction, seed)
        return TrainVal(train=train, val=val, num_classes=num_classes)

    return train_val


def _digits(_: str, test: bool) -> tuple[Split, int]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    # 0..16 grey levels -> 0..255, 8x8 -> 32x32 by pixel replication (each pixel a 4x4
    # block: no interpolation artefacts, and the digit stays as sharp as the original).
    grey = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)
    big = grey.repeat(4, axis=1).repeat(4, axis=2)
    images = np.repeat(big[..., None], 3, axis=3)
    labels = bunch.target.astype(np.int64)
    train, held_out = stratified_split(Split(images, labels), DIGITS_TEST_FRACTION, DIGITS_TEST_SEED)
    return (held_out if test else train), 10


def _cifar10(_: str, test: bool) -> tuple[Split, int]:
    import keras  # deferred: importing Keras starts TensorFlow

    (x_train, y_train), (x_test, y_test) = keras.datasets.cifar10.load_data()
    x, y = (x_test, y_test) if test else (x_train, y_train)
    return Split(x.astype(np.uint8), y.reshape(-1).astype(np.int64)), 10


def _cifar_directory(dataset: str, test: bool) -> tuple[Split, int]:
    root = Path(dataset)
    if not root.is_dir():
        raise InputError(f"data.dataset: no such directory: {root}")
    names = ["test_batch"] if test else sorted(p.name for p in root.glob("data_batch_*"))
    if not names:
        raise InputError(f"data.dataset: no data_batch_* files in {root}")
    images, labels = [], []
    for name in names:
        path = root / name
        if not path.is_file():
            raise InputError(f"data.dataset: missing {path}")
        with path.open("rb") as handle:
            batch = pickle.load(handle, encoding="bytes")
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        images.append(data.reshape(-1, 3, CIFAR_SIDE, CIFAR_SIDE).transpose(0, 2, 3, 1))
        labels.append(np.asarray(batch[b"labels"], dtype=np.int64))
    meta = root / "batches.meta"
    if meta.is_file():
        with meta.open("rb") as handle:
            num_classes = len(pickle.load(handle, encoding="bytes")[b"label_names"])
    else:
        num_classes = 10
    return Split(np.concatenate(images), np.concatenate(labels)), num_classes


def _staged_train_val(dataset: str, fraction: float, seed: int, shard: tuple[int, int]) -> TrainVal:
    location, manifest = staged.open_staged(dataset)
    train = staged.read_split(location, manifest, "train", shard=shard)
    val = staged.read_split(location, manifest, "val")
    return TrainVal(train, val, manifest.num_classes, global_train_size=manifest.examples["train"])


def _staged_test(dataset: str) -> Split:
    return staged.read_split(*staged.open_staged(dataset), "test")


CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"  # keras.datasets.cifar10's origin


def _check_cifar10(_: str) -> None:
    """Keras's cached copy, or its download address reachable from here."""
    import urllib.error
    import urllib.request

    cache = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "datasets"
    if any(cache.glob("cifar-10-batches-py*/**/data_batch_1")):
        return
    try:
        urllib.request.urlopen(urllib.request.Request(CIFAR10_URL, method="HEAD"), timeout=10).close()
    except (OSError, urllib.error.URLError) as exc:
        raise InputError(
            f"data.dataset cifar10: not in Keras's cache and {CIFAR10_URL} cannot be reached "
            f"({getattr(exc, 'reason', exc)}). Stage it once where it can be downloaded (`hpsearch data stage "
            "--dataset cifar10 --to gs://BUCKET/data/cifar10`) and use that URI, or point data.dataset at an "
            "unpacked CIFAR-10 directory") from None


def _check_cifar_directory(dataset: str) -> None:
    root = Path(dataset)
    if not root.is_dir():
        raise InputError(f"data.dataset: no such directory: {root}")
    if not any(root.glob("data_batch_*")) or not (root / "test_batch").is_file():
        raise InputError(f"data.dataset: {root} has no data_batch_* and test_batch files (the CIFAR python layout)")


def _looks_like_path(value: str) -> bool:
    return "/" in value or value.startswith(".")


SOURCES: tuple[DataSource, ...] = (
    DataSource("staged", False, staged.is_staged_uri, _staged_train_val, _staged_test,
               check=staged.open_staged),
    DataSource("digits", True, lambda d: d == "digits", _carved(_digits), lambda d: _digits(d, True)[0]),
    DataSource("cifar10", True, lambda d: d == "cifar10", _carved(_cifar10), lambda d: _cifar10(d, True)[0],
               check=_check_cifar10),
    DataSource("cifar-directory", False, lambda d: _looks_like_path(d) and "://" not in d,
               _carved(_cifar_directory), lambda d: _cifar_directory(d, True)[0], check=_check_cifar_directory),
)
NAMED_SOURCES: tuple[str, ...] = tuple(s.name for s in SOURCES if s.named)


def accepted_sources() -> str:
    """What a ``data.dataset`` value may be, for error messages."""
    return f"one of {', '.join(NAMED_SOURCES)}, a CIFAR batch directory or a staged data set (a directory or storage URI)"


def find_source(dataset: str) -> DataSource | None:
    """The source a ``data.dataset`` value names, or None."""
    return next((source for source in SOURCES if source.matches(dataset)), None)


def _source(dataset: str) -> DataSource:
    source = find_source(dataset)
    if source is None:
        raise InputError(f"data.dataset must be {accepted_sources()}, got {dataset!r}")
    return source


def load_train_val(
    dataset: str,
    validation_fraction: float,
    seed: int,
    max_train_examples: int | None = None,
    *,
    shard: tuple[int, int] = (1, 0),
) -> TrainVal:
    """The training split of a data set, divided into train and validation.

    Args:
        dataset: a ``data.dataset`` value (see :data:`SOURCES`).
        validation_fraction: share of the training split held out, stratified by class
            (a staged set keeps the split it was staged with).
        seed: seed of the division; the same seed gives the same split.
        max_train_examples: keep at most this many training images (after the split).
        shard: (workers, this worker's index): staged data is read shard by shard, each
            worker only its own.

    Returns:
        The two splits and the number of classes.
    """
    data = _source(dataset).train_val(dataset, validation_fraction, seed, shard)
    if max_train_examples is None or data.train_size <= max_train_examples:
        return data
    if data.presharded:  # each worker keeps its share of the cap
        return TrainVal(data.train.head(max_train_examples // shard[0]), data.val, data.num_classes,
                        global_train_size=max_train_examples)
    return TrainVal(data.train.head(max_train_examples), data.val, data.num_classes)


def load_configured(data: DataConfig, *, shard: tuple[int, int] = (1, 0)) -> TrainVal:
    """:func:`load_train_val` for a config's (or a trial spec's) ``data`` section."""
    return load_train_val(data.dataset, data.validation_fraction, data.seed, data.max_train_examples, shard=shard)


def check_available(dataset: str) -> None:
    """Raise InputError when the data set cannot be read (run once, before any trial)."""
    _source(dataset).check(dataset)


def load_test(dataset: str) -> Split:
    """The test split. Only the final ensemble evaluation reads it, once."""
    return _source(dataset).test(dataset)
