"""`featloss data prepare DATASET --root DIR`: file-locked, idempotent, never half-staged.

No network here, and none is ever used: every subprocess runs with its HTTP(S) proxy pointed at
a closed local port (a download fails at once, as offline) or at a fake mirror in this test
process that serves small MNIST-format files. Torchvision md5-checks every download, so the
subprocesses that download from the fake mirror load a `sitecustomize` that relaxes only that
check (as torchvision's own tests patch `check_integrity` for fake CIFAR files).
"""

from __future__ import annotations

import gzip
import http.server
import os
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from filelock import FileLock

from conftest import REPO
from fake_datasets import make_cifar, make_mnist_like

from featloss.cli import main as cli_main

SUBPROCESS_TIMEOUT = 120


# -- helpers ----------------------------------------------------------------------------------

def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def offline_env(http_proxy: str | None = None, pythonpath: Path | None = None) -> dict:
    """The test environment with every request sent to a local proxy: never the internet."""
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    refused = f"http://127.0.0.1:{closed_port()}"
    env.update(http_proxy=http_proxy or refused, HTTP_PROXY=http_proxy or refused,
               https_proxy=refused, HTTPS_PROXY=refused)
    if pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(pythonpath), env.get("PYTHONPATH")]))
    return env


def start_prepare(key: str, root: Path, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "featloss", "data", "prepare", key, "--root", str(root)],
        cwd=REPO, env=env or offline_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)


def finish(proc: subprocess.Popen) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=SUBPROCESS_TIMEOUT)
    return proc.returncode, out, err


def wait_for_stderr_line(proc: subprocess.Popen, needle: str, timeout: float = 60) -> list[str]:
    """Read proc's stderr until a line contains `needle`; returns the lines read."""
    lines: list[str] = []
    found = threading.Event()

    def read() -> None:
        for line in proc.stderr:
            lines.append(line)
            if needle in line:
                found.set()
                return

    threading.Thread(target=read, daemon=True).start()
    assert found.wait(timeout), f"no '{needle}' on stderr; got {lines!r}"
    return lines


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under root (lock files aside) with its size and modification time."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file() and not p.name.endswith(".lock")}


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("featloss: error:")]


def leftovers(root: Path) -> list[str]:
    """What a failed prepare left in root, lock files aside."""
    return sorted(p.name for p in root.iterdir() if not p.name.endswith(".lock"))


# -- a fake download mirror -------------------------------------------------------------------

class FakeMirror(http.server.ThreadingHTTPServer):
    """An HTTP proxy that answers every GET with a file named like the URL's last part."""

    def __init__(self, files: dict[str, bytes]) -> None:
        super().__init__(("127.0.0.1", 0), _MirrorHandler)
        self.files = files
        self.hits: Counter[str] = Counter()
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _MirrorHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        name = self.path.rsplit("/", 1)[-1]
        with self.server.lock:
            self.server.hits[name] += 1
        body = self.server.files.get(name)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


def mnist_archives(tmp_path: Path) -> dict[str, bytes]:
    """The four MNIST .gz files torchvision downloads, as small fakes (60 train, 20 test)."""
    make_mnist_like(tmp_path / "mirror_src")
    raw = tmp_path / "mirror_src" / "MNIST" / "raw"
    return {f"{p.name}.gz": gzip.compress(p.read_bytes()) for p in raw.iterdir()}


@pytest.fixture
def mirror_factory():
    servers = []

    def start(files: dict[str, bytes]) -> FakeMirror:
        server = FakeMirror(files)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture
def md5_unchecked_path(tmp_path) -> Path:
    """A folder whose sitecustomize lets torchvision accept the fake mirror's files."""
    folder = tmp_path / "site"
    folder.mkdir()
    (folder / "sitecustomize.py").write_text(
        "import os\n"
        "import torchvision.datasets.utils as _utils\n"
        "_utils.check_integrity = lambda fpath, md5=None: os.path.isfile(fpath)\n")
    return folder


