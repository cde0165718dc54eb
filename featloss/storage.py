"""Results storage: a local or shared folder, or an ``s3://`` URI (through pyarrow.fs).

A study invocation owns one results folder ``<storage>/<study>-<timestamp>/`` holding:

- ``featloss_state.json``   the study's own state (phases done, selected configs, MLflow parent run)
- ``checkpoints/<trial>.pt`` each trial's latest training state, rewritten atomically every epoch
- ``<phase>/``               Ray Tune's experiment folders (grid | search | final)

The per-trial checkpoint is the source of truth for resuming: whatever Tune's last experiment
snapshot says, a restarted trial continues from its newest finished epoch.
"""

from __future__ import annotations

import io
import json
import os
import time
from pathlib import Path
from typing import Any

import torch

from featloss.errors import ConfigError

STATE_FILE = "featloss_state.json"


def _fs(uri: str):
    import pyarrow.fs as pafs

    if "://" in uri:
        fs, path = pafs.FileSystem.from_uri(uri)
        return fs, path
    return pafs.LocalFileSystem(), str(Path(uri).expanduser().resolve())


def is_remote(uri: str) -> bool:
    return "://" in uri and not uri.startswith("file://")


def join(base: str, *parts: str) -> str:
    if is_remote(base):
        return "/".join([base.rstrip("/"), *parts])
    return str(Path(base).expanduser().resolve().joinpath(*parts))


def exists(uri: str) -> bool:
    import pyarrow.fs as pafs

    fs, path = _fs(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def write_bytes(uri: str, data: bytes) -> None:
    """Atomic on local/shared folders (write, then rename); object stores put whole objects."""
    if not is_remote(uri):
        target = Path(uri)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
        return
    fs, path = _fs(uri)
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(path) as out:
        out.write(data)


def read_bytes(uri: str) -> bytes:
    fs, path = _fs(uri)
    with fs.open_input_stream(path) as stream:
        return stream.read()


def write_json(uri: str, data: dict) -> None:
    write_bytes(uri, json.dumps(data, indent=1, sort_keys=True, default=str).encode())


def read_json(uri: str) -> dict:
    return json.loads(read_bytes(uri).decode())


def save_trial_state(uri: str, state: dict) -> None:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    write_bytes(uri, buffer.getvalue())


def load_trial_state(uri: str) -> dict | None:
    """The saved training state, or None when there is none (or it is unreadable)."""
    try:
        data = read_bytes(uri)
    except (FileNotFoundError, OSError):
        return None
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception:  # a torn write on a store without atomic rename: start that trial over
        return None


def new_results_dir(storage: str, study_name: str) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    candidate = join(storage, f"{study_name}-{stamp}")
    suffix = 1
    while exists(candidate):
        candidate = join(storage, f"{study_name}-{stamp}-{suffix}")
        suffix += 1
    return candidate


def find_results_dir(storage: str, study_name: str) -> str:
    """The newest unfinished results folder of `study_name` under `storage`."""
    import pyarrow.fs as pafs

    fs, path = _fs(storage)
    try:
        infos = fs.get_file_info(pafs.FileSelector(path, recursive=False))
    except (FileNotFoundError, OSError):
        infos = []
    candidates = sorted((i.base_name for i in infos if i.type == pafs.FileType.Directory
                         and i.base_name.startswith(f"{study_name}-")), reverse=True)
    for name in candidates:
        state_uri = join(storage, name, STATE_FILE)
        if exists(state_uri) and read_json(state_uri).get("status") != "finished":
            return join(storage, name)
    raise ConfigError(f"no unfinished results of study '{study_name}' under {storage}; pass the "
                      f"results folder (featloss resume RESULTS_DIR) or --storage")


def read_state(results_dir: str) -> dict[str, Any]:
    uri = join(results_dir, STATE_FILE)
    if not exists(uri):
        raise ConfigError(f"{results_dir} is not a featloss results folder (no {STATE_FILE})")
    return read_json(uri)
