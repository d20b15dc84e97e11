"""Figures and tables from the runs' CSVs: python results/plot.py  (needs results/requirements.txt)

Reads results/<env>/<variant>_seed<seed>.csv (copies of the runs' progress.csv) and writes
    results/<env>.png              eval return vs env steps, mean and min-max band over seeds
    results/<env>_finetune.png     the fine-tune diagnostics of USB-PO over training
    results/<env>_cmlo.png         with CMLO runs: how often each threshold retrains the model (the seed's Figure 1)
and prints, per env, a Markdown table of eval return at fixed step counts (mean +- population std over seeds, and
the IQM over seeds of the mean of the last 5 evaluations with its CI, from stats.py) and a summary of the fine-tune
diagnostics of each USB-PO seed (and, with CMLO runs, the intervals between model trainings per threshold).
"""

import csv
import glob
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import stats  # noqa: E402  (results/stats.py, beside this file)

HERE = os.path.dirname(os.path.abspath(__file__))
VARIANTS = {  # file prefix: label, colour (the order of the tables)
    "usbpo": ("USB-PO", "tab:red"),
    "usbpo_authors": ("USB-PO, authors' fine-tune", "tab:orange"),
    "usbpo_authors_loss": ("USB-PO, authors' loss with its own Adam (earlier base)", "tab:brown"),
    "usbpo_shift_only": ("USB-PO, shift term only", "tab:purple"),
    "usbpo_bias_only": ("USB-PO, bias term only", "tab:green"),
    "mbpo": ("MBPO (--no-finetune)", "tab:blue"),
    "cmlo_a1.0": ("CMLO, alpha 1", "tab:olive"),
    "cmlo_a3.0": ("CMLO, alpha 3", "tab:cyan"),
    "cmlo_a5.0": ("CMLO, alpha 5", "tab:gray"),
}


SOLVED = {"InvertedPendulum": 999, "InvertedDoublePendulum": 9000}  # maxima: 1000, about 9360


def load(env_dir):
    """{variant: {seed: {column: np.array}}} for the CSVs of one env."""
    runs = {}
    for path in sorted(glob.glob(os.path.join(env_dir, "*_seed*.csv"))):
        variant, seed = os.path.basename(path)[:-4].split("_seed")
        with open(path) as f:
            rows = list(csv.DictReader(f))
        runs.setdefault(variant, {})[int(seed)] = {k: np.array([float(r[k]) for r in rows]) for k in rows[0]}
    return {v: runs[v] for v in sorted(runs, key=lambda v: list(VARIANTS).index(v) if v in VARIANTS else len(VARIANTS))}


def finetuned(runs):
    """The variants that fine-tune (all but MBPO and CMLO)."""
    return {v: seeds for v, seeds in runs.items() if v.startswith("usbpo")}


def variant_name(variant):
    return VARIANTS.get(variant, (variant, None))[0]


def variant_colour(variant):
    return VARIANTS.get(variant, (variant, None))[1]


TIMING = ("sps", "wall_time")  # the only columns two runs of the same decisions can differ in


def twin(runs, variant, seed):
    """The earlier variant whose run of this seed logged the same numbers in every column but the timings (e.g. CMLO
    thresholds that took the same decisions), or None: their curves lie on top of each other, and the labels say so."""
    run = runs[variant][seed]
    for other in list(runs)[: list(runs).index(variant)]:
        theirs = runs[other].get(seed)
        if theirs is None or theirs.keys() != run.keys():
            continue
        if all(np.array_equal(theirs[k], run[k], equal_nan=True) for k in run if k not in TIMING):  # other lengths: False
            return other
    return None


def label_of(runs, variant, seeds=None):
    """The variant's label; with ' (= <other>)' when each of its seeds is a twin of the same other variant's."""
    twins = {twin(runs, variant, seed) for seed in seeds or runs[variant]}
    label = variant_name(variant)
    return label if len(twins) != 1 or None in twins else f"{label} (= {variant_name(twins.pop())})"


