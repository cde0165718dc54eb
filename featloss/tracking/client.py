"""The MLflow client, wrapped: URIs, the fast store check, and bounded retries.

Every MLflow call of featloss goes through `TrackingClient.call`, which retries a *transient*
failure (a server that does not answer, HTTP 502/503/504, SQLite busy), recognised by exception
type and MLflow error code, never by message text, for at most `retry_seconds()` in total
(``FEATLOSS_MLFLOW_RETRY_SECONDS``, default 120), printing one line per retry. MLflow's own
per-request HTTP retries are turned down so that this bound is the whole wait. Past it,
`TrackingUnavailable` stops the study cleanly; ``featloss resume`` then completes it.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Callable

from featloss.errors import ConfigError, quote

DEFAULT_RETRY_SECONDS = 120.0
HEALTH_TIMEOUT = 5.0
HTTP_TIMEOUT_S = 15  # one HTTP attempt at most
SCHEMES = ("sqlite", "http", "https", "postgresql", "mysql", "mssql")



class TrackingUnavailable(RuntimeError):
    """The tracking store stayed unreachable for the whole retry budget."""


def retry_seconds() -> float:
    """``FEATLOSS_MLFLOW_RETRY_SECONDS`` as seconds. Raises ConfigError when it is not >= 0."""
    text = os.environ.get("FEATLOSS_MLFLOW_RETRY_SECONDS", str(DEFAULT_RETRY_SECONDS))
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise ConfigError(f"FEATLOSS_MLFLOW_RETRY_SECONDS={quote(text)} must be a number of "
                          f"seconds >= 0, e.g. 120")
    return value


def default_tracking_uri() -> str:
    """$MLFLOW_TRACKING_URI, else an absolute SQLite file in the working directory."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd().resolve()}/mlflow.db"


def normalise_uri(uri: str) -> str:
    """Make SQLite paths absolute: trial processes change directory."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return f"sqlite:///{Path(uri[len('sqlite:///'):]).resolve()}"
    return uri


def sqlite_path(uri: str) -> Path | None:
    return Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None


def check_store(uri: str) -> None:
    """Fail fast, before any trial starts, on a tracking URI that cannot work.

    SQLite: the folder must be writable and an existing file a SQLite database; a new file is
    created (schema migrations) under a file lock, so two studies started together on one new
    file both work. HTTP(S): the server's /health must answer within seconds. Databases: the
    store is opened once. Raises ConfigError (one line) otherwise.
    """
    scheme = urllib.parse.urlsplit(uri).scheme
    if "://" not in uri or scheme not in SCHEMES:
        raise ConfigError(f"--tracking-uri {quote(uri)}: unsupported; use "
                          f"sqlite:////abs/path/mlflow.db or http://127.0.0.1:5000 (MLflow 3 "
                          f"has no file store)")
    if scheme == "sqlite":
        _check_sqlite(uri)
    elif scheme in ("http", "https"):
        _check_http(uri)
    else:
        _open_store(uri)


def _check_sqlite(uri: str) -> None:
    path = sqlite_path(uri)
    if path is None or not path.is_absolute():
        raise ConfigError(f"--tracking-uri {quote(uri)}: use an absolute SQLite path, "
                          f"sqlite:////abs/path/mlflow.db")
    folder = path.parent
    if path.is_dir():
        raise ConfigError(f"--tracking-uri {uri}: {path} is a directory; name a database file "
                          f"in it, e.g. sqlite:///{path}/mlflow.db")
    if not folder.is_dir() or not os.access(folder, os.W_OK):
        raise ConfigError(f"--tracking-uri {uri}: folder {folder} does not exist or is not "
                          f"writable")
    if path.exists() and path.stat().st_size:
        try:
            with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10) as db:
                db.execute("PRAGMA schema_version").fetchone()
        except sqlite3.DatabaseError as exc:
            raise ConfigError(f"--tracking-uri {uri}: {path} is not a SQLite database ({exc}); "
                              f"point to an MLflow database or a new file") from None
    _open_store(uri)


def _open_store(uri: str) -> None:
    """Create or open the store once (migrations included), serialised by a file lock."""
    from filelock import FileLock, Timeout

    path = sqlite_path(uri)
    lock = FileLock(f"{path}.lock", timeout=300) if path else None
    try:
        if lock:
            lock.acquire()
        client = mlflow_client(uri)
        client.search_experiments(max_results=1)
    except Timeout:
        raise ConfigError(f"--tracking-uri {uri}: another process holds {path}.lock for over "
                          f"5 minutes") from None
    except ImportError as exc:
        raise ConfigError(f"--tracking-uri {uri}: the database driver is not installed "
                          f"({exc.name}); install it or use sqlite/http") from None
    except Exception as exc:  # noqa: BLE001 - any failure to open the store is bad input here
        raise ConfigError(f"--tracking-uri {uri}: cannot open the MLflow store "
                          f"({_reason(exc)})") from None
    finally:
        if lock and lock.is_locked:
            lock.release()


def _check_http(uri: str) -> None:
    try:
        parts = urllib.parse.urlsplit(uri)
        parts.port  # noqa: B018 - raises ValueError for a non-numeric port
        if not parts.hostname:
            raise ValueError("no host")
    except ValueError as exc:
        raise ConfigError(f"--tracking-uri {quote(uri)}: not a valid URL ({exc})") from None
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=HEALTH_TIMEOUT) as resp:
            if resp.status != 200:
                raise OSError(f"HTTP {resp.status}")
    except (OSError, urllib.error.URLError, ValueError) as exc:
        raise ConfigError(f"--tracking-uri {uri} is unreachable ({_reason(exc)}); start the "
                          f"MLflow server (mlflow server --host 127.0.0.1 ...) or fix the "
                          f"URI") from None


def _reason(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None) or exc
    text = str(reason).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]


def mlflow_client(uri: str):
    """An MlflowClient making one bounded HTTP attempt per call (featloss's loop retries)."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(HTTP_TIMEOUT_S))
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    for name in ("mlflow.store.db.utils", "alembic"):  # "Creating initial tables...": noise
        logging.getLogger(name).setLevel(logging.WARNING)
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=normalise_uri(uri))


