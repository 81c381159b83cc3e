"""Accuracy of a saved checkpoint on the validation split its trial trained against."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from trainables import checkpoint as ckpt
from trainables.augment import eval_dataset
from trainables.data import load_train_val


def evaluate_checkpoint(directory: Path, batch_size: int = 256) -> float:
    """Load ``model.keras`` from a checkpoint and measure it on the same validation
    split (same data set, fraction and seed, read from the checkpoint's state)."""
    state = ckpt.read_state(directory)
    spec = state.spec
    data = load_train_val(spec.dataset, spec.validation_fraction, spec.data_seed, spec.max_train_examples)
    model = ckpt.load_model(directory)
    correct = 0
    for images, labels in eval_dataset(data.val.images, data.val.labels, batch_size):
        predicted = np.argmax(model(images, training=False).numpy(), axis=-1)
        correct += int(np.sum(predicted == labels.numpy()))
    return correct / len(data.val)
