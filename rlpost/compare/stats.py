"""Statistics of a comparison: mean with a Student-t confidence interval, reward area under the curve.

No SciPy: the t quantile is found by bisection on the t CDF, written with the regularized
incomplete beta function (continued fraction, Numerical Recipes 3rd ed. sec. 6.4).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple


class MeanCI(NamedTuple):
    """Mean of n values and the half-width of its confidence interval (NaN when n < 2)."""

    mean: float
    half_width: float
    n: int

    def fmt(self, digits: int = 3, signed: bool = False) -> str:
        if self.n == 0:
            return "n/a"
        m = f"{self.mean:+.{digits}f}" if signed else f"{self.mean:.{digits}f}"
        return m if self.n < 2 else f"{m} ± {self.half_width:.{digits}f}"


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny, qab, qap, qam = 1e-300, a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta function I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    ln_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(ln_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(ln_front) * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with ``df`` degrees of freedom:  1 - I_{df/(df+t^2)}(df/2, 1/2) / 2 for t > 0."""
    tail = 0.5 * betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t >= 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The t with P(T <= t) = p (bisection to 1e-12), e.g. t_quantile(0.975, 2) = 4.3027."""
    if not 0.0 < p < 1.0 or df <= 0:
        raise ValueError(f"need 0 < p < 1 and df > 0, got p={p}, df={df}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if t_cdf(mid, df) < p else (lo, mid)
        if hi - lo < 1e-12:
            break
    return 0.5 * (lo + hi)


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> MeanCI:
    r"""Mean and the half-width of its two-sided Student-t interval across seeds.

        half = t_{(1+c)/2, n-1} * s / sqrt(n),   s the sample (n-1) standard deviation.

    n = 1 gives NaN for the half-width (no spread to estimate); n = 0 a NaN mean.
    """
    xs = [float(v) for v in values]
    n = len(xs)
    if n == 0:
        return MeanCI(math.nan, math.nan, 0)
    mean = sum(xs) / n
    if n < 2:
        return MeanCI(mean, math.nan, 1)
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
    return MeanCI(mean, t_quantile((1.0 + confidence) / 2.0, n - 1) * sd / math.sqrt(n), n)


def reward_auc(steps: Sequence[float], rewards: Sequence[float]) -> float:
    r"""Normalised area under the reward curve: trapezoid over steps divided by the step span,

        AUC = (1 / (s_K - s_1)) * sum_k (s_{k+1} - s_k) * (r_k + r_{k+1}) / 2,

    i.e. the mean reward of the piecewise-linear curve (in reward units; 1.0 = always correct).
    A single point gives its reward.
    """
    if len(steps) != len(rewards) or not steps:
        raise ValueError(f"need as many steps as rewards (>= 1), got {len(steps)} and {len(rewards)}")
    if len(steps) == 1:
        return float(rewards[0])
    area = sum((steps[k + 1] - steps[k]) * (rewards[k] + rewards[k + 1]) / 2.0 for k in range(len(steps) - 1))
    return area / (steps[-1] - steps[0])


def welch_diff_ci(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> MeanCI:
    r"""mean(a) - mean(b) with a Welch (unequal-variance) t interval:

        half = t_{(1+c)/2, nu} * sqrt(s_a^2/n_a + s_b^2/n_b),
        nu   = (s_a^2/n_a + s_b^2/n_b)^2 / ((s_a^2/n_a)^2/(n_a-1) + (s_b^2/n_b)^2/(n_b-1)).

    Both samples need n >= 2 (else the half-width is NaN); no spread at all gives half-width 0.
    ``n`` of the result is min(n_a, n_b).
    """
    xa, xb = [float(v) for v in a], [float(v) for v in b]
    na, nb = len(xa), len(xb)
    if na == 0 or nb == 0:
        return MeanCI(math.nan, math.nan, 0)
    diff = sum(xa) / na - sum(xb) / nb
    if na < 2 or nb < 2:
        return MeanCI(diff, math.nan, min(na, nb))
    va = sum((x - sum(xa) / na) ** 2 for x in xa) / (na - 1) / na
    vb = sum((x - sum(xb) / nb) ** 2 for x in xb) / (nb - 1) / nb
    if va + vb == 0:
        return MeanCI(diff, 0.0, min(na, nb))
    nu = (va + vb) ** 2 / (va**2 / (na - 1) + vb**2 / (nb - 1))
    return MeanCI(diff, t_quantile((1.0 + confidence) / 2.0, nu) * math.sqrt(va + vb), min(na, nb))
