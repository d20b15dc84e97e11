"""Speed benchmark of usbpo.py on the current device: python benchmarks/speed.py [--quick] [--peer PYTHON] [--threads N]

Times the pieces of one USB-PO iteration at the Hopper preset (obs 11, act 3), then whole
training-loop epochs through usbpo.main itself, and prints a table. With --peer, the same
loop figure is measured for mbrl-lib's MBPO (benchmarks/peer_mbrl.py, run by the given
Python, e.g. /tmp/venv-mbrl/bin/python) in the same run, and the ratio is printed.

Figures:
  sac_update         one SAC update, batch 256 (twin critics, actor, temperature, target)
  sac_env_step       the 20 updates of one env step, minibatches sampled from the buffers (usbpo.sac_updates, eager)
  model_epoch_N      one maximum-likelihood epoch of the 7-member ensemble on N transitions
  finetune_step      one USB fine-tune step (batch 1024) with its validation pass
  rollout_step_100k  one model step of 100,000 rollouts (real start states, policy, one elite per sample, termination)
  loop_<env>         seconds per 1000 env steps of usbpo.main, the first 1000 steps after learning starts
  loop_<env>_50k     the same with 50,000 real transitions in the buffer
  loop_<env>_graphed  the same loop, in the same run, with each env step's SAC work replayed as one CUDA graph
                     (usbpo.sac_updates replaced by graphed_sac.graphed_sac_updates(); on CUDA only)
"""

import argparse
import contextlib
import csv
import functools
import glob
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import usbpo  # noqa: E402


