"""Which Ray a search runs on: the cluster ``RAY_ADDRESS`` names, or a Ray of its own.

``ray job submit`` sets ``RAY_ADDRESS`` in the job's environment; on a laptop it is unset.
Unset, a search always starts a new local Ray (``address="local"``): plain
``ray.init()`` would join whatever Ray's address file in the temporary directory names,
even a cluster that died without ``ray stop``, and retry it for minutes. Set, the
address must answer within :data:`GCS_WAIT_S`, or the search stops there (exit 2) naming
it, instead of Ray's own retries that go on for minutes without an error.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from collections.abc import Iterator

from trainables.errors import InputError

ADDRESS_ENV = "RAY_ADDRESS"
# How long a named cluster's GCS may refuse connections (a head restarting) before the
# search gives up on it.
GCS_WAIT_S = 15.0


class RayUnreachable(InputError):
    """RAY_ADDRESS names a Ray cluster that does not answer (exit code 2)."""


def gcs_host_port(address: str) -> tuple[str, int] | None:
    """(host, port) of a ``host:port`` or ``ray://host:port`` address; None for forms
    Ray resolves itself (``auto``)."""
    rest = address.split("://", 1)[1] if "://" in address else address
    host, sep, port = rest.rstrip("/").rpartition(":")
    if not sep or not port.isdigit():
        return None
    return host.strip("[]"), int(port)


def wait_for_gcs(address: str, wait_s: float = GCS_WAIT_S) -> None:
    """Return once something accepts connections at ``address``'s port.

    Raises:
        RayUnreachable: nothing did within ``wait_s`` seconds.
    """
    target = gcs_host_port(address)
    if target is None:
        return
    deadline = time.monotonic() + wait_s
    while True:
        try:
            with socket.create_connection(target, timeout=min(5.0, wait_s)):
                return
        except OSError as exc:
            if time.monotonic() >= deadline:
                raise RayUnreachable(
                    f"{ADDRESS_ENV}={address}: no Ray cluster answers there (tried for {wait_s:g} s: {exc}). "
                    f"Check that its head is running and reachable from here, or unset {ADDRESS_ENV} to run on a "
                    "Ray of this machine's own") from None
            time.sleep(1.0)


def connect() -> bool:
    """Connect this process to its Ray; returns whether this call connected it (so the
    caller disconnects at its end), False when it already was."""
    import ray

    if ray.is_initialized():
        return False
    address = os.environ.get(ADDRESS_ENV)
    if address:
        wait_for_gcs(address)
        ray.init(address=address, logging_level=logging.WARNING)
        return True
    # A Ray of its own, reachable from this machine only.
    with _loopback_only():
        ray.init(address="local", logging_level=logging.WARNING, _node_ip_address="127.0.0.1",
                 dashboard_host="127.0.0.1")
    return True


# Ray resolves 127.0.0.1 to the machine's network address (ray._private.services.
# resolve_ip_for_localhost) unless multi-node clusters are off, its setting for a Ray of
# one machine; a search's own Ray is that.
SINGLE_MACHINE_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


@contextlib.contextmanager
def _loopback_only() -> Iterator[None]:
    """While Ray starts: its processes (which inherit the environment) and this one take
    127.0.0.1 as their address. Restored after: later processes are not affected."""
    from ray._private import ray_constants

    previous_env, previous_flag = os.environ.get(SINGLE_MACHINE_ENV), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[SINGLE_MACHINE_ENV] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = previous_flag
        if previous_env is None:
            os.environ.pop(SINGLE_MACHINE_ENV, None)
        else:
            os.environ[SINGLE_MACHINE_ENV] = previous_env
