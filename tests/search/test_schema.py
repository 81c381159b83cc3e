"""The config's JSON Schema: what `hpsearch config --schema` prints is the file the shipped
configs name, every shipped config validates against it, and it refuses what the loader
refuses field by field (an editor then flags a bad config as it is typed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jsonschema
import pytest
import yaml

from search.config import ConfigError, config_from_dict
from search.schema import SCHEMA_FILE, SCHEMA_LINE
from support import REPO

CONFIGS = sorted((REPO / "configs").glob("*.yaml"))


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    schema = json.loads(SCHEMA_FILE.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_the_command_prints_the_schema_the_configs_name():
    """As a user runs it: no backbone family added through the environment."""
    env = {k: v for k, v in os.environ.items() if k != "HPSEARCH_BACKBONE_MODULES"}
    printed = subprocess.run([sys.executable, "-m", "search", "config", "--schema"], capture_output=True,
                             text=True, env=env, cwd=REPO, timeout=120, check=True).stdout
    assert json.loads(printed) == json.loads(SCHEMA_FILE.read_text()), \
        "configs/hpsearch.schema.json is stale: rewrite it with `hpsearch config --schema > configs/hpsearch.schema.json`"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_names_and_meets_the_schema(path, validator):
    assert path.read_text().splitlines()[0] == SCHEMA_LINE
    errors = [e.message for e in validator.iter_errors(yaml.safe_load(path.read_text()))]
    assert errors == []


@pytest.mark.parametrize("bad,field", [
    ({"search": {"num_trails": 4}}, ["search"]),  # a misspelt key
    ({"space": {"dropout": 1.5}}, ["space", "dropout"]),  # a fixed value out of bounds
    ({"space": {"backbones": ["B9"]}}, ["space", "backbones", 0]),  # no such backbone
    ({"resources": {"strategy": "horovod"}}, ["resources", "strategy"]),
    ({"resources": {"backbones": {"B7": {"strategy": "tpu", "tpu_accelerator": "TPU-V9"}}}},
     ["resources", "backbones", "B7", "tpu_accelerator"]),
    ({"search": {"max_concurrent_trials": 0}}, ["search", "max_concurrent_trials"]),
    ({"recipe": {"batch_size": "32"}}, ["recipe", "batch_size"]),
])
def test_the_schema_refuses_what_the_loader_refuses_at_the_same_field(bad, field, validator):
    errors = list(validator.iter_errors(bad))
    assert errors, bad
    assert any(list(e.absolute_path)[:len(field)] == field or list(e.absolute_path) == field[:-1]
               for e in errors), [(list(e.absolute_path), e.message) for e in errors]
    with pytest.raises(ConfigError, match=".".join(str(p) for p in field[:2])):
        config_from_dict(bad)
