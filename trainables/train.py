"""The per-worker training function: the recipe's two phases, one report per epoch.

Keras path: Keras 3 with a custom training step run under ``strategy.run``, not
``model.fit``. Keras 3's ``fit`` fails under MultiWorkerMirroredStrategy
(keras-team/keras#20585); a custom step works under every ``tf.distribute`` strategy,
so the single-process, multi-worker and TPU trials share this one loop. It also applies
the learning-rate rule per step, which is what the recipe's schedule needs.

:func:`train_trial` knows nothing of Tune or Ray: it takes a :class:`Reporter` and calls
it once per epoch with the metrics and a checkpoint directory.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import keras
import numpy as np
import tensorflow as tf

from trainables import checkpoint as ckpt
from trainables.augment import eval_dataset, train_dataset
from trainables.data import load_configured
from trainables.divergence import diverged
from trainables.evaluate import dataset_accuracy
from trainables.model import ModelSpec, build_model, set_phase
from trainables.metrics import (ATTEMPT, DIVERGED, FINETUNE_EPOCH, MID_EPOCH_STEP, PLANNED_EPOCHS, PREEMPTIONS,
                                 RESUMED_AT_STEP)
from trainables.preemption import Checks, Notices
from trainables.reporting import Reporter
from trainables.schedule_graph import phase2_rate
from trainables.spec import TrialSpec
from trainables.splits import Split, TrainVal
from trainables.strategy import Precision

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class WorkerContext:
    """Where this worker stands in its trial."""

    strategy: tf.distribute.Strategy | None = None  # None: the default strategy
    num_workers: int = 1
    worker_index: int = 0
    precision: Precision = Precision()
    # Training steps per compiled call (see PhaseStep); None: a whole epoch per call.
    steps_per_execution: int | None = None
    # Where reclaim notices come from (distributed trials; trainables.preemption), and
    # the steps between two checks (None: sized by measurement).
    notices: Notices | None = None
    check_steps: int | None = None
    # Whether the search has asked this trial to stop (trainables.stopping): the loop
    # then ends at its next compiled call, reporting nothing more.
    stop_requested: Callable[[], bool] = lambda: False

    @property
    def is_chief(self) -> bool:
        return self.worker_index == 0


def phase_of(epoch: int, head_epochs: int) -> str:
    """The phase an epoch (0-based) belongs to."""
    return "head" if epoch < head_epochs else "finetune"


def phase_rate(spec: TrialSpec, phase: str, steps_per_epoch: int) -> float | Callable[[tf.Tensor], tf.Tensor]:
    """The rate of a phase's steps for :class:`PhaseStep`: the head's constant, or phase
    2's rule (trainables.schedule) as ops of the phase's step counter."""
    if phase == "head":
        return spec.recipe.head_lr
    return lambda step: phase2_rate(spec.schedule, step, steps_per_epoch)


def first_step(spec: TrialSpec, epoch: int, steps_per_epoch: int) -> int:
    """The phase's step counter when ``epoch`` (0-based) starts."""
    head = spec.recipe.head_epochs
    return (epoch if epoch < head else epoch - head) * steps_per_epoch


