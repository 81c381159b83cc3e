"""A submit to a job server whose agent has not registered yet: waited for within a bound,
said once; any other refusal is not retried. (A fake job client: the real one against a
cluster is in test_miniature.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from cluster.errors import ClusterError
from cluster.jobs import submit

NO_AGENT = ("Request failed with status code 500: No available agent to submit job, please try again "
            "later..")  # Ray 2.60's job server, verbatim


class FakeClient:
    """Refuses the first ``refusals`` submissions with ``message``, then takes the job."""

    def __init__(self, refusals: int, message: str = NO_AGENT) -> None:
        self.refusals, self.message, self.calls = refusals, message, 0

    def submit_job(self, **_) -> str:
        self.calls += 1
        if self.calls <= self.refusals:
            raise RuntimeError(self.message)
        return "raysubmit_1"


def project(tmp_path: Path) -> Path:
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "c.yaml").write_text("search: {num_trials: 1}\n")
    return tmp_path / "configs" / "c.yaml"


def test_a_job_agent_that_registers_later_is_waited_for_and_said_once(tmp_path):
    said: list[str] = []
    client = FakeClient(refusals=3)
    job = submit(client, "http://head:8265", project(tmp_path), tmp_path, say=said.append, wait_s=30, poll_s=0.01)
    assert job == "raysubmit_1" and client.calls == 4
    assert said == ["waiting up to 30 s for the cluster's job agent (the head is still starting)"]


def test_a_job_agent_that_never_registers_ends_the_submit_at_its_bound(tmp_path):
    client = FakeClient(refusals=10**9)
    with pytest.raises(ClusterError, match=r"took no job within 0.05 s: its job agent has not registered"):
        submit(client, "http://head:8265", project(tmp_path), tmp_path, say=lambda _: None, wait_s=0.05,
               poll_s=0.01)
    assert client.calls > 1


def test_any_other_refusal_is_not_retried(tmp_path):
    client = FakeClient(refusals=1, message="Request failed with status code 400: bad runtime_env")
    with pytest.raises(ClusterError, match="bad runtime_env"):
        submit(client, "http://head:8265", project(tmp_path), tmp_path, say=lambda _: None, wait_s=30, poll_s=0.01)
    assert client.calls == 1
