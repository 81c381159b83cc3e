"""Image data sets as uint8 arrays, and the train/validation/test splits.

Three sources, all ending as ``(N, 32, 32, 3)`` uint8 images and int labels:

- ``digits``: scikit-learn's bundled handwritten digits (1,797 8x8 grey images, shipped
  inside the package, so it works offline), upsampled to 32x32 RGB.
- ``cifar10``: ``keras.datasets.cifar10.load_data()`` (downloads once to ~/.keras).
- a directory in the CIFAR python-batch format (``data_batch_1..5``, ``test_batch``,
  each a pickled dict with ``b"data"`` rows of 3072 bytes, channels first, and
  ``b"labels"``): what the CIFAR-10 tarball unpacks to, for machines that stage it.

The validation split is carved from the training split with the configured seed. Only
:func:`load_test` reads the test split; the search never calls it.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CIFAR_SIDE = 32
# Data sets hpsearch knows by name (a path names a CIFAR batch directory or staged data).
DATA_SOURCES = ("digits", "cifar10")
# The digits set has no test split of its own; this fixed seed carves one, so the test
# images never change with the search's data seed.
DIGITS_TEST_SEED = 20040
DIGITS_TEST_FRACTION = 0.2


@dataclass(frozen=True)
class Split:
    """Images (N, 32, 32, 3) uint8 and labels (N,) int64."""

    images: np.ndarray
    labels: np.ndarray

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or self.images.shape[1:] != (CIFAR_SIDE, CIFAR_SIDE, 3):
            raise ValueError(f"images must be (N, 32, 32, 3), got {self.images.shape}")
        if len(self.images) != len(self.labels):
            raise ValueError(f"{len(self.images)} images but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class TrainVal:
    """The splits one worker trains and validates on.

    With staged data each worker read only its own shards: ``train`` is this worker's
    part, and ``global_train_size`` counts the whole training split. Otherwise ``train``
    is the whole split and ``global_train_size`` is None.
    """

    train: Split
    val: Split
    num_classes: int
    global_train_size: int | None = None

    @property
    def presharded(self) -> bool:
        return self.global_train_size is not None

    @property
    def train_size(self) -> int:
        return self.global_train_size if self.global_train_size is not None else len(self.train)


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
        dataset: ``digits``, ``cifar10``, a CIFAR python-batch directory, or a staged
            data set (``hpsearch data stage``: a gs:// URI or a directory with a
            manifest), whose validation split was fixed when it was staged.
        validation_fraction: share of the training split held out, stratified by class.
        seed: seed of the division; the same seed gives the same split.
        max_train_examples: keep at most this many training images (after the split).
        shard: (workers, this worker's index): staged data is read shard by shard, each
            worker only its own.

    Returns:
        The two splits and the number of classes.
    """
    from trainables import staged

    if staged.is_staged_uri(dataset):
        location, manifest = staged.open_staged(dataset)
        train = staged.read_split(location, manifest, "train", shard=shard)
        val = staged.read_split(location, manifest, "val")
        total = manifest.examples["train"]
        if max_train_examples is not None and total > max_train_examples:
            keep = max_train_examples // shard[0]
            train, total = Split(train.images[:keep], train.labels[:keep]), max_train_examples
        return TrainVal(train, val, manifest.num_classes, global_train_size=total)
    full, num_classes = _load(dataset, test=False)
    train, val = _stratified_split(full, validation_fraction, seed)
    if max_train_examples is not None and len(train) > max_train_examples:
        train = Split(train.images[:max_train_examples], train.labels[:max_train_examples])
    return TrainVal(train=train, val=val, num_classes=num_classes)


def load_test(dataset: str) -> Split:
    """The test split. Only the final ensemble evaluation reads it, once."""
    from trainables import staged

    if staged.is_staged_uri(dataset):
        return staged.read_split(*staged.open_staged(dataset), "test")
    split, _ = _load(dataset, test=True)
    return split


def _load(dataset: str, *, test: bool) -> tuple[Split, int]:
    if dataset == "digits":
        return _digits(test=test), 10
    if dataset == "cifar10":
        import keras  # deferred: importing Keras starts TensorFlow

        (x_train, y_train), (x_test, y_test) = keras.datasets.cifar10.load_data()
        x, y = (x_test, y_test) if test else (x_train, y_train)
        return Split(x.astype(np.uint8), y.reshape(-1).astype(np.int64)), 10
    return _cifar_directory(Path(dataset), test=test)


def _digits(*, test: bool) -> Split:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    # 0..16 grey levels -> 0..255, 8x8 -> 32x32 by pixel replication (each pixel a 4x4
    # block: no interpolation artefacts, and the digit stays as sharp as the original).
    grey = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)
    big = grey.repeat(4, axis=1).repeat(4, axis=2)
    images = np.repeat(big[..., None], 3, axis=3)
    labels = bunch.target.astype(np.int64)
    train, held_out = _stratified_split(Split(images, labels), DIGITS_TEST_FRACTION, DIGITS_TEST_SEED)
    return held_out if test else train


def _cifar_directory(root: Path, *, test: bool) -> tuple[Split, int]:
    if not root.is_dir():
        raise FileNotFoundError(f"data.dataset: no such directory: {root}")
    names = ["test_batch"] if test else sorted(p.name for p in root.glob("data_batch_*"))
    if not names:
        raise FileNotFoundError(f"data.dataset: no data_batch_* files in {root}")
    images, labels = [], []
    for name in names:
        path = root / name
        if not path.is_file():
            raise FileNotFoundError(f"data.dataset: missing {path}")
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


def _stratified_split(split: Split, fraction: float, seed: int) -> tuple[Split, Split]:
    from sklearn.model_selection import train_test_split

    idx_keep, idx_out = train_test_split(
        np.arange(len(split)), test_size=fraction, random_state=seed, stratify=split.labels
    )
    idx_keep.sort()
    idx_out.sort()
    return (
        Split(split.images[idx_keep], split.labels[idx_keep]),
        Split(split.images[idx_out], split.labels[idx_out]),
    )


def write_cifar_batches(root: Path, train: Split, test: Split, per_batch: int = 10000) -> None:
    """Write images in the CIFAR python-batch format (the inverse of the reader above).

    Used by ``hpsearch data`` tooling and by tests that need a CIFAR-format directory.
    """
    root.mkdir(parents=True, exist_ok=True)

    def dump(name: str, part: Split) -> None:
        rows = part.images.transpose(0, 3, 1, 2).reshape(len(part), -1)
        record = {b"batch_label": name.encode(), b"labels": part.labels.tolist(), b"data": rows}
        with (root / name).open("wb") as handle:
            pickle.dump(record, handle)

    for i, start in enumerate(range(0, len(train), per_batch), start=1):
        dump(f"data_batch_{i}", Split(train.images[start : start + per_batch], train.labels[start : start + per_batch]))
    dump("test_batch", test)
    names = [f"class_{i}".encode() for i in range(int(max(train.labels.max(), test.labels.max())) + 1)]
    with (root / "batches.meta").open("wb") as handle:
        pickle.dump({b"label_names": names}, handle)
