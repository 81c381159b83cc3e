"""hpsearch's one exception hierarchy: each error carries the exit code it ends with.

``hpsearch``'s ``main`` catches :class:`HpsearchError` once and exits with its
``exit_code``: 2 for bad input (found before expensive work starts: a config, a path,
an argument, a cluster that cannot be reached), 1 for work that failed.
"""

from __future__ import annotations


class HpsearchError(Exception):
    """Work that failed; ``str()`` is the whole one-line message."""

    exit_code = 1


class InputError(HpsearchError):
    """Bad input: a config value, a path, an argument. The message names it and the fix."""

    exit_code = 2
