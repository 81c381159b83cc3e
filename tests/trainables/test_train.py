"""The per-worker training function runs alone: no Tune, no Ray."""

import shutil
import subprocess
import sys

import pytest

from trainables.checkpoint import read_state
from trainables.schedule import learning_rate
from trainables.train import phase_of, train_trial

pytestmark = pytest.mark.slow


def step_learning_rate(spec, epoch: int, step: int, steps_per_epoch: int) -> float:
    """The rate the recipe gives one step, in Python: the head's constant, then the
    phase-2 rule (the oracle for the rate the compiled step computed)."""
    recipe = spec.recipe
    if epoch < recipe.head_epochs:
        return recipe.head_lr
    return learning_rate(spec.schedule, epoch - recipe.head_epochs + step / steps_per_epoch)


class Collect:
    """A reporter that keeps each epoch's metrics and its checkpoint."""

    def __init__(self, root):
        self.root, self.reports = root, []

    def __call__(self, metrics, directory):
        kept = None
        if directory is not None:
            kept = self.root / f"epoch_{metrics['epoch']}"
            shutil.move(directory, kept)  # the reporter owns the directory
        self.reports.append((metrics, kept))


@pytest.fixture(scope="module")
def trained(trained_experiment):
    """The suite's shared experiment's first trial: the recipe's whole shape (head,
    warmup, cooldown), with every epoch's checkpoint kept."""
    _, trials = trained_experiment
    return trials[0].spec, trials[0].reports


def test_one_report_per_epoch_with_a_checkpoint(trained):
    spec, reports = trained
    assert [m["epoch"] for m, _ in reports] == [1, 2, 3] == list(range(1, spec.total_epochs + 1))
    assert [m["phase"] for m, _ in reports] == ["head", "finetune", "finetune"]
    assert [m["finetune_epoch"] for m, _ in reports] == [0, 1, 2]  # ASHA's time unit
    for metrics, directory in reports:
        assert 0.0 <= metrics["val_accuracy"] <= 1.0
        state = read_state(directory)
        assert state.epoch == metrics["epoch"] and state.spec == spec
    # the LR the loop applied is the rule's: last step of each epoch
    steps = 64 // 16
    for metrics, _ in reports:
        epoch = metrics["epoch"] - 1
        assert metrics["lr"] == pytest.approx(step_learning_rate(spec, epoch, steps - 1, steps), rel=1e-6)


