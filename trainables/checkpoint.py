"""Per-epoch checkpoints: a loadable Keras model plus what a resumed trial needs.

A checkpoint directory holds
- ``model.keras``: the whole classifier; ``keras.saving.load_model`` loads it anywhere;
- ``optimizer.npz``: the active phase's optimizer variables (momentum), for resuming;
- ``state.json``: the trial spec, the epoch reached, the phase and the epoch's metrics.

A checkpoint taken on a reclaim notice (trainables.preemption) is taken mid-epoch: its
``step`` is the steps of the next epoch already trained, ``sums`` their summed loss and
correct count, so that the resumed epoch reports the whole epoch.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from trainables.spec import TrialSpec

if TYPE_CHECKING:  # Keras starts TensorFlow: imported where a model is loaded
    import keras

MODEL_FILE = "model.keras"
OPTIMIZER_FILE = "optimizer.npz"
STATE_FILE = "state.json"


@dataclass(frozen=True)
class CheckpointState:
    spec: TrialSpec
    epoch: int  # epochs completed
    phase: str
    metrics: dict[str, Any]
    step: int = 0  # steps of the next epoch trained (a mid-epoch checkpoint)
    sums: tuple[float, float] = (0.0, 0.0)  # their summed loss and correct count


def save_checkpoint(
    directory: Path,
    model: keras.Model,
    optimizer: keras.optimizers.Optimizer,
    state: CheckpointState,
) -> Path:
    """Write a checkpoint into ``directory`` (created if needed) and return it."""
    directory.mkdir(parents=True, exist_ok=True)
    model.save(directory / MODEL_FILE)
    arrays = {f"v{i:04d}": np.asarray(v.numpy()) for i, v in enumerate(optimizer.variables)}
    np.savez(directory / OPTIMIZER_FILE, **arrays)
    (directory / STATE_FILE).write_text(
        json.dumps(
            {"spec": state.spec.to_dict(), "epoch": state.epoch, "phase": state.phase, "metrics": state.metrics,
             "step": state.step, "sums": list(state.sums)},
            indent=2,
        )
    )
    return directory


def read_state(directory: Path) -> CheckpointState:
    """The spec, epoch, phase and metrics of a checkpoint, without loading the model."""
    raw = json.loads((Path(directory) / STATE_FILE).read_text())
    return CheckpointState(
        spec=TrialSpec.from_dict(raw["spec"]), epoch=raw["epoch"], phase=raw["phase"], metrics=raw["metrics"],
        step=raw.get("step", 0), sums=tuple(raw.get("sums", (0.0, 0.0))),
    )


def load_model(directory: Path) -> keras.Model:
    """The classifier saved in a checkpoint directory."""
    path = Path(directory) / MODEL_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no {MODEL_FILE} in checkpoint {directory}")
    import keras

    return keras.saving.load_model(path, compile=False)


def restore_optimizer(directory: Path, optimizer: keras.optimizers.Optimizer) -> None:
    """Copy saved optimizer variables into a built optimizer of the same shape."""
    with np.load(Path(directory) / OPTIMIZER_FILE) as saved:
        values = [saved[k] for k in sorted(saved.files)]
    if len(values) != len(optimizer.variables):
        raise ValueError(
            f"checkpoint has {len(values)} optimizer variables, the optimizer {len(optimizer.variables)}"
        )
    for variable, value in zip(optimizer.variables, values):
        variable.assign(value)


@contextmanager
def resume_directory(checkpoint: Any) -> Iterator[Path | None]:
    """The local directory of a Ray/Tune ``Checkpoint`` to resume from, or None for none."""
    if checkpoint is None:
        yield None
        return
    with checkpoint.as_directory() as directory:
        yield Path(directory)
