"""The claims table: Welch intervals, verdict rules stated in advance, `featloss reproduce`."""

from __future__ import annotations

import math

import pytest

from featloss.claims import (
    CLAIM_STUDIES,
    CLAIMS,
    CONTRADICTED,
    INCONCLUSIVE,
    SUPPORTED,
    Claim,
    Group,
    claims_table,
    contrast,
    evaluate,
    pair,
    verdict,
)
from featloss.record import StudyRecord, TrialRecord


def test_a_two_group_contrast_is_welchs_t_test():
    from scipy import stats

    a, b = [0.91, 0.93, 0.92, 0.95], [0.90, 0.89, 0.92]
    interval = contrast([(1.0, a), (-1.0, b)])
    reference = stats.ttest_ind(a, b, equal_var=False)
    assert interval.difference == pytest.approx(sum(a) / 4 - sum(b) / 3)
    assert interval.p_value == pytest.approx(reference.pvalue)
    ci = reference.confidence_interval(0.95)
    assert (interval.low, interval.high) == pytest.approx((ci.low, ci.high))


def test_a_difference_of_differences_by_hand():
    groups = [[1.0, 3.0], [0.0, 2.0], [2.0, 2.0, 5.0], [1.0, 4.0]]
    interval = contrast([(1.0, groups[0]), (-1.0, groups[1]), (-1.0, groups[2]),
                         (1.0, groups[3])])
    assert interval.difference == pytest.approx(2 - 1 - 3 + 2.5)
    variances = [2.0, 2.0, 3.0, 4.5]
    sizes = [2, 2, 3, 2]
    se2 = sum(v / n for v, n in zip(variances, sizes))
    assert interval.se == pytest.approx(math.sqrt(se2))
    df = se2 ** 2 / sum((v / n) ** 2 / (n - 1) for v, n in zip(variances, sizes))
    assert interval.df == pytest.approx(df)


def test_verdict_rules():
    greater = Claim("g", "", "", "s", "m", "greater", pair(Group("a"), Group("b")))
    within = Claim("w", "", "", "s", "m", "within", pair(Group("a"), Group("b")), delta=0.01)
    assert verdict(greater, contrast([(1, [2.0, 2.1, 2.2]), (-1, [1.0, 1.1, 1.2])])) == SUPPORTED
    assert verdict(greater, contrast([(1, [1.0, 1.1, 1.2]), (-1, [2.0, 2.1, 2.2])])) == \
        CONTRADICTED
    assert verdict(greater, contrast([(1, [1.0, 2.0]), (-1, [1.5, 1.4])])) == INCONCLUSIVE
    assert verdict(greater, None) == INCONCLUSIVE  # fewer than 2 values in a group
    assert verdict(within, contrast([(1, [0.9, 0.901, 0.902]),
                                     (-1, [0.9005, 0.9015, 0.9])])) == SUPPORTED
    assert verdict(within, contrast([(1, [0.95, 0.951, 0.952]),
                                     (-1, [0.90, 0.901, 0.902])])) == CONTRADICTED
    assert verdict(within, contrast([(1, [0.9, 0.95]), (-1, [0.92, 0.90])])) == INCONCLUSIVE


def trial(loss, seed, value, **cell):
    return TrialRecord(key=f"{loss}-{seed}-{cell}", phase="grid", loss=loss, seed=seed, config={},
                       params=cell, status="completed", metrics={"test/accuracy": value})


def test_a_claim_reads_the_completed_trials_of_its_cells():
    claim = next(c for c in CLAIMS if c.id == "lsoftmax-table3-m4")
    record = StudyRecord(study=claim.study, source="x", study_yaml="", tracking_uri="sqlite:///x",
                         storage="/tmp", results_dir="/tmp/x")
    for seed in range(3):
        record.trials[f"a{seed}"] = trial("lsoftmax", seed, 0.95 + seed / 1000,
                                          **{"loss.margin": 4})
        record.trials[f"b{seed}"] = trial("lsoftmax", seed, 0.90 + seed / 1000,
                                          **{"loss.margin": 1})
    record.trials["failed"] = trial("lsoftmax", 9, 0.0, **{"loss.margin": 4})
    record.trials["failed"].status = "failed"
    result = evaluate(claim, record)
    assert [len(g) for g in result.groups] == [3, 3]
    assert result.verdict == SUPPORTED and result.interval.difference == pytest.approx(0.05)
    table = claims_table({claim.study: record})
    row = table[table["id"] == claim.id].iloc[0]
    assert row["verdict"] == SUPPORTED and row["Δ [95 % CI]"].startswith("0.0500 [")
    assert "lsoftmax (margin=4): 0.9510 ± 0.0010 (n=3)" in row["groups: mean ± std (n)"]
    others = table[table["study"] != claim.study]
    assert set(others["verdict"]) == {INCONCLUSIVE}  # studies that did not run


def test_every_claim_study_is_shipped_and_validates():
    from conftest import REPO
    from featloss.plan import expand
    from featloss.study import load_study

    assert {c.study for c in CLAIMS} == set(CLAIM_STUDIES)
    for name, file in CLAIM_STUDIES.items():
        study = load_study(REPO / "studies" / file)
        assert study.name == name
        plan = expand(study)
        cells = [t.params for t in plan.grid_trials]
        for claim in (c for c in CLAIMS if c.study == name):
            for _, group in claim.terms:  # every group the claim reads exists in the plan
                assert any(t.loss == group.loss and all(t.params.get(k) == v
                                                        for k, v in group.cell)
                           for t in plan.grid_trials), (claim.id, group, cells[:3])
            assert len(study.seeds) >= 3  # enough seeds for an interval


@pytest.mark.slow
def test_reproduce_smoke_runs_every_claim_study(tmp_path, mlflow_template):
    import shutil
    import subprocess
    import sys

    shutil.copy(mlflow_template, tmp_path / "m.db")
    proc = subprocess.run([sys.executable, "-m", "featloss", "reproduce", "--smoke", "--out",
                           str(tmp_path / "out"), "--tracking-uri",
                           f"sqlite:///{tmp_path / 'm.db'}", "--storage", str(tmp_path / "r")],
                          capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    text = (tmp_path / "out" / "claims.md").read_text()
    assert text.startswith("# featloss claims (SMOKE RUN")
    assert f"claims: {len(CLAIMS)} " in proc.stdout
    for name in CLAIM_STUDIES:
        assert (tmp_path / "out" / name / "trials.csv").is_file()
        assert (tmp_path / "out" / name / "report.md").is_file()
    again = subprocess.run([sys.executable, "-m", "featloss", "reproduce", "--from-mlflow",
                            "--out", str(tmp_path / "again"), "--tracking-uri",
                            f"sqlite:///{tmp_path / 'm.db'}"], capture_output=True, text=True,
                           timeout=600, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert (tmp_path / "again" / "claims.csv").read_text() == \
        (tmp_path / "out" / "claims.csv").read_text()
