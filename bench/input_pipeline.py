"""Augmented images per second: hpsearch's tf.data pipeline against Keras's legacy
``ImageDataGenerator`` doing the same augmentations, and against what one training step
consumes.

The augmentations are the recipe's: horizontal flip, shift by 10% of the side, Cutout
x2 (25% of the side), saturation and contrast jitter (0.2). ``ImageDataGenerator``
(``tf_keras``, the Keras 2 API: ``pip install -e ".[bench]"``) does flip and shift
itself; Cutout, saturation and contrast go in its per-image ``preprocessing_function``,
as in the articles the recipe comes from. Images: scikit-learn's digits at 32x32,
repeated to ``--images``.

    python bench/input_pipeline.py [--images 8192] [--batch 256]

Prints the ratios and writes ``bench/results/input_pipeline.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PARAMS = dict(shift_fraction=0.1, cutout_fraction=0.25, cutout_count=2, saturation_delta=0.2,
              contrast_delta=0.2, flip=True)


def images(count: int) -> tuple[np.ndarray, np.ndarray]:
    from trainables.data import load_train_val

    data = load_train_val("digits", 0.2, 0).train
    reps = -(-count // len(data))
    return np.tile(data.images, (reps, 1, 1, 1))[:count], np.tile(data.labels, reps)[:count]


def rate_tf_data(x: np.ndarray, y: np.ndarray, batch: int) -> float:
    from trainables.augment import train_dataset
    from trainables.spec import AugmentParams

    params = AugmentParams(**PARAMS)
    for _ in train_dataset(x, y, batch, params, seed=0, epoch=0):  # warm-up: trace the graph
        pass
    start, seen = time.perf_counter(), 0
    for epoch in range(1, 3):
        for images_, _ in train_dataset(x, y, batch, params, seed=0, epoch=epoch):
            seen += int(images_.shape[0])
    return seen / (time.perf_counter() - start)


def legacy_preprocess(rng: np.random.Generator):
    side = round(32 * PARAMS["cutout_fraction"])

    def preprocess(image: np.ndarray) -> np.ndarray:
        image = image.copy()
        for _ in range(PARAMS["cutout_count"]):
            top, left = rng.integers(0, 32 - side + 1, 2)
            image[top : top + side, left : left + side] = 0
        grey = image.mean(axis=-1, keepdims=True)
        image = grey + (image - grey) * rng.uniform(1 - PARAMS["saturation_delta"], 1 + PARAMS["saturation_delta"])
        mean = image.mean()
        image = mean + (image - mean) * rng.uniform(1 - PARAMS["contrast_delta"], 1 + PARAMS["contrast_delta"])
        return np.clip(image, 0, 255)

    return preprocess


def rate_image_data_generator(x: np.ndarray, y: np.ndarray, batch: int) -> float:
    from tf_keras.preprocessing.image import ImageDataGenerator

    generator = ImageDataGenerator(
        horizontal_flip=True,
        width_shift_range=PARAMS["shift_fraction"],
        height_shift_range=PARAMS["shift_fraction"],
        fill_mode="reflect",
        preprocessing_function=legacy_preprocess(np.random.default_rng(0)),
    )
    flow = generator.flow(x.astype(np.float32), y, batch_size=batch, shuffle=True, seed=0)
    next(flow)  # warm-up
    steps = len(x) // batch
    start, seen = time.perf_counter(), 0
    for _ in range(steps):
        images_, _ = next(flow)
        seen += len(images_)
    return seen / (time.perf_counter() - start)


def rate_training_step(batch: int = 32, steps: int = 20) -> float:
    """Images per second one EfficientNet-B0 training step (32 px, from scratch) takes in."""
    import keras
    import tensorflow as tf

    from trainables.model import ModelSpec, build_model, set_phase
    from trainables.params import Hyperparams
    from trainables.train import PhaseStep

    spec = ModelSpec(Hyperparams("B0", dropout=0.2), num_classes=10, weights="none", image_size=32)
    model = build_model(spec)
    set_phase(model, "finetune", spec)
    step = PhaseStep(model, learning_rate=0.01, momentum=0.9, strategy=tf.distribute.get_strategy(),
                     global_batch=batch)
    x, y = images(batch)
    x = tf.constant(x, tf.float32)
    y = tf.constant(y)
    for _ in range(3):
        step.train_step(x, y)
    start = time.perf_counter()
    for _ in range(steps):
        loss, _ = step.train_step(x, y)
    float(loss)
    keras.backend.clear_session()
    return batch * steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8192)
    parser.add_argument("--batch", type=int, default=256)
    args = parser.parse_args()
    x, y = images(args.images)
    tf_data = rate_tf_data(x, y, args.batch)
    print(f"tf.data pipeline:        {tf_data:10.0f} images/s", flush=True)
    legacy = rate_image_data_generator(x, y, args.batch)
    print(f"ImageDataGenerator:      {legacy:10.0f} images/s", flush=True)
    step = rate_training_step()
    print(f"B0 training step takes:  {step:10.0f} images/s (32 px, batch 32)")
    ratio = tf_data / legacy
    print(f"ratio tf.data / ImageDataGenerator: {ratio:.1f}  (goal >= 10)")
    print(f"ratio tf.data / training step:      {tf_data / step:.1f}")
    result = {
        "benchmark": "input_pipeline",
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "images": args.images,
        "batch": args.batch,
        "augmentations": PARAMS,
        "tf_data_images_per_s": round(tf_data, 1),
        "image_data_generator_images_per_s": round(legacy, 1),
        "training_step_images_per_s": round(step, 1),
        "ratio": round(ratio, 2),
        "ratio_to_training_step": round(tf_data / step, 2),
        "goal": 10,
    }
    out = ROOT / "bench" / "results" / "input_pipeline.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
