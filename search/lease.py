"""One driver per search: an exclusive lease on its experiment directory.

Two drivers in one experiment directory (a retried ``ray job submit``, a double click)
would both run Tune there, write one study at once and leave tables with only the last
writer's trials. So a driver takes the lease before Ray starts, and a second one is
refused (exit 2) naming the holder: its host, process, Ray job and since when.

- Local disk: ``<experiment>/driver.lease`` locked with ``flock``. The kernel frees the
  lock when its process dies however it dies, so a dead holder never blocks a new
  driver; the file keeps the holder's record for the refusal message. The file is never
  deleted (a lock on a deleted file would not exclude a driver opening a new one).
- ``gs://``: the object ``<experiment>/driver.lease``, created only if absent
  (``ifGenerationMatch=0``, GCS's own precondition), renewed by the holder every
  ``timeout_s / 6`` s with a write conditional on its own generation. A record whose
  heartbeat is older than ``timeout_s`` belongs to a dead driver: ``--resume`` replaces
  it (conditional on that record's generation, so two takers cannot both win) and says
  so. A holder that finds its lease taken over stops its search (SIGTERM to itself: the
  search saves its state and exits 143). A holder stopped by a signal steps down at
  once (its record's heartbeat set to 0): ``ray job stop`` kills a driver 3 s after its
  SIGTERM, and the resubmitted ``--resume`` must not wait out the timeout.

The lease is released at every end: success, failure, SIGTERM/SIGINT (the search's
signal handling returns through the caller's ``finally``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from search.layout import LEASE_FILE
from trainables.errors import InputError
from trainables.storage import Location

log = logging.getLogger(__name__)

# GCS requests the lease makes must answer within this many seconds.
REQUEST_TIMEOUT_S = 10.0


class LeaseHeld(InputError):
    """Another driver holds the search's lease (exit code 2)."""


@dataclass(frozen=True)
class Holder:
    """Who holds a lease: written into it, shown to a driver it refuses."""

    host: str
    pid: int
    job: str | None  # the Ray job's submission id, when the driver runs as a Ray job
    since: float  # epoch seconds
    heartbeat: float  # epoch seconds of the last renewal

    def describe(self) -> str:
        job = f", Ray job {self.job}" if self.job else ""
        started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.since))
        return f"pid {self.pid} on {self.host}{job}, since {started}"

    def encode(self) -> bytes:
        return json.dumps(dataclasses.asdict(self)).encode()

    @classmethod
    def decode(cls, data: bytes) -> Holder | None:
        try:
            return cls(**json.loads(data))
        except (ValueError, TypeError):
            return None  # empty (released) or not a lease record


def this_driver(now: float | None = None) -> Holder:
    now = time.time() if now is None else now
    return Holder(host=socket.gethostname(), pid=os.getpid(), job=_ray_job_id(), since=now, heartbeat=now)


def _ray_job_id() -> str | None:
    """The submission id ``ray job submit`` gave this driver (from the job's config)."""
    try:
        return json.loads(os.environ["RAY_JOB_CONFIG_JSON_ENV_VAR"])["metadata"]["job_submission_id"]
    except (KeyError, ValueError, TypeError):
        return None


def _refusal(experiment: str, holder: Holder | None, extra: str = "") -> LeaseHeld:
    who = holder.describe() if holder else "another driver"
    return LeaseHeld(
        f"the search at {experiment} is being run by another driver ({who}){extra}. One search has one driver: "
        "wait for it, stop it (`ray job stop JOB_ID`, or end that process), or set search.name to start "
        "another search")


@contextlib.contextmanager
def hold(location: Location, name: str, *, takeover: bool, timeout_s: float,
         on_lost: Callable[[Holder | None], None] | None = None) -> Iterator[LocalLease | GcsLease]:
    """Hold the lease on ``<location>/<name>`` for the ``with`` block.

    Args:
        takeover: the driver resumes the search, and may replace a dead holder's lease
            (gs://; on local disk a dead holder's lock is free anyway).
        timeout_s: gs://: a heartbeat older than this is a dead holder's.
        on_lost: gs://: called if another driver takes the lease over while this one
            holds it; by default this process gets SIGTERM (the search stops and saves).

    Raises:
        LeaseHeld: another driver holds it.
    """
    experiment = location.join(name)
    location.filesystem.create_dir(experiment, recursive=True)
    kind = GcsLease if location.is_remote else LocalLease
    lease = kind(location, f"{experiment}/{LEASE_FILE}", f"{location.uri}/{name}")
    lease.acquire(takeover=takeover, timeout_s=timeout_s, on_lost=on_lost or _stop_this_search)
    try:
        yield lease
    finally:
        lease.release()


