"""Tests of results/stats.py on small CSVs it writes itself, against answers known without rliable."""

import csv
import math
import os
import sys

import numpy as np
import pytest
import scipy.stats

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import stats  # noqa: E402

REPS = 2000  # enough for CIs whose bounds are known exactly (all-equal or fully separated samples)


def write_run(folder, variant, seed, returns, kept=None, mse_ratio=1.0):
    """A progress.csv with one evaluation every 250 steps: the columns stats.py reads."""
    kept = [math.nan] * len(returns) if kept is None else kept
    with open(os.path.join(folder, f"{variant}_seed{seed}.csv"), "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["env_steps", "eval_return", "finetune_steps_kept", "holdout_mse_phase1", "holdout_mse_phase2"])
        for i, (ret, k) in enumerate(zip(returns, kept)):
            out.writerow([250 * (i + 1), ret, k, 0.1, 0.1 * mse_ratio])


def test_final_score_auc_and_the_budget_cut(tmp_path):
    write_run(tmp_path, "mbpo", 1, [0, 0, 100, 200, 300, 400, 500, 9360])  # to 2,000 steps
    write_run(tmp_path, "mbpo", 2, [0, 0, 100])  # stopped at 750: left out at a budget of 1,000 or more
    runs = stats.load(str(tmp_path), 1750)
    assert list(runs) == ["mbpo"] and list(runs["mbpo"]) == [1]
    run = runs["mbpo"][1]
    assert list(run["env_steps"]) == [250, 500, 750, 1000, 1250, 1500, 1750]  # cut at the budget
    assert stats.final_score(run) == pytest.approx((100 + 200 + 300 + 400 + 500) / 5)
    assert stats.normalised_auc(run) == pytest.approx(1500 / 7 / 9360)


def test_iqm_of_a_known_set_and_its_interval():
    """The IQM of 1..8 is the mean of the middle half, 3..6: 4.5; identical runs have a CI of one point."""
    point, low, high = stats.iqm_intervals({"a": np.arange(1.0, 9.0)[:, None]}, REPS)["a"]
    assert point == pytest.approx(4.5) and low < 4.5 < high
    assert stats.iqm_intervals({"b": np.full((6, 1), 7.0)}, REPS)["b"] == pytest.approx((7.0, 7.0, 7.0))


def test_probability_of_improvement_known_cases():
    same = np.arange(10.0)[:, None]
    assert stats.improvement_probability(same, same.copy(), REPS)[0] == 0.5
    high, low = np.arange(10.0, 20.0)[:, None], np.arange(10.0)[:, None]
    assert stats.improvement_probability(high, low, REPS) == (1.0, 1.0, 1.0)
    assert stats.improvement_probability(low, high, REPS) == (0.0, 0.0, 0.0)
    x, y = np.array([[3.0], [1.0], [2.0]]), np.array([[2.0], [2.0]])  # pairs: 3>2 twice, 1<2 twice, ties count a half
    assert stats.improvement_probability(x, y, REPS)[0] == pytest.approx((2 + 0 + 2 * 0.5) / 6)


def test_verdicts_and_fisher():
    assert stats.verdict(0.0, 0.4, "USB-PO", "MBPO", 10) == "MBPO ahead"
    assert stats.verdict(0.6, 1.0, "USB-PO", "MBPO", 10) == "USB-PO ahead"
    assert stats.verdict(0.3, 0.5, "USB-PO", "MBPO", 10) == "no difference measurable at 10 seeds"
    assert stats.fisher(4, 4, 1, 4) == pytest.approx(scipy.stats.fisher_exact([[4, 0], [1, 3]])[1]) == pytest.approx(1 / 7)


def test_report_and_figures_end_to_end(tmp_path, capsys):
    for seed in range(1, 5):  # MBPO solves, USB-PO fails: fully separated
        write_run(tmp_path, "mbpo", seed, [1000] * 2 + [9360] * 6)
        write_run(tmp_path, "usbpo", seed, [100 * seed] * 8, kept=[math.nan] + [0, 5, 7, 9, 0, 5, 5], mse_ratio=2.0)
    stats.main([str(tmp_path), "--steps", "2000", "--reps", str(REPS), "--figures", str(tmp_path / "fig")])
    out = capsys.readouterr().out
    assert "| MBPO | 4 | 9,360 [9,360, 9,360] |" in out and "4 of 4 |" in out and "0 of 4 |" in out
    assert "| USB-PO > MBPO | final score | 0.00 [0.00, 0.00] | MBPO ahead |" in out
    assert "| USB-PO | 1 | 100 | 5 of 7 | 5 | 2.000 |" in out  # fine-tunes that kept a step, median kept, MSE ratio
    assert os.path.getsize(tmp_path / "fig_iqm_curve.png") > 0 and os.path.getsize(tmp_path / "fig_profile.png") > 0


def test_iqm_curve_is_rliables_iqm_at_each_step():
    x = np.random.default_rng(0).normal(size=(10, 1, 6))
    assert np.allclose(stats.iqm_per_step(x), [stats.metrics.aggregate_iqm(x[:, :, j]) for j in range(6)])
