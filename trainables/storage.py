"""Storage through pyarrow filesystems: a local directory or ``gs://``.

The bottom layer owns this, so that staged data (read by trials), experiment storage
(written by the search) and the report all resolve paths the same way. One registry,
:data:`SCHEMES`, maps a URI scheme to the pyarrow filesystem that serves it; adding a
scheme (``s3://``, say) is one entry here.
"""

from __future__ import annotations

import fnmatch
import functools
import io
import json
import logging
import os
import pickletools
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs

from trainables.errors import InputError

log = logging.getLogger(__name__)


class StorageError(InputError):
    """Storage that cannot hold an experiment; the message says which path and why."""


# HPSEARCH_GCS_ENDPOINT (host:port, plain http, anonymous) points every gs:// path at a
# GCS emulator: the tests' fake-gcs-server, or one a user runs locally.
GCS_ENDPOINT_ENV = "HPSEARCH_GCS_ENDPOINT"


def _gcs() -> pafs.FileSystem:
    endpoint = os.environ.get(GCS_ENDPOINT_ENV)
    if endpoint:
        return pafs.GcsFileSystem(anonymous=True, scheme="http", endpoint_override=endpoint)
    return pafs.GcsFileSystem()


def gcs_api() -> tuple[str, dict[str, str]]:
    """GCS's JSON API for what pyarrow's filesystem cannot ask (an object's generation,
    writes conditional on it): its base URL and the request headers (Application Default
    Credentials: Workload Identity on GKE; none for an emulator)."""
    endpoint = os.environ.get(GCS_ENDPOINT_ENV)
    if endpoint:
        return f"http://{endpoint}", {}
    import google.auth.transport.requests

    credentials = _gcs_credentials()
    if not credentials.valid:  # not fetched yet, or expired (a token lasts about an hour)
        credentials.refresh(google.auth.transport.requests.Request())
    return "https://storage.googleapis.com", {"Authorization": f"Bearer {credentials.token}"}


@functools.cache
def _gcs_credentials() -> Any:
    """This process's Application Default Credentials, found once (a lease renews every
    few seconds; each lookup may ask the metadata server)."""
    import google.auth

    credentials, _ = google.auth.default(scopes=["https://www.googleapis.com/auth/devstorage.read_write"])
    return credentials


# Remote schemes: URI prefix -> the pyarrow filesystem for it. Paths without a scheme
# (or with file://) are local.
SCHEMES: dict[str, Callable[[], pafs.FileSystem]] = {"gs": _gcs}


@dataclass(frozen=True)
class Location:
    """A resolved storage root: Tune's ``storage_path`` and the filesystem behind it."""

    uri: str  # what the user wrote, made absolute for local paths
    filesystem: pafs.FileSystem
    root: str  # path inside ``filesystem``

    @property
    def is_remote(self) -> bool:
        return scheme_of(self.uri) in SCHEMES

    def join(self, *parts: str) -> str:
        return "/".join([self.root.rstrip("/"), *parts])

    def exists(self, path: str) -> bool:
        return self.filesystem.get_file_info(path).type != pafs.FileType.NotFound


# Tune's experiment snapshot (ray.tune: the TuneController's, the search generator's, the
# searcher's and the callbacks' CKPT_FILE_TMPL): each file must be one readable document.
SNAPSHOT_FILES = ("experiment_state-*.json", "search_gen_state-*.json", "searcher-state-*.pkl",
                  "callback-states-*.pkl")


def unreadable(data: bytes) -> str | None:
    """Why a snapshot file cannot be read (None when it can): a pickle cut short (read
    opcode by opcode: nothing is unpickled), or JSON that does not parse. Told apart by
    content: Tune pickles some state into files named .json."""
    try:
        if data.startswith(b"\x80"):  # a pickle of protocol 2 or later
            for _ in pickletools.genops(data):
                pass
        else:
            json.loads(data)
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, pickletools' "not enough data"
        return str(exc) or type(exc).__name__
    return None


