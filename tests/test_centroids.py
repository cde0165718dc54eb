"""PEDCC centroids and NCM anchors: exact simplex Gram, determinism, repulsion quality, and the
repulsion cache (computed once per key, verified on read, recovered when corrupt)."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from featloss.losses import build_loss, centroids
from featloss.losses.centroids import (
    COUNTS,
    clear_repulsion_memo,
    max_pairwise_cosine,
    onehot_anchors,
    repulsion_cache_dir,
    repulsion_centroids,
    simplex_anchors,
    simplex_centroids,
)

REPO = Path(__file__).resolve().parents[1]

# Max pairwise cosine of the construction at commit 850e86d (500 fixed steps), seed 0, measured
# with bench/repulsion_quality.py: the new targets must be at least as good.
OLD_MAX_COSINE = {(10, 2): 0.809043, (10, 3): 0.407631, (10, 4): 0.16666676, (20, 3): 0.680285,
                  (100, 16): 0.221577, (100, 25): 0.127801, (100, 50): 0.000002,
                  (100, 64): 0.009050}


@pytest.fixture(autouse=True)
def fresh_cache(tmp_path, monkeypatch):
    """Every test starts with an empty disk cache of its own, an empty memo and zero counts."""
    monkeypatch.setenv("FEATLOSS_CACHE", str(tmp_path / "cache"))
    clear_repulsion_memo()
    COUNTS.clear()
    yield tmp_path / "cache" / "targets"
    clear_repulsion_memo()


def _gram(points: torch.Tensor) -> torch.Tensor:
    p = points.double()
    return p @ p.t()


@pytest.mark.parametrize("c, d", [(2, 1), (2, 7), (3, 2), (5, 4), (10, 9), (10, 64), (100, 99),
                                  (100, 512)])
def test_simplex_gram_is_exact(c: int, d: int) -> None:
    points = simplex_centroids(c, d, seed=3)
    assert points.shape == (c, d) and points.dtype == torch.float32
    expected = torch.full((c, c), -1.0 / (c - 1), dtype=torch.float64)
    expected.fill_diagonal_(1.0)
    torch.testing.assert_close(_gram(points), expected, atol=1e-6, rtol=0)


def test_simplex_two_classes_are_antipodal() -> None:
    a, b = simplex_centroids(2, 5, seed=0)
    torch.testing.assert_close(a, -b, atol=1e-7, rtol=0)


def test_simplex_is_deterministic_per_seed_and_seeds_differ() -> None:
    torch.manual_seed(123)
    first = simplex_centroids(10, 32, seed=7)
    torch.manual_seed(999)  # the global RNG must not matter
    assert torch.equal(first, simplex_centroids(10, 32, seed=7))
    assert not torch.allclose(first, simplex_centroids(10, 32, seed=8), atol=1e-3)


def test_simplex_rotation_spans_the_embedding() -> None:
    # A random rotation, not a zero-padded simplex: the centroids use coordinates beyond C-1.
    points = simplex_centroids(4, 50, seed=0)
    assert points[:, 3:].abs().max() > 1e-2


@pytest.mark.parametrize("c, d", [(11, 9), (3, 1), (101, 64)])
def test_simplex_needs_c_at_most_d_plus_1(c: int, d: int) -> None:
    with pytest.raises(ValueError, match=f"feature_dim >= num_classes - 1 = {c - 1}"):
        simplex_centroids(c, d, seed=0)


@pytest.mark.parametrize("c, d", [(10, 2), (20, 3), (10, 9), (50, 49), (30, 200), (100, 16)])
def test_repulsion_unit_norms_and_reported_max_cosine(c: int, d: int) -> None:
    points, max_cos = repulsion_centroids(c, d, seed=1)
    assert points.shape == (c, d) and points.dtype == torch.float32
    torch.testing.assert_close(points.double().norm(dim=1), torch.ones(c, dtype=torch.float64),
                               atol=1e-6, rtol=0)
    gram = _gram(points)
    gram.fill_diagonal_(-math.inf)
    assert max_cos == pytest.approx(gram.max().item(), abs=1e-12)


@pytest.mark.parametrize("c, d", [(10, 9), (10, 64), (50, 49), (30, 200)])
def test_repulsion_reaches_the_simplex_when_d_allows(c: int, d: int) -> None:
    _, max_cos = repulsion_centroids(c, d, seed=0)
    assert max_cos < -1.0 / (c - 1) + 2e-3


def test_repulsion_on_a_circle_is_equal_spacing() -> None:
    _, max_cos = repulsion_centroids(10, 2, seed=0)
    assert max_cos == pytest.approx(math.cos(2 * math.pi / 10), abs=1e-6)


def test_repulsion_beats_random_below_c_minus_1() -> None:
    _, max_cos = repulsion_centroids(100, 16, seed=0)
    random = torch.nn.functional.normalize(torch.randn(100, 16, dtype=torch.float64), dim=1)
    gram = random @ random.t()
    gram.fill_diagonal_(-math.inf)
    assert max_cos < 0.3 < gram.max().item()  # random: ~0.7; the Tammes bound is ~0.2


def test_repulsion_is_deterministic_per_seed() -> None:
    torch.manual_seed(0)
    a, ma = repulsion_centroids(12, 5, seed=4)
    torch.manual_seed(1)
    b, mb = repulsion_centroids(12, 5, seed=4)
    assert torch.equal(a, b) and ma == mb
    c, _ = repulsion_centroids(12, 5, seed=5)
    assert not torch.allclose(a, c, atol=1e-3)


def test_onehot_anchors() -> None:
    anchors = onehot_anchors(3, 5)
    expected = torch.zeros(3, 5)
    expected[0, 0] = expected[1, 1] = expected[2, 2] = 1.0
    assert torch.equal(anchors, expected)
    with pytest.raises(ValueError, match="feature_dim >= num_classes = 6"):
        onehot_anchors(6, 5)


def test_simplex_anchors_equal_simplex_centroids() -> None:
    assert torch.equal(simplex_anchors(7, 12, seed=2), simplex_centroids(7, 12, seed=2))


@pytest.mark.parametrize("c, d", [(4, 3), (10, 9), (10, 36), (100, 99), (100, 792)])
def test_repulsion_is_the_simplex_where_it_exists(c: int, d: int) -> None:
    points, max_cos = repulsion_centroids(c, d, seed=0)
    expected = torch.full((c, c), -1.0 / (c - 1), dtype=torch.float64)
    expected.fill_diagonal_(1.0)
    torch.testing.assert_close(_gram(points), expected, atol=1e-6, rtol=0)
    assert max_cos == pytest.approx(-1.0 / (c - 1), abs=1e-6)


@pytest.mark.parametrize("c, d", [(5, 3), (10, 5), (11, 9), (100, 50), (100, 64), (1000, 512)])
def test_repulsion_between_d_plus_1_and_2d_reaches_cosine_zero(c: int, d: int) -> None:
    # The optimum: C >= d + 2 unit vectors always have a pair at cosine >= 0 (Rankin's bound).
    points, max_cos = repulsion_centroids(c, d, seed=3)
    gram = _gram(points)
    assert abs(max_cos) < 1e-6
    gram.fill_diagonal_(0.0)
    assert gram.min() < -0.1  # simplices in orthogonal subspaces, not all-orthogonal rows
    torch.testing.assert_close(points.double().norm(dim=1), torch.ones(c, dtype=torch.float64),
                               atol=1e-6, rtol=0)


@pytest.mark.parametrize("c, d", sorted(OLD_MAX_COSINE))
def test_repulsion_is_at_least_as_good_as_the_old_construction(c: int, d: int) -> None:
    _, max_cos = repulsion_centroids(c, d, seed=0)
    assert max_cos <= OLD_MAX_COSINE[(c, d)] + 3e-7  # float32 rows resolve cosines to ~1e-7


def test_repulsion_reaches_the_known_optimum_of_10_points_in_4d() -> None:
    _, max_cos = repulsion_centroids(10, 4, seed=1)
    assert max_cos == pytest.approx(1.0 / 6.0, abs=1e-6)  # Sloane's packing tables


def test_repulsion_does_not_depend_on_the_thread_count() -> None:
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one, _ = repulsion_centroids(30, 5, seed=2)
        clear_repulsion_memo()
        centroids.repulsion_cache_dir().joinpath(centroids._cache_path((30, 5, 2, 300)).name) \
            .unlink()
        torch.set_num_threads(2)
        two, _ = repulsion_centroids(30, 5, seed=2)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, two) and COUNTS["computed"] == 2
    assert torch.get_num_threads() == threads


def test_repulsion_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="num_classes >= 2"):
        repulsion_centroids(1, 3)
    with pytest.raises(ValueError, match="seed >= 0 and max_steps >= 1"):
        repulsion_centroids(10, 3, seed=-1)
    with pytest.raises(ValueError, match="seed >= 0 and max_steps >= 1"):
        repulsion_centroids(10, 3, max_steps=0)


# -- computed once per key -------------------------------------------------------------------------

def test_repulsion_computed_once_per_key_across_builds_and_a_fresh_memo(fresh_cache) -> None:
    cells = [(10, d) for d in (2, 4, 9, 36)] + [(100, 25)]
    for _ in range(3):  # every trial of every cell builds its loss
        for c, d in cells:
            build_loss("pod", num_classes=c, feature_dim=d, centroids="repulsion", lam=0.1)
            build_loss("encm", num_classes=c, feature_dim=d, anchors="repulsion")
            build_loss("cncm", num_classes=c, feature_dim=d, anchors="repulsion")
    assert COUNTS["computed"] == len(cells) and COUNTS["disk_hits"] == 0
    assert COUNTS["memo_hits"] == 3 * 3 * len(cells) - len(cells)
    assert len(list(fresh_cache.glob("*.pt"))) == len(cells)
    first = build_loss("pod", num_classes=100, feature_dim=25, centroids="repulsion").centroids

    clear_repulsion_memo()  # as a new process (a trial's worker) starts: the disk cache is warm
    for c, d in cells:
        build_loss("cncm", num_classes=c, feature_dim=d, anchors="repulsion")
        build_loss("pod", num_classes=c, feature_dim=d, centroids="repulsion")
    assert COUNTS["computed"] == len(cells) and COUNTS["disk_hits"] == len(cells)
    again = build_loss("pod", num_classes=100, feature_dim=25, centroids="repulsion").centroids
    assert torch.equal(first, again)


def test_study_expansion_computes_each_key_once() -> None:
    from featloss.plan import expand
    from featloss.study import load_study

    plan = expand(load_study(REPO / "studies" / "feature_dim_sweep_mnist5k.yaml"))
    dims = {t.config.model.feature_dim for t in plan.grid_trials}
    assert COUNTS["computed"] == len(dims) == 5  # one per feature_dim; 3 losses x 3 seeds share it
    computed = COUNTS["computed"]
    for trial in plan.grid_trials:  # each trial builds its loss again
        if trial.loss in ("pod", "encm", "cncm"):
            build_loss(trial.loss, num_classes=10, feature_dim=trial.config.model.feature_dim,
                       **trial.config.loss.hparams)
    assert COUNTS["computed"] == computed


def test_repulsion_is_computed_once_by_concurrent_processes(fresh_cache) -> None:
    code = ("import featloss.losses.centroids as c; p, m = c.repulsion_centroids(250, 8, seed=5); "
            "print(c.COUNTS['computed'], c.COUNTS['disk_hits'], repr(m), flush=True)")
    env = {**os.environ, "FEATLOSS_CACHE": str(fresh_cache.parent)}
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE,
                              text=True) for _ in range(3)]
    outputs = [proc.communicate(timeout=120)[0].split() for proc in procs]
    assert all(proc.returncode == 0 for proc in procs)
    assert sorted(int(out[0]) for out in outputs) == [0, 0, 1]  # the others waited and read it
    assert len({out[2] for out in outputs}) == 1
    assert [p.name for p in fresh_cache.iterdir() if p.suffix != ".lock"] == [
        "repulsion-v2-c250-d8-seed5-steps300.pt"]  # no temporary files left behind


# -- the disk cache: verified on read, corrupt files recomputed ------------------------------------

def _tamper_tensor(record: dict) -> None:
    record["centroids"][0, 0] += 1e-3  # the checksum no longer matches


def _tamper_rows(record: dict) -> None:
    import hashlib

    record["centroids"] = record["centroids"] * 1.01  # consistent checksum, rows not unit
    record["sha256"] = hashlib.sha256(record["centroids"].numpy().tobytes()).hexdigest()


def _other_key(record: dict) -> None:
    record["key"] = {**record["key"], "seed": 1}


def _stale_key_hash(record: dict) -> None:
    record["key_sha256"] = "0" * 64


def _wrong_max_cosine(record: dict) -> None:
    record["max_cosine"] = -0.5


@pytest.mark.parametrize("corrupt", [_tamper_tensor, _tamper_rows, _other_key, _stale_key_hash,
                                     _wrong_max_cosine])
def test_a_mismatched_cache_file_is_recomputed_and_rewritten(corrupt, fresh_cache) -> None:
    points, max_cos = repulsion_centroids(20, 3, seed=0)
    path = next(fresh_cache.glob("*.pt"))
    record = torch.load(path, weights_only=True)
    corrupt(record)
    torch.save(record, path)
    clear_repulsion_memo()
    again, again_cos = repulsion_centroids(20, 3, seed=0)
    assert torch.equal(points, again) and again_cos == max_cos
    assert COUNTS["computed"] == 2 and COUNTS["rejected_files"] == 1
    clear_repulsion_memo()
    repulsion_centroids(20, 3, seed=0)  # the rewritten file verifies
    assert COUNTS["computed"] == 2 and COUNTS["disk_hits"] == 1


@pytest.mark.parametrize("content", [b"", b"not a torch file", None])
def test_an_unreadable_cache_file_is_recomputed(content, fresh_cache) -> None:
    points, _ = repulsion_centroids(20, 3, seed=0)
    path = next(fresh_cache.glob("*.pt"))
    path.write_bytes(path.read_bytes()[:100] if content is None else content)  # None: truncated
    clear_repulsion_memo()
    again, _ = repulsion_centroids(20, 3, seed=0)
    assert torch.equal(points, again) and COUNTS["rejected_files"] == 1
    record = torch.load(path, weights_only=True)
    assert torch.equal(record["centroids"], points)


def test_the_cache_folder_follows_featloss_cache(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("FEATLOSS_CACHE", str(tmp_path / "elsewhere"))
    assert repulsion_cache_dir() == tmp_path / "elsewhere" / "targets"
    monkeypatch.delenv("FEATLOSS_CACHE")
    assert repulsion_cache_dir() == Path.home() / ".cache" / "featloss" / "targets"


def test_an_unusable_cache_folder_still_gives_the_targets(monkeypatch, tmp_path, caplog) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("FEATLOSS_CACHE", str(blocker))
    points, max_cos = repulsion_centroids(12, 3, seed=0)
    assert points.shape == (12, 3) and COUNTS["computed"] == 1
    assert "computing in memory" in caplog.text
    assert max_cos == pytest.approx(max_pairwise_cosine(points), abs=1e-12)


def test_each_call_returns_its_own_copy() -> None:
    a, _ = repulsion_centroids(12, 3, seed=0)
    a.zero_()
    b, _ = repulsion_centroids(12, 3, seed=0)
    assert b.abs().sum() > 0
