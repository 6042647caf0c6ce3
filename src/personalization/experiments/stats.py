"""The statistics of an experiment's results, from per-arm aggregates (pure: no I/O).

The conventions are those of GrowthBook's engine (``gbstats``), reimplemented on scipy
(gbstats pins numpy < 2, which pyarrow here cannot share):

* **Relative uplift** ``(mean_on - mean_off) / |mean_off|``; its variance by the delta
  method, ``var_on / (n_on * m_off**2) + var_off * m_on**2 / (n_off * m_off**4)``
  (gbstats ``variance_of_ratios`` with zero covariance: the arms are independent).
* **Welch's t**: Welch-Satterthwaite degrees of freedom from the two arms' variances;
  two-sided p-value ``2 * sf(|estimate / se|, dof)``, 95% interval
  ``estimate +- t_{0.975, dof} * se`` (alpha 0.05).
* **CUPED** (``cuped=True``): the pre-exposure value ``x`` of the same metric is the
  covariate; ``theta = cov(x, y) / var(x)`` pooled over both arms; each arm's mean
  becomes ``mean(y) - theta * mean(x)``, the relative estimate is divided by the control's
  *unadjusted* mean, and the variance is gbstats' ``frequentist_variance_relative_cuped``.
* **SRM**: Pearson's chi-square of the arms' reader counts against the rollout split.
* **Chance to win**: gbstats' Bayesian effect test with its default flat prior, i.e. the
  normal approximation ``N(estimate, se**2)`` of the relative lift: ``P(lift > 0)``
  (higher is better).

Every statistic needs only n, sum, sum of squares (and for CUPED the covariate's sums and
the cross products) per arm, which PostgreSQL computes next to the data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from scipy import stats as sps

ALPHA = 0.05
# Below this many readers in an arm no inference is made (too few for the normal
# approximations the delta method and the Welch interval rest on).
MIN_USERS_PER_ARM = 30


@dataclass(frozen=True)
class ArmMoments:
    """Sufficient statistics of one arm: readers, and the sums of the metric ``y`` and covariate ``x``."""

    variant: str
    n: int
    sum_y: float
    sum_y2: float
    sum_x: float = 0.0
    sum_x2: float = 0.0
    sum_xy: float = 0.0

    @property
    def mean(self) -> float:
        return self.sum_y / self.n if self.n else 0.0

    @property
    def variance(self) -> float:
        """Sample variance of ``y`` (n - 1 in the denominator); 0 below two readers."""
        return _variance(self.n, self.sum_y, self.sum_y2)

    @property
    def mean_x(self) -> float:
        return self.sum_x / self.n if self.n else 0.0

    @property
    def variance_x(self) -> float:
        return _variance(self.n, self.sum_x, self.sum_x2)

    @property
    def covariance(self) -> float:
        """Sample covariance of ``y`` and ``x``."""
        return _covariance(self.n, self.sum_y, self.sum_x, self.sum_xy)


def _variance(n: int, s: float, s2: float) -> float:
    if n <= 1:
        return 0.0
    # Clamp the rounding noise of the one-pass formula (a constant metric gives -1e-17).
    return max((s2 - s * s / n) / (n - 1), 0.0)


def _covariance(n: int, sa: float, sb: float, sab: float) -> float:
    if n <= 1:
        return 0.0
    return (sab - sa * sb / n) / (n - 1)


@dataclass(frozen=True)
class Uplift:
    """The relative difference of means with its frequentist inference."""

    estimate: float
    std_error: float
    dof: float
    ci95: tuple[float, float]
    p_value: float


@dataclass(frozen=True)
class Analysis:
    """Everything the results route reports about one metric in one phase."""

    control: ArmMoments
    treatment: ArmMoments
    uplift: Uplift | None
    chance_to_win: float | None
    srm_p_value: float | None
    theta: float | None
    warning: str | None

    def as_dict(self) -> dict[str, Any]:
        u = self.uplift
        return {
            "variants": [
                {"variant": a.variant, "users": a.n, "mean": a.mean, "variance": a.variance}
                for a in (self.control, self.treatment)
            ],
            "relative_uplift": {
                "estimate": u.estimate if u else None,
                "ci95": list(u.ci95) if u else None,
                "p_value": u.p_value if u else None,
                "std_error": u.std_error if u else None,
                "dof": u.dof if u else None,
            },
            "srm_p_value": self.srm_p_value,
            "chance_to_win": self.chance_to_win,
            "cuped_theta": self.theta,
            "warning": self.warning,
        }


def srm_p_value(n_off: int, n_on: int, on_share: float) -> float | None:
    """Chi-square p-value of the observed split against the expected share of ``on``.

    None when the split leaves one arm empty by design (0% or 100%) or nobody was exposed.
    """
    total = n_off + n_on
    if total == 0 or not 0.0 < on_share < 1.0:
        return None
    expected = [total * (1.0 - on_share), total * on_share]
    return float(sps.chisquare([n_off, n_on], expected).pvalue)


def pooled_theta(a: ArmMoments, b: ArmMoments) -> float:
    """CUPED's coefficient: covariance of metric and covariate over their variance, both arms pooled."""
    n = a.n + b.n
    var_x = _variance(n, a.sum_x + b.sum_x, a.sum_x2 + b.sum_x2)
    var_y = _variance(n, a.sum_y + b.sum_y, a.sum_y2 + b.sum_y2)
    if var_x <= 0.0 or var_y <= 0.0:
        return 0.0
    return _covariance(n, a.sum_y + b.sum_y, a.sum_x + b.sum_x, a.sum_xy + b.sum_xy) / var_x


