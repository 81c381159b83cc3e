"""The training loop on the device: the learning rate computed in the graph, several
steps per compiled call, and the epoch's sums read once."""

import math

import numpy as np
import pytest

from trainables.schedule import LRSchedule, learning_rate

# The article's schedule: 0.001 -> 0.025 over 10 warmup epochs, 5 flat, 20 cooldown.
RECIPE = LRSchedule(warmup_epochs=10, flat_epochs=5, cooldown_epochs=20, min_lr=0.001, max_lr=0.025)
STEPS_PER_EPOCH = 250  # CIFAR-10's 50,000 images in batches of 200


@pytest.mark.parametrize("epoch", [0, 0.004, 2.5, 5, 9.996, 10, 12.5, 15, 15.004, 25, 30, 34.996, 35, 40])
def test_graph_schedule_is_the_rule_at_the_recipes_points(epoch):
    import tensorflow as tf

    from trainables.schedule_graph import phase2_rate

    step = round(epoch * STEPS_PER_EPOCH)
    graph = float(phase2_rate(RECIPE, tf.constant(step, tf.int64), STEPS_PER_EPOCH))
    assert graph == pytest.approx(learning_rate(RECIPE, step / STEPS_PER_EPOCH), rel=1e-6)


@pytest.mark.parametrize("parts", [(0, 0, 4), (2, 0, 0), (0, 3, 0), (1, 1, 1)])
def test_graph_schedule_with_empty_parts(parts):
    import tensorflow as tf

    from trainables.schedule_graph import phase2_rate

    schedule = LRSchedule(*parts, min_lr=0.0, max_lr=1.0)
    for step in range(0, 4 * sum(parts) + 3):
        graph = float(phase2_rate(schedule, tf.constant(step, tf.int64), 4))
        assert graph == pytest.approx(learning_rate(schedule, step / 4), rel=1e-6, abs=1e-7), step


SCHEDULE = LRSchedule(warmup_epochs=1, flat_epochs=0, cooldown_epochs=2, min_lr=0.01, max_lr=0.2)
STEPS = 12


def _model_and_data():
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu"),
                              keras.layers.Dense(3, activation="softmax")])
    rng = np.random.default_rng(0)
    x = rng.normal(size=(STEPS * 16, 8)).astype("float32")
    y = (x[:, 0] > 0).astype("int64") + (x[:, 1] > 1).astype("int64")
    return model, tf.data.Dataset.from_tensor_slices((x, y)).batch(16)


def _phase(model, **kwargs):
    import tensorflow as tf

    from trainables.train import PhaseStep

    return PhaseStep(model, momentum=0.9, strategy=tf.distribute.get_strategy(), global_batch=16, **kwargs)


def test_steps_in_one_call_follow_the_rule_step_by_step():
    """A whole epoch in one call, each step's rate from the graph, gives the weights of
    the old host loop: one call per step with the rule's rate assigned from Python."""
    from trainables.schedule_graph import phase2_rate

    epoch = 1  # the second epoch of phase 2: the warmup's top, then the cooldown
    model, data = _model_and_data()
    start = [w.numpy() for w in model.weights]
    device = _phase(model, learning_rate=lambda step: phase2_rate(SCHEDULE, step, STEPS))
    loss_sum, correct_sum, *_ = device.run_epoch(data, STEPS, first_step=epoch * STEPS)
    on_device = [w.numpy() for w in model.weights]
    assert int(device.step.numpy()) == (epoch + 1) * STEPS
    assert float(device.optimizer.learning_rate.numpy()) == pytest.approx(
        learning_rate(SCHEDULE, epoch + (STEPS - 1) / STEPS), rel=1e-6)

    model.set_weights(start)
    host = _phase(model, learning_rate=0.0)
    losses, corrects = [], []
    for step, (x, y) in enumerate(data):
        host.optimizer.learning_rate.assign(learning_rate(SCHEDULE, epoch + step / STEPS))
        loss, correct = host.train_step(x, y)
        losses.append(float(loss))
        corrects.append(float(correct))
    for a, b in zip(on_device, model.weights):
        np.testing.assert_allclose(a, b.numpy(), rtol=1e-5, atol=1e-6)
    assert loss_sum == pytest.approx(sum(losses), rel=1e-5)
    assert correct_sum == sum(corrects)
    assert len(losses) == STEPS
    assert not any(math.isnan(v) for v in losses)


