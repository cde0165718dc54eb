"""MLflow, wrapped: the only package that imports mlflow.

- `client`: the tracking URI, the fast store check, one client whose calls retry (bounded);
- `runs`: the write side, `ParentRun` (the study's front page) and `TrialRuns` (one per trial);
- `read`: the read side, for reports.
"""

from featloss.tracking.client import (
    TrackingClient,
    TrackingUnavailable,
    check_store,
    default_tracking_uri,
    normalise_uri,
    retry_seconds,
)
from featloss.tracking.runs import (
    PARENT_TAG,
    ROLE_TAG,
    TRIAL_KEY_TAG,
    ParentRun,
    TrialRuns,
    metric_name,
    open_experiment,
)

__all__ = [
    "PARENT_TAG",
    "ROLE_TAG",
    "TRIAL_KEY_TAG",
    "ParentRun",
    "TrackingClient",
    "TrackingUnavailable",
    "TrialRuns",
    "check_store",
    "default_tracking_uri",
    "metric_name",
    "normalise_uri",
    "open_experiment",
    "retry_seconds",
]
