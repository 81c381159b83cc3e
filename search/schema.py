"""The config's JSON Schema, for editors: ``hpsearch config --schema`` prints it, and the
shipped configs name it in their first line (``# yaml-language-server: $schema=...``)
so that an editor with the YAML language server validates and completes them.

Pydantic, which loads the config (search.config), derives the structure from the
config's own dataclasses, unknown keys refused as the loader refuses them; the bounds,
allowed names and descriptions those declare in their field metadata and registries are
added here, so nothing is written twice. The loader stays the authority: it also checks
the rules that span fields, which a schema cannot state.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from search import strategies
from search.config import Config, config_adapter, section_classes
from search.strategies import TPU_ACCELERATORS
from trainables import backbones
from trainables.params import Bounds

# The schema the shipped configs name (tests check it is the one this module writes).
SCHEMA_FILE = Path(__file__).resolve().parent.parent / "configs" / "hpsearch.schema.json"
SCHEMA_LINE = "# yaml-language-server: $schema=hpsearch.schema.json"


def config_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a config file."""
    schema = config_adapter().json_schema()
    definitions = schema.setdefault("$defs", {})
    for cls in section_classes(Config):
        node = schema if cls is Config else definitions[cls.__name__]
        for f in dataclasses.fields(cls):
            _annotate(node["properties"][f.name], f.metadata)
    for node in (definitions["ResourcesConfig"], definitions["ShapeOverride"]):
        _scalar(node["properties"]["strategy"])["enum"] = list(strategies.STRATEGIES)
        _scalar(node["properties"]["tpu_accelerator"])["enum"] = list(TPU_ACCELERATORS)
    space = definitions["SpaceConfig"]["properties"]["backbones"]
    space["items"]["enum"] = list(backbones.BACKBONES)
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "title": "hpsearch config", **schema}


def schema_text() -> str:
    return json.dumps(config_schema(), indent=2) + "\n"


def _scalar(prop: dict[str, Any]) -> dict[str, Any]:
    """The branch of a property that holds a plain value (not null, not a range)."""
    for branch in prop.get("anyOf", [prop]):
        if branch.get("type") in ("string", "number", "integer"):
            return branch
    return prop


def _annotate(prop: dict[str, Any], metadata: Any) -> None:
    if metadata.get("doc"):
        prop["description"] = metadata["doc"]
    declared: Bounds | None = metadata.get("bounds")
    if declared is None:
        return
    # a range's low and high are checked against the same bounds by the loader; the
    # schema states them for the single value a field may also take
    target = _scalar(prop)
    if target.get("type") not in ("number", "integer"):
        return
    if declared.low is not None:
        target["exclusiveMinimum" if declared.open_low else "minimum"] = declared.low
    if declared.high is not None:
        target["maximum"] = declared.high
