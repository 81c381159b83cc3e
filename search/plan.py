"""Before anything starts: how each backbone's trials will run, and whether they fit.

For every backbone of the space: its shape (strategy, workers, accelerators), how many
replicas share the global batch, each replica's share, the micro-batches that share is
split into so a step fits the replica's device (gradient accumulation: one update per
share, exact while BatchNormalization is frozen), and the estimated memory per replica
against the device's (trainables/memory.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from search import strategies
from search.config import Config, ConfigError, Shape, space_value
from trainables import backbones
from trainables import memory
from trainables.spec import batchnorm_frozen
from trainables.strategy import Precision


@dataclass(frozen=True)
class BackbonePlan:
    backbone: str
    shape: Shape
    side: int  # pixels the model resizes to
    replicas: int
    per_replica_batch: int
    micro_batches: int | None  # None: does not fit even one image at a time
    estimate_mib: float  # one replica's step at its micro-batch (or at one image when none fits)
    capacity_mib: float
    device: str
    precision: Precision  # what every replica trains in

    @property
    def fits(self) -> bool:
        return self.micro_batches is not None


def plan_backbone(config: Config, backbone: str) -> BackbonePlan:
    shape = config.resources.shape_for(backbone)
    side = backbones.input_resolution(backbone, config.data.image_size)
    strategy = strategies.of(shape)
    replicas = strategy.replicas(shape)
    per_replica = config.recipe.batch_size // replicas
    precision = strategy.precision(shape, mixed_precision=config.resources.mixed_precision, xla=config.resources.xla)
    cost = memory.step_cost(backbone, side, mixed_precision=precision.policy != "float32")
    device, capacity = strategy.device(shape)
    k = memory.micro_batches(per_replica, cost, capacity)
    estimate = cost.at(per_replica // k if k else 1)
    return BackbonePlan(backbone, shape, side, replicas, per_replica, k, estimate, capacity, device, precision)


def make_plan(config: Config) -> list[BackbonePlan]:
    """One plan per backbone of the space.

    Raises:
        ConfigError: a backbone needs micro-batches while BatchNormalization trains
            (``recipe.weights: none``), where they would change its statistics.
    """
    plans = [plan_backbone(config, name) for name in space_value(config.space, "backbone")]
    if not batchnorm_frozen(config.recipe.weights):
        for p in plans:
            if p.micro_batches and p.micro_batches > 1:
                raise ConfigError(
                    "recipe.weights",
                    f"{p.backbone} needs {p.micro_batches} micro-batches per step to fit its {p.device}, but with "
                    "weights none BatchNormalization trains and micro-batches would change its statistics: "
                    f"give {p.backbone} more replicas (resources.backbones.{p.backbone}) or a lower recipe.batch_size",
                )
    return plans


def unfit(plans: list[BackbonePlan]) -> list[BackbonePlan]:
    return [p for p in plans if not p.fits]


def table_markdown(plans: list[BackbonePlan]) -> str:
    """The plan as a Markdown table (what ``hpsearch plan`` prints)."""
    lines = ["| backbone | px | strategy | workers x device | replicas | per-replica batch | micro-batches "
             "| memory per replica (est.) | fits |",
             "|---|---|---|---|---|---|---|---|---|"]
    for p in plans:
        micro = str(p.micro_batches) if p.fits else "-"
        shown = f"{p.estimate_mib / 1024:.1f} / {p.capacity_mib / 1024:.0f} GiB"
        per_worker = strategies.of(p.shape).worker_label(p.shape)
        lines.append(f"| {p.backbone} | {p.side} | {p.shape.strategy} | {p.shape.workers} x {per_worker} | {p.replicas} "
                     f"| {p.per_replica_batch} | {micro} | {shown} | {'yes' if p.fits else 'NO'} |")
    return "\n".join(lines) + "\n"
