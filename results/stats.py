"""The pre-registered statistics (results/README.md, "Pre-registration") on rliable (Agarwal et al., NeurIPS 2021).

    python results/stats.py [FOLDER] [--steps 15000] [--figures PREFIX]

Reads FOLDER/<variant>_seed<seed>.csv (runs' progress.csv; default results/campaign/InvertedDoublePendulum-v4), keeps
the runs that reached --steps, and prints Markdown tables: per variant the IQM over seeds of the final score (the mean
of the last five evaluations up to --steps) and of the normalised AUC (the mean of eval_return / MAX_RETURN over the
evaluations up to --steps), each with its 95% stratified bootstrap CI; successes (final score >= SUCCESS) with
Fisher's exact test; the probability of improvement of each variant over MBPO (and of the authors' fine-tune over
USB-PO) with its CI and the pre-registered sentence it supports; and the fine-tune diagnostics per run. With
--figures, writes PREFIX_iqm_curve.png (IQM over seeds at each evaluation, CI bands) and PREFIX_profile.png (the
performance profile of the final scores). Needs results/requirements.txt.
"""

import argparse
import csv
import glob
import os
import warnings

import matplotlib
import numpy as np
import scipy.stats
from rliable import library as rly
from rliable import metrics

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

warnings.filterwarnings("ignore", "random_state is deprecated", FutureWarning)  # arch, under rliable 1.2.0's bootstrap

HERE = os.path.dirname(os.path.abspath(__file__))
MAX_RETURN = 9360.0  # InvertedDoublePendulum's plateau, which every solved run reaches
SUCCESS = 9000.0  # a final score at least this: solved and held
REPS = 50_000  # stratified bootstrap resamples, as pre-registered
NAMES = {"mbpo": "MBPO", "usbpo": "USB-PO", "usbpo_authors": "USB-PO, authors' fine-tune",
         "usbpo_authors_loss": "USB-PO, authors' loss with its own Adam"}  # fmt: skip


def load(folder, steps):
    """{variant: {seed: {"steps": array, "eval_return": array, ...}}} of the runs that reached `steps`, cut at `steps`."""
    runs = {}
    for path in sorted(glob.glob(os.path.join(folder, "*_seed*.csv"))):
        variant, seed = os.path.basename(path)[: -len(".csv")].split("_seed")
        with open(path) as f:
            rows = [row for row in csv.DictReader(f) if int(row["env_steps"]) <= steps]
        if rows and int(rows[-1]["env_steps"]) == steps:
            columns = {key: np.array([float(row[key]) for row in rows]) for key in rows[0]}
            runs.setdefault(variant, {})[int(seed)] = columns
    return runs


def final_score(run):
    """The mean of the last five evaluations."""
    return run["eval_return"][-5:].mean()


def normalised_auc(run):
    """The area under the evaluation curve over the run's length, divided by its maximum: each evaluation stands for
    the steps since the previous one, so this is the mean of eval_return / MAX_RETURN."""
    return (run["eval_return"] / MAX_RETURN).mean()


def scores(runs, per_run):
    """{variant: array [seeds, 1]} of one number per run (rliable's layout: runs by tasks, one task)."""
    return {variant: np.array([[per_run(run)] for _, run in sorted(seeds.items())]) for variant, seeds in runs.items()}


def iqm_intervals(score_dict, reps=REPS):
    """{variant: (IQM, CI low, CI high)}: rliable's IQM with 95% stratified bootstrap percentile intervals."""
    point, interval = rly.get_interval_estimates(
        score_dict, lambda x: np.array([metrics.aggregate_iqm(x)]), reps=reps, random_state=np.random.RandomState(0)
    )
    return {v: (point[v][0], interval[v][0][0], interval[v][1][0]) for v in score_dict}


def improvement_probability(x, y, reps=REPS):
    """P(X > Y) (rliable's probability_of_improvement: the Mann-Whitney statistic, ties counting a half) with its CI."""
    point, interval = rly.get_interval_estimates(
        {"x,y": (x, y)}, metrics.probability_of_improvement, reps=reps, random_state=np.random.RandomState(0)
    )
    return float(point["x,y"]), float(interval["x,y"][0][0]), float(interval["x,y"][1][0])


def verdict(low, high, better, worse, seeds):
    """The pre-registered sentence for P(better > worse) with CI [low, high]."""
    if high < 0.5:
        return f"{worse} ahead"
    if low > 0.5:
        return f"{better} ahead"
    return f"no difference measurable at {seeds} seeds"


def fisher(successes_a, n_a, successes_b, n_b):
    """Two-sided p of Fisher's exact test on two success counts."""
    return scipy.stats.fisher_exact([[successes_a, n_a - successes_a], [successes_b, n_b - successes_b]])[1]


def finetune_diagnostics(run):
    """Per logged model training (the last of each evaluation window) with a fine-tune: how many kept any step, the
    median steps kept and the median holdout MSE ratio after phase 2 to after phase 1."""
    kept = run["finetune_steps_kept"]
    tuned = np.isfinite(kept)
    ratio = run["holdout_mse_phase2"][tuned] / run["holdout_mse_phase1"][tuned]
    if not tuned.any():
        return 0, 0, float("nan"), float("nan")
    return int((kept[tuned] > 0).sum()), int(tuned.sum()), float(np.median(kept[tuned])), float(np.median(ratio))


def comparisons(variants):
    """The pairs (X, Y) whose P(X > Y) the report gives: each variant over MBPO, the authors' fine-tune over USB-PO."""
    pairs = [(v, "mbpo") for v in variants if v != "mbpo" and "mbpo" in variants]
    if "usbpo_authors" in variants and "usbpo" in variants:
        pairs.append(("usbpo_authors", "usbpo"))
    return pairs


