"""A trial as a 2-worker MultiWorkerMirroredStrategy job under Ray Train, on this machine."""

from __future__ import annotations

from pathlib import Path

import pytest
import ray

from search.distributed import make_trainer

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def local_ray():
    tests = str(Path(__file__).resolve().parent)
    ray.init(num_cpus=2, logging_level="ERROR", _node_ip_address="127.0.0.1", dashboard_host="127.0.0.1",
             runtime_env={"env_vars": {"PYTHONPATH": tests, "TF_CPP_MIN_LOG_LEVEL": "2"}})
    yield
    ray.shutdown()


def test_two_workers_end_with_identical_weights(local_ray, tmp_path):
    from conftest import tiny_spec

    digests, storage = tmp_path / "digests", tmp_path / "storage"
    digests.mkdir()
    # head phase (BN frozen) then a fine-tuning epoch (BN trains from scratch)
    spec = tiny_spec(batch_size=16, head_epochs=1, warmup_epochs=0, cooldown_epochs=1)
    trainer = make_trainer(spec, strategy="mwms", workers=2, cpus_per_worker=0.99, gpus_per_worker=0,
                           name="two-workers", storage_path=str(storage), digest_dir=str(digests))
    result = trainer.fit()
    assert result.error is None
    assert result.metrics["epoch"] == spec.total_epochs
    for epoch in range(1, spec.total_epochs + 1):
        rank0 = (digests / f"rank0_epoch{epoch}.txt").read_text()
        rank1 = (digests / f"rank1_epoch{epoch}.txt").read_text()
        assert rank0 == rank1, f"workers differ after epoch {epoch}"
    # the weights did train between the epochs, so equal digests are not vacuous
    assert (digests / "rank0_epoch1.txt").read_text() != (digests / "rank0_epoch2.txt").read_text()
    # only the chief wrote checkpoints, and the latest one loads
    assert result.checkpoint is not None
    assert (Path(result.checkpoint.path) / "model.keras").is_file()
    # the workers' resources are free again
    assert ray.available_resources().get("CPU") == ray.cluster_resources().get("CPU")
