"""Fixtures shared by the whole suite. Helpers live in support.py.

Trained fixtures have session scope: the suite trains the small experiment once and
every test that needs a trained checkpoint reads it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

# The tiny test backbone ("Tiny", tests/tiny_backbone.py), registered as a user registers a
# family of their own, for this process and every one it starts: set before anything
# imports trainables.backbones, which reads the registry once.
_TESTS = str(Path(__file__).resolve().parent)
os.environ["HPSEARCH_BACKBONE_MODULES"] = "tiny_backbone"
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (_TESTS, os.environ.get("PYTHONPATH")) if p)
# Nothing of the developer's machine reaches the tests: hpsearch's cache (converted
# weights, study copies) is the session's own, not ~/.cache/hpsearch, so no test passes
# on a file an earlier run left there; a RAY_ADDRESS exported for a real cluster is
# dropped, so every Ray a test uses is one it started on 127.0.0.1.
_CACHE = tempfile.mkdtemp(prefix="hpsearch-test-cache-")
os.environ["HPSEARCH_CACHE"] = _CACHE
os.environ.pop("RAY_ADDRESS", None)

import pytest  # noqa: E402

from support import make_experiment, create_bucket, start_fake_gcs


@pytest.fixture(scope="session")
def trained_experiment(tmp_path_factory):
    """A finished search on disk (three tiny trained trials) and each trial's reports.
    Read-only: a test that changes it copies it first."""
    return make_experiment(tmp_path_factory.mktemp("search"))


@pytest.fixture(scope="module")
def fake_gcs(tmp_path_factory):
    """fake-gcs-server on 127.0.0.1 with the bucket ``hpsearch-test``; every ``gs://``
    path in this process (and in the processes it starts) goes to it while the module's
    tests run. Stopped by its process handle."""
    server, endpoint = start_fake_gcs(tmp_path_factory.mktemp("gcs") / "fake-gcs.log")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HPSEARCH_GCS_ENDPOINT", endpoint)
        create_bucket(endpoint, "hpsearch-test")
        yield endpoint
    server.stop()


# The modules whose Ray clusters have several nodes, and the driver test whose searches
# start a local Ray of their own twice: one test process runs them one after the other,
# so that their clusters never start beside each other (a raylet that has not registered
# within Ray's fixed 30 s fails its node's start, and a busy machine makes that likelier),
# and the two processes' shares of the suite come out about even (measured: 18 min).
# In this order: the Spot drain test last, when the other process is likeliest to have
# finished (its timing is the most sensitive to a busy machine, and the longest).
HEAVY = ("tests/cluster/test_autoscaling_cluster.py", "tests/cluster/test_miniature.py",
         "tests/search/test_faults.py", "tests/cluster/test_spot.py")


def pytest_unconfigure(config):
    shutil.rmtree(_CACHE, ignore_errors=True)


def pytest_collection_modifyitems(config, items):
    """The HEAVY modules first (one scope, started at once), then the other modules with
    slow tests, then the rest; each module's tests kept together and in order: the two
    test processes then end together instead of one starting a long module while the
    other has finished. Of the other slow modules, those that start no Ray (trainables)
    go first: the other process starts its first clusters meanwhile, and a Ray node
    started beside another cluster's start-up is the likeliest to miss Ray's fixed 30 s
    to register."""
    has_slow = {item.path for item in items if item.get_closest_marker("slow")}

    def heavy_rank(item) -> int:
        module = item.nodeid.split("::", 1)[0]
        return HEAVY.index(module) if module in HEAVY else len(HEAVY)

    def starts_ray(item) -> bool:
        return not item.nodeid.startswith("tests/trainables/")

    # stable: the order within each part stays
    items.sort(key=lambda item: (item.path not in has_slow, heavy_rank(item), starts_ray(item)))


def pytest_xdist_make_scheduler(config, log):
    """pytest-xdist's scheduler by scope, with a module as the scope and the HEAVY
    modules one scope: each test process runs whole modules (a module's Ray and trained
    fixtures are built once), in the collection's order (``--no-loadscope-reorder``).
    (xdist's own ``loadgroup`` cannot say this under pytest 9: it renames items through
    an attribute pytest 9 no longer reads.)"""
    from xdist.scheduler import LoadScopeScheduling

    class ModuleScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return "heavy" if module in HEAVY else module

    return ModuleScheduling(config, log)