def _stop_this_search(new_holder: Holder | None) -> None:
    log.error("this search's lease was taken over by %s: stopping this driver (its state is saved)",
              new_holder.describe() if new_holder else "another driver")
    os.kill(os.getpid(), signal.SIGTERM)


# A driver writes its record right after it takes the lock: a second driver refused in
# between finds the file empty, and waits this long for the record to name the holder.
RECORD_WAIT_S = 2.0


def _holder_record(fd: int) -> Holder | None:
    """The holder's record in a locked lease file, once it is there (None after
    :data:`RECORD_WAIT_S`: the holder is then named as "another driver")."""
    deadline = time.monotonic() + RECORD_WAIT_S
    while True:
        holder = Holder.decode(os.pread(fd, 65536, 0))
        if holder is not None or time.monotonic() >= deadline:
            return holder
        time.sleep(0.05)


class LocalLease:
    """``flock`` on a file in the experiment directory."""

    def __init__(self, location: Location, path: str, experiment: str):
        self.path, self.experiment = path, experiment
        self._fd: int | None = None
        self.holder: Holder | None = None

    def acquire(self, *, takeover: bool, timeout_s: float, on_lost: Callable) -> Holder:
        import fcntl

        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder_record(fd)
            os.close(fd)
            raise _refusal(self.experiment, holder) from None
        previous = Holder.decode(os.pread(fd, 65536, 0))
        if previous is not None:  # a driver that ended without releasing: it is gone
            log.warning("the search's previous driver (%s) ended without releasing its lease; taking it over",
                        previous.describe())
        me = this_driver()
        os.ftruncate(fd, 0)
        os.pwrite(fd, me.encode(), 0)
        os.fsync(fd)
        self._fd, self.holder = fd, me
        return me

    def step_down(self) -> None:
        """Nothing to do: the kernel frees the lock the moment this process ends."""

    def release(self) -> None:
        if self._fd is None:
            return
        import fcntl

        os.ftruncate(self._fd, 0)  # an empty file: no holder
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None


