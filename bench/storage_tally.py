"""A filesystem that counts what is written through it, for bench/scale.py.

Its own module, imported by name in the driver and in every trial: Tune pickles the
storage's filesystem into each trial's entry of its experiment snapshot, and a class
defined in the benchmark's ``__main__`` would be pickled by value there (tens of KiB per
trial), inflating what is measured.
"""

from __future__ import annotations

import time

import pyarrow as pa
import pyarrow.fs as pafs


class CountingHandler(pafs.FileSystemHandler):
    """Another filesystem, unchanged, except that every file written through it appends
    ``<time> <bytes> <path>`` to a tally file on close. The handler is pickled into every
    process Tune hands the storage to, and they all append to the same tally."""

    def __init__(self, base: pafs.FileSystem, tally: str) -> None:
        self.base, self.tally = base, tally

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CountingHandler) and other.base.equals(self.base)

    def __ne__(self, other: object) -> bool:
        return not self == other

    def get_type_name(self) -> str:
        return "counting+" + self.base.type_name

    def normalize_path(self, path: str) -> str:
        return self.base.normalize_path(path)

    def get_file_info(self, paths):
        return self.base.get_file_info(paths)

    def get_file_info_selector(self, selector):
        return self.base.get_file_info(selector)

    def create_dir(self, path: str, recursive: bool) -> None:
        self.base.create_dir(path, recursive=recursive)

    def delete_dir(self, path: str) -> None:
        self.base.delete_dir(path)

    def delete_dir_contents(self, path: str, missing_dir_ok: bool = False) -> None:
        self.base.delete_dir_contents(path, missing_dir_ok=missing_dir_ok)

    def delete_root_dir_contents(self) -> None:
        raise OSError("refusing to delete the contents of the filesystem's root")

    def delete_file(self, path: str) -> None:
        self.base.delete_file(path)

    def move(self, src: str, dest: str) -> None:
        self.base.move(src, dest)

    def copy_file(self, src: str, dest: str) -> None:
        with self.base.open_input_stream(src) as source, self.open_output_stream(dest, None) as target:
            while chunk := source.read(1 << 20):
                target.write(chunk)

    def open_input_stream(self, path: str):
        return self.base.open_input_stream(path)

    def open_input_file(self, path: str):
        return self.base.open_input_file(path)

    def open_output_stream(self, path: str, metadata):
        return pa.PythonFile(Counted(self.base.open_output_stream(path, metadata=metadata), path, self.tally),
                             mode="w")

    def open_append_stream(self, path: str, metadata):
        return pa.PythonFile(Counted(self.base.open_append_stream(path, metadata=metadata), path, self.tally),
                             mode="w")


class Counted:
    """A writable stream that counts what passes through it."""

    def __init__(self, stream, path: str, tally: str) -> None:
        self.stream, self.path, self.tally, self.written, self.closed = stream, path, tally, 0, False

    def write(self, data) -> int:
        data = bytes(data)
        self.stream.write(data)
        self.written += len(data)
        return len(data)

    def flush(self) -> None:
        self.stream.flush()

    def close(self) -> None:
        if not self.closed:
            self.stream.close()
            self.closed = True
            with open(self.tally, "a") as out:  # one short line per file: appends do not interleave
                out.write(f"{time.time():.3f} {self.written} {self.path}\n")
