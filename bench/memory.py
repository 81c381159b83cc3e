"""Peak memory of one training step per backbone: the measured table behind planning.

For every registered backbone, a fresh process builds the classifier (frozen
BatchNormalization, the whole backbone trainable: phase 2 of the recipe, float32), runs
two SGD-with-momentum steps, and reports its peak resident memory (``ru_maxrss``) minus
the memory it held before building the model (Python, TensorFlow, the batch). Each
backbone is measured at its native resolution and at a small one, at two batch sizes
each; a straight line through the two batch sizes gives

    memory(batch) = fixed + per_image * batch

(fixed: weights, gradients, momentum, the runtime's workspace; per image: the
activations kept for the backward pass). Writes the raw measurements and fits to
``bench/results/memory.json`` and the table planning reads to
``trainables/memory_table.json``.

This is host memory under TensorFlow's CPU allocator, as a stand-in for accelerator
memory, which this machine does not have; see trainables/memory.py for how the plan
uses it and scales it to mixed precision.

    python bench/memory.py [--backbones B0 B1] [--small-side 96]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

NATIVE_BATCHES = (1, 2)
SMALL_BATCHES = (4, 8)


def measure(backbone: str, side: int, batch: int) -> None:
    """One measurement, in this (fresh) process; prints a JSON line."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import numpy as np
    import tensorflow as tf

    from trainables.model import BACKBONE_LAYER, ModelSpec, build_model
    from trainables.params import Hyperparams
    from trainables.train import PhaseStep

    images = tf.constant(np.random.default_rng(0).uniform(0, 255, (batch, 32, 32, 3)), tf.float32)
    labels = tf.constant(np.arange(batch) % 10)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    model = build_model(ModelSpec(Hyperparams(backbone, dropout=0.2), 10, weights="none", image_size=side))
    # Phase 2 of a pretrained fine-tune: everything trains except BatchNormalization.
    base = model.get_layer(BACKBONE_LAYER)
    base.trainable = True
    for layer in base.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False
    step = PhaseStep(model, learning_rate=0.01, momentum=0.9, strategy=tf.distribute.get_strategy(),
                     global_batch=batch)
    started = time.perf_counter()
    for _ in range(2):
        loss, _ = step.train_step(images, labels)
    float(loss)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"backbone": backbone, "side": side, "batch": batch, "peak_mib": round((peak - before) / 1024, 1),
                      "seconds": round(time.perf_counter() - started, 1)}))


def run_one(backbone: str, side: int, batch: int, timeout_s: int) -> dict:
    command = [sys.executable, __file__, "--one", backbone, str(side), str(batch)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"backbone": backbone, "side": side, "batch": batch, "error": f"timed out after {timeout_s} s"}
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["killed"])[-1]
        return {"backbone": backbone, "side": side, "batch": batch,
                "error": f"exit {done.returncode}: {tail[:200]}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def fit(points: list[dict]) -> dict | None:
    """fixed + per_image * batch through two measurements at one side."""
    ok = sorted((p for p in points if "peak_mib" in p), key=lambda p: p["batch"])
    if len(ok) < 2:
        return None
    (b0, m0), (b1, m1) = (ok[0]["batch"], ok[0]["peak_mib"]), (ok[-1]["batch"], ok[-1]["peak_mib"])
    per_image = max((m1 - m0) / (b1 - b0), 0.0)
    return {"side": ok[0]["side"], "fixed_mib": round(max(m0 - per_image * b0, 0.0), 1),
            "per_image_mib": round(per_image, 2)}


def main() -> None:
    from trainables.backbones import BACKBONES

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", nargs="*", default=list(BACKBONES))
    parser.add_argument("--small-side", type=int, default=96)
    parser.add_argument("--timeout", type=int, default=1500, help="seconds per measurement")
    parser.add_argument("--one", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        measure(args.one[0], int(args.one[1]), int(args.one[2]))
        return
    measurements, table = [], {}
    for name in args.backbones:
        native = BACKBONES[name].native_resolution
        fits = {}
        for side, batches in ((args.small_side, SMALL_BATCHES), (native, NATIVE_BATCHES)):
            points = [run_one(name, side, b, args.timeout) for b in batches]
            for p in points:
                print(json.dumps(p), flush=True)
            measurements += points
            fits["small" if side == args.small_side else "native"] = fit(points)
        table[name] = fits
    stamp = {"measured": datetime.date.today().isoformat(),
             "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
                        "TensorFlow CPU allocator (host RSS), float32",
             "step": "phase 2: whole backbone trainable, BatchNormalization frozen, SGD momentum 0.9"}
    # Backbones not measured in this run keep their earlier measurements.
    results, shipped = ROOT / "bench" / "results" / "memory.json", ROOT / "trainables" / "memory_table.json"
    if results.is_file():
        earlier = json.loads(results.read_text())
        measurements = [m for m in earlier["measurements"] if m["backbone"] not in table] + measurements
        table = {**{k: v for k, v in earlier["fits"].items() if k not in table}, **table}
    results.parent.mkdir(exist_ok=True)
    results.write_text(
        json.dumps({"benchmark": "memory", **stamp, "measurements": measurements, "fits": table}, indent=2) + "\n")
    shipped.write_text(json.dumps({**stamp, "backbones": table}, indent=2) + "\n")
    print(json.dumps(table, indent=2))


if __name__ == "__main__":
    main()
