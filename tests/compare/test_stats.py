import math

import pytest

from rlpost.compare.stats import mean_ci, reward_auc, t_cdf, t_quantile, welch_diff_ci


@pytest.mark.parametrize(
    "df, expected",
    # two-sided 95% critical values of Student's t (standard tables)
    [(1, 12.7062), (2, 4.3027), (3, 3.1824), (4, 2.7764), (9, 2.2622), (10, 2.2281), (29, 2.0452), (30, 2.0423),
     (1000, 1.9623)],
)
def test_t_quantile_matches_the_table(df, expected):
    assert t_quantile(0.975, df) == pytest.approx(expected, abs=1e-4)


def test_t_cdf_symmetry_and_known_value():
    assert t_cdf(0.0, 5) == pytest.approx(0.5, abs=1e-12)
    assert t_cdf(-2.0, 7) == pytest.approx(1 - t_cdf(2.0, 7), abs=1e-12)
    # df = 1 is the Cauchy distribution: P(T <= 1) = 1/2 + atan(1)/pi = 0.75
    assert t_cdf(1.0, 1) == pytest.approx(0.75, abs=1e-10)
    assert t_quantile(0.025, 4) == pytest.approx(-2.7764, abs=1e-4)


def test_mean_ci_hand_computed():
    # [0.60, 0.70, 0.80]: mean 0.70, sample sd 0.10, t(0.975, 2) = 4.30265 -> half = 4.30265 * 0.1 / sqrt(3) = 0.24841
    m = mean_ci([0.60, 0.70, 0.80])
    assert m.mean == pytest.approx(0.70)
    assert m.half_width == pytest.approx(0.24841, abs=1e-5)
    assert m.n == 3
    assert m.fmt(3) == "0.700 ± 0.248"
    # five values 2, 4, 4, 4, 5: mean 3.8, sd sqrt(4.8/4) = 1.09545, t(0.975, 4) = 2.77645 -> half = 1.36017
    m = mean_ci([2, 4, 4, 4, 5])
    assert (m.mean, round(m.half_width, 5)) == (pytest.approx(3.8), 1.36017)


def test_mean_ci_edge_cases():
    one = mean_ci([0.5])
    assert one.mean == 0.5 and math.isnan(one.half_width) and one.fmt(2) == "0.50"
    assert mean_ci([]).n == 0 and mean_ci([]).fmt() == "n/a"
    assert mean_ci([0.3, 0.3, 0.3]).half_width == 0.0
    assert mean_ci([0.1, 0.3]).fmt(2, signed=True).startswith("+0.20 ± ")


def test_welch_difference_hand_computed():
    # a = [1, 2, 3] (var 1), b = [4, 6, 8] (var 4): diff -4, se^2 = 1/3 + 4/3 = 5/3,
    # nu = (5/3)^2 / ((1/3)^2/2 + (4/3)^2/2) = (25/9) / (17/18) = 2.94118, t(0.975, 2.94118) = 3.2188
    d = welch_diff_ci([1, 2, 3], [4, 6, 8])
    assert d.mean == pytest.approx(-4.0)
    assert d.half_width == pytest.approx(t_quantile(0.975, 50 / 17) * math.sqrt(5 / 3), rel=1e-9)
    assert d.half_width == pytest.approx(3.2188 * 1.29099, abs=1e-3)  # = 4.1554
    assert welch_diff_ci([1, 1], [1, 1]).half_width == 0.0


def test_reward_auc_is_the_mean_of_the_piecewise_linear_curve():
    # trapezoid over steps 1..3 of rewards 0, 1, 1: (0.5 + 1) / 2 steps = 0.75
    assert reward_auc([1, 2, 3], [0.0, 1.0, 1.0]) == pytest.approx(0.75)
    assert reward_auc([1, 2, 3, 4, 5], [0.5] * 5) == pytest.approx(0.5)          # flat curve: its value
    assert reward_auc([0, 10], [0.0, 1.0]) == pytest.approx(0.5)                # uneven spacing is respected
    assert reward_auc([7], [0.25]) == 0.25
    with pytest.raises(ValueError, match="as many steps as rewards"):
        reward_auc([1, 2], [0.1])
