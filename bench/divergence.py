"""The data behind the divergence rule (trainables/divergence.py): training losses of
trials over 3.5 decades of learning rates, from a user's sensible guess to far too high.

Each trial is the offline default's (configs/local.yaml: EfficientNet-Lite0 pretrained,
scikit-learn's digits at 64 px, batch 32) with one head epoch, one flat and one cooldown
epoch, and (head rate, peak rate) from one row of RATES; it runs through
``trainables.train.train_trial`` as a search's trial does, the rule included, so a trial
that diverges stops there. Every epoch's mean training loss, validation accuracy and
``diverged`` flag is kept. Writes ``bench/results/divergence.json`` with the rule's
threshold, the largest loss of any epoch the rule let pass, and the smallest loss it
stopped at.

    python bench/divergence.py
"""

from __future__ import annotations

import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

# (head rate, fine-tuning peak): the offline default's own (0.002, 0.001), then each a
# decade-ish higher, to the rates of a user who guessed far too high (5.0, 2.0).
RATES = [(0.002, 0.001), (0.01, 0.003), (0.1, 0.03), (1.0, 0.3), (5.0, 2.0)]


def trial(head_lr: float, max_lr: float) -> list[dict]:
    from search.config import load_config
    from trainables.params import Hyperparams
    from trainables.spec import TrialSpec
    from trainables.train import train_trial

    config = load_config(ROOT / "configs" / "local.yaml")
    recipe = dataclasses.replace(config.recipe, head_epochs=1, head_lr=head_lr, flat_epochs=1, cooldown_epochs=1)
    hp = Hyperparams(backbone="Lite0", cutout_fraction=0.1, cutout_count=1, dropout=0.2, warmup_epochs=0,
                     max_lr=max_lr)
    spec = TrialSpec(config.data, recipe, hp, seed=0)
    epochs: list[dict] = []

    def keep(metrics, directory):
        epochs.append({k: metrics[k] for k in ("epoch", "phase", "lr", "train_loss", "val_accuracy", "diverged")})
        if directory is not None:
            import shutil

            shutil.rmtree(directory, ignore_errors=True)

    train_trial(spec, keep)
    return epochs


def main() -> None:
    import math

    from searches import commit, machine
    from trainables.divergence import FACTOR, threshold

    runs = []
    for head_lr, max_lr in RATES:
        start = time.monotonic()
        epochs = trial(head_lr, max_lr)
        runs.append({"head_lr": head_lr, "max_lr": max_lr, "epochs": epochs, "seconds": time.monotonic() - start})
        print(json.dumps(runs[-1]), flush=True)
    passed = [e["train_loss"] for r in runs for e in r["epochs"] if not e["diverged"]]
    stopped = [e["train_loss"] for r in runs for e in r["epochs"] if e["diverged"]]
    finite = lambda values: [v if math.isfinite(v) else None for v in values]  # noqa: E731  strict JSON
    for run in runs:
        for epoch in run["epochs"]:
            epoch["train_loss"] = finite([epoch["train_loss"]])[0]
    result = {
        "benchmark": "divergence", "machine": machine(), "commit": commit(),
        "rule": f"mean training loss not finite or > {FACTOR} x ln(classes)", "threshold_10_classes": threshold(10),
        "largest_loss_passed": max(passed) if passed else None,
        "smallest_loss_stopped": min((v for v in stopped if math.isfinite(v)), default=None),
        "stopped_non_finite": sum(not math.isfinite(v) for v in stopped),
        "runs": runs,
    }
    out = ROOT / "bench" / "results" / "divergence.json"
    out.write_text(json.dumps(result, indent=2, allow_nan=False) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
