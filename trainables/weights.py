"""Pretrained backbone weights, staged once in experiment storage and read by trials.

A search with ``recipe.weights: imagenet`` does not let every trial download its
backbone's weights: the driver fetches each backbone's file once into
``<storage.path>/weights/`` (``search.weights``), and a trial copies it from there to a
local cache before building its model. Nothing here downloads from the internet.
"""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow.fs as pafs

from trainables import backbones
from trainables.cache import WEIGHTS_CACHE
from trainables.errors import InputError
from trainables.storage import resolve

WEIGHTS_DIR = "weights"


def staged_uri(storage_uri: str, backbone: str) -> str:
    """Where the backbone's ImageNet weights file lives in a storage root."""
    file = backbones.get(backbone).imagenet_file
    if file is None:
        raise InputError(f"backbone {backbone} has no ImageNet weights: set recipe.weights to none or a weights file")
    return f"{storage_uri.rstrip('/')}/{WEIGHTS_DIR}/{file}"


def local_copy(storage_uri: str, backbone: str) -> str:
    """A local path of the backbone's weights staged under ``storage_uri`` (copied once
    per machine).

    Raises:
        InputError: the file is not staged (the driver stages it before any trial).
    """
    uri = staged_uri(storage_uri, backbone)
    location = resolve(uri)
    info = location.filesystem.get_file_info(location.root)
    if info.type != pafs.FileType.File:
        raise InputError(f"the ImageNet weights of {backbone} are not staged at {uri}")
    target = WEIGHTS_CACHE / Path(uri).name
    if not target.is_file() or target.stat().st_size != info.size:
        WEIGHTS_CACHE.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(f".{os.getpid()}.part")
        pafs.copy_files(location.root, str(partial), source_filesystem=location.filesystem,
                        destination_filesystem=pafs.LocalFileSystem())
        partial.replace(target)  # atomic: a concurrent trial never reads half a file
    return str(target)
