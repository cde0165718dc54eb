"""The papers' testable claims, each with the study that tests it and a rule stated in advance.

A claim is about a contrast Δ = Σ c_g · mean_g of groups g of a study's completed trials (a loss,
optionally one grid cell) on one metric, over seeds; mostly a difference of two groups,
Δ = mean(a) − mean(b), or a difference of differences (dropout's gain for one loss vs another):

- ``greater``: the claim is Δ > 0. Supported when the 95 % confidence interval of Δ lies above
  0, contradicted when it lies below 0, inconclusive otherwise.
- ``within``: the claim is |Δ| ≤ δ. Supported when the whole interval lies inside (−δ, δ),
  contradicted when it lies wholly beyond δ on either side, inconclusive otherwise.

The interval is Welch's: standard error √(Σ c_g² s_g²/n_g), Welch–Satterthwaite degrees of
freedom and Student's t quantile (scipy.stats.t), α = 0.05 two-sided; the two-sided p-value of
Δ = 0 is reported beside it. A group with fewer than 2 completed trials gives no interval: the
verdict is then inconclusive.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable

from featloss.record import StudyRecord, TrialRecord

ALPHA = 0.05
SUPPORTED, CONTRADICTED, INCONCLUSIVE = "supported", "contradicted", "inconclusive"


@dataclass(frozen=True)
class Group:
    """Completed trials of `loss` whose grid cell matches `cell` (keys it leaves out: any)."""

    loss: str
    cell: tuple[tuple[str, Any], ...] = ()

    def label(self) -> str:
        cell = ", ".join(f"{k.split('.')[-1]}={v}" for k, v in self.cell)
        return f"{self.loss} ({cell})" if cell else self.loss

    def values(self, trials: Iterable[TrialRecord], metric: str) -> list[float]:
        out = []
        for t in trials:
            if t.loss != self.loss or t.status != "completed":
                continue
            if any(t.params.get(k) != v for k, v in self.cell):
                continue
            value = t.value(metric)
            if value is not None:
                out.append(value)
        return out


@dataclass(frozen=True)
class Claim:
    id: str
    text: str  # the paper's claim, in a sentence
    source: str  # paper, table or figure
    study: str  # the study (its name) whose record tests it
    metric: str
    kind: str  # greater | within
    terms: tuple[tuple[float, Group], ...]  # Δ = Σ coefficient x mean(group)
    delta: float = 0.0  # `within` only
    note: str = ""  # how featloss's setting differs from the paper's

    def contrast(self) -> str:
        parts = []
        for coef, group in self.terms:
            sign = "−" if coef < 0 else "+"
            scale = "" if abs(coef) == 1 else f"{abs(coef):g}·"
            parts.append(f"{sign} {scale}{group.label()}")
        return " ".join(parts).lstrip("+ ")


def pair(a: Group, b: Group) -> tuple[tuple[float, Group], ...]:
    return ((1.0, a), (-1.0, b))


def _dims(loss: str, dim: int) -> Group:
    return Group(loss, (("model.feature_dim", dim),))


def _drop(loss: str, p: float) -> Group:
    return Group(loss, (("model.dropout", p),))


SWEEP_LOSSES = ["softmax", "center", "lsoftmax", "amsoftmax", "wsoftmax", "pod", "sigma2r",
                "encm", "cncm"]
CPU = "mnist5k (5,000 real MNIST digits), small_cnn, a few epochs on 2 CPU cores"

CLAIMS: list[Claim] = [
    *[Claim(f"wsoftmax-fig4-{loss}",
            f"{loss}: test accuracy saturates at M = k−1: at M = 9 it is within 1 point of "
            f"M = 144 = 16(k−1)",
            "W-Softmax (Li & Wang) Sec. 3, Fig. 4", "feature-dim-sweep-mnist5k",
            "test/accuracy", "within", pair(_dims(loss, 9), _dims(loss, 144)), delta=0.01,
            note=CPU) for loss in SWEEP_LOSSES],
    *[Claim(f"ncm-table3-{loss}",
            f"dropout helps {name} more than softmax: its gain from p = 0 to p = 0.5 is larger",
            "Anchor NCM (Hao et al.) Table 3", "dropout-study-mnist5k", "test/accuracy",
            "greater", ((1.0, _drop(loss, 0.5)), (-1.0, _drop(loss, 0.0)),
                        (-1.0, _drop("softmax", 0.5)), (1.0, _drop("softmax", 0.0))),
            note="a difference of differences; the paper trains ~90 epochs on CIFAR-10, "
                 "here " + CPU) for loss, name in (("cncm", "C-NCM"), ("encm", "E-NCM"))],
    Claim("lsoftmax-table3-m4",
          "a larger margin lowers the error: L-Softmax m = 4 beats m = 1 (plain softmax)",
          "L-Softmax (Liu et al.) Table 3", "lsoftmax-margin-mnist5k", "test/accuracy",
          "greater", pair(Group("lsoftmax", (("loss.margin", 4),)),
                          Group("lsoftmax", (("loss.margin", 1),))),
          note="λ annealed to its floor within the run (lambda_decay_epochs) so the margin "
               "acts; " + CPU),
    Claim("lsoftmax-table3-m2",
          "L-Softmax m = 2 beats m = 1 (plain softmax)", "L-Softmax (Liu et al.) Table 3",
          "lsoftmax-margin-mnist5k", "test/accuracy", "greater",
          pair(Group("lsoftmax", (("loss.margin", 2),)),
               Group("lsoftmax", (("loss.margin", 1),))),
          note=CPU),
    *[Claim(f"sigma2r-table2-{dataset}",
            f"σ²R gives a lower intra-class standard deviation (Eq. 12) than center loss "
            f"({dataset})", "σ²R (La Grassa et al.) Table 2", "sigma2r-intra-class",
            "feat/intra_class_std", "greater",
            pair(Group("center", (("data.dataset", dataset),)),
                 Group("sigma2r", (("data.dataset", dataset),))),
            note="claim tested as std(center) > std(σ²R) on the validation features; the "
                 "paper measures CIFAR-10") for dataset in ("fuzzy_rgb", "mnist5k")],
    Claim("pod-table1",
          "within a range, a larger feature dimension raises POD's accuracy: d = 64 beats "
          "d = 9 = k−1", "POD (Zhu & Zu) Table I", "pod-claims-mnist5k", "test/accuracy",
          "greater", pair(Group("pod", (("model.feature_dim", 64), ("loss.lam", 1.0))),
                          Group("pod", (("model.feature_dim", 9), ("loss.lam", 1.0)))),
          note="λ = 1, the authors' L_SC normalisation (sc_norm: official); " + CPU),
    Claim("pod-table5",
          "POD (cosine + SC loss, λ = 1) beats the cosine loss alone (λ = 0)",
          "POD (Zhu & Zu) Table V", "pod-claims-mnist5k", "test/accuracy", "greater",
          pair(Group("pod", (("model.feature_dim", 64), ("loss.lam", 1.0))),
               Group("pod", (("model.feature_dim", 64), ("loss.lam", 0.0)))), note=CPU),
    Claim("wsoftmax-fig5-alpha1",
          "W-Softmax pulls features closer to their own weight vector than softmax: a "
          "smaller mean angle (Eq. 14)", "W-Softmax (Li & Wang) Fig. 5",
          "wsoftmax-angle-mnist5k", "feat/mean_angle_deg", "greater",
          pair(Group("softmax"), Group("wsoftmax", (("loss.alpha", 1.0),))),
          note="tested as angle(softmax) > angle(W-Softmax α = 1), validation features; " + CPU),
    Claim("wsoftmax-fig5-alpha2",
          "the mean angle gets smaller as α increases: α = 2 below α = 1",
          "W-Softmax (Li & Wang) Fig. 5", "wsoftmax-angle-mnist5k", "feat/mean_angle_deg",
          "greater", pair(Group("wsoftmax", (("loss.alpha", 1.0),)),
                          Group("wsoftmax", (("loss.alpha", 2.0),))), note=CPU),
]

# The studies behind the claims, by name -> file under studies/.
CLAIM_STUDIES = {
    "feature-dim-sweep-mnist5k": "feature_dim_sweep_mnist5k.yaml",
    "dropout-study-mnist5k": "dropout_study_mnist5k.yaml",
    "lsoftmax-margin-mnist5k": "lsoftmax_margin_mnist5k.yaml",
    "sigma2r-intra-class": "sigma2r_intra_class.yaml",
    "pod-claims-mnist5k": "pod_claims_mnist5k.yaml",
    "wsoftmax-angle-mnist5k": "wsoftmax_angle_mnist5k.yaml",
}


@dataclass
class Interval:
    difference: float
    se: float
    df: float
    low: float
    high: float
    p_value: float


def contrast(terms: list[tuple[float, list[float]]], alpha: float = ALPHA) -> Interval | None:
    """Welch's interval for Σ c·mean(values); None when a group has fewer than 2 values."""
    from scipy import stats

    if any(len(values) < 2 for _, values in terms):
        return None
    estimate, pieces = 0.0, []
    for coef, values in terms:
        n = len(values)
        mean = sum(values) / n
        var = sum((x - mean) ** 2 for x in values) / (n - 1)
        estimate += coef * mean
        pieces.append((coef * coef * var / n, n))
    se = math.sqrt(sum(v for v, _ in pieces))
    if se == 0.0:
        return Interval(estimate, 0.0, math.inf, estimate, estimate, 0.0 if estimate else 1.0)
    df = se ** 4 / sum(v * v / (n - 1) for v, n in pieces)
    half = stats.t.ppf(1 - alpha / 2, df) * se
    p_value = 2 * stats.t.sf(abs(estimate) / se, df)
    return Interval(estimate, se, df, estimate - half, estimate + half, p_value)


