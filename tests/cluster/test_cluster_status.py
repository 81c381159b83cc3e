"""`hpsearch cluster status` against a stand-in Kubernetes API server on 127.0.0.1."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import pytest
import yaml

from cluster.status import summarise


def raycluster(name, state, ready, groups):
    status = {"readyWorkerReplicas": ready, "desiredWorkerReplicas": sum(g[1] * g[2] for g in groups)}
    if state:
        status["state"] = state
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayCluster",
        "metadata": {"name": name, "namespace": "ml"},
        "spec": {
            "workerGroupSpecs": [
                {"groupName": g, "replicas": n, "numOfHosts": hosts, "minReplicas": 0, "maxReplicas": 4}
                for g, n, hosts in groups
            ]
        },
        "status": status,
    }


def pod(cluster, group, ready):
    return {
        "metadata": {"name": f"{cluster}-{group}-{ready}", "labels": {"ray.io/cluster": cluster, "ray.io/group": group}},
        "status": {
            "phase": "Running" if ready else "Pending",
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


CLUSTERS = {
    "ready": raycluster("ready", "ready", 3, [("gpu", 2, 1), ("tpu", 1, 1)]),
    "starting": raycluster("starting", None, 0, [("tpu-slice", 1, 4)]),
}
# Which hpsearch clusters each namespace holds (what `helm install NAME` made there).
LISTED = {"solo": ["ready"], "ml": ["ready", "starting"]}
PODS = {
    "ready": [pod("ready", "gpu", True), pod("ready", "gpu", True), pod("ready", "tpu", True)],
    "starting": [pod("starting", "tpu-slice", False) for _ in range(4)],
}


def in_namespace(cluster, namespace):
    return {**cluster, "metadata": {**cluster["metadata"], "namespace": namespace}}


class FakeKubernetes(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's naming)
        url = urlparse(self.path)
        parts = url.path.strip("/").split("/")
        if parts[:3] == ["apis", "ray.io", "v1"] and parts[5] == "rayclusters" and len(parts) == 6:
            # a list: the chart's label selects hpsearch clusters (LISTED by namespace)
            assert parse_qs(url.query)["labelSelector"] == ["app.kubernetes.io/name=hpsearch"]
            body = {"kind": "RayClusterList", "apiVersion": "ray.io/v1",
                    "items": [in_namespace(CLUSTERS[n], parts[4]) for n in LISTED.get(parts[4], [])]}
        elif parts[:3] == ["apis", "ray.io", "v1"] and parts[5] == "rayclusters":
            body = in_namespace(CLUSTERS[parts[6]], parts[4]) if parts[6] in CLUSTERS else None
        elif parts[:2] == ["api", "v1"] and parts[-1] == "pods":
            selector = parse_qs(url.query)["labelSelector"][0]
            body = {"kind": "PodList", "apiVersion": "v1", "items": PODS.get(selector.split("=")[1], [])}
        else:
            body = None
        if body is None:
            self.send_response(404)
            payload = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404}
        else:
            self.send_response(200)
            payload = body
        data = json.dumps(payload).encode()
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def kubeconfig(tmp_path_factory):
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeKubernetes)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    path = tmp_path_factory.mktemp("kube") / "config"
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "stand-in", "cluster": {"server": f"http://127.0.0.1:{server.server_port}"}}],
                "users": [{"name": "me", "user": {"token": "not-a-secret"}}],
                "contexts": [{"name": "stand-in", "context": {"cluster": "stand-in", "user": "me", "namespace": "solo"}},
                             {"name": "team", "context": {"cluster": "stand-in", "user": "me", "namespace": "ml"}}],
                "current-context": "stand-in",
            }
        )
    )
    yield str(path)
    server.shutdown()
    server.server_close()


def status(kubeconfig, name):
    return subprocess.run(
        [sys.executable, "-m", "search", "cluster", "status", "--kubeconfig", kubeconfig, "--name", name, "--namespace", "ml"],
        capture_output=True, text=True, timeout=120,
    )


def test_ready_cluster(kubeconfig):
    done = status(kubeconfig, "ready")
    assert done.returncode == 0, done.stderr
    assert "RayCluster ml/ready: ready" in done.stdout
    assert "workers ready: 3/3" in done.stdout
    assert "gpu: 2/2 ready" in done.stdout and "tpu: 1/1 ready" in done.stdout
    assert "http://ready-head-svc.ml.svc.cluster.local:8265" in done.stdout
    assert "kubectl port-forward -n ml svc/ready-head-svc 8265:8265" in done.stdout


def test_provisioning_cluster(kubeconfig):
    done = status(kubeconfig, "starting")
    assert done.returncode == 0, done.stderr
    assert "RayCluster ml/starting: provisioning" in done.stdout
    # a multi-host TPU slice: one replica is 4 hosts, none ready yet
    assert "tpu-slice: 0/4 ready" in done.stdout


def test_missing_cluster(kubeconfig):
    done = status(kubeconfig, "nope")
    assert done.returncode == 2
    assert done.stderr.strip().startswith("hpsearch: RayCluster 'nope' not found in namespace 'ml'")
    assert "helm install" in done.stderr and "Traceback" not in done.stderr


def test_no_kubeconfig(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "search", "cluster", "status", "--kubeconfig", str(tmp_path / "absent")],
        capture_output=True, text=True, timeout=120, env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )
    assert done.returncode == 2
    assert "no usable kubeconfig" in done.stderr and "get-credentials" in done.stderr


def test_summarise_counts_hosts_of_a_slice():
    from types import SimpleNamespace as NS

    def pod_obj(group, ready):
        return NS(
            metadata=NS(labels={"ray.io/group": group}),
            status=NS(phase="Running", conditions=[NS(type="Ready", status="True" if ready else "False")]),
        )

    status_ = summarise(CLUSTERS["starting"], [pod_obj("tpu-slice", True), pod_obj("tpu-slice", False)])
    assert status_.groups[0].ready == 1 and status_.groups[0].desired == 4


def test_defaults_find_the_release_in_the_contexts_namespace(kubeconfig):
    """No --name, no --namespace: the kubeconfig context's namespace (solo), and the one
    RayCluster there that carries the chart's label, whatever the release is called."""
    done = subprocess.run([sys.executable, "-m", "search", "cluster", "status", "--kubeconfig", kubeconfig],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "RayCluster solo/ready: ready" in done.stdout


def test_several_releases_ask_for_a_name(kubeconfig):
    done = subprocess.run([sys.executable, "-m", "search", "cluster", "status", "--kubeconfig", kubeconfig,
                           "--context", "team"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "2 hpsearch RayClusters in namespace 'ml' (ready, starting): pass --name" in done.stderr


def test_the_chart_labels_its_raycluster_as_the_default_lookup_expects():
    from pathlib import Path

    import helm_python as helm

    from cluster.status import CHART_LABEL

    chart = Path(__file__).resolve().parents[2] / "helm" / "hpsearch"
    rendered = helm.Chart.load(chart).render({}, name="anything", namespace="ml")
    cluster = next(d for path, text in rendered.items() if path.endswith(".yaml")
                   for d in yaml.safe_load_all(text) if d and d["kind"] == "RayCluster")
    key, value = CHART_LABEL.split("=")
    assert cluster["metadata"]["labels"][key] == value
