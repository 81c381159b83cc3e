"""Accuracy of a saved checkpoint on the validation split its trial trained against."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from trainables import checkpoint as ckpt
from trainables.augment import eval_dataset
from trainables.data import load_configured


def dataset_accuracy(predict: Callable, data) -> float:
    """Share of a dataset's (images, labels) batches that ``predict`` classifies right."""
    correct, total = 0, 0
    for images, labels in data:
        predicted = np.argmax(np.asarray(predict(images)), axis=-1)
        correct += int(np.sum(predicted == labels.numpy()))
        total += len(predicted)
    return correct / max(total, 1)


def evaluate_checkpoint(directory: Path, batch_size: int = 256) -> float:
    """Load ``model.keras`` from a checkpoint and measure it on the same validation
    split (same data set, fraction and seed, read from the checkpoint's state)."""
    state = ckpt.read_state(directory)
    spec = state.spec
    data = load_configured(spec.data)
    model = ckpt.load_model(directory)
    return dataset_accuracy(lambda x: model(x, training=False), eval_dataset(data.val.images, data.val.labels, batch_size))
