"""The results statistics against scipy and numpy on fixed data, and their calibration.

Calibration bound: with N simulated experiments and a test of level 5%, the number of
rejections is Binomial(N, 0.05) when the test is calibrated; the test asserts it lies in
the central 99.9% interval of that distribution (for N = 2000: 69..133 rejections,
3.45%..6.65%), so a calibrated implementation fails it once in a thousand runs at most —
never here, the seeds are fixed.  Coverage is checked the same way against
Binomial(N, 0.95).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from personalization.experiments.stats import ArmMoments, analyse, pooled_theta, srm_p_value

RUNS = 2000
USERS = 500  # per arm and run


def _moments(variant: str, y: np.ndarray, x: np.ndarray | None = None) -> ArmMoments:
    x = np.zeros_like(y) if x is None else x
    return ArmMoments(
        variant, len(y), float(y.sum()), float((y * y).sum()), float(x.sum()), float((x * x).sum()),
        float((x * y).sum()),
    )


def _fixed_data() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(20260101)
    xa = rng.gamma(2.0, 1.5, 400)
    xb = rng.gamma(2.0, 1.5, 350)
    ya = 0.8 * xa + rng.normal(1.0, 1.0, 400)
    yb = 0.8 * xb + rng.normal(1.3, 1.4, 350)
    return ya, xa, yb, xb


def test_welch_delta_method_matches_scipy() -> None:
    ya, _, yb, _ = _fixed_data()
    res = analyse(_moments("off", ya), _moments("on", yb), on_share=0.5)
    assert res.uplift is not None and res.warning is None
    # Welch-Satterthwaite degrees of freedom are scipy's.
    welch = sps.ttest_ind(yb, ya, equal_var=False)
    assert res.uplift.dof == pytest.approx(welch.df, rel=1e-9)
    # The delta method from the raw arrays.
    ma, mb = ya.mean(), yb.mean()
    var = yb.var(ddof=1) / (len(yb) * ma**2) + ya.var(ddof=1) * mb**2 / (len(ya) * ma**4)
    est = (mb - ma) / ma
    assert res.uplift.estimate == pytest.approx(est, rel=1e-12)
    assert res.uplift.std_error == pytest.approx(math.sqrt(var), rel=1e-9)
    tcrit = sps.t.ppf(0.975, welch.df)
    assert res.uplift.ci95 == pytest.approx((est - tcrit * math.sqrt(var), est + tcrit * math.sqrt(var)), rel=1e-9)
    assert res.uplift.p_value == pytest.approx(2 * sps.t.sf(abs(est) / math.sqrt(var), welch.df), rel=1e-9)
    # Chance to win: the normal approximation of the relative lift.
    assert res.chance_to_win == pytest.approx(sps.norm.cdf(est / math.sqrt(var)), rel=1e-9)
    # SRM: scipy's chi-square against the split.
    assert res.srm_p_value == pytest.approx(sps.chisquare([400, 350], [375, 375]).pvalue, rel=1e-12)
    assert srm_p_value(400, 350, 0.2) == pytest.approx(sps.chisquare([400, 350], [600, 150]).pvalue, rel=1e-12)
    assert srm_p_value(10, 0, 1.0) is None and srm_p_value(0, 0, 0.5) is None


def test_cuped_matches_the_regression_and_the_delta_method() -> None:
    ya, xa, yb, xb = _fixed_data()
    res = analyse(_moments("off", ya, xa), _moments("on", yb, xb), on_share=0.5, cuped=True)
    assert res.uplift is not None and res.theta is not None
    # theta is the pooled least-squares slope of y on x.
    slope = sps.linregress(np.concatenate([xa, xb]), np.concatenate([ya, yb])).slope
    assert res.theta == pytest.approx(slope, rel=1e-9)
    theta = res.theta
    est = ((yb.mean() - theta * xb.mean()) - (ya.mean() - theta * xa.mean())) / ya.mean()
    assert res.uplift.estimate == pytest.approx(est, rel=1e-9)
    # gbstats' variance: the delta method with gradients (1/ya, -theta/ya) for the treatment
    # and (-yb/ya^2, theta/ya) for the control, each arm's covariance matrix from numpy.
    ma, mb = ya.mean(), yb.mean()
    gb = np.array([1 / ma, -theta / ma])
    ga = np.array([-mb / ma**2, theta / ma])
    var = gb @ np.cov(yb, xb) @ gb / len(yb) + ga @ np.cov(ya, xa) @ ga / len(ya)
    assert res.uplift.std_error == pytest.approx(math.sqrt(var), rel=1e-9)
    plain = analyse(_moments("off", ya, xa), _moments("on", yb, xb), on_share=0.5)
    assert plain.uplift is not None
    # The covariate explains most of the variance: a much narrower interval.
    assert res.uplift.std_error < 0.7 * plain.uplift.std_error
    # Welch's dof on the adjusted values y - theta x.
    welch = sps.ttest_ind(yb - theta * xb, ya - theta * xa, equal_var=False)
    assert res.uplift.dof == pytest.approx(welch.df, rel=1e-9)
    assert pooled_theta(_moments("off", ya), _moments("on", yb)) == 0.0  # no covariate variance


def test_no_inference_without_enough_data() -> None:
    small = analyse(_moments("off", np.ones(10)), _moments("on", np.ones(40)), on_share=0.5)
    assert small.uplift is None and small.chance_to_win is None and "too few readers" in (small.warning or "")
    assert small.srm_p_value is not None
    zero = analyse(_moments("off", np.zeros(50)), _moments("on", np.ones(50)), on_share=0.5)
    assert zero.uplift is None and "mean is 0" in (zero.warning or "")
    flat = analyse(_moments("off", np.ones(50)), _moments("on", np.ones(50)), on_share=0.5)
    assert flat.uplift is None and "no variance" in (flat.warning or "")
    d = small.as_dict()
    assert d["relative_uplift"]["p_value"] is None and d["variants"][0]["users"] == 10


def _simulate(rng: np.random.Generator, lift: float, runs: int = RUNS, n: int = USERS) -> tuple[np.ndarray, ...]:
    """Per run and arm: y and x arrays (runs x n); reading counts with a per-reader habit."""
    habit_a = rng.gamma(1.5, 1.0, (runs, n))
    habit_b = rng.gamma(1.5, 1.0, (runs, n))
    xa, xb = rng.poisson(habit_a), rng.poisson(habit_b)
    ya, yb = rng.poisson(habit_a), rng.poisson(habit_b * (1 + lift))
    return ya.astype(float), xa.astype(float), yb.astype(float), xb.astype(float)


def _analyse_runs(sim: tuple[np.ndarray, ...], cuped: bool) -> list[tuple[float, float, float]]:
    ya, xa, yb, xb = sim
    out = []
    for i in range(ya.shape[0]):
        res = analyse(_moments("off", ya[i], xa[i]), _moments("on", yb[i], xb[i]), on_share=0.5, cuped=cuped)
        assert res.uplift is not None
        out.append((res.uplift.p_value, *res.uplift.ci95))
    return out


def _bound(p: float, runs: int = RUNS) -> tuple[float, float]:
    lo, hi = sps.binom.interval(0.999, runs, p)
    return float(lo), float(hi)


@pytest.mark.parametrize("cuped", [False, True])
def test_aa_experiments_reject_at_five_percent(cuped: bool) -> None:
    results = _analyse_runs(_simulate(np.random.default_rng(11), 0.0), cuped)
    rejections = sum(p < 0.05 for p, _, _ in results)
    lo, hi = _bound(0.05)
    assert lo <= rejections <= hi, f"{rejections} of {RUNS} A/A runs rejected (bound {lo}..{hi})"


@pytest.mark.parametrize("cuped", [False, True])
def test_known_lift_is_covered_95_percent_of_the_time(cuped: bool) -> None:
    lift = 0.20
    results = _analyse_runs(_simulate(np.random.default_rng(12), lift), cuped)
    covered = sum(lo <= lift <= hi for _, lo, hi in results)
    lo, hi = _bound(0.95)
    assert lo <= covered <= hi, f"{covered} of {RUNS} intervals covered the lift (bound {lo}..{hi})"
    # And the effect is found: most runs reject the null.
    assert sum(p < 0.05 for p, _, _ in results) > 0.5 * RUNS


def test_srm_is_calibrated_under_a_correct_split() -> None:
    rng = np.random.default_rng(13)
    on = rng.binomial(1000, 0.3, RUNS)
    ps = [srm_p_value(1000 - int(k), int(k), 0.3) for k in on]
    rejections = sum(p is not None and p < 0.05 for p in ps)
    lo, hi = _bound(0.05)
    assert lo <= rejections <= hi
    assert (srm_p_value(600, 400, 0.5) or 1.0) < 1e-9  # a broken split is flagged
