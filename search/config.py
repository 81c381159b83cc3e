"""Search configuration: one YAML file becomes frozen, typed dataclasses.

This module is the only place in hpsearch that reads YAML. Everything downstream takes
these dataclasses. Pydantic validates a file against them (their types, no unknown key,
no coercion); the bounds they declare in field metadata are checked after it. Every
problem with a file is a :class:`ConfigError` that names the offending field
(``space.dropout.high``) and what it expects, raised before Ray or TensorFlow start.
The sections are declared here (a trial's resources in :mod:`search.shape`); the rules
that span fields are :mod:`search.rules`, what a resume may change
:mod:`search.resume_rules`, and the JSON Schema for editors :mod:`search.schema`.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from search import rules
from search.shape import Shape
from trainables.errors import InputError
from trainables.params import PARAMS, Bounds, FloatRange, IntRange, bounds, upper
from trainables.spec import MAX_SEED, DataConfig, RecipeConfig

class ConfigError(InputError):
    """A config problem, tied to the dotted path of the field that caused it."""

    def __init__(self, field_path: str, message: str) -> None:
        super().__init__(f"{field_path}: {message}" if field_path else message)
        self.field = field_path


# ---------------------------------------------------------------------------- sections

# The search space: one field per row of the parameter table (trainables.params), a
# range or a tuple of choices to search, or one value to fix. Derived, never listed here.
SpaceConfig = dataclasses.make_dataclass(
    "SpaceConfig",
    [(p.config_name, p.config_type, field(default=p.space, metadata={"bounds": p.bounds, "doc": p.doc}))
     for p in PARAMS],
    frozen=True,
)
SpaceConfig.__module__ = __name__  # so that pickles (Ray ships configs to trials) find it
SpaceConfig.__doc__ = "The search space: what Optuna's TPE sampler chooses per trial (see trainables.params)."


def space_value(space: Any, name: str) -> Any:
    """The declared space of the parameter ``name`` (a trial-side name, e.g. ``backbone``)."""
    (param,) = [p for p in PARAMS if p.name == name]
    return getattr(space, param.config_name)


@dataclass(frozen=True)
class SearchConfig:
    """How many trials, how many at once, and ASHA's rungs."""

    # Experiment name: the directory under storage.path that holds the search.
    name: str = "hpsearch"
    num_trials: int = field(default=16, metadata=bounds(1, 100000))
    max_concurrent_trials: int = field(default=2, metadata=bounds(1, 10000))
    seed: int = field(default=0, metadata=bounds(0, MAX_SEED))
    # Trials TPE samples at random before it models the results (Optuna's n_startup_trials).
    startup_trials: int = field(default=8, metadata=bounds(1, 100000))
    # ASHA: no trial is stopped before this many fine-tuning epochs (the head phase's
    # epochs do not count: they rank nothing the search decides); a rung keeps
    # 1/reduction_factor.
    grace_epochs: int = field(default=3, metadata=bounds(1, 10000))
    reduction_factor: int = field(default=3, metadata=bounds(2, 100))


# A per-backbone override: every Shape field, unset by default (inherits resources.*).
ShapeOverride = dataclasses.make_dataclass(
    "ShapeOverride",
    [(f.name, typing.get_type_hints(Shape)[f.name] | None, field(default=None, metadata=f.metadata))
     for f in dataclasses.fields(Shape)],
    frozen=True,
)
ShapeOverride.__module__ = __name__
ShapeOverride.__doc__ = "Shape fields one backbone overrides (unset: the resources section's value)."