@pytest.fixture
def no_downloads(monkeypatch):
    """In-process: any download attempt fails the test."""
    import torchvision.datasets.cifar as cifar
    import torchvision.datasets.mnist as mnist
    import torchvision.datasets.utils as utils

    def refuse(*args, **kwargs):
        raise AssertionError(f"unexpected download: {args}")

    for module in (cifar, mnist, utils):
        for name in ("download_and_extract_archive", "download_url"):
            if hasattr(module, name):
                monkeypatch.setattr(module, name, refuse)


# -- the dataset sources' own message ---------------------------------------------------------

@pytest.mark.parametrize("key", ["mnist", "fashion_mnist", "cifar10", "cifar100"])
def test_missing_dataset_names_root_and_prepare_command(key, tmp_path):
    from featloss.config import DataConfig
    from featloss.data import load_splits
    from featloss.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        load_splits(DataConfig(dataset=key, root=str(tmp_path)))
    message = str(info.value)
    assert "\n" not in message
    assert str(tmp_path) in message
    assert f"featloss data prepare {key} --root {tmp_path}" in message


# -- idempotence ------------------------------------------------------------------------------

STAGERS = {
    "mnist": lambda root: make_mnist_like(root, "MNIST"),
    "fashion_mnist": lambda root: make_mnist_like(root, "FashionMNIST"),
    "cifar10": lambda root: make_cifar(root, classes=10),
    "cifar100": lambda root: make_cifar(root, classes=100),
}


@pytest.mark.parametrize("key", list(STAGERS))
def test_staged_folder_is_left_as_it_is(key, tmp_path, capsys, cifar_integrity_unchecked,
                                        no_downloads):
    STAGERS[key](tmp_path)
    before = snapshot(tmp_path)
    for _ in range(2):
        assert cli_main(["data", "prepare", key, "--root", str(tmp_path)]) == 0
        out = capsys.readouterr().out
        assert f"{key}: already staged under {tmp_path}" in out and "nothing downloaded" in out
        assert snapshot(tmp_path) == before


# -- the lock -----------------------------------------------------------------------------------

def test_lock_makes_a_second_caller_wait(tmp_path):
    make_mnist_like(tmp_path)
    before = snapshot(tmp_path)
    lock = FileLock(str(tmp_path / ".mnist.lock"))
    with lock:
        proc = start_prepare("mnist", tmp_path)
        try:
            wait_for_stderr_line(proc, "waiting for another `featloss data prepare mnist`")
            deadline = time.monotonic() + 1.5
            while time.monotonic() < deadline:  # it really waits while the lock is held
                assert proc.poll() is None, "prepare finished while another holder had the lock"
                time.sleep(0.1)
        except BaseException:
            proc.kill()
            raise
    code, out, err = finish(proc)
    assert code == 0, err
    assert "mnist: already staged" in out and "(60 train, 20 test)" in out
    assert snapshot(tmp_path) == before  # and the CLI downloaded nothing


def test_concurrent_callers_download_once(tmp_path, mirror_factory, md5_unchecked_path):
    """Two callers held at the lock, then released together: one stages, the other waits."""
    files = mnist_archives(tmp_path)
    mirror = mirror_factory(files)
    root = tmp_path / "data"
    root.mkdir()
    env = offline_env(http_proxy=mirror.url, pythonpath=md5_unchecked_path)
    with FileLock(str(root / ".mnist.lock")):
        procs = [start_prepare("mnist", root, env) for _ in range(2)]
        try:
            for proc in procs:
                wait_for_stderr_line(proc, "waiting for another")
        except BaseException:
            for proc in procs:
                proc.kill()
            raise
    results = [finish(proc) for proc in procs]
    assert [code for code, _, _ in results] == [0, 0], [err for _, _, err in results]
    outs = sorted(out.strip().splitlines()[-1] for _, out, _ in results)
    assert outs[0].startswith("mnist: already staged") and "(60 train, 20 test)" in outs[0]
    assert outs[1].startswith("mnist: staged under") and "(60 train, 20 test)" in outs[1]
    # one staging's requests (torchvision asks each URL for redirects, then downloads it)
    assert set(mirror.hits) == set(files) and max(mirror.hits.values()) <= 2
    # the staged folder holds the extracted files only; no download folder is left behind
    assert leftovers(root) == ["MNIST"]
    assert sorted(p.name for p in (root / "MNIST" / "raw").iterdir()) == sorted(
        name[: -len(".gz")] for name in files)

    from featloss.config import DataConfig
    from featloss.data import load_splits

    splits = load_splits(DataConfig(dataset="mnist", root=str(root), val_fraction=0.1))
    assert len(splits.train) + len(splits.val) == 60 and len(splits.test) == 20


