"""Images as uint8 arrays, and the train/validation/test splits every source ends as."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CIFAR_SIDE = 32


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

    def head(self, count: int) -> "Split":
        """The first ``count`` examples."""
        return Split(self.images[:count], self.labels[:count])


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


def stratified_split(split: Split, fraction: float, seed: int) -> tuple[Split, Split]:
    """Divide a split in two, stratified by class; the same seed gives the same division.

    Returns:
        (kept, held out), each in the original order.
    """
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