class PhaseStep:
    """The optimizer and compiled training steps of one phase.

    Built anew when the phase changes: unfreezing changes the trainable variables, and
    a fresh SGD starts phase 2 with no momentum from the head phase (as recompiling does
    in docs/recipe.md section 5). Build it inside ``strategy.scope()``.

    :meth:`run_epoch` keeps the host out of the loop: ``steps_per_execution`` steps run
    in one compiled call (Keras's ``steps_per_execution``), each step's learning rate is
    computed in the graph from the phase's step counter, and loss and accuracy are summed
    on the device and read once per epoch. ``train_step`` is one step with the rate as
    it stands (tests and the memory benchmark use it).

    Args:
        learning_rate: a constant, or a function of the phase's step counter (an int64
            scalar tensor) that returns the rate as ops (see trainables.schedule_graph).
        steps_per_execution: steps per compiled call; None runs a whole epoch per call.
    """

    def __init__(
        self,
        model: keras.Model,
        *,
        learning_rate: float | Callable[[tf.Tensor], tf.Tensor],
        momentum: float,
        strategy: tf.distribute.Strategy,
        global_batch: int,
        precision: Precision = Precision(),
        micro_batches: int = 1,
        steps_per_execution: int | None = None,
    ):
        rate = learning_rate if callable(learning_rate) else (lambda step: tf.constant(learning_rate, tf.float32))
        initial_rate = learning_rate if not callable(learning_rate) else float(learning_rate(tf.constant(0, tf.int64)))
        self.optimizer = keras.optimizers.SGD(learning_rate=initial_rate, momentum=momentum)
        if precision.policy == "mixed_float16":
            # float16 gradients underflow without loss scaling; bfloat16 has float32's range.
            self.optimizer = keras.optimizers.LossScaleOptimizer(self.optimizer)
        variables = model.trainable_variables
        self.optimizer.build(variables)
        self.steps_per_execution = steps_per_execution
        # The schedule's clock (not the optimizer's iterations, which a loss-scaling
        # optimizer does not advance on the steps it skips), and the epoch's summed loss
        # and correct count (one variable: one update per step).
        self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="phase_step")
        self.sums = tf.Variable([0.0, 0.0], dtype=tf.float32, trainable=False, name="loss_correct_sums")

        def gradients(images: tf.Tensor, labels: tf.Tensor) -> tuple[list, tf.Tensor, tf.Tensor]:
            with tf.GradientTape() as tape:
                probs = model(images, training=True)
                per_example = keras.losses.sparse_categorical_crossentropy(labels, probs)
                # Sum over these examples / global batch: summed over micro-batches and
                # all-reduced over replicas, the gradient is the mean over the global batch.
                loss = tf.reduce_sum(per_example) / global_batch
                scaled = self.optimizer.scale_loss(loss)
            grads = tape.gradient(scaled, variables)
            grads = [tf.zeros_like(v) if g is None else g for g, v in zip(grads, variables)]
            correct = tf.reduce_sum(tf.cast(tf.argmax(probs, axis=-1) == labels, tf.float32))
            return grads, loss, correct

        def replica_step(images: tf.Tensor, labels: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            if micro_batches == 1:
                grads, loss, correct = gradients(images, labels)
            else:
                # Gradient accumulation: with BatchNormalization frozen the model is a
                # function of each example alone, so the summed gradients of k
                # micro-batches are exactly the share's gradient (one update, same LR).
                size = tf.shape(images)[0] // micro_batches
                grads = [tf.zeros_like(v) for v in variables]
                loss, correct = tf.constant(0.0), tf.constant(0.0)
                for i in tf.range(micro_batches):  # a graph loop: the model is traced once
                    part = tf.range(i * size, (i + 1) * size)
                    g, l, c = gradients(tf.gather(images, part), tf.gather(labels, part))
                    grads = [a + b for a, b in zip(grads, g)]
                    loss, correct = loss + tf.cast(l, tf.float32), correct + c
            # LossScaleOptimizer unscales these and skips steps whose gradients overflowed.
            self.optimizer.apply_gradients(zip(grads, variables))
            return loss, correct

        @tf.function(jit_compile=precision.jit_compile)
        def train_step(images: tf.Tensor, labels: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            loss, correct = strategy.run(replica_step, args=(images, labels))
            sum_ = tf.distribute.ReduceOp.SUM
            return strategy.reduce(sum_, loss, axis=None), strategy.reduce(sum_, correct, axis=None)

        @tf.function
        def train_steps(iterator: Any, count: tf.Tensor) -> None:
            # A graph loop (autograph): one trace serves every count. Each iteration
            # calls the compiled step (as Keras's fit does: XLA-compiled where the
            # precision says so). The clock is read once and advanced once per call;
            # step i's rate is the rule's at start + i.
            start = self.step.read_value()
            for i in tf.range(count):
                self.optimizer.learning_rate.assign(rate(start + i))
                images, labels = next(iterator)
                loss, correct = train_step(images, labels)
                self.sums.assign_add(tf.stack([tf.cast(loss, tf.float32), correct]))
            self.step.assign_add(count)

        self.train_step = train_step
        self.train_steps = train_steps

    def run_epoch(self, dataset: Any, steps: int, first_step: int,
                  stop_if: Callable[[float], bool] | None = None, *,
                  checks: Checks | None = None, resume: EpochSums | None = None, name: str = "epoch") -> EpochSums:
        """Train the epoch's ``steps`` steps on ``dataset`` (a tf.data or distributed
        dataset, or an iterator over one, which carries on where it stands).

        ``first_step`` is the phase's step counter at the epoch's start (it sets the
        schedule's clock, so a resumed epoch gets the rates it would have had).
        ``stop_if`` is asked, after each compiled call, with the mean loss of the epoch's
        steps so far; True ends the epoch there (a diverged trial: see
        trainables.divergence; a trial the search stopped: trainables.stopping). Every
        worker of a trial reads the same all-reduced sums, so all stop at the same call. ``checks`` ends calls at its check steps and asks
        there whether a node of the trial will be reclaimed (trainables.preemption); a
        notice ends the epoch at that step, with ``notice`` set. ``resume`` is the sums
        of the steps an earlier attempt trained in this epoch: ``dataset`` then starts
        after them. ``name`` labels the epoch in the progress logged (at DEBUG) after
        each call. Returns the epoch's sums: the only values read back.
        """
        done = resume.steps if resume is not None else 0
        self.step.assign(first_step + done)
        self.sums.assign([resume.loss_sum, resume.correct_sum] if resume is not None else [0.0, 0.0])
        iterator = iter(dataset)
        chunk = self.steps_per_execution or steps
        while done < steps:
            count = checks.call_size(done, steps, chunk) if checks is not None else min(chunk, steps - done)
            started = time.monotonic()
            self.train_steps(iterator, tf.constant(count, tf.int64))
            loss_sum = float(self.sums[0].numpy())  # also waits for the call to finish
            log.debug("%s: steps %d-%d of %d trained", name, done, done + count, steps)
            done += count
            if checks is not None and checks.due(done, steps):
                deadline = checks.ask((time.monotonic() - started) / count)
                if deadline is not None:
                    loss_sum, correct_sum = self.sums.numpy()
                    return EpochSums(float(loss_sum), float(correct_sum), done, notice=deadline)
            if stop_if is not None and done < steps and stop_if(loss_sum / done):
                break
        loss_sum, correct_sum = self.sums.numpy()
        return EpochSums(float(loss_sum), float(correct_sum), done)


class EpochSums(NamedTuple):
    """What one epoch's training read back: summed loss and correct count over the
    epoch's first ``steps`` steps (fewer than planned when the epoch was stopped, or
    ended by a reclaim notice: ``notice`` is then the reclaim deadline, UNIX seconds)."""

    loss_sum: float
    correct_sum: float
    steps: int
    notice: float | None = None


def epoch_batches(train: Split, spec: TrialSpec, epoch: int, *, per_replica_batch: int, shard: tuple[int, int],
                  steps: int, local_replicas: int, trained: int = 0) -> tf.data.Dataset:
    """This worker's per-replica batches of one epoch: one batch per local replica per
    step, ``steps`` steps (a shard shorter than that repeats). A resumed epoch starts
    after the ``trained`` steps its last attempt trained: the same order, so it skips
    exactly those batches, ``local_replicas`` of them per step."""
    dataset = train_dataset(train.images, train.labels, per_replica_batch, spec.augment, spec.seed, epoch,
                            shard=shard).repeat().take(steps * local_replicas)
    return dataset.skip(trained * local_replicas) if trained else dataset


def weights_digest(model: keras.Model) -> str:
    """SHA-1 of the weights that replicas keep in sync, in order.

    BatchNormalization's moving statistics are left out: where BN trains (a backbone
    from scratch) each worker averages the batches of its own shard, so those differ
    between workers by design; everything else must be identical.
    """
    digest = hashlib.sha1()
    for weight in model.weights:
        if "moving_mean" in weight.path or "moving_variance" in weight.path:
            continue
        digest.update(np.ascontiguousarray(weight.numpy()).tobytes())
    return digest.hexdigest()


def replicas_agree(strategy: tf.distribute.Strategy, digest: str) -> bool:
    """Whether every worker holds the weights with this digest (a collective check).

    Each worker contributes 48 bits of its digest (exact in a float64); the gathered
    values are all equal when the workers agree.
    """
    code = float(int(digest[:12], 16))
    local = strategy.run(lambda: tf.constant([code], tf.float64))
    gathered = strategy.gather(local, axis=0).numpy()
    return bool((gathered == gathered[0]).all())


def reclaimed(context: WorkerContext, model: keras.Model, optimizer: keras.optimizers.Optimizer,
              state: ckpt.CheckpointState, deadline_s: float) -> None:
    """On a reclaim notice: every worker takes part in a checkpoint of the step reached
    (the chief writes it), then waits for the reclaim, training nothing it would lose."""
    log.warning("a node of this trial will be reclaimed (deadline %s): checkpointing epoch %d at step %d",
                time.strftime("%H:%M:%S", time.localtime(deadline_s)) if deadline_s != float("inf") else "none given",
                state.epoch + 1, state.step)
    directory = None
    if context.is_chief:
        directory = Path(tempfile.mkdtemp(prefix=f"hpsearch-ckpt-{state.epoch + 1:04d}-{state.step}-"))
        ckpt.save_checkpoint(directory, model, optimizer, state)
    context.notices.checkpoint(state.metrics, directory)
    context.notices.await_reclaim(deadline_s)
    raise TimeoutError(f"a reclaim announced for {deadline_s:.0f} (UNIX s) did not come: the trial restarts "
                       "from the checkpoint it took")


def train_trial(
    spec: TrialSpec,
    report: Reporter,
    *,
    context: WorkerContext = WorkerContext(),
    resume_from: Path | None = None,
    data: TrainVal | None = None,
) -> dict[str, Any]:
    """Run one trial of the recipe on this worker.

    Args:
        spec: the trial.
        report: called once per epoch (see :data:`Reporter`).
        context: the distribution strategy and this worker's place in it.
        resume_from: a checkpoint directory of this trial to continue from.
        data: preloaded splits (tests); None loads them from ``spec``.

    Returns:
        The last epoch's metrics.
    """
    strategy = context.strategy or tf.distribute.get_strategy()
    replicas = strategy.num_replicas_in_sync
    recipe, batch_size = spec.recipe, spec.recipe.batch_size
    if batch_size % replicas:
        raise ValueError(f"batch_size {batch_size} is not divisible by {replicas} replicas")
    keras.utils.set_random_seed(spec.seed)
    if data is None:
        data = load_configured(spec.data, shard=(context.num_workers, context.worker_index))
    # Each worker reads its own shard and steps with its share of the global batch, one
    # per-replica batch for each of its replicas (one per MultiWorkerMirrored worker; the
    # chips of a TPU host). Every worker must take the same number of steps (each step is
    # a collective all-reduce), so the count comes from the whole split, and a shorter
    # shard repeats.
    per_replica_batch = batch_size // replicas
    local_replicas = replicas // context.num_workers
    per_worker_batch = per_replica_batch * local_replicas
    steps_per_epoch = (data.train_size // context.num_workers) // per_worker_batch
    if steps_per_epoch < 1:
        raise ValueError(f"{data.train_size} training images are fewer than one batch of {batch_size}")
    if len(data.train) < per_worker_batch:
        raise ValueError(f"this worker's shard has {len(data.train)} images, fewer than one batch of {per_worker_batch}")
    shard = (1, 0) if data.presharded else (context.num_workers, context.worker_index)
    val_data = eval_dataset(data.val.images, data.val.labels, batch_size=max(per_worker_batch, 64))

    # Layers take the global policy when they are built; the head stays float32.
    keras.mixed_precision.set_global_policy(context.precision.policy)
    model_spec = ModelSpec(spec.hp, data.num_classes, weights=recipe.weights, image_size=spec.data.image_size,
                           weights_root=spec.weights_root)
    with strategy.scope():
        model = build_model(model_spec)
    # Validation runs whole on every worker (the split is small next to training, and every
    # worker then reports the same number); traced once for the whole trial.
    predict = tf.function(lambda images: model(images, training=False))
    start_epoch, attempt, preemptions, partial = 0, 1, 0, None
    if resume_from is not None:
        state = ckpt.read_state(resume_from)
        model.load_weights(Path(resume_from) / ckpt.MODEL_FILE)
        start_epoch = state.epoch
        # the how-many-th start of this trial's training (a retry or a resumed search)
        attempt = int(state.metrics.get(ATTEMPT, 1)) + 1
        preemptions = int(state.metrics.get(PREEMPTIONS, 0))
        if state.step:  # taken on a reclaim notice, mid-epoch
            partial = EpochSums(*state.sums, steps=state.step)
        log.info("resuming %s at epoch %d, step %d", spec.hp.backbone, start_epoch + 1, state.step)
    checks = Checks(context.notices, context.check_steps) if context.notices is not None else None

    phase_name, phase = None, None
    metrics: dict[str, Any] = {}
    for epoch in range(start_epoch, spec.total_epochs):
        if phase_of(epoch, recipe.head_epochs) != phase_name:
            phase_name = phase_of(epoch, recipe.head_epochs)
            set_phase(model, phase_name, model_spec)
            with strategy.scope():
                phase = PhaseStep(
                    model,
                    learning_rate=phase_rate(spec, phase_name, steps_per_epoch),
                    momentum=recipe.momentum,
                    strategy=strategy,
                    global_batch=batch_size,
                    precision=context.precision,
                    micro_batches=spec.micro_batches,
                    steps_per_execution=context.steps_per_execution,
                )
            if resume_from is not None and epoch == start_epoch and state.phase == phase_name:
                ckpt.restore_optimizer(resume_from, phase.optimizer)
        resume = partial if epoch == start_epoch else None
        dataset = epoch_batches(data.train, spec, epoch, per_replica_batch=per_replica_batch, shard=shard,
                                steps=steps_per_epoch, local_replicas=local_replicas,
                                trained=resume.steps if resume is not None else 0)
        if replicas > 1:
            # Already this worker's shard in per-replica batches: hand it over as is
            # (no auto-sharding, no re-batching); each step takes one batch per local
            # replica.
            own = dataset
            dataset = strategy.distribute_datasets_from_function(lambda _: own)
        sums = phase.run_epoch(dataset, steps_per_epoch, first_step(spec, epoch, steps_per_epoch),
                               stop_if=lambda mean_loss: (context.stop_requested()
                                                          or diverged(mean_loss, data.num_classes)),
                               checks=checks, resume=resume,
                               name=f"epoch {epoch + 1}, attempt {attempt}, rank {context.worker_index}")
        if context.stop_requested():
            log.info("stopped by the search during epoch %d: training ends here", epoch + 1)
            break
        if sums.notice is not None:
            reclaimed(context, model, phase.optimizer, ckpt.CheckpointState(
                spec, epoch, phase_name, {ATTEMPT: attempt, PREEMPTIONS: preemptions + 1, MID_EPOCH_STEP: sums.steps},
                step=sums.steps, sums=(sums.loss_sum, sums.correct_sum)), sums.notice)
        train_loss = sums.loss_sum / sums.steps
        metrics = {
            "epoch": epoch + 1,
            FINETUNE_EPOCH: max(0, epoch + 1 - recipe.head_epochs),
            PLANNED_EPOCHS: spec.total_epochs,
            ATTEMPT: attempt,
            PREEMPTIONS: preemptions,
            RESUMED_AT_STEP: resume.steps if resume is not None else 0,
            "phase": phase_name,
            "lr": float(phase.optimizer.learning_rate.numpy()),
            "train_loss": train_loss,
            "train_accuracy": sums.correct_sum / (sums.steps * batch_size),
            "val_accuracy": dataset_accuracy(predict, val_data),
            # the trial's end as a result: it trains no further (trainables.divergence)
            DIVERGED: diverged(train_loss, data.num_classes),
        }
        if context.num_workers > 1:
            # Replicas of one trial must hold identical weights; this digest shows it.
            metrics["weights_digest"] = weights_digest(model)
            metrics["replicas_in_sync"] = replicas_agree(strategy, metrics["weights_digest"])
        log.info("epoch %d/%d %s", epoch + 1, spec.total_epochs, metrics)
        directory = None
        if context.is_chief:
            directory = Path(tempfile.mkdtemp(prefix=f"hpsearch-ckpt-{epoch + 1:04d}-"))
            ckpt.save_checkpoint(
                directory, model, phase.optimizer, ckpt.CheckpointState(spec, epoch + 1, phase_name, metrics)
            )
        report(metrics, directory)  # the reporter owns the directory now
        if metrics[DIVERGED]:
            log.info("%s diverged at epoch %d (mean training loss %.4g): training ends here",
                     spec.hp.backbone, epoch + 1, train_loss)
            break
    return metrics
