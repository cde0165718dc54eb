"""Checks every command runs before any work: environment, study devices, stores, data.

Each raises ConfigError (one line, exit code 2) for bad input; the data checks load the data of
every distinct trial configuration once (`featloss.data.check_data`).
"""

from __future__ import annotations

import os
import random
import stat
import time
from pathlib import Path

from featloss.errors import ConfigError

DEFAULT_STORAGE = "featloss_results"


def check_environment() -> None:
    """The environment variables featloss reads, parsed before any work (ConfigError)."""
    from featloss.engine.progress import progress_seconds
    from featloss.tracking import retry_seconds

    retry_seconds()
    progress_seconds()


def tracking_uri(given: str | None) -> str:
    from featloss.tracking import default_tracking_uri, normalise_uri

    return normalise_uri(given or default_tracking_uri())


def storage_uri(given: str | None) -> str:
    store = given or os.environ.get("FEATLOSS_STORAGE") or DEFAULT_STORAGE
    return store if "://" in store else str(Path(store).expanduser().resolve())


def check_storage(uri: str, given: str | None = None) -> None:
    """A local results folder must be creatable and writable: checked by creating what is
    missing of it and a probe file there, then removing exactly those (nothing is left).
    Object stores (s3://) are checked when the record is written. Raises ConfigError."""
    from featloss.storage import is_remote

    if is_remote(uri):
        return
    folder = Path(uri.removeprefix("file://")).expanduser()
    shown = given or uri

    def refuse(problem: str) -> ConfigError:
        return ConfigError(f"--storage {shown}: cannot create {folder} ({problem}); pass a "
                           f"writable folder")

    # Featloss processes started together on one new folder each create and remove the
    # missing folders, so each may see the others' folders vanish between its steps
    # (FileNotFoundError). Another try after a short random pause settles it; the pause
    # breaks the lockstep of processes started at the same instant.
    for attempt in range(_PROBE_TRIES):
        try:
            _probe_folder(folder, refuse)
            return
        except FileNotFoundError as exc:
            if attempt == _PROBE_TRIES - 1:
                raise refuse(exc.strerror or str(exc)) from None
            time.sleep(random.uniform(0.005, 0.05))


_PROBE_TRIES = 40


def _probe_folder(folder: Path, refuse) -> None:
    """One try of `check_storage`. Raises FileNotFoundError on a race, ConfigError
    (`refuse`) for anything else. Removes only the folders this try created, and only while
    they are empty (another process may be using them)."""
    missing = []
    node = folder
    while True:  # one stat per node: what it says holds, whatever others do after
        try:
            mode = node.stat().st_mode
            break
        except FileNotFoundError:
            if node.is_symlink():
                raise refuse(f"{node} is a broken symbolic link") from None
            missing.append(node)
            node = node.parent
        except OSError as exc:
            raise refuse(exc.strerror or str(exc)) from None
    if not stat.S_ISDIR(mode):
        raise refuse(f"{node} is a file, not a folder")
    created = []
    try:
        for path in reversed(missing):
            try:
                path.mkdir()
                created.append(path)
            except FileExistsError:
                if not path.is_dir():  # a file, or another process's folder already gone
                    if path.exists() or path.is_symlink():
                        raise refuse(f"{path} is a file, not a folder") from None
                    raise FileNotFoundError(2, "removed while checked", str(path)) from None
        probe = folder / f".featloss-probe-{os.getpid()}-{random.getrandbits(32):08x}"
        probe.write_bytes(b"")
        probe.unlink()
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise refuse(exc.strerror or str(exc)) from None
    finally:
        for path in reversed(created):
            try:
                path.rmdir()
            except OSError:  # not empty: another process is using it
                pass


def check_devices(plan, local: bool, strict: bool) -> None:
    """train.device cuda needs GPUs in `resources` (Ray gives a trial only what it asks for);
    a local run needs resources this machine has. Raises ConfigError."""
    study = plan.study
    configs = plan.distinct_configs()
    if any(c.train.device.startswith("cuda") for c in configs) and study.resources.gpu <= 0:
        raise ConfigError(f"{study.source}: train.device=cuda but resources.gpu is 0, so Ray "
                          f"gives the trials no GPU; set resources.gpu (e.g. 1 or 0.25) or "
                          f"train.device: auto")
    if local and strict:
        from featloss.engine.ray_setup import check_local_resources

        check_local_resources(study.resources.model_dump())


def check_plan_data(plan, strict: bool) -> str | None:
    """Load and check the data of every distinct trial config (`featloss.data.check_data`).

    strict (a local run): a problem raises DataError/ConfigError before anything starts.
    Otherwise (validate, where a staged dataset may live on the cluster only) the first problem
    of a staged dataset is returned as a note line; an embedded dataset is the same data
    wherever the trials run, so its problems raise there too. Values a search varies are
    checked in the trials.
    """
    from featloss.data import check_data, dataset_info
    from featloss.losses import loss_info

    seen = set()
    for config in plan.distinct_configs():
        need = loss_info(config.loss.name).cls.min_samples_per_class(**config.loss.hparams)
        key = (config.data.model_dump_json(), config.train.batch_size, need,
               config.loss.name if need else "")
        if key in seen:  # the same data asked the same of: checked already
            continue
        seen.add(key)
        try:
            check_data(config)
        except ConfigError as exc:
            if strict or dataset_info(config.data.dataset).embedded:
                raise
            return (f"note: dataset '{config.data.dataset}' as found on this machine cannot "
                    f"serve the trials (the cluster's copy is not checked): {exc}")
    return None


def plan_warnings(plan) -> list[str]:
    """Each loss's warnings about its planned run (`featloss.train.loss_warnings`, e.g. an
    L-Softmax whose lambda never falls in the run), once per distinct text; configs that
    differ only in what the warnings do not read (the learning rate, say) are asked once.
    Also a `data.root` given for an embedded dataset, which reads no files."""
    from featloss.data import dataset_info
    from featloss.plan import validation_key
    from featloss.train import loss_warnings

    seen: dict[str, None] = {}
    asked: set[str] = set()
    for config in plan.distinct_configs():
        data = config.data
        if data.root is not None and dataset_info(data.dataset).embedded:
            seen.setdefault(f"data.root is ignored: dataset '{data.dataset}' is embedded (it "
                            f"reads no files), so trials that differ only in data.root train "
                            f"on the same data", None)
        key = f"{validation_key(config)}|{config.train.epochs}"
        if key in asked:
            continue
        asked.add(key)
        for line in loss_warnings(config):
            seen.setdefault(line, None)
    return list(seen)
