"""Speed of the peer implementation: mbrl-lib's MBPO (facebookresearch/mbrl-lib 0.2.0).

Runs `mbrl.algorithms.mbpo.train` at the MBPO paper's Hopper settings (the ones usbpo.py
uses with --no-finetune, not mbrl-lib's own Hopper override) and reports the wall time
per 1000 environment steps once learning has started. Evaluation episodes are excluded,
as in usbpo.py's SPS.

mbrl-lib collects its random initial steps inside train(), so the driver times the run by
wrapping a few mbrl functions (nothing in mbrl is changed):
    mbrl.util.common.rollout_agent_trajectories       the random phase: its end is t = 0
    mbrl.util.common.step_env_and_add_to_buffer       one call per learning env step: time stamps
    mbrl.util.common.train_model_and_save_model_and_data, mbrl.models.ModelTrainer.train,
    mbrl.algorithms.mbpo.rollout_model_and_populate_sac_buffer,
    SAC.update_parameters, mbrl.algorithms.mbpo.evaluate   the breakdown

Two figures are printed:
    all learning steps   from the end of the random phase to the return of train()
    steady state         whole 250-step model-training cycles, from the first model training
mbrl-lib trains the model for the first time at the 250th learning step (MBPO does so at
the first), and until then its SAC buffer is empty and almost no SAC update is made, so
the first figure flatters it; the steady-state figure is the one to compare (last line).

Differences from MBPO that come from mbrl-lib's code and are left as they are: one weight
decay (5e-5) for every model layer instead of MBPO's per-layer values; fixed (not learned)
log-variance bounds; no 5000-transition cap on the model holdout; the real-data ratio draws
whole SAC batches from the real buffer with probability 0.05 instead of mixing each batch;
the model and replay buffer are saved to --work-dir after every model training (timed, in
model_save_and_data_prep).

Install the peer in its own venv (pin torch exactly: an unpinned torch pulls a multi-GB
CUDA build; pip warns that mbrl wants hydra-core 1.0.3 and omegaconf < 2.1, which is fine):
    python3 -m venv /tmp/venv-mbrl
    /tmp/venv-mbrl/bin/pip install torch==2.13.0 mbrl==0.2.0
    /tmp/venv-mbrl/bin/pip install "hydra-core==1.3.2" "omegaconf==2.3.0" \\
        "antlr4-python3-runtime==4.9.3" "mujoco==2.3.3" "numpy<2"
Run (5000 random + 2000 learning steps):
    /tmp/venv-mbrl/bin/python benchmarks/peer_mbrl.py --total-steps 7000
"""

import argparse
import functools
import json
import os
import random
import tempfile
import time

import gymnasium as gym
import mbrl
import mbrl.algorithms.mbpo as mbpo
import mbrl.env.termination_fns as termination_fns
import mbrl.models
import mbrl.util.common
import numpy as np
import omegaconf
import torch
from mbrl.third_party.pytorch_sac_pranz24.sac import SAC

CONF_DIR = os.path.join(os.path.dirname(mbrl.__file__), "examples", "conf")
EPOCH_LENGTH = 1000
TERM_FNS = {"Hopper": "hopper", "Walker2d": "walker2d", "Ant": "ant", "Humanoid": "humanoid", "HalfCheetah": "no_termination"}


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--env-id", default="Hopper-v4", help="gymnasium MuJoCo task (settings stay the Hopper preset)")
    p.add_argument(
        "--total-steps",
        type=int,
        default=7000,
        help=f"env steps in all, random ones included (learning steps: a multiple of {EPOCH_LENGTH})",
    )
    p.add_argument("--learning-starts", type=int, default=5000, help="uniform random steps before learning")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--eval-episodes", type=int, default=1, help="episodes of mbrl's end-of-epoch evaluation (not timed)")
    p.add_argument("--work-dir", default=None, help="where mbrl saves model, buffer and logs (default: a temp dir)")
    args = p.parse_args()
    learning_steps = args.total_steps - args.learning_starts
    if learning_steps <= 0 or learning_steps % EPOCH_LENGTH:
        # mbrl's train() checks num_steps only between epochs, so it always runs whole epochs
        p.error(f"--total-steps minus --learning-starts must be a positive multiple of {EPOCH_LENGTH}")
    return args