def timeit(fn, repeat, warmup=3):
    """Median wall time of fn() in seconds over `repeat` calls (after warm-up); syncs CUDA."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def sac_flops(obs_dim, act_dim, batch=256, hidden=256):
    """Multiply-adds of one SAC update, counting a backward pass as twice its forward (weights + inputs)."""
    actor = obs_dim * hidden + hidden * hidden + hidden * 2 * act_dim
    critic = 2 * ((obs_dim + act_dim) * hidden + hidden * hidden + hidden)
    target = actor + critic  # next action, target critics
    q_loss = critic + 2 * critic  # forward, backward
    actor_loss = actor + critic + critic + 2 * actor  # forward through both, input-grads through the critics
    return 2 * batch * (target + q_loss + actor_loss)  # FLOPs


def matmul_peak(n=1024, repeat=20):
    a, b = torch.randn(n, n, device=DEVICE), torch.randn(n, n, device=DEVICE)
    return 2 * n**3 / timeit(lambda: a @ b, repeat)


def components(quick):
    args, _ = usbpo.parse_args(["--env-id", "Hopper-v4", "--device", str(DEVICE)])
    obs_dim, act_dim = 11, 3
    agent = usbpo.SAC(obs_dim, act_dim, -np.ones(act_dim), np.ones(act_dim), args).to(DEVICE)
    width = 2 * obs_dim + act_dim + 2
    real = usbpo.ReplayBuffer(50_000, obs_dim, act_dim, DEVICE)
    real.add(torch.randn(50_000, width, device=DEVICE))
    model_buffer = usbpo.ReplayBuffer(400_000, obs_dim, act_dim, DEVICE)
    model_buffer.add(torch.randn(400_000, width, device=DEVICE))
    batch = real.split(torch.randn(256, width, device=DEVICE))
    out = {"sac_update": timeit(lambda: agent.update(*batch), 30 if quick else 200)}

    sac_env_step = functools.partial(usbpo.sac_updates, agent.update, real, model_buffer, args)  # as main, eager
    out["sac_env_step"] = timeit(sac_env_step, 5 if quick else 20)

    model = usbpo.GaussianEnsemble(obs_dim, act_dim).to(DEVICE)
    optim = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    for n in (5_000,) if quick else (5_000, 50_000):
        x, y = real.model_data(real.data[:n])
        one_epoch = argparse.Namespace(**{**vars(args), "model_max_epochs": 1})
        out[f"model_epoch_{n // 1000}k"] = timeit(lambda: usbpo.train_ensemble(model, optim, x, y, one_epoch), 2, warmup=1)

    prev = usbpo.GaussianEnsemble(obs_dim, act_dim).to(DEVICE).requires_grad_(False)
    x_model, x_val = model_buffer.data[:100_000, : obs_dim + act_dim], real.data[:1024, : obs_dim + act_dim]
    ft_optim = torch.optim.Adam(model.parameters(), lr=1e-4)
    with torch.no_grad():
        val_prev = usbpo.predict(prev, x_val)  # M1 is frozen: usb_finetune predicts the validation set once

    def finetune_step():
        x = x_model[torch.randint(len(x_model), (1024,), device=DEVICE)]
        loss = usbpo.usb_objective(model, prev, x, 1.0, 1.0)[0]
        ft_optim.zero_grad()
        loss.backward()
        ft_optim.step()
        usbpo.usb_objective(model, prev, x_val, 1.0, 1.0, val_prev)[0].item()

    out["finetune_step"] = timeit(finetune_step, 10 if quick else 30)

    termination_fn = usbpo.get_termination_fn("Hopper-v4")
    sink = usbpo.ReplayBuffer(100_000, obs_dim, act_dim, DEVICE)
    one_step = {"rollout_schedule": (0, 0, 1, 1), "rollout_batch_size": 100_000, "retain_epochs": 1, "epoch_length": 1}
    one_step = argparse.Namespace(**{**vars(args), **one_step, "model_train_freq": 1})  # k = 1; the sink holds its 100k
    out["rollout_step_100k"] = timeit(
        lambda: usbpo.model_rollouts(model, agent.actor, termination_fn, real, sink, one_step, 0), 3 if quick else 10
    )
    return out


class PhaseTimer:
    """Wall time spent in usbpo's phases, by wrapping the module's functions while usbpo.main runs.

    Only calls that start after the first model training has returned are counted (that training, from
    scratch on the random-phase data, belongs to the epoch before the one timed). On CUDA the phases are
    synchronised at their ends, so the split is exact but the run is a little slower than unwrapped.
    """

    PHASES = {"train_ensemble": "model_phase1", "usb_finetune": "model_phase2_finetune", "model_rollouts": "model_rollouts"}
    # sac_updates: the env step's SAC work (usbpo.sac_updates), its minibatch sampling included; graphed: one replay

    def __init__(self):
        self.start, self.spent, self.saved = None, dict.fromkeys([*self.PHASES.values(), "sac_updates"], 0.0), {}

    def wrap(self, owner, name, phase):
        fn = getattr(owner, name)
        self.saved.setdefault((owner, name), fn)  # model_rollouts is wrapped twice: restore the original

        def timed(*a, **kw):
            t0 = time.perf_counter()
            out = fn(*a, **kw)
            if DEVICE.type == "cuda":
                torch.cuda.synchronize()
            if phase == "first_model_training":
                self.start = self.start or time.perf_counter()
            elif self.start is not None:
                self.spent[phase] += time.perf_counter() - t0
            return out

        setattr(owner, name, timed)

    def __enter__(self):
        for name, phase in self.PHASES.items():
            self.wrap(usbpo, name, phase)
        self.wrap(usbpo, "model_rollouts", "first_model_training")
        self.wrap(usbpo, "sac_updates", "sac_updates")
        return self

    def __exit__(self, *exc):
        for (owner, name), fn in self.saved.items():
            setattr(owner, name, fn)


@contextlib.contextmanager
def graphed_env_steps():
    """usbpo.main with each env step's SAC work replayed as one CUDA graph: usbpo.sac_updates is graphed_sac's."""
    import graphed_sac  # beside this file; it imports the same usbpo module

    saved, usbpo.sac_updates = usbpo.sac_updates, graphed_sac.graphed_sac_updates()
    try:
        yield
    finally:
        usbpo.sac_updates = saved


def loop_seconds_per_1000(env_id, learning_starts, extra=()):
    """Seconds per 1000 env steps of usbpo.main over the epoch right after learning starts (eval excluded),
    with the seconds of that epoch spent in each phase."""
    with tempfile.TemporaryDirectory() as tmp, PhaseTimer() as timer:
        usbpo.main(
            [
                "--env-id",
                env_id,
                "--learning-starts",
                str(learning_starts),
                "--total-timesteps",
                str(learning_starts + 1000),
                "--epoch-length",
                "1000",
                "--eval-episodes",
                "1",
                "--no-progress",
                "--checkpoint-every",
                "0",
                "--device",
                str(DEVICE),
                "--threads",  # as many as the components were timed with
                str(torch.get_num_threads()),
                "--runs-dir",
                tmp,
                *extra,
            ]
        )
        with open(glob.glob(os.path.join(tmp, "*", "progress.csv"))[0]) as f:
            rows = list(csv.DictReader(f))
    total = 1000.0 / float(rows[-1]["sps"])
    return total, {**timer.spent, "other (env, acting, sampling, logging)": total - sum(timer.spent.values())}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="components only, fewer repeats")
    p.add_argument("--envs", nargs="*", default=["Hopper-v4", "Walker2d-v4"], help="presets for the whole-loop figures")
    p.add_argument("--with-50k", action="store_true", help="also time the loop with 50k real transitions (slow on CPU)")
    p.add_argument("--no-graphed-loop", action="store_true", help="on CUDA, skip the loop with graphed env steps")
    p.add_argument("--peer", default=None, help="Python of a venv with mbrl-lib: also time its MBPO at the Hopper preset")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads of usbpo and of the peer (usbpo.py's default: 1)")
    args = p.parse_args()
    global DEVICE
    DEVICE = torch.device(args.device)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    where = torch.cuda.get_device_name() if DEVICE.type == "cuda" else f"{torch.get_num_threads()} CPU threads"
    print(f"device {DEVICE} ({where}), torch {torch.__version__}")

    peak = matmul_peak()
    flops = sac_flops(11, 3)
    results, breakdowns = components(args.quick), {}
    print(", ".join(f"{name} {seconds * 1e3:.3f} ms" for name, seconds in results.items()), flush=True)  # if a loop is cut

    def loop(name, env_id, learning_starts):  # one loop figure, printed at once
        results[name], breakdowns[name] = loop_seconds_per_1000(env_id, learning_starts)
        parts = ", ".join(f"{phase} {seconds:.1f}" for phase, seconds in breakdowns[name].items())
        print(f"{name}: {results[name]:.1f} s per 1000 env steps ({parts})", flush=True)

    for env_id in [] if args.quick else args.envs:
        loop(f"loop_{env_id}", env_id, 5000)
        if DEVICE.type == "cuda" and not args.no_graphed_loop:
            with graphed_env_steps():
                loop(f"loop_{env_id}_graphed", env_id, 5000)
        if args.with_50k:
            loop(f"loop_{env_id}_50k", env_id, 50_000)

    print(f"\n{'figure':<24}{'time':>14}")
    for name, seconds in results.items():
        unit = f"{seconds:10.2f} s  " if name.startswith("loop") else f"{seconds * 1e3:10.3f} ms "
        print(f"{name:<24}{unit}" + ("  per 1000 env steps" if name.startswith("loop") else ""))
    for name, parts in breakdowns.items():
        print(
            f"{name}, where the time goes (s per 1000 env steps): "
            + ", ".join(f"{phase} {seconds:.1f}" for phase, seconds in parts.items())
        )
    floor = flops / peak
    print(
        f"\nSAC update: {flops / 1e6:.0f} MFLOP; this device's 1024^3 matmul runs at {peak / 1e9:.0f} GFLOP/s,"
        f" so the arithmetic floor is {floor * 1e3:.2f} ms; measured {results['sac_update'] * 1e3:.2f} ms"
        f" ({results['sac_update'] / floor:.2f}x the floor)"
    )
    if args.peer:
        cmd = [args.peer, os.path.join(os.path.dirname(os.path.abspath(__file__)), "peer_mbrl.py"), "--total-steps", "6000"]
        cmd += ["--threads", str(args.threads)]
        peer = subprocess.run(cmd, capture_output=True, text=True)
        line = [ln for ln in peer.stdout.splitlines() if "s per 1000 env steps" in ln]
        print(line[-1] if line else f"peer failed:\n{peer.stdout[-2000:]}\n{peer.stderr[-2000:]}")
        detail = [ln for ln in peer.stdout.splitlines() if ln.startswith("{")]
        if detail and "steady_state" in json.loads(detail[-1]):
            parts = json.loads(detail[-1])["steady_state"]["breakdown_s_per_1000"]
            print(
                "mbrl-lib, where the time goes (s per 1000 env steps): "
                + ", ".join(f"{phase} {seconds:.1f}" for phase, seconds in parts.items())
            )
        if line and "loop_Hopper-v4" in results:
            peer_seconds = float(line[-1].split(":")[1].split("s per")[0])
            print(
                f"usbpo / mbrl-lib time per 1000 Hopper steps: {results['loop_Hopper-v4']:.1f} / {peer_seconds:.1f}"
                f" = {results['loop_Hopper-v4'] / peer_seconds:.2f}"
            )


if __name__ == "__main__":
    main()