@dataclass(frozen=True)
class ResourcesConfig(Shape):
    """What one trial holds while it runs: a default shape, overrides per backbone."""

    # Reduced precision (float16 on GPUs, bfloat16 on TPUs) and XLA compilation of the
    # training step. None means: on where it pays (GPU and TPU), off on CPUs.
    mixed_precision: bool | None = None
    xla: bool | None = None
    # Training steps per compiled call (Keras's steps_per_execution): the host starts a
    # call and reads its results back once per call. None: a whole epoch per call.
    steps_per_execution: int | None = None
    # Distributed trials (mwms, tpu): training steps between two asks whether a node of
    # the trial is being reclaimed (Spot/preemptible; trainables.preemption). On a notice
    # the trial checkpoints the step reached and resumes there on another node. Unset:
    # sized so that an interval takes about 5 s at the measured step time (GKE's notice
    # is about 15 s); 0: no checks (a reclaim loses the epoch's steps).
    preemption_check_steps: int | None = None
    # On an autoscaling cluster the chart does not describe (no HPSEARCH_RAYCLUSTER_*),
    # nodes a trial needs may not exist yet: warn instead of refusing to start when the
    # live cluster cannot hold a trial right now. On the chart's cluster the check reads
    # the autoscaler's own view and always refuses what no worker group can hold.
    wait_for_autoscaler: bool = False
    # Seconds a distributed trial waits for its worker group to be placed before Ray
    # Train gives up; the trial then ends in ERROR naming what it waited for (Tune
    # retries it up to twice more). The wait covers nodes scaled up from zero and images
    # pulled (minutes on GKE), and also resources other running trials hold: an hour,
    # so that a trial queued behind another's GPUs is not failed for it.
    placement_timeout_s: float = field(default=3600.0, metadata=bounds(1.0, 86400.0))
    # Backbone name -> the shape fields its trials use instead of the defaults above.
    backbones: dict[str, ShapeOverride] = field(default_factory=dict)

    def shape_for(self, backbone: str) -> Shape:
        """The shape of ``backbone``'s trials: the defaults with its overrides applied."""
        base = {f.name: getattr(self, f.name) for f in dataclasses.fields(Shape)}
        override = self.backbones.get(backbone)
        if override is not None:
            base.update({k: v for k, v in dataclasses.asdict(override).items() if v is not None})
        return Shape(**base)


# Where experiments go when the config names no storage.path: the chart sets this
# variable in every pod to the release's bucket; elsewhere, ./experiments.
STORAGE_ENV = "HPSEARCH_STORAGE"
LOCAL_STORAGE = "./experiments"


def default_storage_path() -> str:
    return os.environ.get(STORAGE_ENV) or LOCAL_STORAGE


@dataclass(frozen=True)
class StorageConfig:
    """Where experiments live: a local directory or a gs:// URI."""

    # Unset in the file: $HPSEARCH_STORAGE when set, else ./experiments.
    path: str = field(default_factory=default_storage_path)
    # gs://: a driver whose lease on the experiment (search.lease) has not been renewed
    # for this long is taken to be dead, and `--resume` may take the search over. The
    # holder renews it every lease_timeout_s / 6 s. (Local disk needs no timeout: the
    # kernel frees a dead process's lock.)
    lease_timeout_s: float = field(default=120.0, metadata=bounds(3.0, 86400.0))


@dataclass(frozen=True)
class Config:
    """A whole search configuration."""

    data: DataConfig = DataConfig()
    space: SpaceConfig = SpaceConfig()
    recipe: RecipeConfig = RecipeConfig()
    search: SearchConfig = SearchConfig()
    resources: ResourcesConfig = ResourcesConfig()
    storage: StorageConfig = field(default_factory=StorageConfig)  # reads the environment when made

    @property
    def max_epochs(self) -> int:
        """Longest trial in epochs: ASHA's max_t (the warmup axis varies per trial)."""
        return self.recipe.epochs(upper(space_value(self.space, "warmup_epochs")))

    @property
    def max_finetune_epochs(self) -> int:
        """The longest trial's fine-tuning (phase 2) epochs: ASHA's max_t."""
        return self.max_epochs - self.recipe.head_epochs


def smoke_config(config: Config) -> Config:
    """A minutes-long version of a config that still runs every code path."""
    recipe = dataclasses.replace(
        config.recipe,
        batch_size=min(config.recipe.batch_size, 32),
        head_epochs=1,
        flat_epochs=0,
        cooldown_epochs=1,
    )
    space = dataclasses.replace(
        config.space,
        warmup_epochs=IntRange(0, 1),
    )
    return dataclasses.replace(
        config,
        data=dataclasses.replace(config.data, max_train_examples=256, image_size=32),
        recipe=recipe,
        space=space,
        search=dataclasses.replace(
            config.search,
            name=f"{config.search.name}-smoke",
            num_trials=2,
            max_concurrent_trials=min(2, config.search.max_concurrent_trials),
            grace_epochs=1,
        ),
    )