def verdict(claim: Claim, interval: Interval | None) -> str:
    """The rule of the module docstring."""
    if interval is None:
        return INCONCLUSIVE
    if claim.kind == "greater":
        if interval.low > 0:
            return SUPPORTED
        return CONTRADICTED if interval.high < 0 else INCONCLUSIVE
    if -claim.delta < interval.low and interval.high < claim.delta:
        return SUPPORTED
    if interval.low > claim.delta or interval.high < -claim.delta:
        return CONTRADICTED
    return INCONCLUSIVE


def rule(claim: Claim) -> str:
    if claim.kind == "greater":
        return "Δ > 0: Welch 95 % CI above 0 supports, below 0 contradicts"
    return (f"|Δ| ≤ {claim.delta:g}: Welch 95 % CI inside ±{claim.delta:g} supports, wholly "
            f"beyond it contradicts")


@dataclass
class Result:
    claim: Claim
    groups: list[list[float]] = field(default_factory=list)  # per term, its values
    interval: Interval | None = None
    verdict: str = INCONCLUSIVE


def evaluate(claim: Claim, record: StudyRecord | None) -> Result:
    """The claim against a study's record (None: the study did not run)."""
    if record is None:
        return Result(claim, [[] for _ in claim.terms])
    trials = list(record.trials.values())
    groups = [group.values(trials, claim.metric) for _, group in claim.terms]
    interval = contrast([(coef, values) for (coef, _), values in zip(claim.terms, groups)])
    return Result(claim, groups, interval, verdict(claim, interval))


