"""Fixed class targets: PEDCC centroids (POD loss) and NCM anchors.

- `simplex_centroids`: the regular simplex (PEDCC; W-Softmax paper Eq. 3 builds one in C-1
  dimensions): C unit vectors whose pairwise cosines are all exactly -1/(C-1), the best any C
  points on a sphere can do. Needs C <= d + 1.
- `repulsion_centroids`: C unit vectors spread as far apart as we can for any d, including
  d < C-1 (the feature-dimension sweep below k-1), with their maximum pairwise cosine. Computed
  once per key and kept in memory and on disk (see "Cache" below).
- `onehot_anchors` / `simplex_anchors`: the anchors of E-NCM / C-NCM (NCM paper Sec. 3).

Everything is built in float64 (or float32 for large iterative cases) on the CPU from a seeded
``torch.Generator`` and returned as float32, so the targets are deterministic per (C, d, seed)
and independent of the global RNG.

Cache: repulsion targets live in ``$FEATLOSS_CACHE/targets`` (default
``~/.cache/featloss/targets``), one file per (C, d, seed, max_steps, REPULSION_VERSION). A file
is used only if it verifies: its stored key and key hash match, the tensor's SHA-256 matches,
the shape is (C, d), rows are unit and the stored max cosine is the rows' own. Anything else is
recomputed and rewritten. Writers hold a file lock and write to a temporary file that is then
renamed, so concurrent processes compute a key once and readers never see half a file. Point
``FEATLOSS_CACHE`` at shared storage on a cluster: the iteration amplifies last-bit differences
between CPUs' float arithmetic, so two machines computing the same key may get different
(equally good) targets; a shared cache gives every trial the same ones.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import tempfile
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import Tensor

LOGGER = logging.getLogger("featloss.targets")

REPULSION_VERSION = 2  # bump whenever the construction changes: older cache files stop matching
MAX_STEPS = 300  # default cap on the steps of each stage of the iteration
SPREAD_EXPONENTS = (0, 2, 4, 6, 8, 10)  # per-point stages: sharpness p = 2**k
TIGHTEN_EXPONENTS = (10, 12, 14)  # whole-set stages, ending on the largest cosine itself
STAGE_TOL, FINAL_TOL = 1e-3, 1e-7  # a stage ends when no point would move more (see _stage)
MIN_STEP = 1e-7  # step-size floor: below it a stage counts as converged
STALL_STEPS, STALL_TOL = 50, 1e-4  # a whole-set stage also ends when its max cosine stalls
MOMENTUM, STEP, GROWTH = 0.9, 0.3, 1.2  # heavy-ball descent with backtracking
MAX_STARTS, MULTI_START_WORK = 16, 2**17  # seeded starts (batched) while C*C*d*starts <= work
FLOAT64_WORK = 2**22  # C*C*d up to which the iteration runs in float64
LOCK_TIMEOUT = 900.0  # seconds to wait for another process computing the same key

_MEMO: dict[tuple[int, int, int, int], tuple[Tensor, float]] = {}
_MEMO_LOCK = threading.Lock()
COUNTS: Counter = Counter()  # computed / disk_hits / memo_hits / rejected_files, for tests


def _check_sizes(num_classes: int, feature_dim: int) -> None:
    if num_classes < 2 or feature_dim < 1:
        raise ValueError(f"centroids need num_classes >= 2 and feature_dim >= 1; "
                         f"got num_classes={num_classes}, feature_dim={feature_dim}")


def _simplex_in_c_minus_1(num_classes: int) -> Tensor:
    """(C, C-1) float64 regular simplex: the rows of the Helmert basis of {v : sum(v) = 0}."""
    c = num_classes
    basis = torch.zeros(c, c - 1, dtype=torch.float64)  # orthonormal columns, each orthogonal to 1
    for k in range(1, c):
        basis[:k, k - 1] = 1.0 / math.sqrt(k * (k + 1))
        basis[k, k - 1] = -k / math.sqrt(k * (k + 1))
    # basis basisᵀ = I - 11ᵀ/C, so row norms are sqrt((C-1)/C) and pairwise dots are -1/C:
    # rescaled to unit length every cosine is exactly -1/(C-1).
    return basis * math.sqrt(c / (c - 1))


def _random_isometry(feature_dim: int, rank: int, seed: int) -> Tensor:
    """(d, r) float64 matrix with orthonormal columns, uniformly (Haar) distributed."""
    gen = torch.Generator().manual_seed(int(seed))
    gauss = torch.randn(feature_dim, rank, generator=gen, dtype=torch.float64)
    q, r = torch.linalg.qr(gauss)
    # QR alone is not uniform (its R has a sign convention); fixing diag(R) > 0 makes it so.
    signs = torch.sign(torch.diagonal(r))
    signs[signs == 0] = 1.0
    return q * signs


def simplex_centroids(num_classes: int, feature_dim: int, seed: int = 0) -> Tensor:
    """(C, d) float32 regular simplex, randomly rotated into d dimensions (needs C <= d + 1)."""
    _check_sizes(num_classes, feature_dim)
    if num_classes > feature_dim + 1:
        raise ValueError(f"a regular simplex of {num_classes} classes needs "
                         f"feature_dim >= num_classes - 1 = {num_classes - 1}; got {feature_dim}")
    simplex = _simplex_in_c_minus_1(num_classes)  # (C, C-1)
    rotation = _random_isometry(feature_dim, num_classes - 1, seed)  # (d, C-1)
    # An isometry keeps every inner product, so the Gram matrix stays exactly the simplex's.
    return (simplex @ rotation.t()).float()  # (C, d)


# -- repulsion targets: public entry, memo and disk cache ------------------------------------------

def repulsion_centroids(num_classes: int, feature_dim: int, seed: int = 0,
                        max_steps: int = MAX_STEPS) -> tuple[Tensor, float]:
    """(C, d) float32 unit vectors spread apart on the sphere, and their max pairwise cosine.

    Where the best arrangement is known it is built directly, so its max cosine is optimal:
    C <= d + 1, the regular simplex (-1/(C-1)); d + 1 < C <= 2d, mutually orthogonal regular
    simplices (0, the least possible by Rankin's bound); d = 2, equal spacing (cos 2π/C). Else a
    seeded iteration (`_repulse`). Computed once per (C, d, seed, max_steps): kept in memory
    and in the disk cache (module docstring). Each call returns its own copy.
    """
    _check_sizes(num_classes, feature_dim)
    if int(seed) != seed or seed < 0 or int(max_steps) != max_steps or max_steps < 1:
        raise ValueError(f"repulsion needs an integer seed >= 0 and max_steps >= 1; "
                         f"got seed={seed}, max_steps={max_steps}")
    key = (int(num_classes), int(feature_dim), int(seed), int(max_steps))
    with _MEMO_LOCK:
        found = _MEMO.get(key)
        if found is None:
            found = _MEMO[key] = _load_or_build(key)
        else:
            COUNTS["memo_hits"] += 1
    points, max_cosine = found
    return points.clone(), max_cosine


def repulsion_cache_dir() -> Path:
    """Where repulsion targets are cached: ``$FEATLOSS_CACHE/targets`` or
    ``~/.cache/featloss/targets``."""
    from featloss.cache import cache_root

    return cache_root() / "targets"


def clear_repulsion_memo() -> None:
    """Forget the in-process memo (the disk cache stays), as a new process would start."""
    with _MEMO_LOCK:
        _MEMO.clear()


def _key_record(key: tuple[int, int, int, int]) -> dict:
    c, d, seed, max_steps = key
    return {"kind": "repulsion", "version": REPULSION_VERSION, "num_classes": c,
            "feature_dim": d, "seed": seed, "max_steps": max_steps}


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _cache_path(key: tuple[int, int, int, int]) -> Path:
    c, d, seed, max_steps = key
    return repulsion_cache_dir() / f"repulsion-v{REPULSION_VERSION}-c{c}-d{d}-seed{seed}-" \
                                   f"steps{max_steps}.pt"


def _load_or_build(key: tuple[int, int, int, int]) -> tuple[Tensor, float]:
    path = _cache_path(key)
    found = _read_verified(path, key)
    if found is not None:
        COUNTS["disk_hits"] += 1
        return found
    try:
        from filelock import FileLock

        path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(path) + ".lock", timeout=LOCK_TIMEOUT):
            found = _read_verified(path, key)  # another process may have written it meanwhile
            if found is not None:
                COUNTS["disk_hits"] += 1
                return found
            if path.exists():
                COUNTS["rejected_files"] += 1
                LOGGER.warning("repulsion targets: %s failed verification; recomputing it", path)
            points, max_cosine = _build(key)
            _write_atomic(path, key, points, max_cosine)
            return points, max_cosine
    except (OSError, TimeoutError) as exc:  # filelock.Timeout is a TimeoutError
        LOGGER.warning("repulsion targets: cache %s unusable (%s); computing in memory",
                       path.parent, exc)
        return _build(key)


def _build(key: tuple[int, int, int, int]) -> tuple[Tensor, float]:
    COUNTS["computed"] += 1
    points = _construct(*key)
    return points, max_pairwise_cosine(points)


def max_pairwise_cosine(points: Tensor) -> float:
    """The largest cosine between two different rows of `points` (C, d), in float64."""
    p = points.double()
    gram = p @ p.t()  # (C, C)
    gram.fill_diagonal_(-math.inf)
    return float(gram.max())


def _read_verified(path: Path, key: tuple[int, int, int, int]) -> tuple[Tensor, float] | None:
    """The cached (points, max cosine) at `path` if the file verifies in full, else None."""
    if not path.is_file():
        return None
    try:
        record = torch.load(path, map_location="cpu", weights_only=True)
        expected = _key_record(key)
        points, max_cosine = record["centroids"], float(record["max_cosine"])
        ok = (record["key"] == expected
              and record["key_sha256"] == _sha256(json.dumps(expected, sort_keys=True).encode())
              and isinstance(points, Tensor) and points.dtype == torch.float32
              and tuple(points.shape) == (key[0], key[1])
              and record["sha256"] == _sha256(points.contiguous().numpy().tobytes())
              and bool(torch.isfinite(points).all())
              and float((points.double().norm(dim=1) - 1.0).abs().max()) < 1e-5
              and abs(max_pairwise_cosine(points) - max_cosine) < 1e-9)
    except Exception:  # noqa: BLE001 - any unreadable or malformed file is recomputed
        return None
    return (points, max_cosine) if ok else None


def _write_atomic(path: Path, key: tuple[int, int, int, int], points: Tensor,
                  max_cosine: float) -> None:
    expected = _key_record(key)
    record = {"key": expected,
              "key_sha256": _sha256(json.dumps(expected, sort_keys=True).encode()),
              "centroids": points.contiguous(), "max_cosine": max_cosine,
              "sha256": _sha256(points.contiguous().numpy().tobytes())}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(record, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)  # atomic: readers see the old file or the whole new one
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# -- the constructions -----------------------------------------------------------------------------

def _construct(num_classes: int, feature_dim: int, seed: int, max_steps: int) -> Tensor:
    """(C, d) float32 unit rows: a closed form where the optimum is known, else `_repulse`."""
    c, d = num_classes, feature_dim
    if c <= d + 1:
        return simplex_centroids(c, d, seed)
    if c <= 2 * d or d == 2:
        points = _orthogonal_simplices(c, d) if c <= 2 * d else _circle(c)  # (C, d)
        points = points @ _random_isometry(d, d, seed).t()  # a random rotation (or reflection)
        order = torch.randperm(c, generator=torch.Generator().manual_seed(seed))
        return points[order].float()  # which classes share a simplex / are neighbours: seeded
    with _single_thread():  # GEMM rounding may depend on the thread count; results must not
        return _repulse(c, d, seed, max_steps)


def _orthogonal_simplices(num_classes: int, feature_dim: int) -> Tensor:
    """(C, d) float64: C - d regular simplices in mutually orthogonal subspaces (d+1 < C <= 2d).

    A simplex of k+1 points in k dimensions has cosines -1/k, and points in orthogonal subspaces
    have cosine 0, so the max cosine is 0: optimal, since C >= d + 2 points on the sphere always
    have a pair at cosine >= 0 (Rankin). The subspace sizes are as equal as d allows.
    """
    groups = num_classes - feature_dim
    base, extra = divmod(feature_dim, groups)
    points = torch.zeros(num_classes, feature_dim, dtype=torch.float64)
    row = col = 0
    for g in range(groups):
        k = base + (g < extra)  # this simplex's dimension
        points[row:row + k + 1, col:col + k] = _simplex_in_c_minus_1(k + 1)
        row, col = row + k + 1, col + k
    return points


def _circle(num_classes: int) -> Tensor:
    """(C, 2) float64 equally spaced unit vectors: the best C points on a circle."""
    angles = torch.arange(num_classes, dtype=torch.float64) * (2.0 * math.pi / num_classes)
    return torch.stack([angles.cos(), angles.sin()], dim=1)


@contextmanager
def _single_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _repulse(num_classes: int, feature_dim: int, seed: int, max_steps: int) -> Tensor:
    """(C, d) float32: seeded points pushed apart on the sphere (used where C > 2d, d != 2).

    Energy at sharpness p (r_ij = ‖x_i − x_j‖): per point, E = Σ_i (1/2p) log Σ_j r_ij^(−2p), a
    smooth −log(nearest-neighbour distance) of every point ("spread" stages, p = 1 ... 1024);
    then over the whole set, E = (1/2p) log Σ_{i≠j} r_ij^(−2p), a smooth −log(smallest distance),
    i.e. the max cosine itself ("tighten" stages, p = 1024 ... 16384). Each stage runs
    heavy-ball descent on the sphere, every point's step scaled by its squared nearest distance,
    accepting a step only if E falls (else halving the step and dropping the momentum).
    Convergence criterion: a stage ends when the next step would move no point by more than
    `STAGE_TOL` (last stage: `FINAL_TOL`) times its nearest distance or the step falls below
    `MIN_STEP`, and a whole-set stage also when its max cosine fell by less than `STALL_TOL`
    over the last `STALL_STEPS` steps; `max_steps` caps each stage. Small problems run up to
    `MAX_STARTS` seeded starts at once (batched) and keep the best. The max cosine never rises
    from stage to stage: each keeps the best configuration it saw.
    """
    c, d = num_classes, feature_dim
    starts = max(1, min(MAX_STARTS, MULTI_START_WORK // (c * c * d)))
    dtype = torch.float64 if c * c * d <= FLOAT64_WORK else torch.float32
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(starts, c, d, generator=gen, dtype=torch.float64).to(dtype)
    x = x / x.norm(dim=2, keepdim=True)  # (R, C, d)
    stages = [(k, False) for k in SPREAD_EXPONENTS] + [(k, True) for k in TIGHTEN_EXPONENTS]
    for i, (k, whole) in enumerate(stages):
        x, best = _stage(x, k, whole, FINAL_TOL if i == len(stages) - 1 else STAGE_TOL,
                         max_steps)
    points = x[int(best.argmin())].double()
    return (points / points.norm(dim=1, keepdim=True)).float()


def _energy(x: Tensor, k: int, whole: bool) -> tuple[Tensor, Tensor, tuple[Tensor, Tensor]]:
    """E (R,) at sharpness p = 2**k, the nearest squared distances, and what `_descent` needs."""
    sq = torch.baddbmm(x.new_full((1, 1, 1), 2.0), x, x.transpose(1, 2), alpha=-2.0)  # (R, C, C)
    sq.clamp_min_(1e-12).diagonal(dim1=1, dim2=2).fill_(math.inf)  # r_ij²; no self-pairs
    dims = (1, 2) if whole else (2,)
    nearest = sq.amin(dims, keepdim=True)  # (R, C, 1) per point, (R, 1, 1) whole set
    u = nearest / sq  # (R, C, C) in [0, 1]: overflow-free
    for _ in range(k):
        u.mul_(u)  # (r_nn / r)^(2p) by squaring: no exp/log over C² entries
    z = u.sum(dims, keepdim=True)
    energy = (z.log() / 2.0 ** (k + 1) - 0.5 * nearest.log()).sum((1, 2))  # (R,)
    return energy, nearest, (sq, u.div_(z))


def _descent(x: Tensor, nearest: Tensor, pieces: tuple[Tensor, Tensor]) -> Tensor:
    """(R, C, d): the tangent gradient of E, each point's scaled by its nearest squared distance.

    ∂E/∂x_i = Σ_j (w_ij + w_ji) x_j / r_ij² with w the softmax weights of E's sums.
    """
    sq, w = pieces
    a = (w + w.transpose(1, 2)).div_(sq)  # (R, C, C); 0 on the diagonal
    grad = torch.bmm(a, x)  # (R, C, d)
    grad = grad - (grad * x).sum(2, keepdim=True) * x  # tangent to the sphere
    return nearest * grad


def _stage(x: Tensor, k: int, whole: bool, tol: float, max_steps: int) -> tuple[Tensor, Tensor]:
    """One stage of `_repulse`: (the best points of each start, their max cosines (R,))."""
    energy, nearest, pieces = _energy(x, k, whole)
    step = x.new_full((x.shape[0], 1, 1), STEP)
    velocity = torch.zeros_like(x)
    best_x, best = x, 1.0 - 0.5 * nearest.amin((1, 2))  # max cosine = 1 − min r²/2
    mark, since = best, 0  # the max cosine STALL_STEPS steps ago
    for _ in range(max_steps):
        move = _descent(x, nearest, pieces)
        relative = (move.norm(dim=2, keepdim=True) / nearest.sqrt()).amax((1, 2))
        active = (step.view(-1) * relative >= tol) & (step.view(-1) >= MIN_STEP)  # (R,)
        if not active.any():
            break
        new_velocity = MOMENTUM * velocity - step * move
        new_x = x + new_velocity
        new_x = new_x / new_x.norm(dim=2, keepdim=True)
        new_energy, new_nearest, new_pieces = _energy(new_x, k, whole)
        accept = active & (new_energy < energy)  # (R,)
        a3 = accept.view(-1, 1, 1)
        if accept.all():
            x, energy, nearest, pieces = new_x, new_energy, new_nearest, new_pieces
        elif accept.any():  # some starts moved: evaluate the mixture afresh
            x = torch.where(a3, new_x, x)
            energy, nearest, pieces = _energy(x, k, whole)
        tangent = new_velocity - (new_velocity * new_x).sum(2, keepdim=True) * new_x
        velocity = torch.where(a3, tangent, torch.zeros_like(velocity))
        step = torch.where(a3, (step * GROWTH).clamp_max(STEP),
                           torch.where(active.view(-1, 1, 1), step * 0.5, step))
        cosine = 1.0 - 0.5 * nearest.amin((1, 2))
        better = cosine < best
        best = torch.where(better, cosine, best)
        best_x = torch.where(better.view(-1, 1, 1), x, best_x)
        since += 1
        if whole and since == STALL_STEPS:
            if bool((mark - best < STALL_TOL).all()):
                break
            mark, since = best, 0
    return best_x, best


def onehot_anchors(num_classes: int, feature_dim: int) -> Tensor:
    """(C, d) float32 anchors a_c = e_c (the NCM paper's standard orthogonal bases; d >= C)."""
    _check_sizes(num_classes, feature_dim)
    if feature_dim < num_classes:
        raise ValueError(f"one-hot anchors need feature_dim >= num_classes = {num_classes}; "
                         f"got {feature_dim}")
    return torch.eye(num_classes, feature_dim, dtype=torch.float32)  # (C, d)


def simplex_anchors(num_classes: int, feature_dim: int, seed: int = 0) -> Tensor:
    """(C, d) float32 anchors on a regular simplex (= `simplex_centroids`)."""
    return simplex_centroids(num_classes, feature_dim, seed)