def curve(seeds, column="eval_return"):
    """Steps common to all seeds and the [seed, step] matrix of a column."""
    n = min(len(run["env_steps"]) for run in seeds.values())
    steps = next(iter(seeds.values()))["env_steps"][:n]
    return steps, np.stack([run[column][:n] for run in seeds.values()])


def plot_returns(env, runs):
    fig, ax = plt.subplots(figsize=(6, 4))
    for variant, seeds in runs.items():
        label, color = label_of(runs, variant), variant_colour(variant)
        steps, values = curve(seeds)
        ax.plot(steps, values.mean(0), color=color, label=f"{label}, {len(seeds)} seed" + "s" * (len(seeds) > 1))
        ax.fill_between(steps, values.min(0), values.max(0), color=color, alpha=0.2)
    ax.set(xlabel="environment steps", ylabel="eval return (deterministic policy)", title=env)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(HERE, f"{env}.png"), dpi=120)
    plt.close(fig)


def plot_finetune(env, runs):
    """Fine-tune diagnostics of every fine-tuning variant: colour = variant, one line per seed; before (solid) and
    after (dashed) the fine-tune. The authors' shift and bias are other quantities than W2: compare their ratios."""
    fig, axes = plt.subplots(2, 2, figsize=(11, 7))
    axes = axes.ravel()
    for variant, seeds in runs.items():
        label, color = variant_name(variant), variant_colour(variant)
        for i, (seed, run) in enumerate(sorted(seeds.items())):
            steps, name = run["env_steps"], f"{label}" + (f", seed {seed}" if len(seeds) > 1 else "")
            alpha = max(0.8 - 0.3 * i, 0.1)  # fainter for each further seed
            for ax, (before, after) in zip(
                axes[:3],
                [("shift_before", "shift_after"), ("bias_before", "bias_after"), ("holdout_mse_phase1", "holdout_mse_phase2")],
            ):
                ax.plot(steps, run[before], color=color, alpha=alpha, lw=1, label=f"{name} before")
                ax.plot(steps, run[after], "--", color=color, alpha=alpha, lw=1, label=f"{name} after")
            axes[3].plot(steps, run["finetune_steps_kept"], "o-", color=color, ms=3, alpha=alpha, label=name)
    axes[0].set(title="model shift on validation (W2; authors: their term)", yscale="log")
    axes[1].set(title="model bias on validation (W2; authors: their term)", yscale="log")
    axes[2].set(title="holdout MSE of the elites, before / after the fine-tune", yscale="log")
    axes[3].set(title="fine-tune steps kept (0 = MLE model kept)", ylim=(-5, max(105, axes[3].get_ylim()[1])))
    for ax in axes:
        ax.set(xlabel="environment steps")
        ax.grid(alpha=0.3)
    axes[3].legend(fontsize=7)
    fig.suptitle(f"{env}: fine-tune diagnostics (last model training of each epoch; before = after phase 1)")
    fig.tight_layout()
    fig.savefig(os.path.join(HERE, f"{env}_finetune.png"), dpi=110)
    plt.close(fig)


