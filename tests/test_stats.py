"""mcl.stats: the one-sided tests behind the demo's paired comparison, against printed tables."""

import pytest

from mcl.stats import paired_t_test_p, sign_test_p, student_t_sf

# Student's t, one-sided 5% and 1% critical values from the standard table (df: t_0.05, t_0.01).
T_TABLE = {1: (6.314, 31.821), 2: (2.920, 6.965), 3: (2.353, 4.541), 4: (2.132, 3.747), 5: (2.015, 3.365),
           9: (1.833, 2.821), 30: (1.697, 2.457)}


@pytest.mark.parametrize("df", sorted(T_TABLE))
def test_student_t_tail_matches_the_printed_critical_values(df):
    t05, t01 = T_TABLE[df]
    assert student_t_sf(t05, df) == pytest.approx(0.05, abs=2e-4)
    assert student_t_sf(t01, df) == pytest.approx(0.01, abs=1e-4)
    assert student_t_sf(-t05, df) == pytest.approx(0.95, abs=2e-4)     # symmetric
    assert student_t_sf(0.0, df) == pytest.approx(0.5)


def test_student_t_refuses_a_fractional_df():
    with pytest.raises(ValueError, match="positive integer"):
        student_t_sf(1.0, 2.5)


def test_sign_test_counts_binomial_tails():
    assert sign_test_p(5, 5) == pytest.approx(1 / 32)
    assert sign_test_p(4, 5) == pytest.approx(6 / 32)
    assert sign_test_p(0, 3) == pytest.approx(1.0)
    assert sign_test_p(0, 0) is None


def test_paired_t_test_on_known_differences():
    # mean 1, sample std 1, n 4: t = 1 / (1 / 2) = 2 on 3 df, P(T >= 2) = 0.0697 (between the table's 5% at
    # 2.353 and 10% at 1.638).
    half = 0.5 ** 0.5
    assert paired_t_test_p([0.0, 2.0, 1.0 - half, 1.0 + half]) == pytest.approx(0.0697, abs=2e-4)
    assert paired_t_test_p([1.0]) is None
    assert paired_t_test_p([0.5, 0.5]) == 0.0 and paired_t_test_p([-0.5, -0.5]) == 1.0
    assert paired_t_test_p([-1.0, -2.0, -3.0]) > 0.9                        # losses: no evidence of a gain
