"""Search jobs on a Ray cluster through Ray's JobSubmissionClient (what `ray job submit`
uses), with the project directory as the job's working directory."""

from __future__ import annotations

import os
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cluster.errors import ClusterError

DEFAULT_ADDRESS = "http://127.0.0.1:8265"
# Seconds the dashboard has to answer its first request.
DASHBOARD_TIMEOUT_S = 10.0
# Never uploaded with the working directory: environments, outputs, VCS data, caches,
# built packages. Patterns in .gitignore syntax, as Ray's runtime_env reads them.
EXCLUDES = [".venv/", ".git/", "experiments/", "__pycache__/", "*.egg-info/", ".pytest_cache/", "build/", "dist/",
            "*.whl", "*.tar.gz"]
# Ray's job server refuses a job with this until the head's agent has registered, which
# on a head started moments ago (or a busy one) comes after the dashboard answers.
NO_AGENT = "No available agent to submit job"
# Seconds a submit waits for that agent, and between its tries.
AGENT_WAIT_S = 60.0
AGENT_POLL_S = 2.0


def address_from(argument: str | None) -> str:
    """The dashboard address: --address, else RAY_ADDRESS (if http), else localhost."""
    if argument:
        return argument
    env = os.environ.get("RAY_ADDRESS", "")
    return env if env.startswith(("http://", "https://")) else DEFAULT_ADDRESS


def connect(address: str) -> Any:
    """A JobSubmissionClient for the dashboard at ``address``.

    Raises:
        ClusterError: the dashboard cannot be reached, or refuses the token.
    """
    import requests
    from ray.job_submission import JobSubmissionClient

    # Ray's job client sends its requests with no timeout: a dashboard that accepts the
    # connection and never answers would hang every command. One bounded request first.
    try:
        requests.get(f"{address.rstrip('/')}/api/version", timeout=DASHBOARD_TIMEOUT_S)
    except requests.exceptions.Timeout:
        raise ClusterError(
            f"the Ray dashboard at {address} did not answer within {DASHBOARD_TIMEOUT_S:g} s: check that the head "
            "is running and that `kubectl port-forward svc/<release>-hpsearch-head-svc 8265:8265` still runs"
        ) from None
    except requests.exceptions.RequestException as exc:
        raise _explain(exc, address) from None
    try:
        return JobSubmissionClient(address)
    except Exception as exc:  # ConnectionError, AuthenticationError, RuntimeError: see _explain
        raise _explain(exc, address) from None


def _explain(exc: BaseException, address: str) -> ClusterError:
    """A ClusterError for what the job SDK raised, told apart by its exception type."""
    import requests
    from ray.exceptions import AuthenticationError

    if isinstance(exc, AuthenticationError):
        return ClusterError(
            f"the Ray cluster at {address} refused the request: its token is missing or wrong. "
            "export RAY_AUTH_MODE=token and RAY_AUTH_TOKEN=<token> (see `helm status` NOTES for the command)"
        )
    # The client raises the built-in ConnectionError when it first connects, and requests'
    # own connection and timeout errors on later calls.
    if isinstance(exc, (ConnectionError, requests.exceptions.ConnectionError, requests.exceptions.Timeout)):
        return ClusterError(
            f"cannot reach the Ray dashboard at {address}: start `kubectl port-forward svc/<release>-hpsearch-head-svc "
            "8265:8265` or pass --address"
        )
    text = str(exc)
    return ClusterError(f"Ray job API at {address}: {text.splitlines()[0] if text else exc.__class__.__name__}")


def search_entrypoint(config_path: str, extra_args: list[str] | None = None) -> str:
    """The job's command: the search module, run from the uploaded working directory."""
    return shlex.join(["python", "-m", "search", "run", "--config", config_path, *(extra_args or [])])


def submit(
    client: Any, address: str, config_path: Path, working_dir: Path, extra_args: list[str] | None = None, *,
    say: Callable[[str], None] = print, wait_s: float = AGENT_WAIT_S, poll_s: float = AGENT_POLL_S,
) -> str:
    """Submit a search; the config path is sent relative to the working directory (the
    job server's agent waited for as :func:`submit_job` does).

    Raises:
        ClusterError: the config lies outside the working directory, or as :func:`submit_job`.
    """
    try:
        relative = config_path.resolve().relative_to(working_dir.resolve())
    except ValueError:
        raise ClusterError(f"--config {config_path} must lie inside the working directory {working_dir}") from None
    return submit_job(client, address, say=say, wait_s=wait_s, poll_s=poll_s,
                      entrypoint=search_entrypoint(relative.as_posix(), extra_args),
                      runtime_env={"working_dir": str(working_dir), "excludes": EXCLUDES})


def submit_job(client: Any, address: str, *, say: Callable[[str], None] = print, wait_s: float = AGENT_WAIT_S,
               poll_s: float = AGENT_POLL_S, **job: Any) -> str:
    """``client.submit_job(**job)``. A job server whose agent has not registered yet is
    waited for, at most ``wait_s`` (``say`` tells the user once); any other refusal ends
    the submit at once.

    Raises:
        ClusterError: the job API refused the job, or no agent registered within ``wait_s``.
    """
    import time

    deadline = time.monotonic() + wait_s
    told = False
    while True:
        try:
            return client.submit_job(**job)
        except Exception as exc:
            if NO_AGENT not in str(exc):
                raise _explain(exc, address) from None
            if time.monotonic() >= deadline:
                raise ClusterError(
                    f"the Ray cluster at {address} took no job within {wait_s:g} s: its job agent has not registered "
                    "(the head is still starting, or its dashboard agent died): check the head pod with "
                    "`kubectl get pods` and its log, then submit again") from None
        if not told:
            say(f"waiting up to {wait_s:g} s for the cluster's job agent (the head is still starting)")
            told = True
        time.sleep(poll_s)


def follow(client: Any, address: str, job_id: str, write: Callable[[str], None]) -> str:
    """Stream a job's logs as they are written (the SDK's ``tail_job_logs``, which holds
    one connection open) until the job ends; return its final status."""
    import asyncio

    async def tail() -> None:
        async for lines in client.tail_job_logs(job_id):
            write(lines)

    try:
        asyncio.run(tail())
        return _status_name(client.get_job_status(job_id))
    except Exception as exc:
        raise _explain(exc, address) from None


def _status_name(status: Any) -> str:
    return str(getattr(status, "value", status))


def logs(client: Any, address: str, job_id: str) -> str:
    try:
        return client.get_job_logs(job_id)
    except Exception as exc:
        raise _explain(exc, address) from None


def stop(client: Any, address: str, job_id: str) -> bool:
    try:
        return bool(client.stop_job(job_id))
    except Exception as exc:
        raise _explain(exc, address) from None
