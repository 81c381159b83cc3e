"""The two phases: a frozen backbone stays put; an unfrozen one learns, BN statistics fixed."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from trainables.model import ModelSpec, backbone_of, batchnorm_frozen, build_model, set_phase
from trainables.params import Hyperparams
from trainables.train import PhaseStep

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory):
    """A backbone weights file: the 'path to weights' option, standing in for ImageNet
    weights, which cannot be downloaded here. Any file of saved weights counts as
    pretrained, so BatchNormalization is frozen as with ImageNet weights."""
    path = tmp_path_factory.mktemp("weights") / "b0.weights.h5"
    keras.applications.EfficientNetB0(include_top=False, weights=None, input_shape=(32, 32, 3)).save_weights(path)
    return str(path)


@pytest.fixture(scope="module")
def tiny_weights_file(tmp_path_factory):
    """The same for the tiny test backbone, whose steps trace in a second."""
    from tiny_backbone import build

    path = tmp_path_factory.mktemp("weights") / "tiny.weights.h5"
    build(None, (32, 32, 3)).save_weights(path)
    return str(path)


def batch():
    rng = np.random.default_rng(0)
    return tf.constant(rng.uniform(0, 255, (8, 32, 32, 3)), tf.float32), tf.constant(np.arange(8) % 10)


def snapshot(layer):
    return [w.numpy().copy() for w in layer.weights]


def bn_statistics(model):
    return [
        (l.moving_mean.numpy().copy(), l.moving_variance.numpy().copy())
        for l in backbone_of(model).layers
        if isinstance(l, keras.layers.BatchNormalization)
    ]


def one_step(model, lr=0.05):
    strategy = tf.distribute.get_strategy()
    step = PhaseStep(model, learning_rate=lr, momentum=0.9, strategy=strategy, global_batch=8)
    loss, correct = step.train_step(*batch())
    assert np.isfinite(float(loss))


def test_model_shape_and_resize():
    model = build_model(ModelSpec(Hyperparams("B0", dropout=0.3), num_classes=10, weights="none"))
    assert model.input_shape == (None, 32, 32, 3)
    assert model.output_shape == (None, 10)
    assert model.get_layer("resize").get_config()["height"] == 224  # B0's native size
    assert model.get_layer("dropout").rate == pytest.approx(0.3)
    assert model.get_layer("head").activation.__name__ == "softmax"


def test_phase1_backbone_does_not_change(tiny_weights_file):
    spec = ModelSpec(Hyperparams("Tiny", dropout=0.2), 10, weights=tiny_weights_file, image_size=32)
    model = build_model(spec)
    set_phase(model, "head", spec)
    backbone_before = snapshot(backbone_of(model))
    head_before = snapshot(model.get_layer("head"))
    one_step(model)
    assert all(np.array_equal(a, b) for a, b in zip(backbone_before, snapshot(backbone_of(model))))
    assert not all(np.array_equal(a, b) for a, b in zip(head_before, snapshot(model.get_layer("head"))))


def test_phase2_backbone_learns_with_bn_statistics_fixed(tiny_weights_file):
    assert batchnorm_frozen(tiny_weights_file)
    spec = ModelSpec(Hyperparams("Tiny", dropout=0.2), 10, weights=tiny_weights_file, image_size=32)
    assert spec.freeze_batchnorm
    model = build_model(spec)
    set_phase(model, "finetune", spec)
    kernels = [l for l in backbone_of(model).layers if isinstance(l, keras.layers.Conv2D)]
    kernels_before = [l.kernel.numpy().copy() for l in kernels]
    stats_before = bn_statistics(model)
    one_step(model)
    changed = [not np.array_equal(a, l.kernel.numpy()) for a, l in zip(kernels_before, kernels)]
    assert changed == [True] * 4  # every convolution trains
    stats_after = bn_statistics(model)
    assert len(stats_before) == 3
    for (m0, v0), (m1, v1) in zip(stats_before, stats_after):
        assert np.array_equal(m0, m1) and np.array_equal(v0, v1)


def test_scratch_backbone_trains_its_bn_statistics():
    """With no pretrained weights there is nothing to protect: BN learns its statistics."""
    assert not batchnorm_frozen("none")
    spec = ModelSpec(Hyperparams("Tiny", dropout=0.2), 10, weights="none", image_size=32)
    assert not spec.freeze_batchnorm
    model = build_model(spec)
    set_phase(model, "finetune", spec)
    before = bn_statistics(model)
    one_step(model)
    after = bn_statistics(model)
    assert any(not np.array_equal(v0, v1) for (_, v0), (_, v1) in zip(before, after))


def test_bad_model_spec():
    with pytest.raises(ValueError, match="dropout"):
        build_model(ModelSpec(Hyperparams("B0", dropout=1.0), 10, weights="none"))
    with pytest.raises(ValueError, match="phase"):
        set_phase(None, "middle", ModelSpec(Hyperparams(), 10))


def test_partial_finetuning_trains_only_the_top_blocks(weights_file):
    """unfreeze_fraction 0.25: phase 2 trains the top quarter of B0's 18 blocks (stem,
    block1a ... block7a, top): ceil(4.5) = 5 of them; every other kernel stays put."""
    from trainables.model import top_blocks

    spec = ModelSpec(Hyperparams("B0", dropout=0.2, unfreeze_fraction=0.25), 10, weights=weights_file, image_size=32)
    model = build_model(spec)
    kept = top_blocks(backbone_of(model), 0.25)
    assert kept == ["block6b", "block6c", "block6d", "block7a", "top"]
    set_phase(model, "finetune", spec)
    convs = [l for l in backbone_of(model).layers
             if isinstance(l, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D))]
    before = {l.name: l.kernel.numpy().copy() for l in convs}
    stats_before = bn_statistics(model)
    one_step(model)
    moved = {l.name for l in convs if not np.array_equal(before[l.name], l.kernel.numpy())}
    top = {l.name for l in convs if l.name.split("_")[0] in kept}
    assert moved and moved <= top  # only kernels of the kept blocks train
    assert len(moved) > len(top) / 2
    assert all(np.array_equal(m0, m1) and np.array_equal(v0, v1)
               for (m0, v0), (m1, v1) in zip(stats_before, bn_statistics(model)))
    # the whole backbone (the default) trains far more variables
    full = ModelSpec(Hyperparams("B0", dropout=0.2), 10, weights=weights_file, image_size=32)
    whole = build_model(full)
    set_phase(whole, "finetune", full)
    assert len(model.trainable_variables) < len(whole.trainable_variables) / 2


def accumulated_step(spec, micro_batches, weights=None):
    """One phase-2 step of a fresh model on a fixed batch of 8, split into micro-batches."""
    model = build_model(spec)
    if weights is not None:
        model.set_weights(weights)
    set_phase(model, "finetune", spec)
    step = PhaseStep(model, learning_rate=0.05, momentum=0.9, strategy=tf.distribute.get_strategy(),
                     global_batch=8, micro_batches=micro_batches)
    before = [w.numpy().copy() for w in model.weights]
    step.train_step(*batch())
    return before, [w.numpy() for w in model.weights]


def test_gradient_accumulation_is_exact_with_batchnorm_frozen(tiny_weights_file):
    """One step over 4 micro-batches of 2 gives the weights one step over the batch of 8
    gives (to 1e-5), because frozen BatchNormalization makes each example's output
    independent of the others. Dropout is 0 so both see the same function. (The tiny
    test backbone: the rule is the training step's, not the backbone's.)"""
    spec = ModelSpec(Hyperparams("Tiny", dropout=0.0), 10, weights=tiny_weights_file, image_size=32)
    start, whole = accumulated_step(spec, 1)
    _, split = accumulated_step(spec, 4, weights=start)
    convs_and_head = 4 + 1 + 2  # the kernels, the top block's bias, the head's kernel and bias
    assert sum(not np.array_equal(a, b) for a, b in zip(start, whole)) == convs_and_head  # the step did train
    worst = max(float(np.max(np.abs(a - b))) for a, b in zip(whole, split))
    assert worst < 1e-5, worst


def test_micro_batches_change_the_step_where_batchnorm_trains():
    """Why micro-batching is refused with weights none: BatchNormalization normalises by
    each micro-batch's statistics, so the step is not the whole batch's."""
    spec = ModelSpec(Hyperparams("Tiny", dropout=0.0), 10, weights="none", image_size=32)
    keras.utils.set_random_seed(0)
    start, whole = accumulated_step(spec, 1)
    _, split = accumulated_step(spec, 4, weights=start)
    assert max(float(np.max(np.abs(a - b))) for a, b in zip(whole, split)) > 1e-3
