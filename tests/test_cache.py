"""featloss.cache: decoded arrays are built once per source version and survive bad folders."""

from __future__ import annotations

import os

import numpy as np

from featloss.cache import cached_array


def test_built_once_then_rebuilt_when_the_source_changes(tmp_path, monkeypatch):
    monkeypatch.setenv("FEATLOSS_CACHE", str(tmp_path / "cache"))
    source = tmp_path / "data.csv"
    source.write_text("1,2\n")
    calls = []

    def build():
        calls.append(1)
        return np.arange(6, dtype=np.uint8).reshape(2, 3) + len(calls)

    first = cached_array("toy", source, build)
    again = cached_array("toy", source, build)
    assert len(calls) == 1 and np.array_equal(first, again) and again.dtype == np.uint8
    source.write_text("1,2,3\n")  # a new size: a new version of the source
    os.utime(source, ns=(1, 1))
    changed = cached_array("toy", source, build)
    assert len(calls) == 2 and changed[0, 0] == 2


def test_a_corrupt_entry_or_unwritable_cache_falls_back_to_building(tmp_path, monkeypatch,
                                                                    caplog):
    source = tmp_path / "data.csv"
    source.write_text("x")
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    monkeypatch.setenv("FEATLOSS_CACHE", str(blocker))  # data/ cannot be created under a file
    assert cached_array("toy", source, lambda: np.ones(3)).sum() == 3
    assert "cannot write" in caplog.text
    monkeypatch.setenv("FEATLOSS_CACHE", str(tmp_path / "cache"))
    cached_array("toy", source, lambda: np.ones(3))
    (entry,) = (tmp_path / "cache" / "data").glob("toy-*.npy")
    entry.write_bytes(b"garbage")
    assert cached_array("toy", source, lambda: np.zeros(2)).tolist() == [0, 0]
    assert "unreadable" in caplog.text
