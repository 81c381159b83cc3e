"""Storage resolution through pyarrow filesystems: the same contract for every scheme."""

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from trainables.errors import InputError
from support import REPO
from trainables.storage import HELD_BYTES, SCHEMES, StorageError, check_writable, is_supported, resolve, scheme_of


def test_local_paths_resolve_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    location = resolve("./experiments")
    assert location.uri == str(tmp_path / "experiments") == location.root
    assert location.filesystem.type_name == "py::local" and not location.is_remote
    assert resolve(f"file://{tmp_path}").root == str(tmp_path)


def test_unsupported_scheme_is_input_error():
    assert not is_supported("s3://bucket/x") and scheme_of("s3://bucket/x") == "s3"
    with pytest.raises(StorageError, match="unsupported storage") as info:
        resolve("s3://bucket/x")
    assert isinstance(info.value, InputError) and info.value.exit_code == 2


@pytest.fixture(params=["local", *SCHEMES])
def storage_uri(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "store")
    # every remote scheme needs its emulator here; gs is the one registered today
    assert request.param == "gs", f"no emulator fixture for scheme {request.param!r}: add one here"
    request.getfixturevalue("fake_gcs")
    return "gs://hpsearch-test/contract"


def test_each_scheme_writes_reads_and_probes(storage_uri):
    location = resolve(storage_uri)
    assert is_supported(storage_uri)
    check_writable(location)
    path = location.join("a", "b.txt")
    location.filesystem.create_dir(location.join("a"), recursive=True)
    with location.filesystem.open_output_stream(path) as out:
        out.write(b"hello")
    assert location.exists(path)
    with location.filesystem.open_input_stream(path) as handle:
        assert handle.read() == b"hello"


# A process that rewrites a file and is SIGKILLed halfway through the new content.
KILLED_WRITER = textwrap.dedent("""
    import os, signal, sys
    import pyarrow.fs as pafs
    from trainables.storage import resolve
    path, through, size = sys.argv[1], sys.argv[2], int(sys.argv[3])
    fs = resolve(path).filesystem if through == "storage" else pafs.LocalFileSystem()
    out = fs.open_output_stream(path)
    out.write(b"new-" * (size // 4))
    out.flush()
    os.kill(os.getpid(), signal.SIGKILL)
""")


@pytest.mark.parametrize("through,survives", [("storage", True), ("pyarrow", False)])
@pytest.mark.parametrize("size", [4000, HELD_BYTES + 4000])  # held in memory; written as it comes (a checkpoint)
def test_a_writer_killed_mid_file_leaves_the_local_file_as_it_was(tmp_path, through, survives, size):
    """Local storage publishes a file only when it is closed (Tune's experiment state, the
    study, the tables); pyarrow's own local filesystem, the control, leaves it cut short."""
    path = tmp_path / "experiment_state.json"
    path.write_bytes(b'{"old": true}')
    writer = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(path), through, str(size)], cwd=str(REPO))
    assert writer.returncode == -signal.SIGKILL
    assert (path.read_bytes() == b'{"old": true}') is survives, path.read_bytes()[:40]