def report(runs, steps, reps=REPS):
    """The tables, as Markdown lines."""
    name = lambda v: NAMES.get(v, v)  # noqa: E731
    final, auc = scores(runs, final_score), scores(runs, normalised_auc)
    final_iqm, auc_iqm = iqm_intervals(final, reps), iqm_intervals(auc, reps)
    lines = [f"At {steps:,} steps. IQM over seeds with 95% stratified bootstrap CIs ({reps:,} resamples).", ""]
    lines += ["| variant | seeds | final score, IQM [CI] | normalised AUC, IQM [CI] | successes (final >= 9,000) |"]
    lines += ["|---|---|---|---|---|"]
    for v in runs:
        successes = int((final[v] >= SUCCESS).sum())
        f, a = final_iqm[v], auc_iqm[v]
        cells = [f"{f[0]:,.0f} [{f[1]:,.0f}, {f[2]:,.0f}]", f"{a[0]:.3f} [{a[1]:.3f}, {a[2]:.3f}]"]
        lines.append(f"| {name(v)} | {len(final[v])} | {cells[0]} | {cells[1]} | {successes} of {len(final[v])} |")
    lines += ["", "| comparison | metric | P(X > Y) [CI] | pre-registered reading | Fisher's exact p (successes) |"]
    lines += ["|---|---|---|---|---|"]
    for x, y in comparisons(runs):
        seeds = min(len(final[x]), len(final[y]))
        p = fisher(int((final[x] >= SUCCESS).sum()), len(final[x]), int((final[y] >= SUCCESS).sum()), len(final[y]))
        for metric, values in (("final score", final), ("normalised AUC", auc)):
            prob, low, high = improvement_probability(values[x], values[y], reps)
            reading = verdict(low, high, name(x), name(y), seeds)
            lines.append(f"| {name(x)} > {name(y)} | {metric} | {prob:.2f} [{low:.2f}, {high:.2f}] | {reading} | {p:.3g} |")
    lines += ["", "| variant | seed | final score | trainings whose fine-tune kept a step | median steps kept |"]
    lines[-1] += " median holdout MSE ratio (phase 2 / phase 1) |"
    lines += ["|---|---|---|---|---|---|"]
    for v, seeds in runs.items():
        if v == "mbpo":
            continue
        for seed, run in sorted(seeds.items()):
            kept, tuned, median_kept, ratio = finetune_diagnostics(run)
            lines.append(
                f"| {name(v)} | {seed} | {final_score(run):,.0f} | {kept} of {tuned} | {median_kept:g} | {ratio:.3f} |"
            )
    return lines


def iqm_per_step(x):
    """x [seeds, 1, evaluations]: rliable's aggregate_iqm at every evaluation, in one call."""
    return scipy.stats.trim_mean(x[:, 0, :], proportiontocut=0.25, axis=0)


def iqm_curve_figure(runs, path, reps=REPS):
    """IQM over seeds of eval_return at each evaluation, with 95% CI bands (rliable's sample-efficiency curve)."""
    curves = []
    for v, seeds in runs.items():
        returns = np.array([run["eval_return"] for _, run in sorted(seeds.items())])  # [seeds, evaluations]
        point, interval = rly.get_interval_estimates(
            {v: returns[:, None, :]}, iqm_per_step, reps=reps, random_state=np.random.RandomState(0)
        )
        steps = next(iter(seeds.values()))["env_steps"]
        curves.append((f"{NAMES.get(v, v)} ({len(seeds)} seeds)", steps, point[v], *interval[v]))
    band_figure(path, curves, "env steps", "eval return, IQM over seeds (95% CI)")


def profile_figure(runs, path, reps=REPS):
    """rliable's performance profile of the final scores: the fraction of runs above each return, with 95% CI bands
    (from rliable's own bootstrap, which takes no seed: a figure, not a pre-registered number)."""
    final = scores(runs, final_score)
    taus = np.linspace(0, MAX_RETURN, 101)
    profiles, bands = rly.create_performance_profile(final, taus, reps=reps)
    curves = [(f"{NAMES.get(v, v)} ({len(final[v])} seeds)", taus, profiles[v], *bands[v]) for v in final]
    band_figure(path, curves, "final score (mean of the last five evaluations)", "fraction of runs above (95% CI)")


def band_figure(path, curves, xlabel, ylabel):
    """Curves (label, x, y, CI low, CI high) with their bands, written to path."""
    fig, ax = plt.subplots(figsize=(7, 4))
    for label, x, y, low, high in curves:
        ax.plot(x, y, label=label)
        ax.fill_between(x, low, high, alpha=0.2)
    ax.set(xlabel=xlabel, ylabel=ylabel)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folder", nargs="?", default=os.path.join(HERE, "campaign", "InvertedDoublePendulum-v4"))
    parser.add_argument("--steps", type=int, default=15_000, help="the budget: runs that did not reach it are left out")
    parser.add_argument("--figures", metavar="PREFIX", help="write PREFIX_iqm_curve.png and PREFIX_profile.png")
    parser.add_argument("--reps", type=int, default=REPS, help="bootstrap resamples (pre-registered: 50,000)")
    args = parser.parse_args(argv)
    runs = load(args.folder, args.steps)
    if not runs:
        raise SystemExit(f"stats.py: no run in {args.folder} reached {args.steps} steps")
    print("\n".join(report(runs, args.steps, args.reps)))
    if args.figures:
        iqm_curve_figure(runs, f"{args.figures}_iqm_curve.png", args.reps)
        profile_figure(runs, f"{args.figures}_profile.png", args.reps)
        print(f"\nwrote {args.figures}_iqm_curve.png, {args.figures}_profile.png")


if __name__ == "__main__":
    main()
