"""Staged data sets: train, validation and test as Parquet shards, local or on gs://.

``hpsearch data stage`` writes a data set once; every worker of every trial then reads
it from storage instead of downloading and splitting it again. Layout::

    <uri>/manifest.json                  names every shard; written last, in one piece
    <uri>/<generation>/train/part-00000.parquet  columns image (3072 bytes, HWC uint8), label
    <uri>/<generation>/val/part-00000.parquet
    <uri>/<generation>/test/part-00000.parquet

Each staging writes its shards into a new generation directory, then replaces the
manifest (a rename on a local disk, a single object write on gs://), then deletes the
previous generation. A staging that dies leaves the previous manifest and its shards, or
none: readers see the old set or the new one, never a mix.

A worker reads only its own training shards (shard ``i`` goes to worker
``i % workers``), and the whole validation split.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from trainables.errors import InputError
from trainables.splits import CIFAR_SIDE, Split
from trainables.storage import Location, is_supported, resolve, scheme_of

MANIFEST = "manifest.json"
FORMAT = "hpsearch-staged/1"
IMAGE_BYTES = CIFAR_SIDE * CIFAR_SIDE * 3


class StagedDataError(InputError):
    """A staged data set that is missing, incomplete or of another format."""


@dataclass(frozen=True)
class Manifest:
    source: str
    num_classes: int
    validation_fraction: float
    seed: int
    shards: dict[str, list[str]]  # split -> shard paths relative to the root
    examples: dict[str, int]

    def to_json(self) -> str:
        return json.dumps(
            {"format": FORMAT, **{k: getattr(self, k) for k in self.__dataclass_fields__}}, indent=2
        )


def is_staged_uri(dataset: str) -> bool:
    """Whether ``dataset`` names a staged data set: a remote storage URI (``gs://``), or
    a local directory holding a manifest."""
    if scheme_of(dataset) not in (None, "file"):
        return is_supported(dataset)
    return (Path(dataset.removeprefix("file://")) / MANIFEST).is_file()


def shard_ranges(count: int, shard_size: int) -> list[tuple[int, int]]:
    """[start, end) of each shard of ``count`` rows, ``shard_size`` rows at most each."""
    if shard_size < 1:
        raise ValueError(f"shard size must be >= 1, got {shard_size}")
    return [(start, min(start + shard_size, count)) for start in range(0, count, shard_size)]


def worker_shards(shards: list[str], workers: int, index: int) -> list[str]:
    """The training shards one worker reads: every ``workers``-th, from ``index``."""
    if len(shards) < workers:
        raise StagedDataError(
            f"the staged train split has {len(shards)} shards, fewer than the {workers} workers "
            "of a trial: stage again with a smaller --shard-size"
        )
    return shards[index::workers]


def split_table(split: Split) -> pa.Table:
    images = np.ascontiguousarray(split.images, dtype=np.uint8)
    column = pa.FixedSizeBinaryArray.from_buffers(
        pa.binary(IMAGE_BYTES), len(split), [None, pa.py_buffer(images.tobytes())]
    )
    return pa.table({"image": column, "label": pa.array(split.labels.astype(np.int16))})


def table_split(table: pa.Table) -> Split:
    images = table.column("image").combine_chunks()
    raw = np.frombuffer(images.buffers()[1], dtype=np.uint8, count=len(images) * IMAGE_BYTES,
                        offset=images.offset * IMAGE_BYTES)
    labels = table.column("label").to_numpy().astype(np.int64)
    return Split(raw.reshape(-1, CIFAR_SIDE, CIFAR_SIDE, 3).copy(), labels)


def new_generation() -> str:
    """A directory name no earlier staging used (sorts by time)."""
    import time
    import uuid

    return f"g-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:6]}"


def write_split(location: Location, generation: str, split_name: str, split: Split, shard_size: int) -> list[str]:
    """Write one split as shards of a generation; returns their paths relative to the root."""
    names = []
    directory = location.join(generation, split_name)
    location.filesystem.create_dir(directory, recursive=True)
    for i, (start, end) in enumerate(shard_ranges(len(split), shard_size)):
        name = f"{generation}/{split_name}/part-{i:05d}.parquet"
        part = Split(split.images[start:end], split.labels[start:end])
        pq.write_table(split_table(part), location.join(name), filesystem=location.filesystem)
        names.append(name)
    return names


def write_manifest(location: Location, manifest: Manifest) -> None:
    """Replace the manifest in one step: written beside it, then moved over it."""
    import uuid

    partial = location.join(f".{MANIFEST}.{uuid.uuid4().hex[:8]}")
    with location.filesystem.open_output_stream(partial) as out:
        out.write(manifest.to_json().encode())
    location.filesystem.move(partial, location.join(MANIFEST))


def delete_replaced(location: Location, replaced: Manifest | None, keep: str) -> None:
    """After a manifest swap: remove the replaced manifest's shards and every generation
    directory but ``keep`` (an interrupted staging's shards included)."""
    import pyarrow.fs as pafs

    for name in [name for split in (replaced.shards.values() if replaced else []) for name in split]:
        if location.exists(location.join(name)):
            location.filesystem.delete_file(location.join(name))
    entries = location.filesystem.get_file_info(pafs.FileSelector(location.join(), allow_not_found=True))
    for entry in entries:
        if entry.type == pafs.FileType.Directory and entry.base_name.startswith("g-") and entry.base_name != keep:
            location.filesystem.delete_dir(entry.path)


def read_manifest(location: Location) -> Manifest:
    path = location.join(MANIFEST)
    if not location.exists(path):
        raise StagedDataError(
            f"data.dataset: {location.uri} has no {MANIFEST}: stage it first with "
            f"`hpsearch data stage --to {location.uri}` (or the staging did not finish)"
        )
    with location.filesystem.open_input_stream(path) as handle:
        raw = json.loads(handle.read())
    if raw.get("format") != FORMAT:
        raise StagedDataError(f"data.dataset: {location.uri} is {raw.get('format')!r}, expected {FORMAT!r}")
    return Manifest(**{k: raw[k] for k in Manifest.__dataclass_fields__})


def read_shards(location: Location, names: list[str]) -> Split:
    tables = [pq.read_table(location.join(name), filesystem=location.filesystem) for name in names]
    return table_split(pa.concat_tables(tables))


def open_staged(uri: str) -> tuple[Location, Manifest]:
    """A staged data set's storage and manifest (read once, for all its splits)."""
    location = resolve(uri)
    return location, read_manifest(location)


def read_split(location: Location, manifest: Manifest, split_name: str, *, shard: tuple[int, int] = (1, 0)) -> Split:
    """One staged split (the training split: only this worker's shards)."""
    names = manifest.shards[split_name]
    if split_name == "train":
        names = worker_shards(names, *shard)
    return read_shards(location, names)
