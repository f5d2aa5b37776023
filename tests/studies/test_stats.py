"""Intervals and paired tests across seeds, by hand (t(0.975, 2) = 4.3027)."""

import math

import pytest
from scipy import stats as scipy_stats

from fedmm.studies.stats import paired_difference, t_interval
from fedmm.studies.tables import Column, difference_rows, format_difference, format_value, results_table, seeded_rows

T_975_2 = 4.302653


def test_t_interval_by_hand():
    interval = t_interval([1.0, 2.0, 3.0])  # mean 2, sd 1
    assert interval.mean == 2.0 and interval.n == 3
    assert interval.half_width == pytest.approx(T_975_2 / math.sqrt(3), rel=1e-6)
    assert interval.format() == "2.000 ± 2.484"
    assert t_interval([0.5]).half_width is None and t_interval([0.5]).format() == "0.500"
    assert t_interval([None, float("nan")]) is None
    assert t_interval([0.4, None, 0.6]).n == 2  # missing seeds are left out


def test_a_paired_difference_is_significant_only_when_its_interval_excludes_zero():
    baseline = {0: 1.0, 1: 2.0, 2: 3.0}
    small = paired_difference({0: 1.1, 1: 2.2, 2: 3.3}, baseline)  # differences 0.1, 0.2, 0.3
    assert small.difference.mean == pytest.approx(0.2)
    assert small.difference.half_width == pytest.approx(T_975_2 * 0.1 / math.sqrt(3), rel=1e-6)
    assert not small.significant and small.direction == 0
    assert small.p_value == pytest.approx(scipy_stats.ttest_rel([1.1, 2.2, 3.3], [1.0, 2.0, 3.0]).pvalue)
    large = paired_difference({0: 0.5, 1: 1.4, 2: 2.3}, baseline)  # differences -0.5, -0.6, -0.7
    assert large.significant and large.direction == -1 and large.p_value < 0.05
    # the seeds pair the runs: seed 3 has no baseline, so it is left out
    assert paired_difference({0: 1.0, 3: 9.0}, baseline).difference.n == 1
    assert paired_difference({5: 1.0}, baseline) is None
    same = paired_difference(baseline, baseline)
    assert same.difference.mean == 0 and not same.significant and same.p_value is None
    # 0.2 in every seed, up to float rounding (0.19999999999999998, 0.19999999999999996, 0.20000000000000007):
    # no spread to test, so no p-value (scipy would give about 1e-31)
    rounded = paired_difference({0: 0.3, 1: 0.7, 2: 1.1}, {0: 0.1, 1: 0.5, 2: 0.9})
    assert len({0.3 - 0.1, 0.7 - 0.5, 1.1 - 0.9}) == 3 and rounded.p_value is None


def test_seeded_rows_group_by_setting_and_test_against_the_baseline():
    runs = [{"strategy": name, "seed": seed, "auroc": value, "bytes": 10.0}
            for name, values in (("fedavg", (0.70, 0.72, 0.74)), ("better", (0.80, 0.83, 0.86)))
            for seed, value in enumerate(values)]
    columns = [Column("auroc", "AUROC", lambda s: s["auroc"]),
               Column("bytes", "B", lambda s: s["bytes"], compare=False)]
    fedavg, better = seeded_rows(runs, ["strategy"], columns, lambda setting: {"strategy": "fedavg"})
    assert (fedavg["seeds"], fedavg["seed_list"], fedavg["auroc"]) == (3, "0 1 2", pytest.approx(0.72))
    assert "auroc_diff" not in fedavg  # not against itself
    assert better["auroc_diff"] == pytest.approx(0.11) and better["auroc_sig"] == 1  # differences 0.10, 0.11, 0.12
    assert "bytes_diff" not in better  # a cost column is not tested
    assert format_value(better, columns[0]) == f"0.830 ± {T_975_2 * 0.03 / math.sqrt(3):.3f} ↑"
    # the differences 0.10, 0.11, 0.12: sd 0.01; t = 0.11 / (0.01 / sqrt(3)) = 19.05 on 2 degrees of freedom
    assert better["auroc_diff_ci"] == pytest.approx(T_975_2 * 0.01 / math.sqrt(3))
    assert format_difference(better, columns[0]) == f"+0.110 ± {T_975_2 * 0.01 / math.sqrt(3):.3f} (p = 0.0027)"
    assert difference_rows([fedavg, better], "strategy", columns)[2:] == [
        f"| better | 3 | {format_difference(better, columns[0])} |"]  # the baseline and the cost column left out


def test_a_results_table_states_its_legend_budget_and_chance():
    runs = [{"strategy": "fedavg", "seed": seed, "auroc": value, "rounds": 100, "evaluated_round": selected,
             "sample_passes": passes, "chance": {"zeroshot_auroc_macro": 0.5}}
            for seed, value, selected, passes in ((0, 0.70, 24, 1000), (1, 0.72, 40, 2000), (2, 0.74, 100, 5000))]
    columns = [Column("auroc", "AUROC", lambda s: s["auroc"])]
    text = results_table(seeded_rows(runs, ["strategy"], columns), "strategy", columns, runs, None)
    legend_line, _, budget, _, header, _, row = text.splitlines()
    assert "95% Student-t confidence interval" in legend_line and "↑" not in legend_line  # no baseline: no arrows
    assert budget == ("Budget: 100 rounds (the tables show the round each run selected: 24–100); sample passes (one "
                      "sample through one gradient step) per run: 1,000–5,000. Chance on the test set: 0-shot AUROC "
                      "0.500.")
    assert header == "| strategy | seeds | AUROC |"
    assert row == f"| fedavg | 3 | 0.720 ± {T_975_2 * 0.02 / math.sqrt(3):.3f} |"
