"""Projected wall time of the paper's budgets, from measured pieces: python benchmarks/projection.py --mle JSON [...]

A run's time = its random phase (env steps only, then the first model training, from scratch on 5,000 transitions)
+ for every 1000 env steps after it: the SAC updates (updates_per_step x the Hopper figure / 20), the fine-tune (USB-PO
only) and the rest, the rollouts (4 rollout phases of 100,000 rollouts, k model steps each, k from the preset's
schedule), and 4 model trainings (model_train_freq 250), each `epochs` epochs of seconds_per_epoch(N) at the N real
transitions of that moment, seconds_per_epoch = a + b N fitted to mle_cost.py's sizes (5k-125k). Every input is a
measured figure, named with its source in the output; the projection is their sum, and the output says so.

  --mle         mle_cost.py's JSON on the device in question: seconds per epoch at each size, and the seconds of the
                first training (from scratch at 5k; the loop's later trainings warm-start, see --epochs); or instead
  --per-epoch   N:SECONDS pairs (seconds per epoch at N transitions, two or more) and --first-training-s SECONDS
  --sac-s       seconds per 1000 Hopper env steps in SAC updates (20 per step), e.g. speed.py's sac_updates
  --finetune-s  seconds per 1000 env steps in the fine-tune (speed.py's model_phase2_finetune)
  --rest-s      seconds per 1000 env steps in everything else (speed.py's "other": env, acting, logging)
  --rollout-s   seconds of one model step of 100,000 rollouts (speed.py's rollout_step_100k)
  --epochs      epochs per model training in the loop, MBPO and USB-PO, for every task; default, per task: the means of
                `model_epochs` (each epoch's last training) over results/<task>-v4's CSV rows after 5,000 steps (Hopper
                to 30,000 steps, Walker2d to 20,000; HalfCheetah has none and takes Hopper's), assumed the same at
                every later size: the figure this projection rests on most

Walker2d and HalfCheetah are costed with Hopper's network sizes (their 17-wide observations make a model row and an
update about 3% dearer: not modelled), the paper's budgets and their presets' updates_per_step and rollout schedules.
"""

import argparse
import csv
import glob
import json
import os
import statistics
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import usbpo  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))  # benchmarks/
FAMILIES = ("Hopper", "Walker2d", "HalfCheetah")


def loop_epochs(family, variant):
    """Mean model_epochs over results/<family>-v4/<variant>_seed*.csv rows after 5,000 steps, and how many rows."""
    values = []
    for path in glob.glob(os.path.join(HERE, "..", "results", f"{family}-v4", f"{variant}_seed*.csv")):
        with open(path) as f:
            values += [float(r["model_epochs"]) for r in csv.DictReader(f) if int(r["env_steps"]) > 5000]
    return (statistics.fmean(values), len(values)) if values else (None, 0)


