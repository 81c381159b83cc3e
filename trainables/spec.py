"""Everything one trial needs: the data, the fixed recipe, the sampled values, a seed.

:class:`DataConfig` and :class:`RecipeConfig` are also the ``data`` and ``recipe``
sections of a search config (``search.config`` composes them), so a trial's spec is
the config's own sections plus its :class:`~trainables.params.Hyperparams`: nothing is
copied field by field on the way to a worker.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any

from trainables.params import Hyperparams, bounds
from trainables.schedule import LRSchedule

# numpy's RandomState (behind Optuna's samplers and scikit-learn's splits) takes seeds
# below 2**32.
MAX_SEED = 2**32 - 1


@dataclass(frozen=True)
class DataConfig:
    """Where images come from and how the validation split is carved."""

    # A data source name (trainables.data.SOURCES), a CIFAR python-batch directory, or a
    # data set staged by `hpsearch data stage` (a directory or storage URI).
    dataset: str = "digits"
    # Fraction of the training split held out for validation; the search never reads test.
    validation_fraction: float = field(default=0.2, metadata=bounds(0.0, 0.9, open_low=True))
    # Side in pixels the model resizes its input to. None: the backbone's native size
    # (B0 224 ... B7 600). Small machines set 32.
    image_size: int | None = field(default=None, metadata=bounds(32, 1024))
    # Use at most this many training images (after the validation split). None: all.
    max_train_examples: int | None = field(default=None, metadata=bounds(1, None))
    seed: int = field(default=0, metadata=bounds(0, MAX_SEED))


@dataclass(frozen=True)
class RecipeConfig:
    """The fixed parts of the fine-tuning recipe (docs/recipe.md section 1)."""

    # Global batch size (per replica x replicas).
    batch_size: int = field(default=200, metadata=bounds(1, 65536))
    # Phase 1: backbone frozen, head only.
    head_epochs: int = field(default=5, metadata=bounds(0, 1000))
    # The article does not give the head-phase rate; SGD at this constant rate.
    head_lr: float = field(default=0.01, metadata=bounds(0.0, 10.0, open_low=True))
    # Phase 2 after the warmup: flat at max LR, then cosine cooldown to min LR.
    flat_epochs: int = field(default=5, metadata=bounds(0, 1000))
    cooldown_epochs: int = field(default=20, metadata=bounds(0, 1000))
    min_lr: float = field(default=0.001, metadata=bounds(0.0, 10.0))
    momentum: float = field(default=0.9, metadata=bounds(0.0, 1.0))
    # "imagenet", "none" (train from scratch), or a path to a backbone weights file.
    weights: str = "imagenet"
    # Random shift of up to this fraction of the side, each direction.
    shift_fraction: float = field(default=0.1, metadata=bounds(0.0, 0.5))
    # Random saturation and contrast factors are drawn from [1 - x, 1 + x].
    saturation_delta: float = field(default=0.2, metadata=bounds(0.0, 1.0))
    contrast_delta: float = field(default=0.2, metadata=bounds(0.0, 1.0))
    # Random horizontal flip. Right for photographs (CIFAR); wrong for digits, where a
    # mirrored 2 or 7 is no longer the same glyph.
    flip: bool = True

    def epochs(self, warmup_epochs: int) -> int:
        """Epochs of one trial: head phase, then warmup, flat and cooldown."""
        return self.head_epochs + warmup_epochs + self.flat_epochs + self.cooldown_epochs


def batchnorm_frozen(weights: str) -> bool:
    """Whether the backbone's BatchNormalization runs in inference mode.

    Pretrained backbones (``imagenet`` or a weights file) keep BatchNormalization in
    inference mode in both phases, so fine-tuning cannot overwrite the pretrained
    statistics (docs/recipe.md sections 1 and 5). A backbone trained from scratch
    (``none``) has no statistics to protect: its moving mean and variance start at 0 and
    1, and a deep net with normalisation frozen at those values does not learn (measured
    on digits: chance accuracy after 13 epochs), so there BatchNormalization trains.
    """
    return weights != "none"


@dataclass(frozen=True)
class AugmentParams:
    """One trial's augmentation settings (what ``trainables.augment`` reads)."""

    shift_fraction: float = 0.1
    cutout_fraction: float = 0.4
    cutout_count: int = 2
    saturation_delta: float = 0.2
    contrast_delta: float = 0.2
    flip: bool = True


@dataclass(frozen=True)
class TrialSpec:
    """One trial: data, the fixed recipe, the sampled values, and the seed of its
    initialisation, shuffling and augmentation."""

    data: DataConfig
    recipe: RecipeConfig
    hp: Hyperparams
    seed: int = 0
    # Each replica splits its share of the global batch into this many micro-batches and
    # applies one update per share (search.plan picks it so a step fits the device).
    micro_batches: int = 1
    # With weights "imagenet": the storage root whose weights/ holds the backbones' files
    # (staged by the driver, trainables.weights); None lets Keras download them itself.
    weights_root: str | None = None

    @property
    def total_epochs(self) -> int:
        return self.recipe.epochs(self.hp.warmup_epochs)

    @property
    def schedule(self) -> LRSchedule:
        r = self.recipe
        return LRSchedule(self.hp.warmup_epochs, r.flat_epochs, r.cooldown_epochs, r.min_lr, self.hp.max_lr)

    @property
    def augment(self) -> AugmentParams:
        r = self.recipe
        return AugmentParams(r.shift_fraction, self.hp.cutout_fraction, self.hp.cutout_count,
                             r.saturation_delta, r.contrast_delta, r.flip)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrialSpec":
        """The inverse of :meth:`to_dict` (checkpoints keep specs as JSON)."""
        return _from_plain(cls, data)


def _from_plain(cls: type, data: dict[str, Any]) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields: {sorted(unknown)}")
    return cls(**{k: _from_plain(hints[k], v) if dataclasses.is_dataclass(hints[k]) else v for k, v in data.items()})