def claims_table(records: dict[str, StudyRecord]) -> "Any":
    """One row per claim (pandas DataFrame): the claim, its source, each group's mean ± std (n),
    the contrast Δ with its 95 % CI and p-value, the rule and the verdict."""
    import pandas as pd

    from featloss.summary import fmt_ci, fmt_mean, fmt_number

    rows = []
    for claim in CLAIMS:
        result = evaluate(claim, records.get(claim.study))
        groups = "; ".join(f"{group.label()}: {fmt_mean(*_mean_std(values))} (n={len(values)})"
                           for (_, group), values in zip(claim.terms, result.groups))
        i = result.interval
        rows.append({
            "claim": claim.text, "source": claim.source, "study": claim.study,
            "metric": claim.metric, "Δ": claim.contrast(), "groups: mean ± std (n)": groups,
            "Δ [95 % CI]": f"{fmt_number(i.difference)} {fmt_ci(i.low, i.high)}" if i else "-",
            "p": f"{i.p_value:.2g}" if i else "-", "rule": rule(claim),
            "verdict": result.verdict, "note": claim.note, "id": claim.id})
    return pd.DataFrame(rows)


def _mean_std(values: list[float]) -> tuple[float, float, int]:
    n = len(values)
    if not n:
        return math.nan, math.nan, 0
    mean = sum(values) / n
    std = math.sqrt(sum((x - mean) ** 2 for x in values) / (n - 1)) if n > 1 else math.nan
    return mean, std, n