def table(env, runs, points, last):
    print(f"\n{env}: eval return at fixed env steps, mean +- population std over seeds; the last column (one number per")
    print("run, the mean of its last five evaluations): IQM over seeds [95% stratified bootstrap CI] (results/stats.py)\n")
    print(
        "| variant | seeds | "
        + " | ".join(f"{p // 1000}k" if p % 1000 == 0 else str(p) for p in points)
        + f" | mean of the 5 evals to {last // 1000}k |"
    )
    print("|---|---|" + "---|" * (len(points) + 1))
    cell = lambda x: f"{x.mean():.0f}" if len(x) == 1 else f"{x.mean():.0f} +- {x.std():.0f}"  # noqa: E731
    for variant, seeds in runs.items():
        steps, values = curve(seeds)
        cells = []
        for p in points:
            hit = np.nonzero(steps == p)[0]
            cells.append(cell(values[:, hit[0]]) if len(hit) else "-")
        end = np.nonzero(steps == last)[0][0] + 1
        iqm, low, high = stats.iqm_intervals({variant: values[:, max(end - 5, 0) : end].mean(1)[:, None]})[variant]
        cells.append(f"{iqm:.0f} [{low:.0f}, {high:.0f}]")
        print(f"| {label_of(runs, variant)} | {len(seeds)} | " + " | ".join(cells) + " |")
    solved_at = SOLVED.get(env.split("-")[0])  # the task's maximum return, near enough
    for variant, seeds in runs.items():
        solved = []
        for seed, run in sorted(seeds.items()):
            hit = np.nonzero(run["eval_return"] >= solved_at)[0] if solved_at else []
            solved.append(f"seed {seed}: {int(run['env_steps'][hit[0]]) if len(hit) else 'not'}")
        if solved_at:
            print(f"\n{variant_name(variant)}: first eval of return >= {solved_at:g} at " + ", ".join(solved))


