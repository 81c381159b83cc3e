"""Test-time augmentation: a fixed, ordered set of views of each image.

docs/recipe.md section 4: predict several augmented copies of each test image and average
the predicted probabilities. The views here are deterministic (no randomness): the
identity, the horizontal mirror, and shifts of a few pixels, so the same N always
means the same views and results repeat exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from trainables.errors import InputError

SHIFT_PX = 2


@dataclass(frozen=True)
class View:
    name: str
    flip: bool = False
    dy: int = 0
    dx: int = 0


def views(count: int, *, flip: bool = True) -> list[View]:
    """The first ``count`` views, identity first.

    Args:
        count: how many views (1 = no TTA).
        flip: include mirrored views; off for data where a mirror changes the class
            (digits), matching the training augmentation.
    """
    shifts = [(SHIFT_PX, 0), (-SHIFT_PX, 0), (0, SHIFT_PX), (0, -SHIFT_PX)]
    ordered = [View("identity")]
    if flip:
        ordered.append(View("flip", flip=True))
    ordered += [View(f"shift({dy:+d},{dx:+d})", dy=dy, dx=dx) for dy, dx in shifts]
    if flip:
        ordered += [View(f"flip+shift({dy:+d},{dx:+d})", flip=True, dy=dy, dx=dx) for dy, dx in shifts]
    if not 1 <= count <= len(ordered):
        raise InputError(f"--tta must be between 1 and {len(ordered)} here, got {count}")
    return ordered[:count]


def apply_view(images: np.ndarray, view: View) -> np.ndarray:
    """One view of a batch (N, H, W, C); shifted-in borders repeat the edge pixels."""
    out = images[:, :, ::-1] if view.flip else images
    if view.dy or view.dx:
        pad = max(abs(view.dy), abs(view.dx))
        padded = np.pad(out, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="edge")
        h, w = images.shape[1:3]
        top, left = pad - view.dy, pad - view.dx
        out = padded[:, top : top + h, left : left + w]
    return np.ascontiguousarray(out)


def predict_views(model: tf.keras.Model, images: np.ndarray, chosen: list[View], batch_size: int = 256) -> np.ndarray:
    """Probabilities of every view: (views, N, classes)."""
    outputs = []
    for view in chosen:
        batch = apply_view(images, view).astype(np.float32)
        outputs.append(
            np.concatenate([model(batch[i : i + batch_size], training=False).numpy() for i in range(0, len(batch), batch_size)])
        )
    return np.stack(outputs)
