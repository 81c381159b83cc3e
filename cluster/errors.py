"""Errors a cluster user meets, each a one-line message that says how to fix it."""


class ClusterError(RuntimeError):
    """A problem reaching or using the cluster; ``str()`` is the whole message."""
