"""The read side: a study's parent runs and their artifacts, for `featloss report`."""

from __future__ import annotations

from pathlib import Path

from featloss.errors import ConfigError
from featloss.tracking.client import TrackingClient
from featloss.tracking.runs import ROLE_TAG


def parent_runs(client: TrackingClient, study_name: str) -> list[dict]:
    """Every invocation of a study as {run_id, status, start_time, tags}, newest first.

    Raises ConfigError when the store has no such study.
    """
    from mlflow.entities import ViewType

    mlflow = client.mlflow
    experiment = client.call(lambda: mlflow.get_experiment_by_name(study_name),
                             "finding the study")
    if experiment is None or experiment.lifecycle_stage == "deleted":
        raise ConfigError(f"no MLflow experiment named '{study_name}' at {client.uri}; run the "
                          f"study first or pass the right --tracking-uri")
    runs, token = [], None
    while True:
        page = client.call(lambda t=token: mlflow.search_runs(
            [experiment.experiment_id], f"tags.`{ROLE_TAG}` = 'parent'",
            run_view_type=ViewType.ACTIVE_ONLY, max_results=1000, page_token=t), "listing runs")
        runs += [{"run_id": r.info.run_id, "status": r.info.status,
                  "start_time": r.info.start_time or 0, "tags": dict(r.data.tags)} for r in page]
        token = page.token
        if not token:
            break
    return sorted(runs, key=lambda r: r["start_time"], reverse=True)


def fetch_artifact(client: TrackingClient, run_id: str, path: str, folder: str) -> Path | None:
    """Download one artifact of a run into `folder`; None when the run has no such artifact.

    Listed first: MLflow's download raises a generic error for a missing path.
    """
    parent = path.rsplit("/", 1)[0] if "/" in path else None
    present = {a.path for a in client.call(lambda: client.mlflow.list_artifacts(run_id, parent),
                                           "listing artifacts")}
    if path not in present:
        return None
    local = client.call(lambda: client.mlflow.download_artifacts(run_id, path, folder),
                        f"reading {path}")
    return Path(local) if local and Path(local).is_file() else None
