"""Multi-node scenarios on one machine, each run in its own process by tests/test_cluster.py.

Real raylets via ``ray.cluster_utils.Cluster``; the study runs through
``featloss.engine.run.run_study`` exactly as ``featloss run --address`` does. Prints one JSON line with what the test checks.

    python tests/cluster_scenarios.py {multi_node|node_failure|gpu_packing} WORKDIR
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
sys.path.insert(0, str(Path(__file__).parent))

import ray  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402

from conftest import run_inline, tiny_study  # noqa: E402


def start_cluster(head_cpus: int, workers: list[dict]) -> tuple[Cluster, list]:
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": head_cpus})
    nodes = [cluster.add_node(**w) for w in workers]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    return cluster, nodes


def trial_runs(uri: str, name: str) -> list:
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(name)
    if exp is None:
        return []
    return [r for r in client.search_runs([exp.experiment_id], "", max_results=1000)
            if r.data.tags.get("featloss.role") == "trial"]


def run(raw: dict, workdir: Path, address: str) -> tuple[str, object]:
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    _, _, outcome = run_inline(raw, uri, workdir / "results", address=address)
    return uri, outcome


def multi_node(workdir: Path) -> dict:
    cluster, _ = start_cluster(1, [{"num_cpus": 1}, {"num_cpus": 1}])
    raw = tiny_study("multi-node", seeds=list(range(6)), train={"epochs": 2})
    uri, outcome = run(raw, workdir, cluster.address)
    runs = trial_runs(uri, "multi-node")
    return {"nodes": sorted({r.data.tags.get("node_id") for r in runs}),
            "cluster_nodes": len(ray.nodes()), "trials": len(runs),
            "status": sorted({r.data.tags.get("status") for r in runs}),
            "results_dir": outcome.results_dir, "uri": uri}


def node_failure(workdir: Path) -> dict:
    # The head runs no trials (0 CPUs), like cluster.yaml's head; each worker runs one.
    cluster, (doomed, survivor) = start_cluster(0, [{"num_cpus": 1}, {"num_cpus": 1}])
    epochs = 6
    raw = tiny_study("node-failure", seeds=[0, 1, 2, 3], train={"epochs": epochs},
                     data={"dataset": "mnist5k", "max_train_samples": 1500}, max_failures=3)
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    outcome: dict = {}
    thread = threading.Thread(target=lambda: outcome.update(
        result=run(raw, workdir, cluster.address)[1]), daemon=True)
    thread.start()
    victim, deadline = None, time.monotonic() + 300
    client = MlflowClient(tracking_uri=uri)
    while victim is None:  # wait until a running trial on the doomed node has 2 epochs logged
        assert time.monotonic() < deadline, "no trial reached 2 epochs on the doomed node"
        for r in trial_runs(uri, "node-failure"):
            if (r.data.tags.get("node_id") == doomed.node_id
                    and r.data.tags.get("status") == "running"
                    and 2 <= len(client.get_metric_history(r.info.run_id, "epoch")) < epochs - 1):
                victim = r.data.tags["featloss.trial_key"]
        time.sleep(0.1)
    cluster.remove_node(doomed, allow_graceful=False)  # a crash: no goodbye
    removed_at = time.time()
    thread.join(timeout=600)
    assert not thread.is_alive(), "the study did not finish after the node was lost"
    runs = trial_runs(uri, "node-failure")
    histories = {r.data.tags["featloss.trial_key"]: sorted(
        m.step for m in client.get_metric_history(r.info.run_id, "epoch")) for r in runs}
    return {"victim": victim, "doomed": doomed.node_id, "survivor": survivor.node_id,
            "removed_at": removed_at, "epochs": epochs, "trials": len(runs),
            "status": {r.data.tags["featloss.trial_key"]: r.data.tags.get("status") for r in runs},
            "final_node": {r.data.tags["featloss.trial_key"]: r.data.tags.get("node_id")
                           for r in runs},
            "histories": histories, "results_dir": outcome["result"].results_dir, "uri": uri}


def gpu_packing(workdir: Path) -> dict:
    # One node declaring one GPU (Ray schedules by declared resources; no CUDA needed): with
    # resources.gpu = 0.25 four trials must share it at once.
    cluster, _ = start_cluster(0, [{"num_cpus": 4, "num_gpus": 1}])
    raw = tiny_study("gpu-packing", seeds=list(range(4)), train={"epochs": 3, "device": "cpu"},
                     resources={"cpu": 1, "gpu": 0.25})
    uri, _ = run(raw, workdir, cluster.address)
    runs = trial_runs(uri, "gpu-packing")
    spans = [(r.info.start_time, r.info.end_time) for r in runs]
    overlap = max(sum(1 for s, e in spans if s <= t < e) for t, _ in spans)
    return {"trials": len(runs), "max_concurrent": overlap}


if __name__ == "__main__":
    scenario, folder = sys.argv[1], Path(sys.argv[2])
    result = {"multi_node": multi_node, "node_failure": node_failure,
              "gpu_packing": gpu_packing}[scenario](folder)
    print("RESULT " + json.dumps(result, default=str), flush=True)
    ray.shutdown()