def diagnostics(env, runs):
    """What the fine-tune does to the model, per variant and seed: how often it keeps steps, how much it moves its
    two terms, what it does to the holdout MSE and NLL, and the rollout model's MSE against MBPO's (same seed)."""
    print(
        f"\n{env}: the fine-tune, last model training of each epoch (after/before: medians over the trainings that"
        " kept steps; a training that keeps none leaves the model as phase 1 made it)\n"
    )
    print(
        "| variant | seed | trainings | kept > 0 steps | steps kept | shift after/before | bias after/before "
        "| holdout MSE after/before | MSE raised | holdout NLL after - before (nats/dim) | rollout-model MSE, last 5 evals "
        "| MBPO's |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    med = lambda x: f"{np.median(x):.2f}" if len(x) else "-"  # noqa: E731
    span = lambda x: f"{np.min(x):.3g}-{np.max(x):.3g}"  # noqa: E731
    mbpo = runs.get("mbpo", {})
    for variant, seeds in finetuned(runs).items():
        for seed, run in sorted(seeds.items()):
            done = ~np.isnan(run["finetune_steps_kept"])
            kept = done & (run["finetune_steps_kept"] > 0)
            steps_kept = f"{np.median(run['finetune_steps_kept'][kept]):g}" if kept.any() else "-"  # whole steps (or a half)
            theirs = span(mbpo[seed]["holdout_mse_phase2"][-5:]) if seed in mbpo else "-"
            print(
                f"| {variant_name(variant)} | {seed} | {done.sum()} | {kept.sum()} | {steps_kept} "
                f"| {med(run['shift_after'][kept] / run['shift_before'][kept])} "
                f"| {med(run['bias_after'][kept] / run['bias_before'][kept])} "
                f"| {med(run['holdout_mse_phase2'][kept] / run['holdout_mse_phase1'][kept])} "
                f"| {(run['holdout_mse_phase2'][kept] > run['holdout_mse_phase1'][kept]).sum()} of {kept.sum()} "
                f"| {med(run['holdout_nll_phase2'][kept] - run['holdout_nll_phase1'][kept])} "
                f"| {span(run['holdout_mse_phase2'][-5:])} | {theirs} |"
            )


def cmlo(env, runs, model_train_freq=250):
    """CMLO's update intervals per threshold (results/<env>/intervals/, written by run_evidence.sh from TensorBoard)
    against MBPO's fixed model_train_freq: a histogram and the trainings per 1000 steps; and a table."""
    variants = {v: seeds for v, seeds in runs.items() if v.startswith("cmlo")}
    gaps = {}
    for variant, seeds in variants.items():
        for seed in seeds:
            with open(os.path.join(HERE, env, "intervals", f"{variant}_seed{seed}.csv")) as f:
                gaps[variant, seed] = np.array([float(r["interval"]) for r in csv.DictReader(f) if r["interval"]])
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for (variant, seed), gap in gaps.items():
        label, color = label_of(runs, variant, [seed]), variant_colour(variant)
        name = f"{label}" + (f", seed {seed}" if len(variants[variant]) > 1 else "")
        ls = ("-", "--", ":", "-.")[sorted(variants[variant]).index(seed) % 4]  # seeds of one variant: one colour
        axes[0].hist(gap, bins=np.arange(0, 525, 25), histtype="step", lw=1.5, ls=ls, color=color, label=name)
        run = variants[variant][seed]  # trainings in the last 1000 steps (or epoch, if longer): short epochs are jagged
        steps, total = np.concatenate([[0], run["env_steps"]]), np.concatenate([[0], np.cumsum(run["model_trainings"])])
        back = np.searchsorted(steps, steps[1:] - 1000, side="left").clip(max=np.arange(len(steps) - 1))
        per_1000 = (total[1:] - total[back]) * 1000 / (steps[1:] - steps[back])
        axes[1].plot(run["env_steps"], per_1000, marker="o", ls=ls, ms=3, color=color, label=name)
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].axvline(model_train_freq, color="tab:blue", ls="--", lw=1)
    axes[1].axhline(1000 / model_train_freq, color="tab:blue", ls="--", lw=1, label="MBPO, USB-PO (fixed)")
    axes[0].set(xlabel="env steps between two model trainings", ylabel="trainings", title="intervals (dashed: MBPO's 250)")
    axes[1].set(xlabel="environment steps", ylabel="model trainings in the last 1000 steps", title="how often the model moves")
    axes[1].set_ylim(bottom=0)
    axes[1].legend(fontsize=8)
    fig.suptitle(f"{env}: CMLO's event-triggered model updates (clamps: at least 150, at most 500 steps)")
    fig.tight_layout()
    fig.savefig(os.path.join(HERE, f"{env}_cmlo.png"), dpi=110)
    plt.close(fig)
    print(f"\n{env}: CMLO's intervals between model trainings (env steps; MBPO and USB-PO: every {model_train_freq})\n")
    print("| variant | seed | trainings | median | mean | min-max | at the 500-step cap | mean of the last 5 evals |")
    print("|---|---|---|---|---|---|---|---|")
    for (variant, seed), gap in gaps.items():
        last5 = variants[variant][seed]["eval_return"][-5:].mean()
        print(
            f"| {label_of(runs, variant, [seed])} | {seed} | {len(gap) + 1} | {np.median(gap):.0f} | {gap.mean():.0f} "
            f"| {gap.min():.0f}-{gap.max():.0f} | {(gap >= 500).sum()} | {last5:.0f} |"
        )


def main():
    envs = sorted(
        d for d in os.listdir(HERE) if os.path.isdir(os.path.join(HERE, d)) and glob.glob(os.path.join(HERE, d, "*.csv"))
    )
    if not envs:
        sys.exit("no results/<env>/*.csv yet: run results/run_evidence.sh first")
    for env in envs:
        runs = load(os.path.join(HERE, env))
        plot_returns(env, runs)
        if finetuned(runs):
            plot_finetune(env, finetuned(runs))
        last = min(curve(seeds)[0][-1] for seeds in runs.values())
        step = 1000 if last <= 10_000 else 5_000
        table(env, runs, [p for p in range(step, int(last) + 1, step)] or [int(last)], int(last))
        has_cmlo = any(v.startswith("cmlo") for v in runs)
        if finetuned(runs):
            diagnostics(env, runs)
        if has_cmlo:
            cmlo(env, runs)
        figures = [env] + [f"{env}_finetune"] * bool(finetuned(runs)) + [f"{env}_cmlo"] * has_cmlo
        print("\nwrote " + ", ".join(f"results/{name}.png" for name in figures))


if __name__ == "__main__":
    main()
