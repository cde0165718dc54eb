"""The CPU-sized shipped studies run end to end with --smoke (real Ray, Optuna, MLflow)."""

from __future__ import annotations

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from conftest import REPO, mlflow_runs
from featloss.hpo import RunOptions, run_study
from featloss.study import expand, load_study

pytestmark = pytest.mark.slow
CPU_STUDIES = ["quickstart", "feature_dim_sweep_mnist5k", "dropout_study_mnist5k",
               "first_k_classes", "fuzzy_rgb_2d"]


@pytest.mark.parametrize("name", CPU_STUDIES)
def test_cpu_study_runs_with_smoke(ray_session, tracking_uri, tmp_path, name):
    study = load_study(REPO / "studies" / f"{name}.yaml")
    assert study.description  # names the paper table or figure
    plan = expand(study, smoke=True)
    outcome = run_study(plan, RunOptions(tracking_uri=tracking_uri, storage=str(tmp_path)))
    parents, trials = mlflow_runs(tracking_uri, study.name)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(trials) == plan.total_trials
    assert all(r.data.tags["status"] == "completed" for r in trials)
    assert outcome.summary_markdown.count("\n") >= 2
    if name == "fuzzy_rgb_2d":  # 2-D features are kept for the report's scatter plot
        client = MlflowClient(tracking_uri=tracking_uri)
        path = client.download_artifacts(trials[0].info.run_id, "features.npz", str(tmp_path))
        saved = np.load(path)
        assert saved["features"].shape[1] == 2 and len(saved["labels"]) == len(saved["features"])
        assert saved["class_vectors"].shape in ((3, 2), (0, 2))