def test_checkpoint_loads_back_in_a_fresh_process(trained):
    _, reports = trained
    metrics, directory = reports[-1]
    done = subprocess.run(
        [sys.executable, "-m", "search", "evaluate", str(directory)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert f'"val_accuracy": {metrics["val_accuracy"]}' in done.stdout


def test_resume_continues_from_the_checkpoint_epoch(trained, tmp_path):
    spec, reports = trained
    _, second = reports[1]
    collect = Collect(tmp_path)
    train_trial(spec, collect, resume_from=second)
    assert [m["epoch"] for m, _ in collect.reports] == [3]
    assert read_state(collect.reports[0][1]).epoch == 3


def test_phase_rule():
    assert [phase_of(e, 2) for e in range(4)] == ["head", "head", "finetune", "finetune"]


def test_mixed_float16_trains_and_resumes(tmp_path):
    """The GPU precision path (float16 with loss scaling) on CPU: the backbone computes
    in float16, the head stays float32, losses stay finite, and the loss-scaling
    optimizer's checkpoint loads back."""
    import math

    import keras

    from support import tiny_spec
    from trainables.strategy import Precision
    from trainables.train import WorkerContext

    spec = tiny_spec(head_epochs=0)
    context = WorkerContext(precision=Precision("mixed_float16"))
    collect = Collect(tmp_path)
    try:
        train_trial(spec, collect, context=context)
        model = keras.saving.load_model(collect.reports[0][1] / "model.keras", compile=False)
        assert model.get_layer("head").compute_dtype == "float32"
        assert any(layer.compute_dtype == "float16" for layer in model.layers)
        assert all(math.isfinite(m["train_loss"]) for m, _ in collect.reports)
        resumed = Collect(tmp_path / "resumed")
        train_trial(spec, resumed, context=context, resume_from=collect.reports[0][1])
        assert [m["epoch"] for m, _ in resumed.reports] == [2]
    finally:
        keras.mixed_precision.set_global_policy("float32")  # process-wide; later tests expect float32


def test_xla_compiled_step_with_loss_scaling():
    """The training step XLA-compiles with a loss-scaling optimizer (a small model: XLA
    compiling EfficientNet on a CPU takes minutes) and still learns."""
    import keras
    import numpy as np
    import tensorflow as tf

    from trainables.strategy import Precision
    from trainables.train import PhaseStep

    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu"),
                                  keras.layers.Dense(2, activation="softmax", dtype="float32")])
        step = PhaseStep(model, learning_rate=0.1, momentum=0.9, strategy=tf.distribute.get_strategy(),
                         global_batch=64, precision=Precision("mixed_float16", jit_compile=True))
        assert isinstance(step.optimizer, keras.optimizers.LossScaleOptimizer)
        rng = np.random.default_rng(0)
        x = rng.normal(size=(64, 8)).astype("float32")
        y = (x[:, 0] > 0).astype("int64")
        losses = [float(step.train_step(tf.constant(x), tf.constant(y))[0]) for _ in range(30)]
        assert losses[-1] < losses[0] * 0.7
        # the device loop calls the same compiled step: 5 steps in one call
        data = tf.data.Dataset.from_tensors((x, y)).repeat()
        loss_sum, correct, *_ = step.run_epoch(data, 5, first_step=0)
        assert loss_sum / 5 < losses[0] * 0.7 and correct > 0
    finally:
        keras.mixed_precision.set_global_policy("float32")


ONE_HOST_TWO_REPLICAS = """
import json, sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from support import tiny_spec
from trainables.train import WorkerContext, train_trial
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
seen = []
metrics = train_trial(tiny_spec(head_epochs=0, warmup_epochs=0, micro_batches=2),
                      lambda m, d: seen.append(m), context=WorkerContext(strategy))
print(json.dumps({"replicas": strategy.num_replicas_in_sync, "epochs": [m["epoch"] for m in seen],
                  "loss": metrics["train_loss"], "accuracy": metrics["train_accuracy"]}))
"""


def test_one_worker_with_several_replicas_splits_the_batch_per_replica(tmp_path):
    """The shape of a TPU host on CPU: one worker, two replicas (two logical CPU devices
    under MirroredStrategy), each stepping its half of the global batch in two
    micro-batches; the epoch runs through and the loss is finite."""
    import json
    import math

    from support import TESTS

    done = subprocess.run([sys.executable, "-c", ONE_HOST_TWO_REPLICAS], capture_output=True, text=True,
                          timeout=600, env={**__import__("os").environ, "PYTHONPATH": str(TESTS)})
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["replicas"] == 2 and result["epochs"] == [1]
    assert math.isfinite(result["loss"]) and 0.0 <= result["accuracy"] <= 1.0


