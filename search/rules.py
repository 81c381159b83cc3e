"""The rules a config must meet beyond each field's type and bounds: those that span
fields (a batch that divides over a trial's replicas, a grace period within the longest
trial) or name allowed choices from the registries (backbones, data sources,
strategies). Pure: each yields what is wrong; :func:`search.config.config_from_dict`
raises the first as a ConfigError naming its field.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from search import strategies
from search.shape import Shape
from trainables.data import accepted_sources, find_source
from trainables.params import PARAMS, FloatRange, IntRange
from trainables.storage import is_supported, supported_schemes

WEIGHTS = ("imagenet", "none")


def _lower(declared: Any) -> Any:
    return declared.low if isinstance(declared, (FloatRange, IntRange)) else declared


def problems(config: Any) -> Iterator[tuple[str, str]]:
    """What breaks a rule, as (field path, message), in the order the rules are checked;
    a rule may rely on those before it holding (the loader stops at the first)."""
    for param in PARAMS:
        if param.choices is None:
            continue
        allowed = param.choices()
        for i, value in enumerate(getattr(config.space, param.config_name)):
            if value not in allowed:
                yield f"space.{param.config_name}[{i}]", f"must be one of {', '.join(allowed)}, got {value!r}"
    if find_source(config.data.dataset) is None:
        yield ("data.dataset", f"must be {accepted_sources()}, got {config.data.dataset!r}")
    weights = config.recipe.weights
    if weights not in WEIGHTS and not _looks_like_path(weights):
        yield "recipe.weights", f"must be imagenet, none or a weights file path, got {weights!r}"
    yield from _shape_problems(config)
    if config.resources.preemption_check_steps is not None and config.resources.preemption_check_steps < 0:
        yield ("resources.preemption_check_steps",
               f"must be >= 1, or 0 for no checks, or unset to size the checks by the measured step time; "
               f"got {config.resources.preemption_check_steps}")
    if config.resources.steps_per_execution is not None and config.resources.steps_per_execution < 1:
        yield ("resources.steps_per_execution",
               f"must be >= 1 (or unset: a whole epoch per call), got {config.resources.steps_per_execution}")
    if config.max_finetune_epochs < 1:
        yield "recipe.cooldown_epochs", "phase 2 (warmup + flat + cooldown) needs at least 1 epoch"
    if config.search.grace_epochs > config.max_finetune_epochs:
        yield (
            "search.grace_epochs",
            f"counts fine-tuning epochs: must be <= the longest trial's ({config.max_finetune_epochs}: "
            f"warmup + flat + cooldown), got {config.search.grace_epochs}",
        )
    lowest_lr = _lower(config.space.max_lr)
    if config.recipe.min_lr > lowest_lr:
        yield "recipe.min_lr", f"must be <= space.max_lr.low ({lowest_lr}), got {config.recipe.min_lr}"
    if not is_supported(config.storage.path):
        yield ("storage.path", f"must be {supported_schemes()}, got {config.storage.path!r}")


def _shape_problems(config: Any) -> Iterator[tuple[str, str]]:
    """Every backbone's shape, each error naming the backbone's override when it has one."""
    res = config.resources
    for name in res.backbones:
        if name not in config.space.backbones:
            yield (f"resources.backbones.{name}",
                   f"is not one of space.backbones ({', '.join(config.space.backbones)})")
    for name in config.space.backbones:
        path = f"resources.backbones.{name}" if name in res.backbones else "resources"
        yield from _one_shape_problems(res.shape_for(name), res, path, config.recipe.batch_size)


def _one_shape_problems(shape: Shape, res: Any, path: str, batch_size: int) -> Iterator[tuple[str, str]]:
    if shape.strategy not in strategies.STRATEGIES:
        yield f"{path}.strategy", f"must be one of {', '.join(strategies.STRATEGIES)}, got {shape.strategy!r}"
        return
    strategy = strategies.of(shape)
    if strategy.one_worker and shape.workers != 1:
        yield (f"{path}.workers", f"the {shape.strategy} strategy runs 1 worker, got {shape.workers}")
    for name, message in strategy.problems(shape, xla=res.xla):
        # xla is a section-wide setting; the others are the shape's own
        yield ("resources.xla" if name == "xla" else f"{path}.{name}", message)
    replicas = strategy.replicas(shape)
    if batch_size % replicas:
        yield (
            "recipe.batch_size",
            f"the global batch must divide evenly over {replicas} replicas ({path}), got {batch_size}",
        )


def _looks_like_path(value: str) -> bool:
    return "/" in value or value.startswith(".") or value.endswith((".h5", ".keras"))
