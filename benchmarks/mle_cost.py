"""Cost of one maximum-likelihood model training against the data size: python benchmarks/mle_cost.py [--device cpu]

PREPARED WITHOUT A GPU: its first timed run is in benchmarks/gpu_session.sh (CUDA); on this project's CPU machine it
has only been run as a smoke test (two epochs), with no timing kept. A CPU column needs a quiet machine: the figures
are wall times, and another process on the cores changes them (benchmarks/README.md, "Threads").

For each size N (default 5k, 25k, 50k and 125k real transitions: a Hopper run's data at learning starts, at steps
25k and 50k, and at its end), one `usbpo.train_ensemble` of a fresh 7-member ensemble (the Hopper preset: 4 x 200, batch 256,
holdout 20% up to 5000 rows, patience 5, fused Adam at 1e-3, as usbpo.main builds them): seconds, epochs, seconds
per epoch, and how it stopped (patience, --max-epochs, or --budget-s, which ends a training after the epoch that
passes it: its epochs are then a lower bound).

Data: real Hopper-v4 transitions of the uniform random policy (seed 0), generated once for the largest size, each size
taking the first N (like `random_transitions` in test_usbpo.py). That is the honest, reproducible choice, but the
epochs to convergence depend on the data: the loop trains on its own policy's data, and warm-starts every training
from the previous model, which usually stops in fewer epochs than this cold start. Seconds per epoch depend only on
N; the epochs column is this data's.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import usbpo  # noqa: E402


class OverBudget(Exception):
    pass


def random_hopper_rows(n, seed=0):
    """n transitions of the uniform random policy in Hopper-v4, as ReplayBuffer rows [n, 2 obs + act + 2] (CPU)."""
    env = usbpo.make_env("Hopper-v4", seed)
    env.action_space.seed(seed)
    rows, (obs, _) = [], env.reset(seed=seed)
    for _ in range(n):
        act = env.action_space.sample()
        next_obs, rew, terminated, truncated, _ = env.step(act)
        rows.append(np.concatenate([obs, act, [rew], next_obs, [float(terminated)]]))
        obs = env.reset()[0] if terminated or truncated else next_obs
    env.close()
    return torch.as_tensor(np.array(rows), dtype=torch.float32)


def cpu_name():  # the CPU's model name (Linux), else the architecture
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.machine()


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def one_training(rows, args, device, budget_s, seed=0):
    """One train_ensemble of a fresh ensemble on rows; returns its seconds, epochs and how it stopped."""
    torch.manual_seed(seed)
    buffer = usbpo.ReplayBuffer(len(rows), 11, 3, device)
    buffer.add(rows.to(device))
    inputs, targets = buffer.model_data(buffer.data)
    model = usbpo.GaussianEnsemble(11, 3, args.ensemble_size, args.num_elites, args.model_hidden).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.model_lr, fused=True)
    epochs = [0]

    def progress(text):  # called once per epoch, after it
        epochs[0] += 1
        if budget_s is not None and time.perf_counter() - start > budget_s:
            raise OverBudget

    sync(device)
    start = time.perf_counter()
    try:
        _, best_mse, n_epochs = usbpo.train_ensemble(model, optimizer, inputs, targets, args, progress)
        stopped = "max_epochs" if n_epochs == args.model_max_epochs else "patience"
        holdout_mse = best_mse.mean().item()
    except OverBudget:
        n_epochs, stopped, holdout_mse = epochs[0], "budget", None
    sync(device)
    seconds = time.perf_counter() - start
    return dict(n=len(rows), seconds=seconds, epochs=n_epochs, s_per_epoch=seconds / n_epochs, stopped=stopped,
                holdout_mse=holdout_mse)  # fmt: skip


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--sizes", type=int, nargs="+", default=[5_000, 25_000, 50_000, 125_000])
    p.add_argument("--budget-s", type=float, default=None, help="end a training after the epoch that passes this")
    p.add_argument("--max-epochs", type=int, default=None, help="usbpo's --model-max-epochs (default: none, as the loop)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (usbpo.py's default: 1)")
    p.add_argument("--json", default=None, help="also write the results to this file")
    p.add_argument("--note", default="", help="the conditions (e.g. 'nothing else running'), kept in the JSON")
    opts = p.parse_args()
    torch.set_num_threads(opts.threads)
    device = torch.device(opts.device)
    argv = ["--env-id", "Hopper-v4", "--device", str(device)]
    args = usbpo.parse_args(argv + (["--model-max-epochs", str(opts.max_epochs)] if opts.max_epochs else []))[0]
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {opts.threads} thread(s)"
    print(f"device {device} ({where}), torch {torch.__version__}", flush=True)

    start = time.perf_counter()
    rows = random_hopper_rows(max(opts.sizes))
    print(f"{len(rows)} random-policy Hopper-v4 transitions generated in {time.perf_counter() - start:.1f} s", flush=True)
    one_training(rows[:1000], argparse.Namespace(**{**vars(args), "model_max_epochs": 1}), device, None)  # warm-up
    results = []
    print(f"{'transitions':>12}{'seconds':>10}{'epochs':>8}{'s/epoch':>10}  stopped by", flush=True)
    for n in opts.sizes:
        r = one_training(rows[:n], args, device, opts.budget_s)
        results.append(r)
        print(f"{n:>12}{r['seconds']:>10.2f}{r['epochs']:>8}{r['s_per_epoch']:>10.3f}  {r['stopped']}", flush=True)
    if opts.json:
        data = "Hopper-v4, uniform random policy, seed 0"
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
        meta = dict(device=str(device), where=where, torch=torch.__version__, data=data, budget_s=opts.budget_s,
                    date=time.strftime("%Y-%m-%d"), commit=commit, cpu=torch.backends.cpu.get_cpu_capability(),
                    processor=cpu_name(), note=opts.note)  # fmt: skip
        with open(opts.json, "w") as f:
            json.dump(dict(meta, max_epochs=opts.max_epochs, results=results), f, indent=1)


if __name__ == "__main__":
    main()