def _welch_dof(var_a: float, n_a: int, var_b: float, n_b: int) -> float:
    num = (var_b / n_b + var_a / n_a) ** 2
    den = var_b**2 / (n_b**2 * (n_b - 1)) + var_a**2 / (n_a**2 * (n_a - 1))
    return num / den if den > 0 else float(n_a + n_b - 2)


def _relative_plain(a: ArmMoments, b: ArmMoments) -> tuple[float, float, float]:
    """(estimate, variance, dof) of the relative uplift without adjustment."""
    ma, mb = a.mean, b.mean
    va, vb = a.variance, b.variance
    estimate = (mb - ma) / abs(ma)
    variance = vb / (b.n * ma**2) + va * mb**2 / (a.n * ma**4)
    return estimate, variance, _welch_dof(va, a.n, vb, b.n)


def _relative_cuped(a: ArmMoments, b: ArmMoments, theta: float) -> tuple[float, float, float]:
    """(estimate, variance, dof) of the CUPED-adjusted relative uplift (gbstats' formulas)."""
    ua = a.mean  # the control's unadjusted mean: the denominator of the relative lift
    adj_a = a.mean - theta * a.mean_x
    adj_b = b.mean - theta * b.mean_x
    estimate = (adj_b - adj_a) / abs(ua)
    num_trt = b.variance + theta**2 * b.variance_x - 2 * theta * b.covariance
    const = -b.mean
    num_ctrl = a.variance * const**2 / ua**2 + 2 * theta * a.covariance * const / ua + theta**2 * a.variance_x
    variance = num_trt / (b.n * ua**2) + num_ctrl / (a.n * ua**2)
    var_adj_a = a.variance + theta**2 * a.variance_x - 2 * theta * a.covariance
    var_adj_b = num_trt
    return estimate, variance, _welch_dof(var_adj_a, a.n, var_adj_b, b.n)


def analyse(
    control: ArmMoments,
    treatment: ArmMoments,
    *,
    on_share: float,
    cuped: bool = False,
    alpha: float = ALPHA,
    min_users: int = MIN_USERS_PER_ARM,
) -> Analysis:
    """Welch's t on the relative uplift (delta method), SRM and chance to win.

    ``control`` is the ``off`` arm, ``treatment`` the ``on`` arm, ``on_share`` the rollout
    split's expected share of ``on`` among randomised readers.  When the data cannot
    support inference (too few readers, a control mean of 0, no variance) the result
    carries a ``warning`` and no p-value, interval or chance to win.
    """
    srm = srm_p_value(control.n, treatment.n, on_share)
    theta = pooled_theta(control, treatment) if cuped else None

    def without(warning: str) -> Analysis:
        return Analysis(control, treatment, None, None, srm, theta, warning)

    if control.n < min_users or treatment.n < min_users:
        return without(
            f"too few readers for inference: each variant needs at least {min_users} "
            f"(off: {control.n}, on: {treatment.n})"
        )
    if control.mean == 0.0:
        return without("the off variant's mean is 0: a relative uplift is undefined")
    if control.variance <= 0.0 and treatment.variance <= 0.0:
        return without("the metric has no variance in either variant")
    estimate, variance, dof = (
        _relative_cuped(control, treatment, theta) if theta is not None else _relative_plain(control, treatment)
    )
    if not variance > 0.0 or not math.isfinite(variance):
        return without("the variance of the uplift is not positive: no inference")
    se = math.sqrt(variance)
    p_value = float(2.0 * sps.t.sf(abs(estimate) / se, dof))
    half = float(sps.t.ppf(1.0 - alpha / 2.0, dof)) * se
    chance = float(sps.norm.sf(0.0, loc=estimate, scale=se))
    uplift = Uplift(estimate, se, dof, (estimate - half, estimate + half), p_value)
    return Analysis(control, treatment, uplift, chance, srm, theta, None)
