"""Time per training step: hpsearch's loop against Keras's own ``fit``, on a model so
small that the loop, not the model, is what is timed.

Both sides train the same model (64 -> 32 -> 10 dense, scikit-learn's digits, batch 32,
SGD 0.9 with the recipe's warmup/cooldown rule computed per step in the graph), on the
same tf.data pipeline, under the default (single) strategy, with the same number of
steps per compiled call:

- **hpsearch**: ``trainables.train.PhaseStep.run_epoch`` (the rate from the phase's step
  counter, loss and accuracy summed on the device, read once per epoch);
- **keras fit**: ``model.fit(steps_per_execution=K)`` with the same rule as a Keras
  ``LearningRateSchedule``, loss and accuracy as compiled metrics;
- **host loop** (for reference): one compiled call per step, the rate assigned from
  Python and the loss read back after every step (hpsearch's loop before this change).

Each side runs ``--epochs`` epochs of ``--steps`` steps; the first epoch (tracing) is
left out; the three sides alternate over ``--repeats`` rounds and the median per-step
time is kept. Writes ``bench/results/loop.json``.

    python bench/loop.py [--steps 400] [--epochs 6] [--repeats 3] [--per-call 50]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

BATCH = 32


def setup():
    import keras
    import tensorflow as tf
    from sklearn.datasets import load_digits

    from trainables.schedule import LRSchedule

    x, y = load_digits(return_X_y=True)
    data = tf.data.Dataset.from_tensor_slices(((x / 16.0).astype("float32"), y.astype("int64")))
    data = data.shuffle(len(x), seed=0).repeat().batch(BATCH, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
    schedule = LRSchedule(warmup_epochs=2, flat_epochs=1, cooldown_epochs=3, min_lr=0.01, max_lr=0.1)

    def model() -> keras.Model:
        keras.utils.set_random_seed(0)
        return keras.Sequential([keras.Input((64,)), keras.layers.Dense(32, activation="relu"),
                                 keras.layers.Dense(10, activation="softmax")])

    return data, schedule, model


def time_hpsearch(steps: int, epochs: int, per_call: int | None, host_loop: bool = False) -> tuple[float, float]:
    import tensorflow as tf

    from trainables.schedule import learning_rate
    from trainables.schedule_graph import phase2_rate
    from trainables.train import PhaseStep

    data, schedule, make = setup()
    model = make()
    rate = (lambda step: phase2_rate(schedule, step, steps))  # noqa: E731
    phase = PhaseStep(model, learning_rate=0.0 if host_loop else rate, momentum=0.9,
                      strategy=tf.distribute.get_strategy(), global_batch=BATCH, steps_per_execution=per_call)
    iterator = iter(data)  # one iterator for every epoch, as fit keeps one
    stamps, accuracy = [], 0.0
    for epoch in range(epochs):
        if host_loop:
            loss_sum = correct = 0.0
            for step in range(steps):
                phase.optimizer.learning_rate.assign(learning_rate(schedule, epoch + step / steps))
                loss, right = phase.train_step(*next(iterator))
                loss_sum += float(loss)
                correct += float(right)
        else:
            loss_sum, correct, *_ = phase.run_epoch(iterator, steps, epoch * steps)
        accuracy = correct / (steps * BATCH)
        stamps.append(time.perf_counter())
    return (stamps[-1] - stamps[0]) / ((epochs - 1) * steps), accuracy


def time_keras(steps: int, epochs: int, per_call: int) -> tuple[float, float]:
    import keras
    import tensorflow as tf

    from trainables.schedule_graph import phase2_rate

    data, schedule, make = setup()

    class Rule(keras.optimizers.schedules.LearningRateSchedule):
        def __call__(self, step):
            return phase2_rate(schedule, tf.cast(step, tf.int64), steps)

    model = make()
    model.compile(optimizer=keras.optimizers.SGD(Rule(), momentum=0.9), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"], steps_per_execution=per_call)
    stamps = []

    class Clock(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            stamps.append(time.perf_counter())

    history = model.fit(data, epochs=epochs, steps_per_epoch=steps, verbose=0, callbacks=[Clock()])
    return (stamps[-1] - stamps[0]) / ((epochs - 1) * steps), history.history["accuracy"][-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400, help="steps per epoch")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--per-call", type=int, default=50, help="steps per compiled call, both sides")
    args = parser.parse_args()
    from searches import commit, machine

    sides = {
        "hpsearch": lambda: time_hpsearch(args.steps, args.epochs, args.per_call),
        "keras_fit": lambda: time_keras(args.steps, args.epochs, args.per_call),
        "host_loop": lambda: time_hpsearch(args.steps, args.epochs, None, host_loop=True),
    }
    per_step = {name: [] for name in sides}
    accuracy = {}
    for round_ in range(args.repeats):
        for name, run in sides.items():
            seconds, accuracy[name] = run()
            per_step[name].append(seconds)
            print(f"round {round_ + 1}: {name:10s} {seconds * 1e6:8.1f} us/step (train accuracy {accuracy[name]:.3f})",
                  flush=True)
    median = {name: statistics.median(values) for name, values in per_step.items()}
    ratio = median["hpsearch"] / median["keras_fit"]
    print("median us/step: " + ", ".join(f"{k} {v * 1e6:.1f}" for k, v in median.items()))
    print(f"ratio hpsearch / keras fit: {ratio:.3f}  (goal <= 1.1); host loop / keras fit: "
          f"{median['host_loop'] / median['keras_fit']:.2f}")
    result = {
        "benchmark": "loop",
        "machine": machine(),
        "commit": commit(),
        "steps_per_epoch": args.steps,
        "epochs_timed": args.epochs - 1,
        "repeats": args.repeats,
        "steps_per_execution": args.per_call,
        "us_per_step": {k: [round(v * 1e6, 1) for v in values] for k, values in per_step.items()},
        "median_us_per_step": {k: round(v * 1e6, 1) for k, v in median.items()},
        "ratio_hpsearch_to_keras_fit": round(ratio, 3),
        "ratio_host_loop_to_keras_fit": round(median["host_loop"] / median["keras_fit"], 3),
        "goal": 1.1,
        "last_train_accuracy": {k: round(v, 4) for k, v in accuracy.items()},
    }
    out = ROOT / "bench" / "results" / "loop.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