class _PublishOnClose(io.RawIOBase):
    """A file written under a hidden partial name and renamed onto its target when
    closed: a process killed while writing leaves the target as it was.

    A snapshot file (:data:`SNAPSHOT_FILES`) is published only if it reads whole: Tune
    rewrites its local copy of the snapshot in place while its background upload of
    the previous one may still be reading it, and so can upload an empty or cut-short
    file. The stored snapshot then stays the last whole one.

    A file whose bytes equal the target's is not written again. Tune's driver uploads
    every trial's parameter and result files at every snapshot (several a minute), most
    of them unchanged; each rewrite creates a new file and deletes the old one, and that
    churn cost the driver more CPU than anything it computed (the kernel's inode
    allocation, measured in bench/quickstart.py's search). So up to
    :data:`HELD_BYTES` are held in memory; a larger file goes to its partial file as it
    is written, as before.
    """

    def __init__(self, target: str) -> None:
        super().__init__()
        self._target = target
        self._held: io.BytesIO | None = io.BytesIO()
        self._file: io.FileIO | None = None
        self._partial: str | None = None

    def writable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._held.tell() if self._held is not None else self._file.tell()

    def write(self, data: Any) -> int:
        if self._held is not None:
            written = self._held.write(data)
            if self._held.tell() > HELD_BYTES:
                self._spill()
            return written
        return self._file.write(data)

    def _spill(self) -> None:
        """Go on writing to the partial file (created next to the target)."""
        directory, name = os.path.split(self._target)
        # pyarrow's copy_files leaves the target's directories to the filesystem (GCS
        # has none to make), so they are made here
        os.makedirs(directory, exist_ok=True)
        self._partial = os.path.join(directory, f".{name}.{uuid.uuid4().hex[:8]}.partial")
        self._file = io.FileIO(self._partial, "wb")
        if self._held is not None:
            self._file.write(self._held.getbuffer())
            self._held = None

    def _unchanged(self, data: bytes) -> bool:
        try:
            if os.path.getsize(self._target) != len(data):
                return False
            with open(self._target, "rb") as existing:
                return existing.read() == data
        except OSError:  # no target yet
            return False

    def close(self) -> None:
        if self.closed:
            return
        super().close()
        data = self._held.getvalue() if self._held is not None else None
        if data is not None and self._unchanged(data):
            return
        name = os.path.basename(self._target)
        if any(fnmatch.fnmatch(name, pattern) for pattern in SNAPSHOT_FILES):
            if data is None:  # streamed to its partial file: read it back
                self._file.close()
                with open(self._partial, "rb") as written:
                    data = written.read()
            problem = unreadable(data)
            if problem:
                if self._partial is not None:
                    os.remove(self._partial)
                log.warning("not replacing %s with a copy that cannot be read (%s); it keeps the last whole one",
                            self._target, problem)
                return
        if self._file is None:
            self._spill()
        self._file.close()
        # rename is atomic on POSIX; no fsync: the fault guarded against is a killed
        # process (a driver, a trial), not a machine losing power
        os.replace(self._partial, self._target)


# The largest file held in memory until it is closed (see _PublishOnClose): Tune's
# snapshot and result files; checkpoints are larger and stream to disk.
HELD_BYTES = 4 * 1024 * 1024


class AtomicLocalHandler(pafs.FileSystemHandler):
    """The local filesystem, except that every file written appears whole or not at all.

    Tune uploads its experiment state (and the study, the tables, the checkpoints) to
    local storage by rewriting each file in place; a driver killed in the middle of that
    leaves a truncated experiment state, which Tune cannot restore, and then, instead of
    failing, starts the experiment over. On GCS an object appears only when its upload
    ends, so local storage is made to behave the same.
    """

    def __init__(self) -> None:
        self.fs = pafs.LocalFileSystem()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AtomicLocalHandler)

    def __ne__(self, other: object) -> bool:
        return not self == other

    def get_type_name(self) -> str:
        return "local"

    def normalize_path(self, path: str) -> str:
        return self.fs.normalize_path(path)

    def get_file_info(self, paths: list[str]) -> list[pafs.FileInfo]:
        return self.fs.get_file_info(paths)

    def get_file_info_selector(self, selector: pafs.FileSelector) -> list[pafs.FileInfo]:
        return self.fs.get_file_info(selector)

    def create_dir(self, path: str, recursive: bool) -> None:
        self.fs.create_dir(path, recursive=recursive)

    def delete_dir(self, path: str) -> None:
        self.fs.delete_dir(path)

    def delete_dir_contents(self, path: str, missing_dir_ok: bool = False) -> None:
        self.fs.delete_dir_contents(path, missing_dir_ok=missing_dir_ok)

    def delete_root_dir_contents(self) -> None:
        raise OSError("refusing to delete the contents of the filesystem's root")

    def delete_file(self, path: str) -> None:
        self.fs.delete_file(path)

    def move(self, src: str, dest: str) -> None:
        self.fs.move(src, dest)

    def copy_file(self, src: str, dest: str) -> None:
        with self.fs.open_input_stream(src) as source, self.open_output_stream(dest, None) as target:
            while chunk := source.read(COPY_CHUNK):
                target.write(chunk)

    def open_input_stream(self, path: str) -> pa.NativeFile:
        return self.fs.open_input_stream(path)

    def open_input_file(self, path: str) -> pa.NativeFile:
        return self.fs.open_input_file(path)

    def open_output_stream(self, path: str, metadata: Any) -> pa.NativeFile:
        return pa.PythonFile(_PublishOnClose(path), mode="w")

    def open_append_stream(self, path: str, metadata: Any) -> pa.NativeFile:
        return self.fs.open_append_stream(path)