def is_transient(exc: BaseException) -> bool:
    """A failure a retry can fix: recognised by type and error code along the cause chain."""
    import requests
    from mlflow.exceptions import MlflowException

    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, (requests.exceptions.ConnectionError, requests.exceptions.Timeout,
                            ConnectionError, TimeoutError)):
            return True
        if isinstance(exc, sqlite3.OperationalError) and getattr(
                exc, "sqlite_errorcode", None) in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
            return True
        if isinstance(exc, MlflowException):
            if exc.error_code == "TEMPORARILY_UNAVAILABLE":
                return True
            if exc.get_http_status_code() in (502, 503, 504):
                return True
        exc = exc.__cause__ or exc.__context__
    return False


class TrackingClient:
    """An MlflowClient whose every call goes through `call` (bounded retries)."""

    def __init__(self, uri: str) -> None:
        self.uri = normalise_uri(uri)
        self.budget = retry_seconds()
        self.mlflow = mlflow_client(self.uri)

    def call(self, fn: Callable[[], Any], what: str) -> Any:
        """Run `fn`; retry transient failures for at most `budget` seconds in all.

        Raises TrackingUnavailable past the budget; any other error propagates at once.
        """
        deadline = time.monotonic() + self.budget
        delay = 0.5
        while True:
            # each HTTP attempt may take at most what is left of the budget (a server that
            # accepts but never answers must not stretch the wait past it)
            left = max(1, min(HTTP_TIMEOUT_S, int(deadline - time.monotonic()) + 1))
            os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(left)
            try:
                return fn()
            except Exception as exc:  # noqa: BLE001 - filtered by is_transient
                if not is_transient(exc):
                    raise
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TrackingUnavailable(f"MLflow unreachable for {self.budget:.0f} s while "
                                              f"{what} ({_reason(exc)})") from exc
                print(f"featloss: MLflow unavailable while {what} ({_reason(exc)}); retrying "
                      f"for up to {left:.0f} s", file=sys.stderr, flush=True)
                time.sleep(min(delay, left))
                delay = min(delay * 2, 10.0)

    def experiment(self, name: str, artifact_folder: str) -> str:
        """The id of experiment `name`, created (artifacts beside a SQLite store) if missing."""
        from featloss.names import safe_name

        def get_or_create() -> str:
            found = self.mlflow.get_experiment_by_name(name)
            if found is not None:
                if found.lifecycle_stage == "deleted":
                    self.mlflow.restore_experiment(found.experiment_id)
                return found.experiment_id
            location = None
            db = sqlite_path(self.uri)
            if db is not None:  # keep artifacts beside the database, never under the cwd
                location = str(db.parent / artifact_folder / safe_name(name))
            try:
                return self.mlflow.create_experiment(name, artifact_location=location)
            except MlflowException as exc:  # another study created it a moment ago
                if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
                return self.mlflow.get_experiment_by_name(name).experiment_id

        from mlflow.exceptions import MlflowException

        return self.call(get_or_create, "opening the experiment")