def project(family, per_epoch, first_training_s, opts, epochs, finetune):
    """Seconds of a whole run of the family's preset: a dict of the parts, summed over its 1000-step blocks."""
    preset = usbpo.PRESETS[family]
    starts, trainings = preset["learning_starts"], 1000 // preset["model_train_freq"]  # per 1000 env steps
    total = opts.steps or preset["total_timesteps"]
    parts = dict.fromkeys(["sac", "finetune", "rest", "rollouts", "phase1"], 0.0)
    parts["phase1"] = first_training_s
    for block in range(starts, total, 1000):  # steps block+1 .. block+1000
        n = block + 500  # the real transitions in the middle of the block
        epoch = (block - starts) // preset["epoch_length"]
        k = usbpo.rollout_length(epoch, preset["rollout_schedule"])
        parts["sac"] += opts.sac_s * preset["updates_per_step"] / 20
        parts["finetune"] += opts.finetune_s if finetune else 0.0
        parts["rest"] += opts.rest_s
        parts["rollouts"] += trainings * k * opts.rollout_s
        parts["phase1"] += trainings * epochs * per_epoch(n)
    return parts


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--mle", help="mle_cost.py's JSON on the device in question")
    p.add_argument("--per-epoch", nargs="+", default=[], metavar="N:SECONDS", help="instead of --mle")
    p.add_argument("--first-training-s", type=float, help="with --per-epoch: the first training's seconds")
    p.add_argument("--sac-s", type=float, required=True)
    p.add_argument("--finetune-s", type=float, required=True)
    p.add_argument("--rest-s", type=float, required=True)
    p.add_argument("--rollout-s", type=float, required=True)
    p.add_argument("--epochs", type=float, nargs=2, metavar=("MBPO", "USBPO"), default=None)
    p.add_argument("--steps", type=int, help="every run this long instead of the paper's budget (to check a measured run)")
    p.add_argument("--label", default="", help="the device and the sources of the figures, for the output's title")
    opts = p.parse_args()
    if opts.mle:
        with open(opts.mle) as f:
            mle = json.load(f)
        first = next(r for r in mle["results"] if r["n"] == 5000)
        where, first_s = mle["where"], first["seconds"]
        first_text = f"{first['epochs']} epochs, {first_s:.1f} s (stopped by {first['stopped']})"
    elif len(opts.per_epoch) >= 2 and opts.first_training_s is not None:
        pairs = [[float(x) for x in pair.split(":")] for pair in opts.per_epoch]
        mle, where = dict(results=[dict(n=n, s_per_epoch=s) for n, s in pairs]), "--per-epoch"
        first_s, first_text = opts.first_training_s, f"{opts.first_training_s:.1f} s (--first-training-s)"
    else:
        p.error("give --mle, or two or more --per-epoch N:SECONDS and --first-training-s")
    sizes = np.array([r["n"] for r in mle["results"]], dtype=float)
    per_epoch_s = np.array([r["s_per_epoch"] for r in mle["results"]])
    b, a = np.polyfit(sizes, per_epoch_s, 1)
    epochs = {}  # (family, variant) -> (epochs, where from)
    for family in FAMILIES:
        for i, variant in enumerate(("mbpo", "usbpo")):
            if opts.epochs:
                epochs[family, variant] = opts.epochs[i], "--epochs"
                continue
            mean, n = loop_epochs(family, variant)
            if mean is None:
                epochs[family, variant] = loop_epochs("Hopper", variant)[0], "none measured: Hopper's"
            else:
                epochs[family, variant] = mean, f"mean of {n} CSV rows"
    print(f"# {opts.label}")
    print(f"seconds per epoch = {a:.4f} + {b * 1000:.5f} x N/1000 (fit to {where}: "
          + ", ".join(f"{int(n) // 1000}k {s:.3f}" for n, s in zip(sizes, per_epoch_s)) + ")")  # fmt: skip
    print(f"first training (from scratch, 5k): {first_text}")
    print(f"per 1000 env steps: SAC {opts.sac_s} s (20 updates per step), fine-tune {opts.finetune_s} s, rest "
          f"{opts.rest_s} s; a model step of 100k rollouts {opts.rollout_s} s")  # fmt: skip
    print("epochs per loop training: " + "; ".join(f"{f} {v} {e:.1f} ({source})" for (f, v), (e, source) in epochs.items()))
    print("\n| task, budget | variant | SAC | fine-tune | rest | rollouts | phase 1 | total |")
    print("|---|---|---|---|---|---|---|---|")
    for (family, variant), (e, _) in epochs.items():
        parts = project(family, lambda n: a + b * n, first_s, opts, e, variant == "usbpo")
        hours = {k: v / 3600 for k, v in parts.items()}
        budget = (opts.steps or usbpo.PRESETS[family]["total_timesteps"]) // 1000
        cells = " | ".join(f"{h:.1f} h" for h in hours.values())
        print(f"| {family} {budget}k | {variant} | {cells} | **{sum(hours.values()):.1f} h** |")


if __name__ == "__main__":
    main()