COPY_CHUNK = 16 * 1024 * 1024


def local_filesystem() -> pafs.FileSystem:
    """The filesystem local storage is written through (see AtomicLocalHandler)."""
    return pafs.PyFileSystem(AtomicLocalHandler())


def scheme_of(uri: str) -> str | None:
    """``gs`` for ``gs://b/p``; None for a plain local path."""
    head, sep, _ = uri.partition("://")
    return head if sep else None


def is_supported(uri: str) -> bool:
    """Whether ``uri`` is a local path, ``file://`` or a registered remote scheme."""
    scheme = scheme_of(uri)
    return scheme is None or scheme == "file" or scheme in SCHEMES


def supported_schemes() -> str:
    """The accepted forms, for error messages."""
    return ", ".join(["a local path", *(f"{s}://" for s in SCHEMES)])


def resolve(path: str) -> Location:
    """Resolve a storage path or URI to its pyarrow filesystem.

    Raises:
        StorageError: a scheme no filesystem is registered for.
    """
    scheme = scheme_of(path)
    if scheme in SCHEMES:
        return Location(uri=path.rstrip("/"), filesystem=SCHEMES[scheme](), root=path.split("://", 1)[1].rstrip("/"))
    if scheme not in (None, "file"):
        raise StorageError(f"{path!r}: unsupported storage; use {supported_schemes()}")
    local = os.path.abspath(os.path.expanduser(path.removeprefix("file://")))
    return Location(uri=local, filesystem=local_filesystem(), root=local)


# Cloud Storage's operations as google-cloud-cpp (behind pyarrow's GcsFileSystem) names
# them in an error, and the IAM permission each needs. Creating a directory in a bucket
# with no directory markers yet (a fresh one) reads the bucket's metadata.
GCS_PERMISSIONS = {
    "GetBucketMetadata": "storage.buckets.get",
    "InsertObject": "storage.objects.create",
    "CreateResumableUpload": "storage.objects.create",
    "UploadChunk": "storage.objects.create",
    "ReadObject": "storage.objects.get",
    "GetObjectMetadata": "storage.objects.get",
    "ListObjects": "storage.objects.list",
    "DeleteObject": "storage.objects.delete",
}
# The grant that gives each permission to the search's service account (docs/gke.md,
# "Storage"): roles/storage.objectUser holds the objects' permissions, not the bucket's.
GCS_GRANTS = {
    "storage.buckets.get": "roles/storage.legacyBucketReader on the bucket",
    **{p: "roles/storage.objectUser on the bucket" for p in ("storage.objects.create", "storage.objects.get",
                                                            "storage.objects.list", "storage.objects.delete")},
}


def refused_permission(message: str) -> str | None:
    """The IAM permission a Cloud Storage error says was refused, if it says so."""
    if "PERMISSION_DENIED" not in message:
        return None
    match = re.search(r"gcloud-cpp\.retry\.function=(\w+)", message)
    return GCS_PERMISSIONS.get(match.group(1)) if match else None


def check_writable(location: Location) -> None:
    """Create the root and write, read back and delete a probe file.

    Raises:
        StorageError: the storage cannot be written, before any search work starts; on
            Cloud Storage a refused permission is named, with the grant that gives it.
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
        permission = refused_permission(str(exc))
        if permission is not None:
            raise StorageError(
                f"storage.path {location.uri!r}: Cloud Storage refused {permission} to this workload's service "
                f"account. Grant {GCS_GRANTS[permission]} (docs/gke.md, \"Storage\": the permissions hpsearch and "
                f"Ray use). The error: {str(exc).splitlines()[0]}") from exc
        raise StorageError(f"storage.path {location.uri!r} is not writable: {exc}") from exc