def build_config(args, env):
    """mbrl's shipped MBPO configs, overridden with the MBPO paper's Hopper preset."""

    def load(name):
        return omegaconf.OmegaConf.load(os.path.join(CONF_DIR, name + ".yaml"))

    cfg = omegaconf.OmegaConf.create(
        {
            "seed": args.seed,
            "device": "cpu",
            "log_frequency_agent": 1000,
            "save_video": False,
            "debug_mode": False,
            "algorithm": load("algorithm/mbpo"),
            "dynamics_model": load("dynamics_model/gaussian_mlp_ensemble"),
            "overrides": load("overrides/mbpo_hopper"),
        }
    )
    # The shipped config names gym's Box, but mbrl 0.2.0 runs on gymnasium, whose Box takes
    # arrays or scalars and not the lists mbrl would fill in: give scalar bounds (uniform here).
    space = env.action_space
    assert np.all(space.low == space.low.flat[0]) and np.all(space.high == space.high.flat[0])
    cfg.algorithm.agent.action_space = {
        "_target_": "gymnasium.spaces.Box",
        "low": float(space.low.flat[0]),
        "high": float(space.high.flat[0]),
        "shape": list(space.shape),
    }
    cfg.algorithm.merge_with(
        {
            "initial_exploration_steps": args.learning_starts,
            "random_initial_explore": True,  # uniform random actions, as MBPO
            "real_data_ratio": 0.05,
            "num_eval_episodes": args.eval_episodes,
            "dataset_size": args.total_steps,  # default would be num_steps, too small to hold the random steps
        }
    )
    cfg.dynamics_model.merge_with(
        {
            "_recursive_": False,  # hydra 1.3 would build the SiLU itself; GaussianMLP wants its config
            "ensemble_size": 7,
            "num_layers": 4,
            "hid_size": 200,
            "activation_fn_cfg": {"_target_": "torch.nn.SiLU"},
        }
    )
    cfg.overrides.merge_with(
        {
            "env": "gym___" + args.env_id,
            "num_steps": args.total_steps - args.learning_starts,  # train()'s loop counts learning steps only
            "epoch_length": EPOCH_LENGTH,
            "num_elites": 5,
            "patience": 5,
            "model_lr": 1e-3,
            "model_wd": 5e-5,
            "model_batch_size": 256,
            "validation_ratio": 0.2,
            "freq_train_model": 250,
            "effective_model_rollouts_per_step": 400,  # x freq_train_model = 100,000 start states
            "rollout_schedule": [20, 150, 1, 15],
            "num_sac_updates_per_step": 20,
            "sac_updates_every_steps": 1,
            "num_epochs_to_retain_sac_buffer": 1,
            "sac_gamma": 0.99,
            "sac_tau": 5e-3,
            "sac_alpha": 0.2,
            "sac_policy": "Gaussian",
            "sac_target_update_interval": 1,
            "sac_automatic_entropy_tuning": True,
            "sac_target_entropy": -1.0,
            "sac_hidden_size": 256,
            "sac_lr": 3e-4,
            "sac_batch_size": 256,
        }
    )
    return cfg


class Timer:
    """Wraps mbrl functions to record learning-step time stamps and timed events."""

    def __init__(self):
        self.learning = False
        self.t_learn = None  # end of the random phase
        self.t_end = None  # return of train()
        self.step_starts = []  # perf_counter at the start of each learning env step
        self.events = []  # (category, start, duration)

    def timed(self, category, fn):
        @functools.wraps(fn)
        def wrapper(*a, **kw):
            t0 = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                if self.learning:
                    self.events.append((category, t0, time.perf_counter() - t0))

        return wrapper

    def install(self):
        common = mbrl.util.common
        random_phase = common.rollout_agent_trajectories
        env_step = self.timed("env_step", common.step_env_and_add_to_buffer)

        def rollout_agent_trajectories(*a, **kw):
            out = random_phase(*a, **kw)
            self.learning, self.t_learn = True, time.perf_counter()
            return out

        def step_env_and_add_to_buffer(*a, **kw):
            if self.learning:
                self.step_starts.append(time.perf_counter())
            return env_step(*a, **kw)

        common.rollout_agent_trajectories = rollout_agent_trajectories
        common.step_env_and_add_to_buffer = step_env_and_add_to_buffer
        common.train_model_and_save_model_and_data = self.timed("model_total", common.train_model_and_save_model_and_data)
        mbrl.models.ModelTrainer.train = self.timed("model_fit", mbrl.models.ModelTrainer.train)
        mbpo.rollout_model_and_populate_sac_buffer = self.timed("rollout", mbpo.rollout_model_and_populate_sac_buffer)
        SAC.update_parameters = self.timed("sac_update", SAC.update_parameters)
        mbpo.evaluate = self.timed("eval", mbpo.evaluate)

    def window(self, t0, t1, steps):
        """Seconds per 1000 env steps in [t0, t1), evaluation excluded, with a breakdown."""
        spent = {}
        for category, start, dt in self.events:
            if t0 <= start < t1:
                spent[category] = spent.get(category, 0.0) + dt
        wall = t1 - t0 - spent.get("eval", 0.0)
        breakdown = {
            "sac_updates": spent.get("sac_update", 0.0),
            "model_training": spent.get("model_fit", 0.0),
            "model_save_and_data_prep": spent.get("model_total", 0.0) - spent.get("model_fit", 0.0),
            "rollouts": spent.get("rollout", 0.0),
            "env_steps_and_acting": spent.get("env_step", 0.0),
        }
        breakdown["other"] = wall - sum(breakdown.values())
        per_1000 = {k: round(v * 1000 / steps, 2) for k, v in breakdown.items()}
        return wall * 1000 / steps, per_1000, spent.get("eval", 0.0)


