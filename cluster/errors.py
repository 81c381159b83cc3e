"""Errors a cluster user meets, each a one-line message that says how to fix it."""

from trainables.errors import InputError


class ClusterError(InputError):
    """A problem reaching or using the cluster; ``str()`` is the whole message (exit 2)."""
