"""The parent run as the study's front page, read back from a real `mlflow server` on 127.0.0.1."""

from __future__ import annotations

import subprocess
import sys

import pytest
from mlflow.tracking import MlflowClient

from conftest import tiny_study
from featloss.yamlio import dump_yaml
from test_cluster import env, free_port, healthy, start_mlflow_server, stop, wait_for

pytestmark = pytest.mark.slow


def test_parent_run_front_page_and_children_over_a_real_server(tmp_path, mlflow_template):
    import shutil

    shutil.copy(mlflow_template, tmp_path / "server.db")
    port = free_port()
    server = start_mlflow_server(tmp_path / "server.db", tmp_path / "artifacts", port)
    try:
        wait_for(lambda: healthy(port), 60, "the MLflow server")
        raw = tiny_study("front-page", losses=["softmax", "pod"], seeds=[0, 1],
                         description="POD vs softmax at d = 2, a test of the front page",
                         model={"feature_dim": 2}, data={"max_train_samples": 256,
                                                         "max_eval_samples": 128},
                         search={"trials_per_loss": 2, "common": ["train.lr"]})
        raw["model"]["feature_dim"] = 2
        raw["per_loss"] = {"pod": {"loss": {"centroids": "repulsion"}}}
        study = tmp_path / "study.yaml"
        study.write_text(dump_yaml(raw))
        uri = f"http://127.0.0.1:{port}"
        proc = subprocess.run([sys.executable, "-m", "featloss", "run", str(study), "--smoke",
                               "--set", "train.epochs=2", "--tracking-uri", uri, "--storage",
                               str(tmp_path / "results")], capture_output=True, text=True,
                              env=env(), cwd=tmp_path, timeout=900)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        client = MlflowClient(tracking_uri=uri)
        experiment = client.get_experiment_by_name("front-page")
        assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
        assert experiment.tags["mlflow.note.content"] == raw["description"]
        runs = client.search_runs([experiment.experiment_id], "")
        (parent,) = [r for r in runs if r.data.tags["featloss.role"] == "parent"]
        children = [r for r in runs if r.data.tags["featloss.role"] == "trial"]
        # the printed address opens the parent run
        assert (f"{uri}/#/experiments/{experiment.experiment_id}/runs/{parent.info.run_id}"
                f"?workflowType=machine_learning") in proc.stdout
        # parent: description, plan params, per-loss results as metrics
        assert raw["description"] in parent.data.tags["mlflow.note.content"]
        assert parent.data.tags["smoke"] == "true" and parent.info.run_name.endswith("(smoke)")
        assert parent.data.params["study.mode"] == "search"
        assert parent.data.params["overrides"] == '{"train.epochs": 2}'
        assert parent.data.params["data.dataset"] == "digits"
        for loss in ("softmax", "pod"):
            assert 0 <= parent.data.metrics[f"result/{loss}/test_accuracy_mean"] <= 1
            assert parent.data.metrics[f"result/{loss}/test_accuracy_n"] == 1  # smoke: 1 seed
        artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
        assert "report/report.md" in artifacts and "report/features_2d.png" in artifacts
        assert any(p.endswith(".png") for p in artifacts - {"report/features_2d.png"})
        report = client.download_artifacts(parent.info.run_id, "report/report.md",
                                           str(tmp_path))
        text = open(report).read()
        assert "SMOKE RUN" in text.splitlines()[0] and "![features_2d](features_2d.png)" in text
        # children: the invocation, smoke flag, no None params, infrastructure settings dropped
        assert len(children) == 2 * 2 + 2  # smoke: 2 search trials per loss, 1 final seed
        for child in children:
            tags, params = child.data.tags, child.data.params
            assert tags["mlflow.parentRunId"] == parent.info.run_id
            assert tags["smoke"] == "true" and tags["status"] == "completed"
            assert "None" not in params.values()
            assert "train.device" not in params and "train.eval_batch_size" not in params
            assert params["train.epochs"] == "1"  # smoke wins over --set train.epochs=2
            (dataset,) = child.inputs.dataset_inputs
            assert dataset.dataset.name == "digits" and '"val":' in dataset.dataset.profile
        assert "optuna-dashboard" in proc.stdout
    finally:
        stop(server)