def test_unwritable_storage_is_refused(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(StorageError, match="not writable"):
        check_writable(resolve(str(blocker / "below")))


def test_gcs_credentials_are_found_once_and_refreshed_only_when_invalid(monkeypatch):
    """The lease asks gcs_api every few seconds: Application Default Credentials are
    looked up once per process, and a token fetched again only once it is invalid."""
    from trainables import storage

    class Credentials:
        valid, token, refreshes = False, None, 0

        def refresh(self, request):
            self.refreshes += 1
            self.valid, self.token = True, f"token-{self.refreshes}"

    found = Credentials()
    lookups = []
    monkeypatch.setattr("google.auth.default", lambda scopes: (lookups.append(scopes) or found, "project"))
    monkeypatch.delenv(storage.GCS_ENDPOINT_ENV, raising=False)
    storage._gcs_credentials.cache_clear()
    try:
        assert storage.gcs_api()[1] == {"Authorization": "Bearer token-1"}
        assert storage.gcs_api()[1] == {"Authorization": "Bearer token-1"}
        assert (len(lookups), found.refreshes) == (1, 1)
        found.valid = False  # expired
        assert storage.gcs_api()[1] == {"Authorization": "Bearer token-2"}
        assert (len(lookups), found.refreshes) == (1, 2)
    finally:
        storage._gcs_credentials.cache_clear()


def test_a_snapshot_file_that_cannot_be_read_never_replaces_a_whole_one(tmp_path):
    """Tune rewrites its local snapshot in place while its upload of the previous one may
    still read it, so it can upload an empty or cut-short copy: local storage keeps the
    last whole one instead. Other files (Tune's result.json is JSON lines) are written
    as given."""
    import json
    import pickle

    fs = resolve(str(tmp_path)).filesystem
    state = tmp_path / "experiment_state-2026.json"
    searcher = tmp_path / "searcher-state-2026.pkl"
    whole_state, whole_searcher = json.dumps({"trial_data": [1, 2]}).encode(), pickle.dumps({"n": list(range(50))})
    for path, whole in ((state, whole_state), (searcher, whole_searcher)):
        for content in (whole, b"", whole[: len(whole) // 2]):
            with fs.open_output_stream(str(path)) as out:
                out.write(content)
            assert path.read_bytes() == whole  # the first write published; the bad ones did not
    assert not list(tmp_path.glob(".*.partial"))
    lines = tmp_path / "result.json"
    with fs.open_output_stream(str(lines)) as out:
        out.write(b'{"epoch": 1}\n{"epoch": 2}\n')
    assert lines.read_bytes() == b'{"epoch": 1}\n{"epoch": 2}\n'


@pytest.mark.parametrize("size", [100, HELD_BYTES + 100])
def test_a_file_written_again_unchanged_is_left_alone_and_a_changed_one_replaced(tmp_path, size):
    """Tune uploads every trial's files at every snapshot: the same bytes again do not
    create a new file (the inode stays), other bytes replace it whole."""
    fs = resolve(str(tmp_path)).filesystem
    path = str(tmp_path / "result.json")
    for content in (b"a" * size, b"a" * size, b"b" * size):
        before = os.stat(path).st_ino if os.path.exists(path) else None
        with fs.open_output_stream(path) as out:
            out.write(content)
        assert Path(path).read_bytes() == content
        if content == b"a" * size and before is not None:
            # held in memory: compared and skipped; streamed (a checkpoint): written anew
            assert (os.stat(path).st_ino == before) is (size <= HELD_BYTES)
    assert os.stat(path).st_ino != before  # changed bytes: a new file renamed over it
    assert sorted(os.listdir(tmp_path)) == ["result.json"]  # no partial left behind


def test_a_refused_bucket_read_stops_the_run_naming_the_permission_and_its_grant(fake_gcs, tmp_path):
    """A service account with roles/storage.objectUser only: creating the experiment's
    first directory in a fresh bucket reads the bucket's metadata, which Cloud Storage
    refuses. `hpsearch run` exits 2 before anything starts, naming storage.buckets.get
    and the grant that gives it; with the permission (no proxy) the same path writes."""
    import uuid

    from support import RefusingProxy, bucket_metadata_request

    path = f"gs://hpsearch-test/fresh-{uuid.uuid4().hex[:8]}/experiments"
    config = tmp_path / "config.yaml"
    config.write_text(f"storage: {{path: {path}}}\n")
    with RefusingProxy(fake_gcs, bucket_metadata_request("hpsearch-test")) as proxy:
        done = subprocess.run([sys.executable, "-m", "search", "run", "--config", str(config)],
                              env={**os.environ, "HPSEARCH_GCS_ENDPOINT": proxy.endpoint}, capture_output=True,
                              text=True, timeout=120, cwd=str(REPO))
    assert done.returncode == 2, done.stderr[-2000:]
    assert ("Cloud Storage refused storage.buckets.get to this workload's service account. "
            "Grant roles/storage.legacyBucketReader on the bucket") in done.stderr, done.stderr[-2000:]
    assert proxy.refused == [("GET", "/storage/v1/b/hpsearch-test")]
    assert "Traceback" not in done.stderr
    check_writable(resolve(path))  # the emulator itself, with every permission