@pytest.mark.parametrize("per_call", [1, 5])
def test_steps_per_execution_changes_calls_not_numbers(per_call, monkeypatch):
    """5 steps per call is ceil(12 / 5) = 3 compiled calls (the last one of 2 steps) and
    1 step per call is 12; the weights and sums are those of one call for the epoch."""
    from trainables.schedule_graph import phase2_rate

    rate = lambda step: phase2_rate(SCHEDULE, step, STEPS)  # noqa: E731
    model, data = _model_and_data()
    start = [w.numpy() for w in model.weights]
    whole = _phase(model, learning_rate=rate)
    sums_whole = whole.run_epoch(data, STEPS, first_step=0)
    weights_whole = [w.numpy() for w in model.weights]

    model.set_weights(start)
    chunked = _phase(model, learning_rate=rate, steps_per_execution=per_call)
    calls = []
    compiled = chunked.train_steps
    chunked.train_steps = lambda iterator, count: (calls.append(int(count)), compiled(iterator, count))[1]
    sums_chunked = chunked.run_epoch(data, STEPS, first_step=0)
    assert calls == ([1] * 12 if per_call == 1 else [5, 5, 2])
    assert sums_chunked == sums_whole
    for a, b in zip(weights_whole, model.weights):
        np.testing.assert_array_equal(a, b.numpy())


TWO_REPLICA_STEP = """
import json, sys
import numpy as np
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
from trainables.train import PhaseStep

def weights_after_one_step(strategy, batch):
    with strategy.scope():
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu"),
                                  keras.layers.Dense(3, activation="softmax")])
        step = PhaseStep(model, learning_rate=0.5, momentum=0.9, strategy=strategy, global_batch=16)
    start = [w.numpy() for w in model.weights]
    dataset = strategy.experimental_distribute_dataset(tf.data.Dataset.from_tensor_slices(batch).batch(16))
    loss, correct = step.train_step(*next(iter(dataset)))
    return start, [w.numpy() for w in model.weights], float(loss)

rng = np.random.default_rng(0)
x = rng.normal(size=(16, 8)).astype("float32")
batch = (x, (x[:, 0] > 0).astype("int64"))
two = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
assert two.num_replicas_in_sync == 2
start1, one_replica, loss1 = weights_after_one_step(tf.distribute.OneDeviceStrategy("/cpu:0"), batch)
start2, two_replicas, loss2 = weights_after_one_step(two, batch)
print(json.dumps({
    "same_start": all(np.array_equal(a, b) for a, b in zip(start1, start2)),
    "moved": max(float(np.abs(a - b).max()) for a, b in zip(start1, one_replica)),
    "max_diff": max(float(np.abs(a - b).max()) for a, b in zip(one_replica, two_replicas)),
    "losses": [loss1, loss2],
}))
"""


def test_a_two_replica_step_is_the_one_replica_step_on_the_union_batch():
    """Gradient scaling across replicas: each replica's loss is its examples' sum over the
    global batch, so the all-reduced (summed) gradient is the global batch's mean. Two
    replicas of 8 examples must then move the weights as one replica does on all 16.
    MirroredStrategy over two logical CPUs stands in for MultiWorkerMirrored's two workers
    (same replica-step semantics; logical devices need a fresh TensorFlow, hence the
    subprocess). Tolerance: float32 sums in another order, 1e-6 of weights that move ~1e-1."""
    import json
    import subprocess
    import sys

    from support import REPO

    done = subprocess.run([sys.executable, "-c", TWO_REPLICA_STEP], capture_output=True, text=True, timeout=300,
                          cwd=REPO, env={**__import__("os").environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["same_start"]
    assert result["moved"] > 1e-2  # the step did change the weights
    assert result["max_diff"] < 1e-6, result
    assert result["losses"][0] == pytest.approx(result["losses"][1], rel=1e-6)
