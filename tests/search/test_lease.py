"""One driver per search: the experiment lease, on local disk and on the GCS emulator.

Drivers are separate processes running ``search.lease.hold`` (the code ``hpsearch run``
runs before Ray starts); ``test_faults.py`` and ``test_two_drivers.py`` take the same
path through ``hpsearch run`` itself.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from search.lease import LEASE_FILE, GcsLease, Holder, LeaseHeld, hold
from trainables.storage import resolve

HOLDER = """
import json, logging, sys, time
logging.basicConfig(level=logging.INFO)
from search.lease import LeaseHeld, hold
from trainables.storage import resolve
storage, name, takeover, timeout_s, hold_s = sys.argv[1], sys.argv[2], sys.argv[3] == "1", float(sys.argv[4]), float(sys.argv[5])
try:
    with hold(resolve(storage), name, takeover=takeover, timeout_s=timeout_s) as lease:
        print("held", json.dumps(lease.holder.__dict__), flush=True)
        time.sleep(hold_s)
except LeaseHeld as exc:
    print("refused", exc, flush=True)
    sys.exit(2)
"""


def start_driver(storage: str, name: str = "exp", *, takeover: bool = False, timeout_s: float = 120,
                 hold_s: float = 3) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", HOLDER, storage, name, "1" if takeover else "0", str(timeout_s),
                             str(hold_s)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_held(driver: subprocess.Popen) -> dict:
    line = driver.stdout.readline()
    assert line.startswith("held "), line + driver.stderr.read()
    return json.loads(line.split(" ", 1)[1])


@pytest.fixture(params=["local", "gcs"])
def storage(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "experiments")
    request.getfixturevalue("fake_gcs")
    return f"gs://hpsearch-test/lease-{tmp_path.name}"


def test_two_drivers_at_once_exactly_one_holds(storage):
    drivers = [start_driver(storage) for _ in range(2)]
    outputs = [d.communicate(timeout=120) for d in drivers]
    codes = sorted(d.returncode for d in drivers)
    assert codes == [0, 2], outputs
    (held,) = [json.loads(out.split(" ", 1)[1]) for out, _ in outputs if out.startswith("held")]
    (refused,) = [out for out, _ in outputs if out.startswith("refused")]
    assert f"is being run by another driver (pid {held['pid']} on {held['host']}, since " in refused
    assert "set search.name to start another search" in refused


def test_the_lease_is_released_at_the_end(storage):
    location = resolve(storage)
    with hold(location, "exp", takeover=False, timeout_s=120) as lease:
        assert lease.holder.pid == os.getpid()
        with pytest.raises(LeaseHeld, match=f"pid {os.getpid()}"):  # held: even this process is refused again
            with hold(location, "exp", takeover=True, timeout_s=120):
                pass
    with hold(location, "exp", takeover=False, timeout_s=120):  # released: free again
        pass


def test_a_failure_inside_releases_the_lease(storage):
    location = resolve(storage)
    with pytest.raises(RuntimeError):
        with hold(location, "exp", takeover=False, timeout_s=120):
            raise RuntimeError("the search failed")
    driver = start_driver(storage, hold_s=0)
    wait_held(driver)
    assert driver.wait(timeout=60) == 0


def test_a_killed_holder_on_local_disk_frees_the_lease_at_once(tmp_path):
    """The kernel frees a dead process's lock: the next driver takes it, saying so."""
    storage = str(tmp_path / "experiments")
    holder = start_driver(storage, hold_s=300)
    dead = wait_held(holder)
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=30)
    holder.stdout.close()
    holder.stderr.close()
    resumed = start_driver(storage, takeover=True, hold_s=0)
    wait_held(resumed)
    _, err = resumed.communicate(timeout=60)
    assert f"previous driver (pid {dead['pid']} on {dead['host']}" in err and "taking it over" in err


def test_a_killed_holder_on_gcs_is_taken_over_by_resume_after_the_timeout(fake_gcs, tmp_path):
    storage = f"gs://hpsearch-test/lease-{tmp_path.name}"
    timeout_s = 4.0
    holder = start_driver(storage, timeout_s=timeout_s, hold_s=300)
    dead = wait_held(holder)
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=30)
    holder.stdout.close()
    holder.stderr.close()
    location = resolve(storage)
    # within the timeout its record still counts: refused, even with --resume
    with pytest.raises(LeaseHeld, match=rf"pid {dead['pid']} on .*renewed \d+ s ago"):
        with hold(location, "exp", takeover=True, timeout_s=timeout_s):
            pass
    time.sleep(timeout_s + 1)
    # stale: a new search is refused and told about --resume ...
    with pytest.raises(LeaseHeld, match="take the search over with --resume"):
        with hold(location, "exp", takeover=False, timeout_s=timeout_s):
            pass
    # ... and --resume takes it over, saying so
    resumed = start_driver(storage, takeover=True, timeout_s=timeout_s, hold_s=0)
    mine = wait_held(resumed)
    _, err = resumed.communicate(timeout=60)
    assert resumed.returncode == 0 and mine["pid"] != dead["pid"]
    assert "took over the search's lease from a driver that stopped renewing it" in err
    assert f"pid {dead['pid']}" in err
    assert not location.exists(location.join("exp", LEASE_FILE))  # released at its end


