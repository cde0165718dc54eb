"""Repulsion targets, before and after issue 13: max pairwise cosine and build time per (C, d).

"old" is the construction of commit 850e86d (500 fixed steps of a softmax-weighted repulsion in
float32, copied below verbatim); "new" is `featloss.losses.centroids` as built now, without its
caches (`_construct`). Both run on one thread, interleaved, over `--seeds`; the table prints
each side's max cosine per seed, the best known value where there is one, and the median build
time of each side.

    python bench/repulsion_quality.py [--cases 10x2,10x4,...] [--seeds 0,1,2] [--repeats 1]
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
import subprocess
import time

import torch

from featloss.losses.centroids import _construct, max_pairwise_cosine

CASES = "10x2,10x3,10x4,20x3,10x9,100x16,100x25,100x50,100x64,1000x64,1000x512"


def old_repulsion(num_classes: int, feature_dim: int, seed: int,
                  iterations: int = 500) -> torch.Tensor:
    """The construction of commit 850e86d (`_repulsion`), unchanged."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(num_classes, feature_dim, generator=gen, dtype=torch.float64).float()
    x = x / x.norm(dim=1, keepdim=True)  # (C, d)
    eye = torch.eye(num_classes, dtype=torch.bool)
    for it in range(iterations):
        frac = it / max(iterations - 1, 1)
        s = 2.0 * 128.0 ** frac
        f = 0.002 + 0.5 * (1.0 - 0.002) * (1.0 + math.cos(math.pi * frac))
        sq = (2.0 - 2.0 * (x @ x.t())).clamp_min_(1e-12).masked_fill_(eye, math.inf)  # (C, C)
        w = torch.softmax(-0.5 * s * sq.log(), dim=1)  # (C, C), log-space so no overflow
        r = sq.sqrt()
        wr = w / r  # (C, C); 0 on the diagonal
        force = wr.sum(1, keepdim=True) * x - wr @ x  # (C, d)
        force = force - (force * x).sum(1, keepdim=True) * x  # tangent part
        x = x + f * r.min(1, keepdim=True).values * force
        x = x / x.norm(dim=1, keepdim=True)
    return x


def best_known(c: int, d: int) -> str:
    """The optimum where it is known in closed form (else blank)."""
    if c <= d + 1:
        return f"{-1.0 / (c - 1):.7f}"
    if c <= 2 * d:
        return "0"
    if d == 2:
        return f"{math.cos(2 * math.pi / c):.7f}"
    # Sloane's tables of spherical codes: min angles 66.1468° and 47.4310° (Tammes), 1/6 in 4-D
    tammes = {(10, 3): 0.404394, (20, 3): 0.676477, (10, 4): 1.0 / 6.0}
    return f"{tammes[(c, d)]:.7f}" if (c, d) in tammes else ""


def timed(fn, *args) -> tuple[torch.Tensor, float]:
    start = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=CASES, help="comma-separated CxD")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--repeats", type=int, default=1, help="timings per seed (median)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    seeds = [int(s) for s in args.seeds.split(",")]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, check=False).stdout.strip()
    print(f"# repulsion targets, old (850e86d) vs new; {platform.processor() or platform.machine()}"
          f", 1 thread, torch {torch.__version__}, commit {commit}")
    print("| C | d | best known | old max cos (per seed) | new max cos (per seed) | new <= old "
          "| old s | new s |\n|---|---|---|---|---|---|---|---|")
    for case in args.cases.split(","):
        c, d = (int(v) for v in case.split("x"))
        old_cos, new_cos, old_t, new_t = [], [], [], []
        for seed in seeds:
            for _ in range(args.repeats):  # interleaved: old, new, old, new, ...
                old, t_old = timed(old_repulsion, c, d, seed)
                new, t_new = timed(_construct, c, d, seed, 300)
                old_t.append(t_old)
                new_t.append(t_new)
            old_cos.append(max_pairwise_cosine(old))
            new_cos.append(max_pairwise_cosine(new))
        if all(n <= o for n, o in zip(new_cos, old_cos)):
            verdict = "yes"
        elif all(n <= o + 3e-7 for n, o in zip(new_cos, old_cos)):
            verdict = "equal (3e-7: float32 rows)"
        else:
            verdict = "NO"
        print(f"| {c} | {d} | {best_known(c, d)} | {' '.join(f'{v:.7f}' for v in old_cos)} | "
              f"{' '.join(f'{v:.7f}' for v in new_cos)} | {verdict} | "
              f"{statistics.median(old_t):.3f} | {statistics.median(new_t):.4f} |", flush=True)


if __name__ == "__main__":
    main()
