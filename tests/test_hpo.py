"""Studies on real Ray Tune, real Optuna and a real MLflow SQLite file."""

from __future__ import annotations

import csv
import io

import pytest
from mlflow.tracking import MlflowClient

from conftest import mlflow_runs, run_inline, tiny_study

pytestmark = pytest.mark.slow


def run(raw: dict, uri: str, tmp_path, smoke: bool = False):
    plan, record, outcome = run_inline(raw, uri, tmp_path / "results", smoke=smoke)
    return plan, record, outcome


def test_grid_study_yields_exactly_the_mlflow_layout(ray_session, tracking_uri, tmp_path):
    raw = tiny_study("layout", losses=["softmax", "center"],
                     grid={"model.feature_dim": [8, 16]}, seeds=[0, 1])
    plan, record, outcome = run(raw, tracking_uri, tmp_path)
    parents, trials = mlflow_runs(tracking_uri, "layout")
    client = MlflowClient(tracking_uri=tracking_uri)
    experiment = client.get_experiment_by_name("layout")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"

    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    parent = parents[0]
    assert parent.info.run_id == outcome.parent_run_id == record.parent_run_id
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"study.yaml", "plan.json", "versions.json", "summary.md", "summary.csv",
            "summary.parquet", "featloss_state.json"} <= artifacts
    assert parent.data.tags["git_commit"] and parent.data.tags["version.ray"]
    assert parent.data.params["study.mode"] == "grid"
    assert parent.data.metrics["result/center/feature_dim_8/test_accuracy_n"] == 2

    assert len(trials) == len(plan.grid_trials) == 8
    assert {r.data.tags["featloss.trial_key"] for r in trials} == {t.key for t in plan.grid_trials}
    for r in trials:
        tags, params = r.data.tags, r.data.params
        assert r.info.status == "FINISHED"
        assert tags["mlflow.parentRunId"] == parent.info.run_id
        assert tags["phase"] == "grid" and tags["status"] == "completed"
        assert tags["seed"] in ("0", "1") and tags["node_id"] and tags["hostname"]
        assert tags["study"] == "layout" and tags["dataset"] == "digits"
        assert tags["smoke"] == "false"
        assert tags["loss"] == params["loss"] and tags["feature_dim"] == params["model.feature_dim"]
        assert params["data.dataset"] == "digits" and params["train.epochs"] == "2"
        assert "None" not in params.values() and "train.device" not in params
        if params["loss"] == "center":
            assert params["loss.lam"] == "0.01"  # defaults are logged too
        history = client.get_metric_history(r.info.run_id, "val/accuracy")
        assert sorted(m.step for m in history) == [1, 2]
        assert "test/accuracy" in r.data.metrics and "feat/intra_class_std" in r.data.metrics
        assert not {"training_iteration", "time_total_s", "timestamp"} & set(r.data.metrics)
        (dataset,) = r.inputs.dataset_inputs
        assert dataset.dataset.name == "digits" and '"train": ' in dataset.dataset.profile

    summary = client.download_artifacts(parent.info.run_id, "summary.csv", str(tmp_path))
    rows = list(csv.DictReader(io.StringIO(open(summary).read())))
    assert len(rows) == 4 and {r["n"] for r in rows} == {"2"}
    assert {(r["loss"], r["model.feature_dim"]) for r in rows} == {
        ("softmax", "8"), ("softmax", "16"), ("center", "8"), ("center", "16")}
    assert all(record.trials[t.key].status == "completed" for t in plan.grid_trials)
    assert record.status == "finished" and record.phases_done == ["grid"]


def test_search_then_final_phase(ray_session, tracking_uri, tmp_path):
    raw = tiny_study("search", losses=["softmax", "pod"], seeds=[0, 1], search={
        "trials_per_loss": 3, "sampler": "tpe", "scheduler": "asha",
        "space": {"pod": {"model.feature_dim": None}}})
    plan, record, outcome = run(raw, tracking_uri, tmp_path)
    parents, trials = mlflow_runs(tracking_uri, "search")
    search = [r for r in trials if r.data.tags["phase"] == "search"]
    final = [r for r in trials if r.data.tags["phase"] == "final"]
    assert len(search) == 1 + 3  # softmax has nothing to search: one trial
    assert len(final) == 2 * 2
    assert all("test/accuracy" not in r.data.metrics for r in search)  # selection never sees test
    assert all("test/accuracy" in r.data.metrics for r in final)
    pod_search = [r for r in search if r.data.tags["loss"] == "pod"]
    best = max(pod_search, key=lambda r: r.data.metrics["val/accuracy"])
    for r in (r for r in final if r.data.tags["loss"] == "pod"):
        assert r.data.params["loss.lam"] == best.data.params["loss.lam"]
    # the first pod trial evaluates the config's own value (lam = 1.0)
    assert record.trials["search-pod-001"].params == {"loss.lam": 1.0}
    client = MlflowClient(tracking_uri=tracking_uri)
    artifacts = {a.path for a in client.list_artifacts(parents[0].info.run_id, "optuna")}
    assert artifacts == {"optuna/pod_trials.csv"}  # importance needs >= 10 finished trials
    assert outcome.optuna_journal and outcome.optuna_journal.endswith("optuna.journal")


def test_a_diverging_trial_is_marked_and_the_study_completes(ray_session, tracking_uri,
                                                            tmp_path):
    raw = tiny_study("diverge", grid={"train.lr": [0.05, 1.0e5]},
                     train={"divergence_check_every": 1})
    _, record, _ = run(raw, tracking_uri, tmp_path)
    parents, trials = mlflow_runs(tracking_uri, "diverge")
    assert parents[0].info.status == "FINISHED"
    status = {r.data.params["train.lr"]: (r.data.tags["status"], r.info.status) for r in trials}
    assert status == {"0.05": ("completed", "FINISHED"), "100000.0": ("diverged", "FAILED")}
    assert sorted(t.status for t in record.trials.values()) == ["completed", "diverged"]