# ---------------------------------------------------------------------------- loading


def load_config(path: str | Path) -> Config:
    """Read and validate a YAML config file.

    Args:
        path: the YAML file.

    Returns:
        The validated, frozen :class:`Config`.

    Raises:
        ConfigError: the file is missing or malformed, or a value is not allowed; the
            message names the field.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError("", f"config file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError("", f"YAML syntax error in {path}{where}: {problem}") from None
    if raw is None:  # an empty file is more likely a mistake than a wish for defaults
        raise ConfigError("", f"{path} is empty: give at least one section (e.g. `search: {{name: my-search}}`), "
                              "or leave out --config for the offline default")
    return config_from_dict(raw)


def config_from_dict(raw: Any) -> Config:
    """Validate a plain mapping (as parsed from YAML) into a :class:`Config`."""
    import pydantic  # here: a process that only receives configs does not import it

    if not isinstance(raw, dict):
        raise ConfigError("<root>", f"expected a mapping, got {_kind(raw)}")
    try:
        # JSON mode, strict: YAML's lists are JSON arrays (tuples here), an integer is a
        # number, and nothing is coerced ("8" is not an integer, 1 is not true)
        config = config_adapter().validate_json(json.dumps(_json_data(raw, "")), strict=True)
    except pydantic.ValidationError as exc:
        # pydantic tries each branch of a union (a range, or one fixed value): what the
        # branch that fits the value's kind says; an unknown key (a typo) before a
        # missing one it would have been
        errors = sorted(exc.errors(), key=lambda e: e["type"] != "unexpected_keyword_argument")
        found = [_config_error(error, raw) for error in errors]
        raise next((error for error, fits in found if fits), found[0][0]) from None
    # lazily: the rules assume every value is within its bounds
    for field_path, message in itertools.chain(_value_problems(config, ""), rules.problems(config)):
        raise ConfigError(field_path, message)  # the first one found
    return config


def config_to_dict(config: Any) -> dict:
    """The plain-data form of a config (tuples become lists), for JSON and YAML."""

    def plain(value: Any) -> Any:
        if dataclasses.is_dataclass(value):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, tuple):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return plain(config)


# ---------------------------------------------------------------------------- pydantic

# The sections stay plain frozen dataclasses (the trial side and Ray's pickles use them,
# without pydantic); the loader's strictness is attached to each of them by
# config_adapter, in the form pydantic reads from a standard dataclass
# (pydantic.with_config): an unknown key is an error, and so is an infinite or NaN number.
_LOADER = {"extra": "forbid", "allow_inf_nan": False}


def section_classes(cls: type) -> list[type]:
    """``cls`` and every dataclass its fields hold, each once."""
    found, todo = [], [cls]
    while todo:
        current = todo.pop()
        if current not in found:
            found.append(current)
            todo += [t for hint in typing.get_type_hints(current).values() for t in _inner_types(hint)
                     if dataclasses.is_dataclass(t)]
    return found


def _inner_types(hint: Any) -> list[Any]:
    args = typing.get_args(hint)
    return [hint] if not args else [t for a in args for t in _inner_types(a)]


@functools.cache
def config_adapter() -> Any:
    """pydantic's validator of :class:`Config`, built on the first file read (a second
    or so): processes that only receive configs, as trials do, never pay for it."""
    import pydantic

    for section in section_classes(Config):
        pydantic.with_config(pydantic.ConfigDict(**_LOADER))(section)
    return pydantic.TypeAdapter(Config)


# pydantic's error types, as this loader words them ({kind}: what the file holds there)
_EXPECTED = {
    "dataclass_type": "expected a mapping, got {kind}", "dict_type": "expected a mapping, got {kind}",
    "int_type": "expected an integer, got {kind}", "int_from_float": "expected an integer, got {kind}",
    "float_type": "expected a number, got {kind}", "finite_number": "expected a finite number, got {kind}",
    "bool_type": "expected true or false, got {kind}", "string_type": "expected a string, got {kind}",
    "tuple_type": "expected a list, got {kind}", "list_type": "expected a list, got {kind}",
    "missing": "is required",
}


def _config_error(error: dict, raw: dict) -> tuple[ConfigError, bool]:
    """One pydantic error as a ConfigError on the file's own path (``space.backbones[1]``),
    and whether each union branch it went through fits the value there (a mapping is a
    range, anything else a fixed value): pydantic names the branch in the location."""
    hint, path, value, fits = Config, "", raw, True
    loc = list(error["loc"])
    while loc:
        members = [a for a in typing.get_args(hint) if a is not type(None)]
        if typing.get_origin(hint) in (typing.Union, types.UnionType):
            if len(members) > 1:  # Optional names no branch
                name = loc.pop(0)
                hint = next(a for a in members if getattr(a, "__name__", str(a)) == name)
                fits = fits and isinstance(value, dict) == dataclasses.is_dataclass(hint)
            else:
                hint = members[0]
            continue
        key = loc.pop(0)
        value = value.get(key) if isinstance(value, dict) else value[key] if isinstance(value, list) else None
        if dataclasses.is_dataclass(hint):
            names = [f.name for f in dataclasses.fields(hint)]
            path = f"{path}.{key}" if path else str(key)
            if key not in names:
                return ConfigError(path, f"unknown key; allowed: {', '.join(names)}"), fits
            hint = typing.get_type_hints(hint)[key]
        elif isinstance(key, int):
            path, hint = f"{path}[{key}]", typing.get_args(hint)[0]
        else:  # a mapping's key
            path, hint = f"{path}.{key}", typing.get_args(hint)[1]
    template = _EXPECTED.get(error["type"])
    message = template.format(kind=_kind(error["input"])) if template else error["msg"]
    return ConfigError(path or "<root>", message), fits


def _json_data(raw: Any, path: str) -> Any:
    """``raw`` as JSON holds it; a YAML value JSON has no form for (a date) is an error here."""
    if isinstance(raw, dict):
        return {str(k): _json_data(v, f"{path}.{k}" if path else str(k)) for k, v in raw.items()}
    if isinstance(raw, list):
        return [_json_data(v, f"{path}[{i}]") for i, v in enumerate(raw)]
    if raw is None or isinstance(raw, (bool, int, float, str)):
        return raw
    raise ConfigError(path, f"expected a number, a string, true or false, a list or a mapping, got {_kind(raw)}")


# ---------------------------------------------------------------------------- values

def _value_problems(value: Any, path: str) -> typing.Iterator[tuple[str, str]]:
    """What the types allow but the declarations do not: each field's bounds (its
    metadata), a range's ends in order, lists of distinct choices, no empty names."""
    if isinstance(value, (FloatRange, IntRange)):
        if value.low > value.high:
            yield path, f"low ({value.low}) is above high ({value.high})"
        if isinstance(value, FloatRange) and value.log and value.low <= 0:
            yield f"{path}.low", f"a log-scale range needs low > 0, got {value.low}"
    if dataclasses.is_dataclass(value):
        for f in dataclasses.fields(value):
            where = f"{path}.{f.name}" if path else f.name
            field_value = getattr(value, f.name)
            yield from _value_problems(field_value, where)
            yield from _bound_problems(field_value, f.metadata.get("bounds"), where)
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _value_problems(item, f"{path}.{key}")
    elif isinstance(value, tuple):
        if not value:
            yield path, "must not be empty"
        elif len(set(value)) != len(value):
            yield path, "has duplicates"
        for index, item in enumerate(value):
            yield from _value_problems(item, f"{path}[{index}]")
    elif isinstance(value, str) and not value.strip():
        yield path, "must not be empty"


def _bound_problems(value: Any, declared: Bounds | None, path: str) -> typing.Iterator[tuple[str, str]]:
    if declared is None or value is None:
        return
    if isinstance(value, (FloatRange, IntRange)):
        yield from _bound_problems(value.low, declared, f"{path}.low")
        yield from _bound_problems(value.high, declared, f"{path}.high")
        return
    problem = declared.problem(value)
    if problem:
        yield path, problem


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean"}.get(
        type(value), f"{type(value).__name__} {value!r}"
    )
