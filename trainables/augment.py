"""The tf.data input pipeline and the recipe's augmentations (docs/recipe.md section 1).

Augmentations work on whole batches with stateless random ops, so a pipeline is fast
(vectorised, no per-image Python) and deterministic: the same seed and epoch give the
same images, whatever the thread timing. Images stay in the 0-255 range: EfficientNet
rescales and normalises inside the model (its ``preprocess_input`` is the identity).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from trainables.spec import AugmentParams


def cutout_side(image_side: int, fraction: float) -> int:
    """Side in pixels of one Cutout square: ``fraction`` of the image side, rounded."""
    if not 0 <= fraction <= 1:
        raise ValueError(f"cutout fraction must be in [0, 1], got {fraction}")
    return int(round(image_side * fraction))


def cutout(images: tf.Tensor, side: int, count: int, seed: tf.Tensor) -> tf.Tensor:
    """Blank ``count`` squares of ``side`` pixels in every image (DeVries & Taylor 2017).

    Each square lies wholly inside its image (top-left corner uniform over the valid
    positions), so one square erases exactly ``side**2`` pixels; squares of one image may
    overlap. The fill is 0 (black in the 0-255 input range).

    Args:
        images: (B, H, W, C) float batch.
        side: square side in pixels; 0 or count 0 returns the batch unchanged.
        count: squares per image.
        seed: shape (2,) int seed for the stateless draws.
    """
    if side <= 0 or count <= 0:
        return images
    shape = tf.shape(images)
    batch, height, width = shape[0], shape[1], shape[2]
    tops = tf.random.stateless_uniform(
        [batch, count], seed=seed, minval=0, maxval=height - side + 1, dtype=tf.int32
    )
    lefts = tf.random.stateless_uniform(
        [batch, count], seed=seed + [0, 1], minval=0, maxval=width - side + 1, dtype=tf.int32
    )
    rows = tf.range(height)[None, None, :, None]  # (1, 1, H, 1)
    cols = tf.range(width)[None, None, None, :]  # (1, 1, 1, W)
    tops, lefts = tops[:, :, None, None], lefts[:, :, None, None]  # (B, K, 1, 1)
    inside = (rows >= tops) & (rows < tops + side) & (cols >= lefts) & (cols < lefts + side)
    erased = tf.reduce_any(inside, axis=1)  # (B, H, W)
    return images * tf.cast(~erased, images.dtype)[..., None]


def _per_image_factor(batch: tf.Tensor, delta: float, seed: tf.Tensor) -> tf.Tensor:
    return tf.random.stateless_uniform(
        [batch, 1, 1, 1], seed=seed, minval=1.0 - delta, maxval=1.0 + delta
    )


def augment_batch(images: tf.Tensor, params: AugmentParams, seed: tf.Tensor) -> tf.Tensor:
    """Flip, shift, Cutout x n, saturation and contrast, each drawn per image.

    Args:
        images: (B, H, W, 3) float32 in 0-255.
        params: the trial's settings.
        seed: shape (2,) int seed; the same seed gives the same output.

    Returns:
        The augmented batch, clipped to 0-255.
    """
    seeds = tf.random.experimental.stateless_split(seed, num=6)
    batch = tf.shape(images)[0]
    side = images.shape[1]
    if params.flip:
        flip = tf.random.stateless_uniform([batch, 1, 1, 1], seed=seeds[0]) < 0.5
        images = tf.where(flip, tf.reverse(images, axis=[2]), images)
    if params.shift_fraction > 0:
        max_shift = params.shift_fraction * side
        offsets = tf.round(
            tf.random.stateless_uniform([batch, 2], seed=seeds[1], minval=-max_shift, maxval=max_shift)
        )
        # A pure translation as a projective transform, one per image: the vectorised op
        # Keras's RandomTranslation uses. Edge pixels repeat, like ImageDataGenerator.
        ones, zeros = tf.ones([batch]), tf.zeros([batch])
        transforms = tf.stack(
            [ones, zeros, -offsets[:, 0], zeros, ones, -offsets[:, 1], zeros, zeros], axis=1
        )
        images = tf.raw_ops.ImageProjectiveTransformV3(
            images=images,
            transforms=transforms,
            output_shape=tf.shape(images)[1:3],
            fill_value=0.0,
            interpolation="NEAREST",
            fill_mode="NEAREST",
        )
    images = cutout(images, cutout_side(side, params.cutout_fraction), params.cutout_count, seeds[2])
    if params.saturation_delta > 0:
        grey = tf.reduce_sum(images * tf.constant([0.299, 0.587, 0.114]), axis=-1, keepdims=True)
        factor = _per_image_factor(batch, params.saturation_delta, seeds[3])
        images = grey + (images - grey) * factor
    if params.contrast_delta > 0:
        mean = tf.reduce_mean(images, axis=[1, 2], keepdims=True)
        factor = _per_image_factor(batch, params.contrast_delta, seeds[4])
        images = mean + (images - mean) * factor
    return tf.clip_by_value(images, 0.0, 255.0)


def train_dataset(
    images: np.ndarray,
    labels: np.ndarray,
    batch_size: int,
    params: AugmentParams,
    seed: int,
    epoch: int,
    *,
    shard: tuple[int, int] = (1, 0),
) -> tf.data.Dataset:
    """One epoch of shuffled, augmented training batches.

    Args:
        images: (N, 32, 32, 3) uint8.
        labels: (N,) int.
        batch_size: images per batch (per replica when ``shard`` splits the data).
        params: augmentation settings.
        seed: the trial's seed.
        epoch: the epoch; with the seed it fixes the shuffle order and every random draw,
            so a trial resumed at epoch k sees the batches it would have seen.
        shard: (number of shards, index): this worker reads only its own shard.

    Returns:
        A dataset of (images float32 0-255, labels int64) batches; the last partial
        batch is dropped so every replica steps in lockstep.
    """
    count, index = shard
    ds = tf.data.Dataset.from_tensor_slices((images, labels))
    if count > 1:
        ds = ds.shard(count, index)
    epoch_seed = seed * 100003 + epoch
    ds = ds.shuffle(len(images), seed=epoch_seed, reshuffle_each_iteration=False)
    ds = ds.batch(batch_size, drop_remainder=True).enumerate()

    def augment(step: tf.Tensor, batch: tuple[tf.Tensor, tf.Tensor]):
        x, y = batch
        step_seed = tf.stack([tf.constant(epoch_seed, tf.int64), step])
        return augment_batch(tf.cast(x, tf.float32), params, step_seed), y

    return ds.map(augment, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def eval_dataset(images: np.ndarray, labels: np.ndarray, batch_size: int) -> tf.data.Dataset:
    """Batches of un-augmented images, in order, for validation and test."""
    ds = tf.data.Dataset.from_tensor_slices((images, labels)).batch(batch_size)
    return ds.map(lambda x, y: (tf.cast(x, tf.float32), y)).prefetch(tf.data.AUTOTUNE)