# -- bad input and failed downloads -------------------------------------------------------------

def test_unknown_dataset_is_one_line_exit_2(tmp_path):
    code, out, err = finish(start_prepare("no_such_set", tmp_path / "root"))
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("featloss: error:")
    assert "unknown dataset 'no_such_set'" in err and "cifar10" in err
    assert not (tmp_path / "root").exists()  # rejected before anything was created


@pytest.mark.parametrize("key, why", [("mnist5k", "embedded"), ("fuzzy_rgb", "embedded"),
                                      ("imagefolder", "by hand"), ("tiny_imagenet", "by hand")])
def test_non_stageable_dataset_is_one_line_exit_2(key, why, tmp_path, capsys):
    assert cli_main(["data", "prepare", key, "--root", str(tmp_path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1
    assert f"'{key}'" in captured.err and why in captured.err


def test_offline_download_fails_in_one_line_and_stages_nothing(tmp_path, capsys, no_downloads):
    root = tmp_path / "data"
    code, out, err = finish(start_prepare("cifar10", root))
    assert code == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"featloss data prepare cifar10: download into {root} failed" in err
    assert "nothing was staged" in err and "cifar-10-batches-py" in err
    assert leftovers(root) == []
    # the next call does not think it is staged: it tries again (and fails the same way here)
    assert cli_main(["data", "prepare", "cifar10", "--root", str(root)]) == 2
    assert "unexpected download" in capsys.readouterr().err
    assert leftovers(root) == []


def test_interrupted_download_leaves_no_partial_dataset(tmp_path, mirror_factory,
                                                        md5_unchecked_path):
    """The mirror serves the training files, then fails: nothing partial may stay in ROOT."""
    files = mnist_archives(tmp_path)
    mirror = mirror_factory({k: v for k, v in files.items() if k.startswith("train")})
    root = tmp_path / "data"
    env = offline_env(http_proxy=mirror.url, pythonpath=md5_unchecked_path)
    code, out, err = finish(start_prepare("mnist", root, env))
    assert code == 2, err
    assert mirror.hits["train-images-idx3-ubyte.gz"] >= 1  # part of it did download
    lines = error_lines(err)
    assert len(lines) == 1 and "Traceback" not in err
    assert "download into" in lines[0] and "t10k" in lines[0]
    assert leftovers(root) == []

    from featloss.config import DataConfig
    from featloss.data import load_splits
    from featloss.errors import ConfigError

    with pytest.raises(ConfigError, match="featloss data prepare mnist"):
        load_splits(DataConfig(dataset="mnist", root=str(root)))


def test_existing_folder_that_does_not_load_is_left_alone(tmp_path, capsys, no_downloads):
    make_cifar(tmp_path, classes=10)  # without the integrity patch: fails torchvision's md5 check
    before = snapshot(tmp_path)
    assert cli_main(["data", "prepare", "cifar10", "--root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert f"{tmp_path / 'cifar-10-batches-py'} exists but does not load" in err
    assert "remove it" in err
    assert snapshot(tmp_path) == before


def test_stale_download_folder_is_removed(tmp_path, capsys, no_downloads):
    make_mnist_like(tmp_path)
    stale = tmp_path / ".mnist.staging-killed" / "MNIST" / "raw"
    stale.mkdir(parents=True)
    (stale / "train-images-idx3-ubyte.gz").write_bytes(b"partial")
    assert cli_main(["data", "prepare", "mnist", "--root", str(tmp_path)]) == 0
    assert "already staged" in capsys.readouterr().out
    assert leftovers(tmp_path) == ["MNIST"]


def test_root_that_cannot_be_created_is_one_line_exit_2(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert cli_main(["data", "prepare", "mnist", "--root", str(blocker / "data")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot create --root" in err
