"""``hpsearch data stage``: read a data set once and write it as Parquet shards.

The source goes through the same loaders as training (``cifar10`` through Keras's
downloader, or a directory in the CIFAR python-batch layout). The validation split is
carved here, once, with the given seed, so every trial of every search on the staged
copy validates on the same images.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from trainables.storage import check_writable, resolve
from trainables import staged
from trainables.data import load_test, load_train_val
from trainables.errors import InputError

log = logging.getLogger(__name__)

DEFAULT_SHARD_SIZE = 5000


class StageError(InputError):
    """The destination cannot take a staged data set."""


def stage(
    dataset: str,
    to: str,
    *,
    validation_fraction: float = 0.1,
    seed: int = 0,
    shard_size: int = DEFAULT_SHARD_SIZE,
    overwrite: bool = False,
    progress: Callable[[str], None] = log.info,
) -> staged.Manifest:
    """Stage ``dataset`` at ``to`` (a local path or gs:// URI) and return its manifest.

    Checks the destination before reading anything. The shards go into a new generation
    directory and the manifest is replaced last, in one step, so a staging that fails
    midway (an overwrite included) leaves the previous data set whole and readable.
    """
    if not 0.0 < validation_fraction < 1.0:
        raise StageError(f"--validation-fraction must be in (0, 1), got {validation_fraction}")
    if shard_size < 1:
        raise StageError(f"--shard-size must be >= 1, got {shard_size}")
    location = resolve(to)
    replaced = staged.read_manifest(location) if location.exists(location.join(staged.MANIFEST)) else None
    if replaced is not None and not overwrite:
        raise StageError(f"{location.uri} already holds a staged data set: pass --overwrite to replace it")
    check_writable(location)
    generation = staged.new_generation()

    progress(f"reading {dataset}")
    train_val = load_train_val(dataset, validation_fraction, seed)
    splits = {"train": train_val.train, "val": train_val.val, "test": load_test(dataset)}
    shards, examples = {}, {}
    for name, split in splits.items():
        shards[name] = staged.write_split(location, generation, name, split, shard_size)
        examples[name] = len(split)
        progress(f"{name}: {len(split)} images in {len(shards[name])} shards")
    manifest = staged.Manifest(
        source=dataset,
        num_classes=train_val.num_classes,
        validation_fraction=validation_fraction,
        seed=seed,
        shards=shards,
        examples=examples,
    )
    staged.write_manifest(location, manifest)
    staged.delete_replaced(location, replaced, keep=generation)
    progress(f"staged at {location.uri}")
    return manifest
