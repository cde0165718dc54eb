"""The CPU-sized shipped studies run end to end with --smoke (real Ray, Optuna, MLflow)."""

from __future__ import annotations

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from conftest import REPO, mlflow_runs, run_inline
from featloss.study import load_study
from featloss.yamlio import load_yaml

pytestmark = pytest.mark.slow
# The claim studies (the sweep, the dropout study, ...) run with --smoke in test_claims.py.
CPU_STUDIES = ["quickstart", "first_k_classes", "fuzzy_rgb_2d", "pod_lambda_ablation_mnist5k"]


@pytest.mark.parametrize("name", CPU_STUDIES)
def test_cpu_study_runs_with_smoke(ray_session, tracking_uri, tmp_path, name):
    path = REPO / "studies" / f"{name}.yaml"
    study = load_study(path)
    assert study.description  # names the paper table or figure
    plan, record, outcome = run_inline(load_yaml(path.read_text()), tracking_uri, tmp_path,
                                       smoke=True)
    parents, trials = mlflow_runs(tracking_uri, study.name)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(trials) == plan.total_trials == len(record.trials)
    assert all(r.data.tags["status"] == "completed" for r in trials)
    assert all(t.status == "completed" for t in record.trials.values())
    if name == "fuzzy_rgb_2d":  # 2-D features are kept for the report's scatter plot
        client = MlflowClient(tracking_uri=tracking_uri)
        path = client.download_artifacts(trials[0].info.run_id, "features.npz", str(tmp_path))
        saved = np.load(path)
        assert saved["features"].shape[1] == 2 and len(saved["labels"]) == len(saved["features"])
        assert saved["class_vectors"].shape in ((3, 2), (0, 2))
