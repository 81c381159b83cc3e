"""TF_CONFIG for a trial's Ray Train worker group, without TensorFlow in the processes
that only schedule it.

Ray's ``TensorflowConfig`` does the same setup, but it lives in ``ray.train.tensorflow``,
whose package import loads TensorFlow (about 10 s of CPU on a 2-core machine): in the
trial's process that builds the trainer, and again in Ray Train's controller, which
unpickles the config. Neither trains. This backend sets what Ray's sets on each worker
(``TF_CONFIG``: every worker's address and its own index, which
MultiWorkerMirroredStrategy reads) and imports nothing of TensorFlow; the workers import
it when they build the model.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import ray
from ray.train.backend import Backend, BackendConfig


def set_tf_config(worker_addresses: list[str], index: int) -> None:
    """On a worker: the cluster MultiWorkerMirroredStrategy joins, and this worker's place in it."""
    os.environ["TF_CONFIG"] = json.dumps(
        {"cluster": {"worker": worker_addresses}, "task": {"type": "worker", "index": index}})


def free_address() -> str:
    """On a worker: this node's address and a port free on it, for the collective's server."""
    from ray._common.network_utils import build_address
    from ray.train._internal.utils import get_address_and_port

    return build_address(*get_address_and_port())


class _TFConfigBackend(Backend):
    def on_start(self, worker_group, backend_config) -> None:
        addresses = worker_group.execute(free_address)
        ray.get([worker_group.execute_single_async(i, set_tf_config, worker_addresses=addresses, index=i)
                 for i in range(len(worker_group))])


@dataclass
class TFConfig(BackendConfig):
    """The backend config of a trial's trainer (``DataParallelTrainer(backend_config=...)``)."""

    @property
    def backend_cls(self):
        return _TFConfigBackend

    @property
    def framework(self):
        from ray.train.v2._internal.util import TrainingFramework

        return TrainingFramework.TENSORFLOW  # Ray Train's state records the workers' TF version