def test_a_holder_renews_and_learns_when_its_lease_is_taken_over(fake_gcs, tmp_path):
    location = resolve(f"gs://hpsearch-test/lease-{tmp_path.name}")
    lost: list = []
    timeout_s = 3.0  # renewed every 0.5 s
    with hold(location, "exp", takeover=False, timeout_s=timeout_s, on_lost=lost.append) as held:
        me = held.holder
        lease = GcsLease(location, location.join("exp", LEASE_FILE), "exp")
        first, generation = lease._read()
        time.sleep(1.5)
        renewed, later = lease._read()
        assert renewed.pid == me.pid and renewed.heartbeat > first.heartbeat and later != generation
        # another driver replaces the record (as a --resume takeover does: read the
        # generation, write conditionally on it; a renewal in between makes it read again)
        other = Holder(host="elsewhere", pid=1, job="raysubmit_other", since=time.time(), heartbeat=time.time())
        deadline = time.monotonic() + 10
        while lease._write(other, lease._read()[1]) is None:
            assert time.monotonic() < deadline, "the record could not be replaced within 10 s"
        deadline = time.monotonic() + 10
        while not lost and time.monotonic() < deadline:
            time.sleep(0.2)
    assert lost and lost[0].host == "elsewhere" and lost[0].job == "raysubmit_other"


def test_a_stopped_holder_steps_down_for_resume_at_once(fake_gcs, tmp_path):
    """``ray job stop`` SIGKILLs a driver 3 s after its SIGTERM, before it could release:
    on the signal the holder marks its lease free for a --resume (hpsearch run calls
    step_down from its SIGTERM/SIGINT handler), while a new search is still refused."""
    storage = f"gs://hpsearch-test/lease-{tmp_path.name}"
    location = resolve(storage)
    with hold(location, "exp", takeover=False, timeout_s=120) as lease:
        lease.step_down()
        reader = GcsLease(location, location.join("exp", LEASE_FILE), "exp")
        deadline = time.monotonic() + 10
        while reader._read()[0].heartbeat != 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert reader._read()[0].heartbeat == 0
        with pytest.raises(LeaseHeld, match="take the search over with --resume"):
            with hold(location, "exp", takeover=False, timeout_s=120):
                pass
        resumed = start_driver(storage, takeover=True, hold_s=0)
        wait_held(resumed)
        _, err = resumed.communicate(timeout=60)
        assert resumed.returncode == 0 and "took over the search's lease from a driver that was stopped" in err


def test_a_driver_refused_before_the_holder_wrote_its_record_still_names_it(tmp_path):
    """The holder takes the lock, then writes its record: a driver refused in between
    waits for the record (search.lease.RECORD_WAIT_S) rather than name "another driver"."""
    import fcntl
    import threading

    from search.lease import LocalLease, this_driver

    path = tmp_path / LEASE_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # locked, the file still empty
    writer = threading.Timer(0.3, lambda: os.pwrite(fd, this_driver().encode(), 0))
    writer.start()
    try:
        with pytest.raises(LeaseHeld, match=f"another driver \\(pid {os.getpid()} on "):
            LocalLease(resolve(str(tmp_path)), str(path), "exp").acquire(takeover=False, timeout_s=120,
                                                                         on_lost=lambda *_: None)
    finally:
        writer.join()
        os.close(fd)


def test_the_renewer_carries_on_after_a_failed_renewal():
    """One failed write (a network error) is logged and retried at the next period; the
    lease keeps being renewed, so it never goes stale under a live driver."""
    import threading

    from search.lease import this_driver

    lease = GcsLease(resolve("gs://hpsearch-test/x"), "hpsearch-test/x/driver.lease", "x")
    lease.holder, lease._generation = this_driver(), 1
    writes, renewed = [], threading.Event()

    def write(holder, if_generation):
        writes.append(if_generation)
        if len(writes) == 1:
            raise ConnectionError("connection reset by peer")
        if len(writes) == 3:
            renewed.set()
        return if_generation + 1

    lease._write = write
    lost = []
    renewer = threading.Thread(target=lease._renew, args=(0.01, lost.append), daemon=True)
    renewer.start()
    try:
        assert renewed.wait(10), f"renewals stopped after the failed one: {writes}"
    finally:
        lease._stop.set()
        lease._wake.set()
        renewer.join(5)
    # the failed write changed nothing; the next ones renewed generation 1, then 2
    assert writes[:3] == [1, 1, 2] and not lost


def test_a_released_local_lease_leaves_an_empty_file(tmp_path):
    from search.lease import LocalLease

    path = tmp_path / LEASE_FILE
    lease = LocalLease(resolve(str(tmp_path)), str(path), "exp")
    lease.acquire(takeover=False, timeout_s=120, on_lost=lambda *_: None)
    assert Holder.decode(path.read_bytes()).pid == os.getpid()
    lease.release()
    assert path.read_bytes() == b""  # no holder: a later driver takes it without a warning