def test_resume_restores_weights_and_optimizer_bit_for_bit(trained, tmp_path, monkeypatch):
    """What a resumed trial holds when its first step starts equals its checkpoint
    exactly: every model weight and every optimizer variable (momentum, step counter),
    except the learning rate, which the schedule sets for the step."""
    import keras
    import numpy as np

    import trainables.train as train
    from trainables.checkpoint import MODEL_FILE, OPTIMIZER_FILE

    spec, reports = trained
    _, second = reports[1]  # epoch 2 of 3, fine-tuning: its momentum is restored too
    seen = {}

    class Snapshot(train.PhaseStep):
        """The phase step, noting the state before its first step."""

        def __init__(self, model, **kwargs):
            super().__init__(model, **kwargs)
            self.model = model

        def run_epoch(self, dataset, steps, first_step, **kwargs):
            if not seen:
                seen["weights"] = [np.array(w.numpy()) for w in self.model.weights]
                seen["optimizer"] = [(v.path, np.array(v.numpy())) for v in self.optimizer.variables]
            return super().run_epoch(dataset, steps, first_step, **kwargs)

    monkeypatch.setattr(train, "PhaseStep", Snapshot)
    train_trial(spec, Collect(tmp_path), resume_from=second)

    saved = keras.saving.load_model(second / MODEL_FILE, compile=False)
    # the same architecture lists its weights in the same order (names get per-model suffixes)
    assert len(seen["weights"]) == len(saved.weights)
    for restored, weight in zip(seen["weights"], saved.weights):
        assert restored.shape == tuple(weight.shape) and np.array_equal(restored, weight.numpy()), weight.path
    with np.load(second / OPTIMIZER_FILE) as stored:
        values = [stored[k] for k in sorted(stored.files)]
    assert len(values) == len(seen["optimizer"])
    compared = 0
    for (path, restored), value in zip(seen["optimizer"], values):
        if path.endswith("learning_rate"):
            continue
        assert np.array_equal(restored, value), path
        compared += 1
    assert compared > len(saved.trainable_weights)  # the momenta and the step counter
    assert any(np.any(value != 0) for value in values)  # momenta were there to restore


def test_a_diverging_trial_ends_as_a_result_and_a_healthy_one_does_not(trained, tmp_path):
    """A peak rate far too high (5.62 with no warmup, the distributed test's diverging draw):
    the tiny backbone's first epoch ends at a mean loss of about 84, above the rule's
    threshold (23.0; a peak of 2.0 stays near 4). The trial reports that epoch, marked
    diverged, and trains no further. The suite's healthy trial (the shared fixture, whose loss is noisy on 64
    images) never comes near it."""
    from support import tiny_spec
    from trainables.divergence import threshold

    spec, reports = trained
    assert not any(m["diverged"] for m, _ in reports)
    assert max(m["train_loss"] for m, _ in reports) < threshold(10) / 4

    collect = Collect(tmp_path)
    wild = tiny_spec(max_lr=5.62, head_epochs=0, warmup_epochs=0, flat_epochs=1, cooldown_epochs=2)
    last = train_trial(wild, collect)
    epochs = [m["epoch"] for m, _ in collect.reports]
    assert last["diverged"] and [m["diverged"] for m, _ in collect.reports] == [False] * (len(epochs) - 1) + [True]
    assert len(epochs) < wild.total_epochs, epochs  # it stopped
    assert not last["train_loss"] < threshold(10)  # above it, or not a number


def test_a_trial_the_search_stops_ends_at_its_next_compiled_call(tmp_path, caplog):
    """Asked to stop while epoch 1 is reported (Tune's SystemExit in the report: see
    trainables.stopping), the loop ends after one compiled call of epoch 2, and reports,
    evaluates and checkpoints nothing more."""
    import logging

    from support import tiny_spec
    from trainables.train import WorkerContext

    stop = []
    collect = Collect(tmp_path)

    def report(metrics, directory):
        collect(metrics, directory)
        stop.append(True)

    spec = tiny_spec(head_epochs=0, warmup_epochs=1, cooldown_epochs=2)
    context = WorkerContext(steps_per_execution=1, stop_requested=lambda: bool(stop))
    with caplog.at_level(logging.DEBUG, logger="trainables.train"):
        train_trial(spec, report, context=context)
    assert [m["epoch"] for m, _ in collect.reports] == [1]
    assert "stopped by the search during epoch 2: training ends here" in caplog.text
    calls = [r.getMessage() for r in caplog.records if r.getMessage().endswith(" trained")]
    assert [c.split(":")[0] for c in calls].count("epoch 2, attempt 1, rank 0") == 1, calls
    assert len(calls) == 64 // 16 + 1  # epoch 1's four calls, then one
