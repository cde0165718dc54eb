"""Results storage: a local or shared folder, or an ``s3://`` URI (through pyarrow.fs).

A study invocation owns one results folder ``<storage>/<safe study name>-<timestamp>/`` holding:

- ``featloss_state.json``    the study's record (`featloss.record`)
- ``checkpoints/<trial>.pt`` each trial's latest training state, rewritten atomically every epoch
- ``errors/<trial>.txt``     the traceback of a trial that failed
- ``tune/<phase>-<n>/``      Ray Tune's experiment folders, one per phase and invocation

The per-trial checkpoint is the source of truth for a trial's training state: a restarted trial
continues from its newest finished epoch.
"""

from __future__ import annotations

import io
import json
import os
import stat
import time
from pathlib import Path

from featloss.names import safe_name


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


def discard(folder: str, names: tuple[str, ...]) -> None:
    """Remove the files `names` from `folder`, then the folder when nothing else is in it
    (object stores have no folders). Missing files are skipped; OSError propagates."""
    fs, path = _fs(folder)
    for name in names:
        try:
            fs.delete_file(f"{path}/{name}")
        except FileNotFoundError:
            pass
    if not is_remote(folder):
        try:
            Path(path).rmdir()
        except OSError:  # not empty: something else is there, keep it
            pass


def file_kind(uri: str) -> tuple[str | None, int | None]:
    """(what `uri` is, its size in bytes): "a file", "a directory", "a FIFO", ... or (None,
    None) when nothing is there. Local paths follow links (what a read would get)."""
    if is_remote(uri):
        import pyarrow.fs as pafs

        fs, path = _fs(uri)
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.NotFound:
            return None, None
        return ("a file" if info.type == pafs.FileType.File else "not a file"), info.size
    try:
        mode = os.stat(uri)
    except (FileNotFoundError, NotADirectoryError):
        return None, None
    kinds = ((stat.S_ISREG, "a file"), (stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"),
             (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
             (stat.S_ISSOCK, "a socket"))
    return next((name for check, name in kinds if check(mode.st_mode)), "not a file"), \
        mode.st_size


def read_bytes(uri: str) -> bytes:
    fs, path = _fs(uri)
    with fs.open_input_stream(path) as stream:
        return stream.read()


def write_json(uri: str, data: dict) -> None:
    write_bytes(uri, json.dumps(data, indent=1, sort_keys=True, default=str).encode())


def read_json(uri: str) -> dict:
    return json.loads(read_bytes(uri).decode())


def save_trial_state(uri: str, state: dict) -> None:
    import torch  # here, not at the top: what reads only records starts without torch (~1.2 s)

    buffer = io.BytesIO()
    torch.save(state, buffer)
    write_bytes(uri, buffer.getvalue())


def load_trial_state(uri: str) -> dict | None:
    """The saved training state, or None when there is none or it is unreadable."""
    return read_trial_state(uri)[0]


def read_trial_state(uri: str) -> tuple[dict | None, str | None]:
    """(state, None), (None, None) when there is no file, or (None, why it is unreadable).

    Loaded with ``weights_only=True``: a file carrying pickled code is refused, never run.
    """
    import torch

    try:
        data = read_bytes(uri)
    except (FileNotFoundError, OSError):
        return None, None
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torn write, text, a pickle of code...
        first = str(exc).strip().split(". ")[0].splitlines()[0][:160] if str(exc).strip() else ""
        return None, f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    if not isinstance(state, dict):
        return None, f"holds a {type(state).__name__}, not a mapping of tensors"
    return state, None


def new_results_dir(storage: str, study_name: str) -> str:
    """A new ``<storage>/<safe study name>-<timestamp>[-n]`` folder name (not created)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = safe_name(study_name, max_len=80)
    candidate = join(storage, f"{base}-{stamp}")
    suffix = 1
    while exists(candidate):
        candidate = join(storage, f"{base}-{stamp}-{suffix}")
        suffix += 1
    return candidate


def list_dirs(uri: str) -> list[str]:
    """Names of the folders directly under `uri` ([] when it does not exist)."""
    import pyarrow.fs as pafs

    fs, path = _fs(uri)
    try:
        infos = fs.get_file_info(pafs.FileSelector(path, recursive=False))
    except (FileNotFoundError, OSError):
        return []
    return [i.base_name for i in infos if i.type == pafs.FileType.Directory]