def main():
    args = parse_args()
    torch.set_num_threads(args.threads)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)

    family = args.env_id.rpartition("-")[0]
    term_fn = getattr(termination_fns, TERM_FNS[family])
    env, test_env = gym.make(args.env_id), gym.make(args.env_id)
    env.reset(seed=args.seed)
    env.action_space.seed(args.seed)  # the random phase samples this space
    test_env.reset(seed=args.seed + 10_000)

    cfg = build_config(args, env)
    timer = Timer()
    timer.install()
    work_dir = args.work_dir or tempfile.mkdtemp(prefix="peer_mbrl_")
    os.makedirs(work_dir, exist_ok=True)
    t_start = time.perf_counter()
    mbpo.train(env, test_env, term_fn, cfg, silent=True, work_dir=work_dir)
    timer.t_end = time.perf_counter()

    n = cfg.overrides.num_steps
    freq = cfg.overrides.freq_train_model
    assert len(timer.step_starts) == n, (len(timer.step_starts), n)
    stamps = timer.step_starts + [timer.t_end]
    ls = args.learning_starts
    result = {
        "env_id": args.env_id,
        "seed": args.seed,
        "torch_threads": torch.get_num_threads(),
        "learning_starts": ls,
        "total_steps": args.total_steps,
        "random_phase_s": round(timer.t_learn - t_start, 2),
    }
    all_s, all_parts, all_eval = timer.window(timer.t_learn, timer.t_end, n)
    result["all_learning_steps"] = dict(
        steps=[ls, ls + n], s_per_1000=round(all_s, 2), eval_s_excluded=round(all_eval, 2), breakdown_s_per_1000=all_parts
    )
    # learning step i (0-based) trains the model when (i + 1) % freq == 0: first at i = freq - 1
    cycles = (n - (freq - 1)) // freq
    if cycles > 0:
        a, b = freq - 1, freq - 1 + cycles * freq
        ss_s, ss_parts, ss_eval = timer.window(stamps[a], stamps[b], b - a)
        result["steady_state"] = dict(
            steps=[ls + a, ls + b],
            model_trainings=cycles,
            s_per_1000=round(ss_s, 2),
            eval_s_excluded=round(ss_eval, 2),
            breakdown_s_per_1000=ss_parts,
        )
    # per-1000-step chunks of the learning phase (evaluation excluded)
    result["chunks_s_per_1000"] = [
        round(timer.window(stamps[i], stamps[min(i + 1000, n)], min(1000, n - i))[0], 2) for i in range(0, n, 1000)
    ]
    print(json.dumps(result))

    name = f"mbrl-lib MBPO {args.env_id}"
    print(
        f"{name}: {all_s:.1f} s per 1000 env steps (all learning steps {ls}..{ls + n}, "
        f"torch threads {torch.get_num_threads()}; first model training at step {ls + freq})"
    )
    if cycles > 0:
        ss = result["steady_state"]
        print(
            f"{name}: {ss_s:.1f} s per 1000 env steps (steps {ss['steps'][0]}..{ss['steps'][1]}, "
            f"torch threads {torch.get_num_threads()}; steady state, evaluation excluded)"
        )


if __name__ == "__main__":
    main()
