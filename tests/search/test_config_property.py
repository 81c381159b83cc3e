"""Hundreds of malformed configs: each is rejected with an error that names a field."""

from __future__ import annotations

import copy
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from search.config import ConfigError, config_from_dict, config_to_dict
from search.config import Config

VALID = config_to_dict(Config())


def leaves(tree, path=()):
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from leaves(value, path + (key,))
        else:
            yield path + (key,), value


def mappings(tree, path=()):
    yield path
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from mappings(value, path + (key,))


LEAVES = [p for p, _ in leaves(VALID)]
MAPPINGS = list(mappings(VALID))
RANGES = [p[:-1] for p in LEAVES if p[-1] == "low"]


def get(tree, path):
    for key in path:
        tree = tree[key]
    return tree


def wrong_type(value):
    """A value of a type the field can never take."""
    if isinstance(value, bool):
        return st.sampled_from(["yes", 1, [True], {"a": 1}])
    if isinstance(value, (int, float)):
        return st.sampled_from(["many", None, [1, 2], {"x": 1}, True]) if not isinstance(value, bool) else st.just("x")
    if isinstance(value, str):
        return st.sampled_from([3, 2.5, [value], {"x": value}, True, ""])
    if isinstance(value, list):
        return st.sampled_from(["B0", 3, {"B0": 1}, [], ["B0", "B0"], ["B9"]])
    return st.just(object())


@st.composite
def malformed(draw):
    config = copy.deepcopy(VALID)
    kind = draw(st.sampled_from(["unknown_key", "wrong_type", "out_of_range", "swap_range", "missing", "not_mapping", "non_finite"]))
    if kind == "unknown_key":
        path = draw(st.sampled_from(MAPPINGS))
        name = draw(st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=12))
        target = get(config, path)
        if name in target:
            name = name + "_x"
        target[name] = draw(st.one_of(st.integers(), st.text(max_size=5), st.none()))
        path = path + (name,)
    elif kind == "wrong_type":
        path = draw(st.sampled_from([p for p in LEAVES if get(VALID, p) is not None]))
        get(config, path[:-1])[path[-1]] = draw(wrong_type(get(VALID, path)))
    elif kind == "out_of_range":
        path = draw(st.sampled_from([p for p in LEAVES if p[-1] in {
            "validation_fraction", "batch_size", "head_epochs", "momentum", "num_trials", "max_concurrent_trials",
            "reduction_factor", "grace_epochs", "workers", "cpus_per_worker", "seed", "min_lr", "head_lr",
            "shift_fraction", "low", "high"}]))
        get(config, path[:-1])[path[-1]] = draw(st.sampled_from([-1, -0.5, 10**12]))
    elif kind == "swap_range":
        path = draw(st.sampled_from(RANGES))
        r = get(config, path)
        r["low"], r["high"] = r["high"] + 1, r["low"]
    elif kind == "missing":
        path = draw(st.sampled_from(RANGES))
        key = draw(st.sampled_from(["low", "high"]))
        del get(config, path)[key]
        path = path + (key,)
    elif kind == "not_mapping":
        path = (draw(st.sampled_from(list(VALID))),)
        config[path[0]] = draw(st.sampled_from([[1, 2], "text", 5]))
    else:
        path = draw(st.sampled_from([p for p in LEAVES if isinstance(get(VALID, p), float)]))
        get(config, path[:-1])[path[-1]] = draw(st.sampled_from([math.inf, -math.inf, math.nan]))
    return kind, ".".join(path), config


def names_the_mutated_field(field: str, kind: str, mutated: str) -> bool:
    """The error names the field the case broke: that field itself or, where a list or a
    mapping was put, the part of it that is wrong; a range bound out of its axis's limits
    may name its range instead."""
    if field == mutated or (kind == "wrong_type" and field.startswith((mutated + "[", mutated + "."))):
        return True
    parent, _, bound = mutated.rpartition(".")
    return kind == "out_of_range" and bound in ("low", "high") and field == parent


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(malformed())
def test_malformed_configs_name_a_field(case):
    kind, mutated, config = case
    with pytest.raises(ConfigError) as info:
        config_from_dict(config)
    error = info.value
    assert names_the_mutated_field(error.field, kind, mutated), f"{kind} of {mutated} reported as: {error}"
    assert str(error).startswith(error.field)
    assert "\n" not in str(error)


def test_the_unmodified_config_is_valid():
    assert config_from_dict(copy.deepcopy(VALID)) == Config()


def test_unwritable_storage_fails_before_the_search(tmp_path):
    import subprocess
    import sys

    # A directory under a regular file cannot be created by anyone, root included.
    (tmp_path / "file").write_text("x")
    config = tmp_path / "c.yaml"
    config.write_text(f"storage: {{path: {tmp_path / 'file' / 'experiments'}}}\n")
    probe = (
        "import sys; from search.cli import main; "
        f"rc = main(['run', '--config', {str(config)!r}]); "
        "print('imported:', sorted(m for m in ('ray', 'tensorflow', 'keras') if m in sys.modules)); sys.exit(rc)"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "storage.path" in done.stderr and "not writable" in done.stderr
    assert "imported: []" in done.stdout  # neither Ray nor TensorFlow nor Keras started
