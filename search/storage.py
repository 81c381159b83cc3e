"""Experiment storage through pyarrow filesystems: a local directory or gs://."""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.fs as pafs


class StorageError(RuntimeError):
    """Storage that cannot hold an experiment; the message says which path and why."""


@dataclass(frozen=True)
class Location:
    """A resolved storage root: Tune's ``storage_path`` and the filesystem behind it."""

    uri: str  # what the user wrote, made absolute for local paths
    filesystem: pafs.FileSystem
    root: str  # path inside ``filesystem``

    def join(self, *parts: str) -> str:
        return "/".join([self.root.rstrip("/"), *parts])

    def exists(self, path: str) -> bool:
        return self.filesystem.get_file_info(path).type != pafs.FileType.NotFound


def resolve(path: str) -> Location:
    """Resolve a storage path or URI to a pyarrow filesystem.

    ``gs://`` uses ``pyarrow.fs.GcsFileSystem``; setting ``HPSEARCH_GCS_ENDPOINT``
    (host:port, http) points it at a GCS emulator with anonymous credentials.
    """
    if path.startswith("gs://"):
        endpoint = os.environ.get("HPSEARCH_GCS_ENDPOINT")
        if endpoint:
            fs = pafs.GcsFileSystem(anonymous=True, scheme="http", endpoint_override=endpoint)
        else:
            fs = pafs.GcsFileSystem()
        return Location(uri=path.rstrip("/"), filesystem=fs, root=path[len("gs://") :].rstrip("/"))
    local = os.path.abspath(os.path.expanduser(path.removeprefix("file://")))
    return Location(uri=local, filesystem=pafs.LocalFileSystem(), root=local)


def check_writable(location: Location) -> None:
    """Create the root and write, read back and delete a probe file.

    Raises:
        StorageError: the storage cannot be written, before any search work starts.
    """
    probe = location.join(f".hpsearch-probe-{uuid.uuid4().hex}")
    try:
        location.filesystem.create_dir(location.root, recursive=True)
        with location.filesystem.open_output_stream(probe) as out:
            out.write(b"probe")
        with location.filesystem.open_input_stream(probe) as handle:
            if handle.read() != b"probe":
                raise OSError("probe file read back differently")
        location.filesystem.delete_file(probe)
    except (OSError, pa.ArrowException) as exc:
        raise StorageError(f"storage.path {location.uri!r} is not writable: {exc}") from exc
