"""Augmentations: Cutout blanks the expected area and count; pipelines are seeded."""

import numpy as np
import pytest
import tensorflow as tf

from trainables.augment import augment_batch, cutout, cutout_side, eval_dataset, train_dataset
from trainables.spec import AugmentParams

SEED = tf.constant([3, 7], tf.int64)


def erased_pixels(images: np.ndarray) -> np.ndarray:
    return (images[..., 0] == 0).reshape(len(images), -1).sum(axis=1)


def test_cutout_side():
    assert cutout_side(32, 0.4) == 13  # the article's 0.4 of a CIFAR side
    assert cutout_side(32, 0.0) == 0
    with pytest.raises(ValueError):
        cutout_side(32, 1.5)


def test_one_cutout_blanks_exactly_its_square():
    ones = tf.ones([64, 32, 32, 3])
    out = cutout(ones, side=13, count=1, seed=SEED).numpy()
    assert (erased_pixels(out) == 13 * 13).all()
    # the erased pixels of each image form one 13x13 square, in every channel
    for image in out[:8]:
        rows, cols = np.nonzero(image[..., 0] == 0)
        assert rows.max() - rows.min() == 12 and cols.max() - cols.min() == 12
        assert (image[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1] == 0).all()


@pytest.mark.parametrize("count", [2, 3])
def test_cutout_count(count):
    side = 5
    out = cutout(tf.ones([256, 32, 32, 3]), side=side, count=count, seed=SEED).numpy()
    area = erased_pixels(out)
    # squares may overlap, so an image loses between one and `count` squares' worth
    assert area.min() >= side * side and area.max() == count * side * side
    # most images have no overlap at all
    assert np.mean(area == count * side * side) > 0.5


def test_cutout_noop_and_determinism():
    ones = tf.ones([4, 32, 32, 3])
    assert np.array_equal(cutout(ones, 0, 2, SEED).numpy(), ones.numpy())
    assert np.array_equal(cutout(ones, 5, 0, SEED).numpy(), ones.numpy())
    a = cutout(ones, 5, 2, SEED).numpy()
    assert np.array_equal(a, cutout(ones, 5, 2, SEED).numpy())
    assert not np.array_equal(a, cutout(ones, 5, 2, SEED + 1).numpy())


def test_augment_batch_is_seeded_and_in_range():
    rng = np.random.default_rng(0)
    images = tf.constant(rng.uniform(0, 255, (16, 32, 32, 3)), tf.float32)
    params = AugmentParams(cutout_fraction=0.25, cutout_count=2)
    a = augment_batch(images, params, SEED).numpy()
    assert np.array_equal(a, augment_batch(images, params, SEED).numpy())
    assert not np.array_equal(a, augment_batch(images, params, SEED + 1).numpy())
    assert a.min() >= 0 and a.max() <= 255 and a.shape == images.shape


def test_flip_only_mirrors():
    image = tf.constant(np.arange(32 * 32 * 3, dtype=np.float32).reshape(1, 32, 32, 3) % 255)
    params = AugmentParams(shift_fraction=0, cutout_count=0, saturation_delta=0, contrast_delta=0)
    outs = [augment_batch(image, params, tf.constant([0, s], tf.int64)).numpy()[0] for s in range(20)]
    flipped = image.numpy()[0, :, ::-1]
    assert all(np.array_equal(o, image.numpy()[0]) or np.array_equal(o, flipped) for o in outs)
    assert any(np.array_equal(o, flipped) for o in outs) and any(np.array_equal(o, image.numpy()[0]) for o in outs)


def test_shift_moves_content():
    image = np.zeros((1, 32, 32, 3), np.float32)
    image[0, 14:18, 14:18] = 255
    params = AugmentParams(shift_fraction=0.2, cutout_count=0, saturation_delta=0, contrast_delta=0, flip=False)
    centres = set()
    for s in range(10):
        out = augment_batch(tf.constant(image), params, tf.constant([1, s], tf.int64)).numpy()[0, ..., 0]
        rows, cols = np.nonzero(out > 0)
        assert len(rows) == 16  # the square moves whole (nearest neighbour, edge fill)
        centres.add((rows.mean(), cols.mean()))
    assert len(centres) > 3


def test_train_dataset_epochs_and_shards():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (40, 32, 32, 3), dtype=np.uint8)
    labels = np.arange(40) % 10
    params = AugmentParams()
    first = [b[0].numpy() for b in train_dataset(images, labels, 8, params, seed=1, epoch=0)]
    again = [b[0].numpy() for b in train_dataset(images, labels, 8, params, seed=1, epoch=0)]
    other = [b[0].numpy() for b in train_dataset(images, labels, 8, params, seed=1, epoch=1)]
    assert len(first) == 5
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not np.array_equal(first[0], other[0])
    # two workers' shards, told apart by using each example's index as its label: disjoint,
    # together the whole split, in every epoch
    ids = np.arange(40)
    for epoch in range(3):
        shards = [np.concatenate([y.numpy() for _, y in train_dataset(images, ids, 4, params, 1, epoch, shard=(2, i))])
                  for i in (0, 1)]
        assert len(shards[0]) == len(shards[1]) == 20
        assert not set(shards[0]) & set(shards[1]), f"epoch {epoch}: the workers share examples"
        assert set(shards[0]) | set(shards[1]) == set(ids)
    evals = np.concatenate([y.numpy() for _, y in eval_dataset(images, labels, 16)])
    assert np.array_equal(evals, labels)


@pytest.mark.parametrize("local_replicas", [1, 2, 4])
def test_a_resumed_epoch_skips_every_local_replicas_batches_of_the_trained_steps(local_replicas):
    """A worker with several replicas (the chips of a TPU host) takes one batch per
    replica per step: resumed after 3 steps, its epoch starts at the batch the whole
    epoch reaches after 3 * replicas batches, and has the rest of the epoch's batches."""
    from support import tiny_spec
    from trainables.splits import Split
    from trainables.train import epoch_batches

    train = Split(np.zeros((64, 32, 32, 3), np.uint8), np.arange(64, dtype=np.int64))
    kwargs = dict(per_replica_batch=2, shard=(1, 0), steps=8, local_replicas=local_replicas)
    spec = tiny_spec()
    whole = [labels.numpy().tolist() for _, labels in epoch_batches(train, spec, 1, **kwargs)]
    resumed = [labels.numpy().tolist() for _, labels in epoch_batches(train, spec, 1, trained=3, **kwargs)]
    assert len(whole) == 8 * local_replicas
    assert resumed == whole[3 * local_replicas:]