class GcsLease:
    """An object created only if absent, renewed conditionally on its generation."""

    def __init__(self, location: Location, path: str, experiment: str):
        bucket, _, obj = path.partition("/")
        self.bucket, self.object, self.experiment = bucket, obj, experiment
        self._generation: int | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()  # set to make the renewer act now
        self._thread: threading.Thread | None = None
        self.holder: Holder | None = None

    # -- GCS JSON API: only what pyarrow's filesystem cannot do -----------------------
    def _request(self, method: str, url: str, content_type: str | None = None, **kwargs: Any):
        import requests

        from trainables.storage import gcs_api

        base, headers = gcs_api()
        if content_type:
            headers = {**headers, "Content-Type": content_type}
        return requests.request(method, base + url, headers=headers, timeout=REQUEST_TIMEOUT_S, **kwargs)

    def _write(self, holder: Holder, if_generation: int) -> int | None:
        """Write ``holder`` if the object's generation is ``if_generation`` (0: absent);
        its new generation, or None when the precondition failed. A multipart upload
        (metadata and data in one request), the form GCS and its emulator both check
        preconditions on."""
        boundary = f"hpsearch-{os.urandom(8).hex()}"
        body = b"".join([
            f"--{boundary}\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n".encode(),
            json.dumps({"name": self.object, "contentType": "application/json"}).encode(),
            f"\r\n--{boundary}\r\nContent-Type: application/json\r\n\r\n".encode(),
            holder.encode(),
            f"\r\n--{boundary}--\r\n".encode(),
        ])
        response = self._request(
            "POST", f"/upload/storage/v1/b/{self.bucket}/o?uploadType=multipart&ifGenerationMatch={if_generation}",
            data=body, content_type=f"multipart/related; boundary={boundary}")
        if response.status_code == 412:
            return None
        response.raise_for_status()
        return int(response.json()["generation"])

    def _read(self) -> tuple[Holder | None, int] | None:
        """The record and its generation; None when there is no lease object."""
        from urllib.parse import quote

        url = f"/storage/v1/b/{self.bucket}/o/{quote(self.object, safe='')}"
        meta = self._request("GET", url)
        if meta.status_code == 404:
            return None
        meta.raise_for_status()
        generation = int(meta.json()["generation"])
        body = self._request("GET", f"{url}?alt=media&ifGenerationMatch={generation}")
        if body.status_code in (404, 412):  # changed between the two reads: read again
            return self._read()
        body.raise_for_status()
        return Holder.decode(body.content), generation

    # -- the lease ---------------------------------------------------------------------
    def acquire(self, *, takeover: bool, timeout_s: float, on_lost: Callable) -> Holder:
        me = this_driver()
        generation = self._write(me, 0)
        if generation is None:
            found = self._read()
            if found is None:  # released meanwhile
                return self.acquire(takeover=takeover, timeout_s=timeout_s, on_lost=on_lost)
            holder, current = found
            age = time.time() - holder.heartbeat if holder else float("inf")
            if holder is not None and holder.heartbeat == 0:  # stopped by a signal, exiting
                age = float("inf")
            if age <= timeout_s:
                raise _refusal(self.experiment, holder,
                               f", renewed {age:.0f} s ago; if that driver is gone, --resume can take the search over "
                               f"once its lease has gone {timeout_s:g} s unrenewed (storage.lease_timeout_s)")
            if not takeover:
                raise _refusal(self.experiment, holder,
                               f"; its lease was last renewed {age:.0f} s ago (more than storage.lease_timeout_s, "
                               f"{timeout_s:g} s): if that driver is gone, take the search over with --resume")
            generation = self._write(me, current)
            if generation is None:  # another driver took it over first
                found = self._read()
                raise _refusal(self.experiment, found[0] if found else None)
            log.warning("took over the search's lease from a driver that %s (%s)",
                        "was stopped" if age == float("inf") else f"stopped renewing it {age:.0f} s ago",
                        holder.describe() if holder else "unreadable record")
        self._generation, self.holder = generation, me
        self._thread = threading.Thread(target=self._renew, args=(timeout_s / 6, on_lost), daemon=True,
                                        name="hpsearch-lease")
        self._thread.start()
        return me

    def step_down(self) -> None:
        """Mark the lease free for a ``--resume`` now (this driver was told to stop);
        safe in a signal handler: the renewer thread writes it."""
        self._stepping_down = True
        self._wake.set()

    _stepping_down = False

    def _renew(self, every_s: float, on_lost: Callable) -> None:
        while not self._stop.is_set():
            self._wake.wait(every_s)
            self._wake.clear()
            if self._stop.is_set():
                return
            renewed = dataclasses.replace(self.holder, heartbeat=0.0 if self._stepping_down else time.time())
            try:
                generation = self._write(renewed, self._generation)
            except Exception as exc:  # noqa: BLE001 - a network hiccup; the next renewal may pass
                log.warning("could not renew the search's lease (%s); retrying in %.0f s", exc, every_s)
                continue
            if generation is None:
                found = self._read()
                on_lost(found[0] if found else None)
                return
            self._generation, self.holder = generation, renewed
            if self._stepping_down:
                return  # stepped down: no more renewals

    def release(self) -> None:
        from urllib.parse import quote

        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=REQUEST_TIMEOUT_S * 2)
        if self._generation is None:
            return
        try:
            self._request("DELETE", f"/storage/v1/b/{self.bucket}/o/{quote(self.object, safe='')}"
                                    f"?ifGenerationMatch={self._generation}")
        except Exception as exc:  # noqa: BLE001 - a lease left behind goes stale after its timeout
            log.warning("could not release the search's lease (%s); it expires after storage.lease_timeout_s", exc)
        self._generation = None
