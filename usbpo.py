"""USB-PO: Unified model Shift and model Bias Policy Optimization (Zhang et al., NeurIPS 2023), in the style of CleanRL.

MBPO (Janner et al., 2019) with one more step: after the ensemble M2 is retrained by maximum likelihood (phase 1), it is
fine-tuned (phase 2) to minimise W2(p_M1, p_M2) + W2(p_M2, p_M*) (model shift + model bias), M1 being the model before
the update, keeping the fine-tuned weights only while a validation estimate of that sum improves.
    python usbpo.py --env-id Walker2d-v4 [--no-finetune]
"""

import argparse
import copy
import csv
import json
import math
import os
import pickle
import random
import re
import signal
import sys
import threading
import time
import warnings

import gymnasium as gym
import mujoco
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from scipy.spatial import ConvexHull
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

# ==== 1. Configuration ============================================================================
# The authors' (= MBPO's) settings per environment, for the flags left out; total_timesteps: the budget of the paper's plots
# (their configs run longer). rollout_schedule = (E0, E1, K0, K1). Last, what differs from COMMON_PRESET, CMLO's alpha and C.
PRESET_FLAGS = "updates_per_step model_train_freq retain_epochs rollout_schedule target_entropy total_timesteps".split()
PRESETS = {
    "Hopper":                 (20,  250, 1, (20, 150, 1, 15), -1.0,  125_000, {"cmlo_threshold": 1.2, "cmlo_check_every": 20}),
    "Walker2d":               (20,  250, 1, (20, 150, 1, 1),  -3.0,  300_000, {"cmlo_threshold": 3.0, "cmlo_check_every": 20}),
    "HalfCheetah":            (40,  250, 1, (20, 150, 1, 1),  -3.0,  400_000, {"cmlo_threshold": 2.0, "cmlo_check_every": 50}),
    "Ant":                    (20,  250, 1, (20, 100, 1, 25), -4.0,  300_000, {"cmlo_threshold": 2.0, "cmlo_check_every": 50}),
    "Humanoid":               (20, 1000, 5, (20, 300, 1, 25), -2.0,  300_000, {"model_hidden": 400, "cmlo_threshold": 2.5,
                                                                               "cmlo_check_every": 50}),
    "InvertedPendulum":       (10,  250, 1, (1, 15, 1, 1),    -0.05,  15_000, {"epoch_length": 250, "learning_starts": 500}),
    "InvertedDoublePendulum": (20,  250, 1, (1, 15, 1, 1),    -0.5,   15_000, {"epoch_length": 250, "learning_starts": 500}),
}  # fmt: skip
COMMON_PRESET = {"epoch_length": 1000, "learning_starts": 5000, "model_hidden": 200, "cmlo_check_every": 20}
PRESETS = {family: {**COMMON_PRESET, **dict(zip(PRESET_FLAGS, v)), **extra} for family, (*v, extra) in PRESETS.items()}
OBS_DIMS = {"Ant": 27, "Humanoid": 45}  # MBPO's observations: Ant without contact forces, Humanoid qpos[2:] and qvel
SUPPORTED_VERSIONS = ("v4", "v5")


def checked(kind, ok, words):  # an argparse type: text -> kind, refused in one line ('must be <words>') unless ok(value)
    def parse(text):
        if not ok(value := kind(text)):
            raise argparse.ArgumentTypeError(f"must be {words}, got {text}")
        return value

    parse.__name__ = kind.__name__  # argparse's message for text that is no number: "invalid int value"
    return parse


POSITIVE_INT, COUNT = checked(int, lambda v: v > 0, "positive"), checked(int, lambda v: v >= 0, "zero or positive")
POSITIVE, NON_NEGATIVE = checked(float, lambda v: v > 0, "positive"), checked(float, lambda v: v >= 0, "zero or positive")
FRACTION, OPEN_FRACTION = checked(float, lambda v: 0 <= v <= 1, "in [0, 1]"), checked(float, lambda v: 0 < v < 1, "in (0, 1)")
AT_LEAST_10 = checked(int, lambda v: v >= 10, "at least 10 (the model needs real data to train and hold out)")


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.error = lambda message: fail(f"{message} (see --help)")  # one line, not argparse's usage block
    a, cleanrl_bool = p.add_argument, lambda text: text.lower() in ("1", "true", "yes", "y", "t", "on")
    a("--env-id", default="Hopper-v4", help="MuJoCo task, e.g. Hopper-v4, Walker2d-v5; its preset fills the flags left out")
    a("--exp-name", default=None, help="name of the run (default: usbpo, usbpo_authors, or mbpo with --no-finetune)")
    a("--seed", type=COUNT, default=1, help="seed of random, numpy, torch and the environments")
    a("--device", default="auto", help="auto (CUDA when present, else CPU), cpu, cuda or cuda:N")
    a("--torch-deterministic", type=cleanrl_bool, nargs="?", const=True, default=True, help="cudnn.deterministic")
    a("--threads", type=POSITIVE_INT, default=1, help="torch CPU threads: 1 never collapses on a shared machine (README)")
    a("--total-timesteps", type=POSITIVE_INT, help="environment steps in the run")
    a("--learning-starts", type=AT_LEAST_10, help="uniform random steps before model and policy training")
    a("--min-pool-size", type=COUNT, default=1000, help="real transitions before the first SAC update (softlearning's rule)")
    a("--epoch-length", type=POSITIVE_INT, help="env steps per epoch: evaluation, logging, rollout schedule")
    a("--eval-episodes", type=POSITIVE_INT, default=5, help="deterministic evaluation episodes after each epoch (authors: 1)")
    # dynamics ensemble (phase 1)
    a("--model-train-freq", type=POSITIVE_INT, help="env steps between two model trainings")
    a("--ensemble-size", type=POSITIVE_INT, default=7, help="members of the dynamics ensemble")
    a("--num-elites", type=POSITIVE_INT, default=5, help="members used in rollouts (lowest holdout MSE)")
    a("--model-hidden", type=POSITIVE_INT, help="units in each of the 4 hidden layers of a member")
    a("--model-lr", type=POSITIVE, default=1e-3, help="Adam learning rate of the maximum-likelihood training")
    a("--model-batch-size", type=POSITIVE_INT, default=256, help="minibatch per member in the maximum-likelihood training")
    a("--holdout-ratio", type=OPEN_FRACTION, default=0.2, help="fraction of the real data held out for early stopping")
    a("--max-holdout", type=POSITIVE_INT, default=5000, help="cap on the holdout size")
    a("--model-patience", type=POSITIVE_INT, default=5, help="stop after more than this many epochs without a 1%% gain")
    a("--model-max-epochs", type=POSITIVE_INT, default=None, help="optional cap on the epochs of one model training")
    # USB fine-tune (phase 2)
    a("--no-finetune", action="store_true", help="skip phase 2: plain MBPO")
    a("--shift-coef", type=NON_NEGATIVE, default=1.0, help="weight of the model-shift term W2(p_M1, p_M2)")
    a("--bias-coef", type=NON_NEGATIVE, default=1.0, help="weight of the model-bias term W2(p_M2, p_M*)")
    a("--finetune-objective", choices=["w2", "authors"], default="w2", help="w2: Eq. 3 (SPEC); authors: their code's loss")
    a("--finetune-lr", type=POSITIVE, default=1e-4, help="Adam learning rate of the fine-tune")
    a("--finetune-batch", type=POSITIVE_INT, default=1024, help="(s, a) from the model buffer per fine-tune step")
    a("--finetune-steps", type=COUNT, default=100, help="maximum fine-tune steps per model training")
    a("--finetune-patience", type=POSITIVE_INT, default=10, help="stop after more than this many steps without a gain")
    # CMLO (Ji et al. 2022), the seed's fixed-threshold baseline: retrain the model when an event trigger fires
    a("--cmlo", action="store_true", help="CMLO mode: event-triggered model updates, no fine-tune (threshold: preset)")
    a("--cmlo-threshold", type=POSITIVE, help="CMLO's alpha; implies --cmlo")
    a("--cmlo-check-every", type=POSITIVE_INT, help="CMLO's C: env steps between two convex-hull volumes")
    # rollouts
    a("--rollout-batch-size", type=POSITIVE_INT, default=100_000, help="real start states per model rollout phase")
    schedule = "rollout length k: K0 up to epoch E0, K1 from epoch E1, linear in between"
    a("--rollout-schedule", type=COUNT, nargs=4, metavar=("E0", "E1", "K0", "K1"), help=schedule)
    a("--retain-epochs", type=POSITIVE_INT, help="epochs of rollouts the model buffer keeps")
    a("--real-ratio", type=FRACTION, default=0.05, help="fraction of each SAC batch drawn from real data")
    # SAC
    a("--updates-per-step", type=COUNT, help="SAC updates per environment step")
    a("--batch-size", type=POSITIVE_INT, default=256, help="SAC minibatch")
    a("--gamma", type=FRACTION, default=0.99, help="discount")
    a("--tau", type=FRACTION, default=5e-3, help="target network smoothing")
    a("--lr", type=POSITIVE, default=3e-4, help="Adam learning rate of actor, critics and temperature")
    a("--target-entropy", type=float, help="entropy target of the automatic temperature")
    a("--compile", action="store_true", help="torch.compile the SAC update (on CUDA as CUDA graphs: 1.3x per update, H100)")
    a("--save-model", action="store_true", help="write policy, critics and ensemble to the run folder at the end")
    a("--checkpoint-every", type=COUNT, default=5, help="epochs between resumable checkpoints (0: never)")
    a("--resume", default=None, help="run folder whose checkpoint.pt to continue from")
    a("--runs-dir", default="runs", help="where run folders are created")
    a("--no-progress", action="store_true", help="no progress bar (one line per epoch only)")
    a("--track", action="store_true", help="send the run to Weights & Biases (pip install wandb), as CleanRL does")
    a("--wandb-project-name", default="usbpo", help="W&B project of --track")
    a("--wandb-entity", default=None, help="W&B team or user of --track (default: yours)")
    a("--capture-video", action="store_true", help="videos of evaluation episodes in the run folder (MUJOCO_GL=egl headless)")
    a("--evaluate", metavar="PT", help="run --eval-episodes episodes of the policy in a model.pt or checkpoint.pt, and exit")
    for action in p._actions[1:]:  # --help shows each flag's default or, for a flag with a preset, each environment's
        if action.default is not None:
            action.help += " (default: %(default)s)"
            continue
        by_value = {}
        for family, preset in PRESETS.items():
            if action.dest in preset:
                by_value.setdefault(str(list(preset[action.dest]) if action.nargs else preset[action.dest]), []).append(family)
        if by_value:
            action.help += " (preset: " + "; ".join(f"{value} for {', '.join(fams)}" for value, fams in by_value.items()) + ")"
    return p


def fail(message):  # one line that says what to do (an exception's text in it may span lines), and a non-zero exit code
    raise SystemExit(f"usbpo: error: {' '.join(message.split())}")


def load_safely(path, what):
    """A model.pt or checkpoint.pt, unpickled with torch's weights_only=True: tensors and plain values only (MuJoCo's state
    is bytes, read by MuJoCo). A file holding any other object is refused before anything in it runs."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        not_plain = "damaged, written by an older usbpo.py, or holding objects other than tensors and plain values"
        fail(f"could not read {path} as a usbpo {what}: {not_plain} (nothing in it was run)")


def check_finite(value, phase):  # a NaN or inf stops the run (the Run names the step) before it reaches a checkpoint
    if not torch.isfinite(value).all():
        raise FloatingPointError(phase)


def env_family(env_id):
    family, _, version = env_id.rpartition("-")
    if family not in PRESETS or version not in SUPPORTED_VERSIONS:
        fail(f"unsupported environment '{env_id}'; choose one of: {', '.join(f'{f}-v4/-v5' for f in PRESETS)}")
    return family


def parse_args(argv=None):
    """The checked flags (a new run's flags left out from its preset, a resumed run's from its checkpoint) and the
    checkpoint (or None). A resumed run may change --total-timesteps (to extend it) and --no-progress only."""
    parser = build_parser()
    args = parser.parse_args(argv)
    checkpoint = None
    if args.resume and not args.evaluate:
        path = os.path.join(args.resume, "checkpoint.pt")
        try:
            checkpoint = load_safely(path, "checkpoint")
        except FileNotFoundError:
            fail(f"no checkpoint at {path}; pass a run folder written with --checkpoint-every")
        except Exception as e:  # truncated file, or written by other torch / MuJoCo versions (it holds MjData's bytes)
            fail(f"could not read {path} ({type(e).__name__}: {e}): damaged, or written by other torch/MuJoCo versions")
        if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
            fail(f"{path} was written by an older usbpo.py or another program, which this one cannot continue; start again")
        saved, step = checkpoint["args"], checkpoint["global_step"]
        parser.set_defaults(**saved)  # parse again: a flag left out takes the run's value (a newer flag, its default)
        args = parser.parse_args(argv)
        args.device = saved["device"] if args.device == "auto" else args.device  # auto: where the run was made
        for key, value in vars(args).items():  # the run's value, or a newer flag's default
            value, was = tuple(value) if isinstance(value, list) else value, parser.get_default(key)
            if key not in ("resume", "total_timesteps", "no_progress") and value != was:
                only = "a resumed run keeps its configuration; only --total-timesteps and --no-progress may change"
                fail(f"--{key.replace('_', '-')} {value} differs from the run's {was}: {only}")
        if args.total_timesteps < step:
            fail(f"--total-timesteps {args.total_timesteps} is below the {step} steps the run has made")
        if args.total_timesteps == step:  # not an error: a script may resume whatever it finds
            print(f"usbpo: the run in {args.resume} is finished ({step} steps); --total-timesteps N extends it")
            raise SystemExit(0)
    else:
        args.cmlo = args.cmlo or args.cmlo_threshold is not None  # an explicit alpha asks for CMLO
        defaults = PRESETS[env_family(args.env_id)]
        if args.cmlo and args.cmlo_threshold is None and "cmlo_threshold" not in defaults:
            fail(f"CMLO's configs have no threshold for {args.env_id}: give one with --cmlo-threshold ALPHA")
        for key, value in defaults.items():
            if getattr(args, key) is None and (args.cmlo or not key.startswith("cmlo_")):
                setattr(args, key, value)
        args.no_finetune = args.no_finetune or args.cmlo  # CMLO changes when the model moves, not how: phase 1 only
        usbpo = "usbpo" if args.finetune_objective == "w2" else "usbpo_authors"
        args.exp_name = args.exp_name or ("cmlo" if args.cmlo else "mbpo" if args.no_finetune else usbpo)
    args.rollout_schedule = tuple(args.rollout_schedule)
    if args.learning_starts > args.total_timesteps:
        fail(f"--learning-starts ({args.learning_starts}) is beyond --total-timesteps ({args.total_timesteps}); train longer")
    if args.num_elites > args.ensemble_size:
        fail(f"--num-elites ({args.num_elites}) cannot exceed --ensemble-size ({args.ensemble_size})")
    if args.no_finetune and args.finetune_objective != "w2":
        skip = "CMLO mode has no fine-tune" if args.cmlo else "--no-finetune skips the fine-tune"
        fail(f"--finetune-objective chooses the fine-tune's loss, and {skip}: drop one of them")
    if args.ensemble_size < 2 and not args.no_finetune:
        fail("the model-bias term compares ensemble members: use --ensemble-size 2 or more, or --no-finetune")
    if min(args.rollout_schedule[2:]) < 1 or args.rollout_schedule[1] < args.rollout_schedule[0]:
        fail(f"--rollout-schedule needs E0 <= E1 and lengths K0, K1 >= 1, got {args.rollout_schedule}")
    args.device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    gpu, n_gpus = re.fullmatch(r"cuda(?::(\d+))?", args.device), torch.cuda.device_count()
    if args.device != "cpu" and not (gpu and int(gpu[1] or 0) < n_gpus):
        fail(f"--device '{args.device}' is not supported here: torch sees {n_gpus} GPU(s); use auto, cpu, cuda or cuda:N")
    return args, checkpoint


# ==== 2. Environments and termination functions ===================================================
def make_env(env_id, seed, video=None, every_episode=False):
    """A Gymnasium MuJoCo env with MBPO's observation and episode statistics, reset with the seed; video: a folder for
    videos of every episode, or of CleanRL's episodes (0, 1, 8, 27, ..., 1000, then every 1000th)."""
    family = env_family(env_id)
    with warnings.catch_warnings():  # gymnasium warns that -v4 is out of date; it has the paper's -v2 model and rewards
        warnings.simplefilter("ignore")
        env = gym.make(env_id, render_mode="rgb_array" if video else None)
    if n := OBS_DIMS.get(family):  # drop contact forces etc.: the first entries are qpos[2:] and qvel
        env = gym.wrappers.TransformObservation(env, lambda obs: obs[:n], gym.spaces.Box(-np.inf, np.inf, (n,), np.float64))
    env = gym.wrappers.RecordEpisodeStatistics(env)
    env.action_space.seed(seed)
    env.reset(seed=seed)  # before the video wrapper: its episodes are the ones that follow
    if video:
        try:  # fail now, not at the first evaluation
            env.render()
            env = gym.wrappers.RecordVideo(env, video, (lambda i: True) if every_episode else None, disable_logger=True)
        except gym.error.DependencyNotInstalled as e:
            fail(f"--capture-video needs moviepy ({e}): pip install moviepy")
        except Exception as e:  # MuJoCo's GL backends raise various errors
            fail(f"MuJoCo cannot render here ({type(e).__name__}: {e}); on a headless machine set MUJOCO_GL=egl (or osmesa)")
    return env


def get_termination_fn(env_id):
    """`(obs, act, next_obs) -> bool [batch]`: the env's `terminated` on predictions (MBPO's static_fns); a prediction
    that is not finite terminates where the env's own checks would end the episode."""
    family = env_family(env_id)

    def termination_fn(obs, act, next_obs):
        z, angle, finite = next_obs[:, 0], next_obs[:, 1], torch.isfinite(next_obs).all(-1)
        if family == "Hopper":  # obs[1:]: state_vector()[2:] with qvel clipped to +-10; the env checks |.| < 100 unclipped
            return ~(finite & (next_obs[:, 1:].abs() < 100).all(-1) & (z > 0.7) & (angle.abs() < 0.2))
        if family == "Walker2d":  # NaN compares False: terminated, as in the env
            return ~((z > 0.8) & (z < 2.0) & (angle > -1.0) & (angle < 1.0))
        if family == "Ant":
            return ~(finite & (z >= 0.2) & (z <= 1.0))
        if family == "Humanoid":
            return ~((z > 1.0) & (z < 2.0))
        if family == "InvertedPendulum":
            return ~finite | (angle.abs() > 0.2)
        if family == "InvertedDoublePendulum":
            # obs = [x, sin t1, sin t2, cos t1, cos t2, ...]; the tip is 0.6 above each hinge, so its height is
            # 0.6 * (cos t1 + cos(t1 + t2)), <= 1 ends the episode. As the authors': t1, t2 by atan2, cos t1 as predicted.
            s1, s2, c1, c2 = next_obs[:, 1:5].T
            return 0.6 * (c1 + torch.cos(torch.atan2(s1, c1) + torch.atan2(s2, c2))) <= 1.0
        return torch.zeros_like(finite)  # HalfCheetah never terminates

    return termination_fn


# ==== 3. Replay buffers ===========================================================================
class ReplayBuffer:
    """FIFO of transitions in one tensor on the training device, rows [obs, act, rew, next_obs, terminated]."""

    def __init__(self, capacity, obs_dim, act_dim, device):
        self.widths, self.ptr, self.size, self.capacity = (obs_dim, act_dim, 1, obs_dim, 1), 0, 0, 0
        self.data = torch.zeros(0, sum(self.widths), device=device)
        self.resize(capacity)

    def add(self, rows):
        rows = rows[-self.capacity :]
        idx = (self.ptr + torch.arange(len(rows), device=rows.device)) % self.capacity
        self.data[idx] = rows
        self.ptr, self.size = (self.ptr + len(rows)) % self.capacity, min(self.size + len(rows), self.capacity)

    def rows(self):  # oldest first
        return self.data.roll(-self.ptr, 0) if self.size == self.capacity else self.data[: self.size]

    def resize(self, capacity, rows=None, ptr=0):
        """New capacity keeping the newest rows in time order (MBPO's pool: the same rows), or given rows with ptr."""
        if rows is None and capacity == self.capacity:
            return
        rows, device = self.rows()[-capacity:] if rows is None else rows, self.data.device
        try:  # a buffer too large for the device's memory fails here, in one line (at the start: before the run folder)
            if capacity != self.capacity:
                self.data, self.capacity = torch.zeros(capacity, sum(self.widths), device=device), capacity
        except (RuntimeError, MemoryError):  # torch.OutOfMemoryError is a RuntimeError
            lower = "lower --rollout-batch-size, --retain-epochs or --total-timesteps"
            fail(f"the replay buffers need {4 * capacity * sum(self.widths) / 2**30:.1f} GiB more than {device} has; {lower}")
        self.ptr, self.size = 0, 0
        self.add(rows)
        if self.size == self.capacity and ptr:  # sampling indexes the raw layout
            self.data, self.ptr = self.data.roll(ptr, 0), ptr

    def state_dict(self):
        return dict(rows=self.rows().cpu(), capacity=self.capacity, ptr=self.ptr)

    def load_state_dict(self, state, capacity=None):  # capacity: a larger one extends a run
        self.resize(capacity or state["capacity"], state["rows"].to(self.data.device), state["ptr"])

    def sample(self, *shape):  # rows drawn uniformly with replacement: [*shape, row]
        return self.data[torch.randint(self.size, shape, device=self.data.device)]

    def split(self, rows):  # (obs, act, rew, next_obs, terminated) views of rows
        obs, act, rew, next_obs, term = rows.split(self.widths, dim=-1)
        return obs, act, rew.squeeze(-1), next_obs, term.squeeze(-1)

    def model_data(self, rows):  # the dynamics model's inputs x = [s, a] and targets y = [r, s' - s]
        obs, act, rew, next_obs, _ = self.split(rows)
        return torch.cat([obs, act], -1), torch.cat([rew[:, None], next_obs - obs], -1)


# ==== 4. The Gaussian dynamics ensemble (phase 1: maximum likelihood, as MBPO) ====================
class EnsembleLinear(nn.Module):  # E independent linear layers as one batched matmul: x [E, B, in] -> [E, B, out]
    def __init__(self, ensemble_size, n_in, n_out):
        super().__init__()
        bound = math.sqrt(6.0 / (n_in + n_out))  # Keras Dense's default per member (softlearning's SAC): glorot-uniform
        self.weight = nn.Parameter(torch.empty(ensemble_size, n_in, n_out).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.zeros(ensemble_size, 1, n_out))

    def forward(self, x, members=None):  # members: a subset of the ensemble, by index
        weight, bias = (self.weight, self.bias) if members is None else (self.weight[members], self.bias[members])
        return torch.baddbmm(bias, x, weight)


class GaussianEnsemble(nn.Module):  # E probabilistic MLPs predicting mean and log-variance of y = [r, s' - s] from x = [s, a]
    weight_decays = (2.5e-5, 5e-5, 7.5e-5, 7.5e-5, 1e-4)  # per layer, as MBPO

    def __init__(self, obs_dim, act_dim, ensemble_size=7, num_elites=5, hidden=200):
        super().__init__()
        in_dim, self.out_dim, self.ensemble_size = obs_dim + act_dim, obs_dim + 1, ensemble_size
        dims = [in_dim, hidden, hidden, hidden, hidden, 2 * self.out_dim]
        self.layers = nn.ModuleList(EnsembleLinear(ensemble_size, i, o) for i, o in zip(dims[:-1], dims[1:]))
        for layer in self.layers:  # MBPO's fc.py: TF's truncated normal, std 1 / (2 sqrt(fan_in)), redrawn beyond 2 std
            std = 1.0 / (2.0 * math.sqrt(layer.weight.shape[1]))
            nn.init.trunc_normal_(layer.weight, std=std, a=-2.0 * std, b=2.0 * std)
        self.max_logvar, self.min_logvar = (nn.Parameter(torch.full((1, 1, self.out_dim), v)) for v in (0.5, -10.0))
        self.register_buffer("input_mean", torch.zeros(in_dim))
        self.register_buffer("input_std", torch.ones(in_dim))
        self.register_buffer("elites", torch.arange(num_elites))

    def fit_normaliser(self, x):  # as MBPO's StandardScaler: population std, 1 for a constant input (IDP's rail force)
        std = x.std(0, correction=0)
        self.input_mean.copy_(x.mean(0))
        self.input_std.copy_(torch.where(std < 1e-12, 1.0, std))

    def forward(self, x, members=None):  # x [E, B, in] (or [len(members), B, in]) -> mean, log-variance [E, B, out]
        h = (x - self.input_mean) / self.input_std
        for layer in self.layers[:-1]:
            h = F.silu(layer(h, members))
        mean, logvar = self.layers[-1](h, members).chunk(2, dim=-1)
        logvar = self.max_logvar - F.softplus(self.max_logvar - logvar)  # soft bounds, as MBPO
        return mean, self.min_logvar + F.softplus(logvar - self.min_logvar)

    def loss(self, x, y):  # Gaussian NLL summed over members (mean over batch and dims) + weight decay + bound penalty
        mean, logvar = self(x)
        nll = ((mean - y).square() * torch.exp(-logvar) + logvar).mean(dim=(1, 2)).sum()
        decay = sum(d * 0.5 * layer.weight.square().sum() for d, layer in zip(self.weight_decays, self.layers))
        return nll + decay + 0.01 * (self.max_logvar.sum() - self.min_logvar.sum())

    @torch.no_grad()
    def scores(self, x, y):  # per-member MSE of the mean and Gaussian NLL (nats per dim.) on a shared batch x, y: [E]
        mean, logvar = self(x.expand(self.ensemble_size, *x.shape))
        sq = (mean - y).square()
        return sq.mean(dim=(1, 2)), 0.5 * (sq * torch.exp(-logvar) + logvar + math.log(2 * math.pi)).mean(dim=(1, 2))

    @torch.no_grad()
    def step(self, obs, act):
        """Sample (reward, next_obs) for a batch, each row from one elite: rows are dealt at random to the elites in equal
        shares (MBPO draws each row's elite), so each runs through its member only (MBPO's code runs all E, then picks)."""
        n, n_elites, perm = len(obs), len(self.elites), torch.randperm(len(obs), device=obs.device)
        per_member = -(-n // n_elites)
        order = perm.repeat(n_elites)[: per_member * n_elites]  # padded to equal shares; the padding is dropped
        mean, logvar = self(torch.cat([obs, act], dim=-1)[order].view(n_elites, per_member, -1), self.elites)
        y = (mean + torch.randn_like(mean) * torch.exp(0.5 * logvar)).view(n_elites * per_member, -1)[:n][torch.argsort(perm)]
        return y[:, 0], obs + y[:, 1:]  # argsort(perm) put each row back in its place


def train_ensemble(model, optimizer, inputs, targets, args, progress=lambda text: None):
    """Phase 1, as the authors' bnn.py (MBPO's code): the input scaler is fitted on the training split (`union_train`);
    each member trains on its own bootstrap of it, reshuffled every epoch. Every member's best holdout MSE starts at 1e10
    (`_start_train`), so the first epoch is always kept; a member is snapshot when its holdout MSE improves by over 1%, and
    training stops once more than `model_patience` epochs pass without any improving (`_save_best`). Returns: holdout
    rows, per-member MSE, epochs."""
    n_holdout = max(min(int(len(inputs) * args.holdout_ratio), args.max_holdout), 1)  # 1: a tiny --learning-starts
    holdout, train = torch.randperm(len(inputs), device=inputs.device).split([n_holdout, len(inputs) - n_holdout])
    model.fit_normaliser(inputs[train])
    E, n_train = model.ensemble_size, len(train)
    bootstrap = train[torch.randint(n_train, (E, n_train), device=inputs.device)]
    member_params = [p for layer in model.layers for p in (layer.weight, layer.bias)]  # [E, ...] each
    best_params = [p.detach().clone() for p in member_params]
    best_mse, epochs_since_update, epoch = torch.full((E,), 1e10, device=inputs.device), 0, 0
    while epochs_since_update <= args.model_patience and epoch != args.model_max_epochs:
        order = bootstrap.gather(1, torch.argsort(torch.rand(E, n_train, device=inputs.device), dim=1))
        for start in range(0, n_train, args.model_batch_size):
            idx = order[:, start : start + args.model_batch_size]
            loss = model.loss(inputs[idx], targets[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        epoch += 1
        mse = model.scores(inputs[holdout], targets[holdout])[0]
        progress(f"phase 1 (maximum likelihood): epoch {epoch}, holdout MSE {mse.mean().item():.4g}")
        check_finite(torch.cat([mse, loss.detach()[None]]), "phase 1 (maximum likelihood)")
        improved = (best_mse - mse) / best_mse > 0.01
        for best, p in zip(best_params, member_params):  # snapshot the improved members only
            best[improved] = p.detach()[improved]
        best_mse, epochs_since_update = torch.where(improved, mse, best_mse), 0 if improved.any() else epochs_since_update + 1
    with torch.no_grad():
        torch._foreach_copy_(member_params, best_params)
    model.elites.copy_(torch.argsort(best_mse)[: len(model.elites)])
    return holdout, best_mse, epoch


# ==== 5. The USB fine-tune (phase 2): min over M2 of W2(p_M1, p_M2) + W2(p_M2, p_M*) ==============
def w2_gaussian(mu1, std1, mu2, std2):  # W2 between diagonal Gaussians, per sample (last axis: the dimensions)
    return safe_sqrt((mu1 - mu2).square().sum(-1) + (std1 - std2).square().sum(-1))


def safe_sqrt(sq):  # exactly 0 at 0 with a zero (not NaN) gradient: identical models give W2 = 0 and gradient 0
    return torch.where(sq > 0, torch.where(sq > 0, sq, 1.0).sqrt(), 0.0)


def predict(model, x, layers=None):
    """Mean and standard deviation of every member on a shared (s, a) batch x [B, in]: [E, B, out] each. layers: other
    weights for model.layers (e.g. M1's), run with this model's normaliser and log-variance bounds."""
    x = x.expand(model.ensemble_size, *x.shape)
    mean, logvar = model(x) if layers is None else torch.func.functional_call(model, layers, (x,))
    return mean, torch.exp(0.5 * logvar)


def usb_objective(model, prev_model, x, shift_coef, bias_coef, prev_pred=None):
    """Eq. 3: L(M2) = shift_coef * W2(p_M1, p_M2) + bias_coef * W2(p_M2, p_M*) on (s, a) batch x [B, in]. The shift
    pairs each member of M2 with the same member of M1: a valid coupling, so an upper bound on the mixtures' W2. The
    bias puts the disagreement of distinct members i != j in place of the unknown truth M*.
    prev_pred: M1's (mean, std) on x when already known (M1 is frozen, so on a fixed batch it is computed once)."""
    if prev_pred is None:
        with torch.no_grad():
            prev_pred = predict(prev_model, x)
    mean2, std2 = predict(model, x)
    shift = w2_gaussian(*prev_pred, mean2, std2).mean()
    pairwise = w2_gaussian(mean2[:, None], std2[:, None], mean2[None], std2[None])  # [E, E, B]
    bias = pairwise[~torch.eye(len(mean2), dtype=torch.bool, device=x.device)].mean()
    return shift_coef * shift + bias_coef * bias, shift, bias


def authors_shift_bias(mean1, std1, mean2, std2, p, q):
    """The fine-tune's shift and bias as the authors' code computes them, quirks included (mbpo/models/bnn.py: union_loss
    l. 1007-1018, fake_union_step l. 839-867, backoff_union_step l. 805-836), on (mean, std) [E, B, D]:
      - M1 is the weights from before this training, run with the current input normaliser (refitted at l. 462) and the
        current, trainable log-variance bounds (l. 194, 966, 999).
      - Row b is scored by member p[b] of M1 and q[b] of M2, indices drawn once per run (l. 363, 821, 854).
        shift = EMD(M1[p], M2[q]) / B; bias = sum over members e of EMD(M2[q], M2[e]) / B / (E - 1), self-pairs included.
      - EMD (compute_EMD, l. 799-803): ONE square root over the whole batch, sqrt(sum_b sum_d (mu1 - mu2)^2 + trace(sd1^2 +
        sd2^2 - 2 sqrt(sd1 sd2^2 sd1))), where tf.trace of a [B, D] array sums only its entries (k, k), k < min(B, D).
    Means are of [r, s' - s] (theirs add s): the differences, and so the loss, are the same up to rounding."""

    def compute_emd(mu1, sd1, mu2, sd2):
        part2 = torch.diagonal(sd1.square() + sd2.square() - 2 * (sd1 * sd2.square() * sd1).sqrt(), dim1=-2, dim2=-1)
        return safe_sqrt((mu1 - mu2).square().sum((-2, -1)) + part2.sum(-1))

    E, B = mean2.shape[:2]
    rows = torch.arange(B, device=mean2.device)
    mu1, sd1, mu2, sd2 = mean1[p, rows], std1[p, rows], mean2[q, rows], std2[q, rows]  # [B, D]
    return compute_emd(mu1, sd1, mu2, sd2) / B, compute_emd(mu2, sd2, mean2, std2).sum() / B / (E - 1)


class SharedMomentsAdam:
    """The authors' fine-tune optimizer. bnn.py builds it inside `tf.variable_scope(self.name, reuse=True)` (finalize, l.
    214-227), where TF shares slots: its moments m, v ARE phase 1's Adam's; only its step count t is its own. TF1's update,
        m = b1 m + (1 - b1) g,  v = b2 v + (1 - b2) g^2,  w -= lr sqrt(1 - b2^t) / (1 - b1^t) m / (sqrt(v) + 1e-8),
    so a step mostly follows phase 1's momentum, and phase 1 continues from the moments it leaves."""

    def __init__(self, phase1_optimizer, lr):
        self.phase1, self.lr, self.t = phase1_optimizer, lr, 0

    def zero_grad(self, set_to_none=True):
        self.phase1.zero_grad(set_to_none)

    @torch.no_grad()
    def step(self):
        self.t += 1
        beta1, beta2 = self.phase1.defaults["betas"]
        lr_t = self.lr * math.sqrt(1 - beta2**self.t) / (1 - beta1**self.t)
        for group in self.phase1.param_groups:
            for p in group["params"]:
                m, v = self.phase1.state[p]["exp_avg"], self.phase1.state[p]["exp_avg_sq"]
                m.mul_(beta1).add_(p.grad, alpha=1 - beta1)
                v.mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
                p.sub_(lr_t * m / (v.sqrt() + 1e-8))

    def state_dict(self):
        return {"t": self.t}

    def load_state_dict(self, state):
        self.t = state["t"]


def usb_finetune(model, prev_model, train_inputs, val_inputs, args, authors=None, progress=lambda text: None):
    """Phase 2: Adam on Eq. 3 with (s, a) from the model buffer, early-stopped on a real validation set as the authors'
    `_union_save_best` (bnn.py l. 324-347): a snapshot at each gain over 1e-4, a stop after more than `finetune_patience`
    steps without one; the phase-1 model is the first snapshot. authors (a SharedMomentsAdam): their code instead, with
    their objective (p, q drawn once per run) and snapshots of the layers only (l. 261-276, 330)."""
    m1_layers = {k: v.detach() for k, v in prev_model.named_parameters() if k.startswith("layers.")}
    g = torch.Generator().manual_seed(args.seed)  # p, q: the same in every training of the run
    p, q = torch.randint(args.ensemble_size, (2, args.finetune_batch), generator=g).to(train_inputs.device)
    with torch.no_grad():  # M1 is frozen: on the fixed validation set, computed once (the authors' M1 is not frozen)
        val_prev = predict(prev_model, val_inputs) if authors is None else None

    def objective(x, prev_pred=None):  # (loss, shift, bias)
        if authors is None:
            return usb_objective(model, prev_model, x, args.shift_coef, args.bias_coef, prev_pred)
        shift, bias = authors_shift_bias(*predict(model, x, m1_layers), *predict(model, x), p, q)
        return args.shift_coef * shift + args.bias_coef * bias, shift, bias

    @torch.no_grad()
    def validate():
        return [v.item() for v in objective(val_inputs, val_prev)]

    def snapshot():
        return {k: v.clone() for k, v in model.state_dict().items() if authors is None or k in m1_layers}

    before = validate()
    best_loss, best_state, steps_kept, since_best = before[0], snapshot(), 0, 0
    optimizer = authors or torch.optim.Adam(model.parameters(), lr=args.finetune_lr, fused=True)  # ours: its own moments
    for step in range(1, args.finetune_steps + 1):
        x = train_inputs[torch.randint(len(train_inputs), (args.finetune_batch,), device=train_inputs.device)]
        loss, _, _ = objective(x)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        val_loss = validate()[0]
        progress(f"phase 2 (fine-tune): step {step}/{args.finetune_steps}, objective {val_loss:.4g}")
        check_finite(torch.tensor(val_loss), "phase 2 (fine-tune)")
        if best_loss > 0 and (best_loss - val_loss) / best_loss > 1e-4:
            best_loss, best_state, steps_kept, since_best = val_loss, snapshot(), step, 0
        else:
            since_best += 1
        if since_best > args.finetune_patience:
            break
    model.load_state_dict(best_state, strict=False)
    after = validate()
    names = [f"{name}_{when}" for when in ("before", "after") for name in ("objective", "shift", "bias")]
    return {**dict(zip(names, before + after)), "finetune_steps_kept": steps_kept}


# ==== 6. SAC (as MBPO's softlearning SAC) =========================================================
class Actor(nn.Module):  # tanh-squashed Gaussian policy, 2 x 256 ReLU, in [-1, 1] as softlearning's (env units: numpy_action)
    def __init__(self, obs_dim, act_dim, act_low, act_high):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(obs_dim, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 2 * act_dim)
        )
        for layer in self.net[::2]:  # Keras Dense's defaults (softlearning's feedforward_model): glorot-uniform, zero biases
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)
        self.register_buffer("act_scale", torch.as_tensor((act_high - act_low) / 2.0, dtype=torch.float32))
        self.register_buffer("act_bias", torch.as_tensor((act_high + act_low) / 2.0, dtype=torch.float32))

    def forward(self, obs, deterministic=False):  # action tanh(u) in [-1, 1], and its log-probability
        mean, log_std = self.net(obs).chunk(2, dim=-1)
        if deterministic:
            return torch.tanh(mean), None
        log_std, noise = log_std.clamp(-20.0, 2.0), torch.randn_like(mean)  # softlearning's bounds on log_std
        u = mean + noise * log_std.exp()
        # log N(u) - log|d tanh(u)/du|, with log(1 - tanh^2 u) = 2 (log 2 - u - softplus(-2u)). In [-1, 1] units, those of
        # the presets' entropy targets (per raw unit, Humanoid's +-0.4 would keep the entropy below its target -2)
        log_prob = (-0.5 * noise.square() - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
        log_prob = log_prob - (2.0 * (math.log(2.0) - u - F.softplus(-2.0 * u))).sum(-1)
        return torch.tanh(u), log_prob


class TwinQ(nn.Module):  # two Q-networks (2 x 256 ReLU) as one batched module: (obs, act) -> [2, B]
    def __init__(self, obs_dim, act_dim):
        super().__init__()
        self.layers = nn.ModuleList(EnsembleLinear(2, i, o) for i, o in [(obs_dim + act_dim, 256), (256, 256), (256, 1)])

    def forward(self, obs, act):
        x = F.relu(self.layers[0](torch.cat([obs, act], dim=-1).expand(2, len(obs), -1)))
        return self.layers[2](F.relu(self.layers[1](x))).squeeze(-1)


class SAC(nn.Module):
    def __init__(self, obs_dim, act_dim, act_low, act_high, args):
        super().__init__()
        self.actor = Actor(obs_dim, act_dim, act_low, act_high)
        self.qf = TwinQ(obs_dim, act_dim)
        self.qf_target, self.log_alpha = copy.deepcopy(self.qf).requires_grad_(False), nn.Parameter(torch.zeros(()))
        self.gamma, self.tau, self.target_entropy = args.gamma, args.tau, args.target_entropy
        params = (self.actor.parameters(), self.qf.parameters(), [self.log_alpha])
        self.actor_optim, self.qf_optim, self.alpha_optim = (torch.optim.Adam(p, lr=args.lr, fused=True) for p in params)

    def update(self, obs, act, rew, next_obs, terminated):  # one SAC step; returns the losses as tensors (no host sync)
        alpha = self.log_alpha.exp().detach()
        with torch.no_grad():
            next_act, next_log_prob = self.actor(next_obs)
            next_q = self.qf_target(next_obs, next_act).min(0).values - alpha * next_log_prob
            target_q = rew + self.gamma * (1.0 - terminated) * next_q  # only a real termination cuts the bootstrap
        q = self.qf(obs, act)
        critic_losses = (q - target_q).square().mean(1)  # [2]: one per critic
        self.qf_optim.zero_grad(set_to_none=True)
        critic_losses.sum().backward()
        self.qf_optim.step()
        new_act, log_prob = self.actor(obs)  # after the critics' step (authors: all 3 in one TF session.run, no order)
        actor_loss = (alpha * log_prob - self.qf(obs, new_act).min(0).values).mean()
        self.actor_optim.zero_grad(set_to_none=True)
        actor_loss.backward(inputs=list(self.actor.parameters()))  # the critics only score the action
        self.actor_optim.step()
        alpha_loss = -(self.log_alpha * (log_prob.detach() + self.target_entropy)).mean()
        self.alpha_optim.zero_grad(set_to_none=True)
        alpha_loss.backward()
        self.alpha_optim.step()
        with torch.no_grad():
            torch._foreach_lerp_(list(self.qf_target.parameters()), list(self.qf.parameters()), self.tau)
        qf1_loss, qf2_loss = critic_losses.detach()
        q1, q2 = q.detach().mean(1)
        losses = dict(qf1_loss=qf1_loss, qf2_loss=qf2_loss, qf_loss=(qf1_loss + qf2_loss) / 2, qf1_values=q1, qf2_values=q2)
        return dict(losses, actor_loss=actor_loss.detach(), alpha=alpha, alpha_loss=alpha_loss.detach())


def sac_updates(update, real_buffer, model_buffer, args):
    """One env step's SAC work: updates_per_step updates, each on a batch of int(batch_size * real_ratio) real rows and
    the rest model rows (all real while the model buffer is empty); returns the last update's losses."""
    n_real = int(args.batch_size * args.real_ratio) if model_buffer.size else args.batch_size
    rows = real_buffer.sample(args.updates_per_step, n_real)
    if n_real < args.batch_size:
        rows = torch.cat([rows, model_buffer.sample(args.updates_per_step, args.batch_size - n_real)], dim=1)
    for batch in rows:
        losses = update(*real_buffer.split(batch))
    return losses


# ==== 7. Model rollouts ===========================================================================
def rollout_length(epoch, schedule):
    """k from the schedule [epoch_start, epoch_end, k_start, k_end], linear in between (MBPO, truncated to int)."""
    e0, e1, k0, k1 = schedule
    frac = min(max(epoch - e0, 0) / max(e1 - e0, 1), 1.0)  # E0 == E1: K0 up to E0 too
    return int(k0 + frac * (k1 - k0))


def model_buffer_capacity(args, k):  # retain_epochs * rollout_batch * (rollouts per epoch) * k, as MBPO's model pool
    return args.retain_epochs * args.rollout_batch_size * (args.epoch_length // args.model_train_freq or 1) * k


@torch.no_grad()
def model_rollouts(model, actor, termination_fn, real_buffer, model_buffer, args, epoch):
    """MBPO's branched rollouts: k steps of the stochastic policy in the model from rollout_batch_size real states."""
    k = rollout_length(epoch, args.rollout_schedule)
    model_buffer.resize(model_buffer_capacity(args, k))
    obs = real_buffer.split(real_buffer.sample(args.rollout_batch_size))[0]
    for _ in range(k):
        act, _ = actor(obs)
        rew, next_obs = model.step(obs, act)
        check_finite(torch.cat([rew[:, None], next_obs], -1), "model rollout")
        terminated = termination_fn(obs, act, next_obs)
        model_buffer.add(torch.cat([obs, act, rew[:, None], next_obs, terminated[:, None].float()], dim=-1))
        if len(obs := next_obs[~terminated]) == 0:
            break
    return dict(rollout_length=k, model_buffer_size=model_buffer.size)


# ==== 8. CMLO's update trigger (Ji et al., NeurIPS 2022): the seed's fixed-threshold baseline =====
class CMLOTrigger:
    """When CMLO retrains the model (cat-mbrl-lib/mbrl/algorithms/cmlo.py, l. 216-359). After the first training, every
    env step adds e = mean over elites of ||s'_hat - s'||_2 (one sample each, observation only) on the real transition
    to S_err, counts n and keeps e_bar = S_err / n. Every C steps, V = the volume of the convex hull of 1000 real
    observations (drawn with replacement) projected on their first 3 principal components; from the second V on,
        S_ev += log(1 + (V / V_prev) * e_bar).
    The model is retrained when, at such a step, two ratios have been counted in the run, n >= 150 and S_ev > alpha,
    or whenever n >= 500; a training resets S_ev, S_err and n."""

    def __init__(self, alpha, check_every, lower=150, upper=500):
        self.alpha, self.check_every, self.lower, self.upper, self.last_s_ev = alpha, check_every, lower, upper, math.nan
        self.n, self.s_err, self.s_ev, self.e_bar, self.volumes, self.ratios = 0, 0.0, 0.0, 0.0, [], 0
        self.due = True  # a model training is due: the first at the random phase's end, then each after the trigger fires

    def step(self, step, error=None, volume=None):  # one env step: error (once trained), every C steps V; retrain now?
        if error is not None:
            self.s_err, self.n = self.s_err + error, self.n + 1
            self.e_bar = self.s_err / self.n
        fire = False
        if volume is not None:
            if self.volumes and error is not None:  # ratios count once the model has been trained
                self.s_ev, self.ratios = self.s_ev + math.log1p(volume / self.volumes[-1] * self.e_bar), self.ratios + 1
                fire = self.ratios >= 2 and self.n >= self.lower and self.s_ev > self.alpha
            self.volumes.append(volume)
        if fire or self.n >= self.upper:
            self.last_s_ev, self.n, self.s_err, self.s_ev = self.s_ev, 0, 0.0, 0.0  # last_s_ev: what Figure 1 is about
            self.due = True
            return True
        return False

    @torch.no_grad()
    def observe(self, model, real_buffer, row, step, model_trained):  # step() on the real transition row [1, row]
        (obs, act, _, next_obs, _), error, volume = real_buffer.split(row), None, None
        if model_trained:  # e: the mean over the elites of the L2 error of one sampled s'
            mean, logvar = model(torch.cat([obs, act], -1).expand(len(model.elites), 1, -1), model.elites)
            delta = mean + torch.randn_like(mean) * torch.exp(0.5 * logvar)  # [elites, 1, 1 + obs]: reward first
            error = (obs + delta[:, :, 1:] - next_obs).norm(dim=-1).mean().item()
        if step % self.check_every == 0 and real_buffer.size > 3:  # V: 1000 observations on their top 3 principal axes
            x = real_buffer.split(real_buffer.sample(1000))[0]
            centred = x - x.mean(0)
            axes = torch.linalg.svd(centred, full_matrices=False).Vh[:3]
            volume = float(ConvexHull((centred @ axes.T).cpu().double().numpy()).volume)
        return self.step(step, error, volume)


# ==== 9. Evaluation, and the model update =======================================================
@torch.no_grad()
def numpy_action(actor, obs, device, deterministic=False):  # the policy at the env boundary: NumPy in, env units out
    action = actor(torch.as_tensor(obs, dtype=torch.float32, device=device)[None], deterministic)[0][0]
    return (action * actor.act_scale + actor.act_bias).cpu().numpy()


def evaluate(actor, env, n_episodes, device):  # returns of the deterministic policy over n_episodes
    returns = []
    for _ in range(n_episodes):
        (obs, _), done, total = env.reset(), False, 0.0
        while not done:
            obs, rew, terminated, truncated, _ = env.step(numpy_action(actor, obs, device, deterministic=True))
            total, done = total + rew, terminated or truncated
        returns.append(total)
    return returns


def evaluate_saved(path, episodes, capture_video=False):
    """--evaluate: the deterministic returns of the policy in a model.pt (--save-model) or a run's checkpoint.pt."""
    try:
        saved = load_safely(path, "model or checkpoint")
        args, agent = argparse.Namespace(**saved["args"]), saved.get("agent", {})
        actor_state = saved["actor"] if "actor" in saved else {k[6:]: v for k, v in agent.items() if k.startswith("actor.")}
        video = os.path.join(os.path.dirname(path), "videos-evaluate") if capture_video else None
        env = make_env(args.env_id, args.seed + 20_000, video, every_episode=True)  # (make_env fails in its own words)
        actor = Actor(env.observation_space.shape[0], env.action_space.shape[0], env.action_space.low, env.action_space.high)
        actor.load_state_dict(actor_state)
    except FileNotFoundError:
        fail(f"no saved model at {path}; pass <run folder>/model.pt (written by --save-model) or <run folder>/checkpoint.pt")
    except Exception as e:  # not a torch file, or one without a policy
        fail(f"{path} holds no saved policy ({type(e).__name__}: {e}); pass a model.pt (--save-model) or a checkpoint.pt")
    returns = evaluate(actor, env, episodes, torch.device("cpu"))
    env.close()  # writes the last video
    print(f"{path}: {args.env_id}, returns of {episodes} deterministic episodes: {', '.join(f'{r:.1f}' for r in returns)}")
    return returns


def update_model(model, model_optim, real_buffer, model_buffer, args, authors=None, progress=lambda text: None):
    """Phase 1 on all real data, then phase 2 against M1 (the model before this update); returns both's log entries."""
    prev_model = copy.deepcopy(model).requires_grad_(False)  # M1: weights and normaliser before the update
    inputs, targets = real_buffer.model_data(real_buffer.data[: real_buffer.size])
    holdout, _, model_epochs = train_ensemble(model, model_optim, inputs, targets, args, progress)
    hx, hy = inputs[holdout], targets[holdout]  # the holdout split: the elites' scores are logged on it
    stats = dict(model_epochs=model_epochs)
    stats["holdout_mse_phase1"], stats["holdout_nll_phase1"] = (s[model.elites].mean().item() for s in model.scores(hx, hy))
    if not args.no_finetune and model_buffer.size > 0:  # the first training has no model data yet
        # the validation set as theirs (bnn.py l. 452): finetune_batch holdout rows drawn with replacement
        val_inputs = hx[torch.randint(len(holdout), (args.finetune_batch,), device=inputs.device)]
        model_inputs = model_buffer.data[: model_buffer.size, : inputs.shape[1]]  # (s, a) of D_model ~ d^{pi1}_{M1}
        stats.update(usb_finetune(model, prev_model, model_inputs, val_inputs, args, authors, progress))
        model.elites.copy_(torch.argsort(model.scores(hx, hy)[0])[: len(model.elites)])  # re-picked
    stats["holdout_mse_phase2"], stats["holdout_nll_phase2"] = (s[model.elites].mean().item() for s in model.scores(hx, hy))
    return stats


# ==== 10. Run management: logging, checkpoints ====================================================
CSV_FIELDS = """env_steps epoch eval_return train_return holdout_mse_phase1 holdout_mse_phase2 holdout_nll_phase1
holdout_nll_phase2 shift_before shift_after bias_before bias_after finetune_steps_kept rollout_length model_epochs
model_trainings model_interval cmlo_s_ev cmlo_e_bar sps wall_time""".split()
CHECKPOINT_FORMAT = 4  # raise it when what a checkpoint holds changes
LOOP_STATE = ("obs", "model_stats", "episode", "epoch", "epoch_start")  # the loop's own variables in a checkpoint


class Run:
    """A run's folder and reports (config.json, progress.csv, TensorBoard, W&B, console or bar), its checkpoints (every
    checkpoint_every epochs, at the end, and at the current step on SIGTERM or Ctrl-C; a second one stops at once), and
    one-line stops on non-finite values or OSErrors (a full disk) that name the last checkpoint."""

    def __init__(self, args, extra_config, checkpoint=None):
        self.args, self.checkpoint, self.parts, self.signal, self.train_returns = args, checkpoint, {}, None, []
        self.step = self.saved_step = checkpoint["global_step"] if checkpoint else None
        self.start_step, name = (self.step or 0) + 1, f"{args.env_id}__{args.exp_name}__{args.seed}__{int(time.time())}"
        self.run_dir = args.resume or os.path.join(args.runs_dir, name)
        try:
            os.makedirs(self.run_dir, exist_ok=True)
        except OSError as e:
            fail(f"cannot create the run folder {self.run_dir} ({e.strerror}); pass --runs-dir a writable folder")
        versions = {"python": sys.version.split()[0], **{m.__name__: m.__version__ for m in (torch, np, gym, mujoco)}}
        versions["cpu"] = torch.backends.cpu.get_cpu_capability()  # torch's kernels (so the last digits) differ by CPU
        config, self.wandb = {**vars(args), **extra_config, "versions": versions}, None  # physics differ across versions
        if args.track:  # as CleanRL: W&B mirrors the TensorBoard logs; a resumed run continues the same W&B run
            try:
                import wandb
            except ImportError:
                fail("--track sends the run to Weights & Biases, which is not installed: pip install wandb")
            self.wandb = wandb
            name = os.path.basename(os.path.normpath(self.run_dir))
            run = dict(project=args.wandb_project_name, entity=args.wandb_entity, name=name, id=name.replace(".", "_"))
            wandb.init(**run, resume="allow", dir=self.run_dir, config=config, sync_tensorboard=True, save_code=True)
        self.writer, self.csv_path, rows = SummaryWriter(self.run_dir), os.path.join(self.run_dir, "progress.csv"), []
        self.trainings, self.last_training, self.interval = 0, None, math.nan  # model trainings: in the epoch, between
        self.resume_command = f"{sys.executable} {__file__} --resume {self.run_dir}"
        every = f"every {args.checkpoint_every} epochs and at the end" if args.checkpoint_every else "none"
        print(f"usbpo config: {json.dumps(config)}\nrun folder: {self.run_dir}  (checkpoints: {every}; ", end="")
        print(f"to continue from the last: {self.resume_command})")
        with open(os.path.join(self.run_dir, "config.json"), "w") as f:  # again on resume: the budget may have grown
            json.dump(config, f, indent=2)
        self.writer.add_text("hyperparameters", "|param|value|\n|-|-|\n" + "\n".join(f"|{k}|{v}|" for k, v in config.items()))
        if args.resume:  # drop the epochs logged after the checkpoint: they are about to be run again
            with open(self.csv_path, "a+", newline="") as f:  # a+: none if lost (a folder holding only checkpoint.pt)
                f.seek(0)
                rows = [r for r in csv.DictReader(f) if int(r["env_steps"]) < self.start_step]
            print(f"resumed from {self.run_dir} at step {self.step}")
        with open(self.csv_path, "w", newline="") as f:
            out = csv.DictWriter(f, CSV_FIELDS)
            out.writeheader()
            out.writerows(rows)
        no_bar = args.no_progress or not sys.stderr.isatty()
        self.bar = tqdm(
            total=args.total_timesteps,
            initial=self.start_step - 1,
            unit="step",
            smoothing=0,
            disable=no_bar,
            dynamic_ncols=True,
        )
        if self.start_step <= args.learning_starts:
            self.bar.bar_format = "{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}, random actions: no ETA yet{postfix}]"
        self.last_print = self.start_time = self.epoch_start = time.time()

    def state_dict(self):  # wall_time counts the run's own time, across resumes
        trainings = (self.trainings, self.last_training, self.interval)
        times = dict(wall_time=time.time() - self.start_time, epoch_seconds=time.time() - self.epoch_start)
        return dict(times, train_returns=self.train_returns, trainings=trainings)

    def load_state_dict(self, state):
        self.train_returns, self.trainings, self.last_training, self.interval = state["train_returns"], *state["trainings"]
        self.start_time, self.epoch_start = time.time() - state["wall_time"], time.time() - state["epoch_seconds"]

    def phase(self, text):  # a model phase in progress: on the bar, or (without one) a console line at most every 30 s
        if not self.bar.disable:
            self.bar.set_postfix_str(f"model {text}")
        elif time.time() - self.last_print > 30:
            print(f"  ... model {text}", flush=True)
            self.last_print = time.time()

    def scalars(self, step, group, values):
        for key, value in values.items():
            self.writer.add_scalar(f"{group}/{key}", float(value), step)

    def episode(self, step, stats):
        self.train_returns.append(float(stats["r"]))
        self.scalars(step, "charts", dict(episodic_return=stats["r"], episodic_length=stats["l"]))

    def trained(self, step, stats):  # a model training: counted in its epoch, and the env steps since the previous one
        self.interval = step - self.last_training if self.last_training is not None else math.nan
        self.trainings, self.last_training = self.trainings + 1, step
        self.scalars(step, "model", {**stats, "interval": self.interval})

    def epoch(self, step, evaluate, model_stats):  # evaluate (not counted in SPS), write the epoch's row and console line
        now, train_return = time.time(), float(np.mean(self.train_returns)) if self.train_returns else np.nan
        sps, eval_return = self.args.epoch_length / (now - self.epoch_start), float(np.mean(evaluate()))
        row = dict(model_stats, env_steps=step, epoch=step // self.args.epoch_length, eval_return=eval_return)
        row.update(train_return=train_return, sps=sps, wall_time=now - self.start_time, model_trainings=self.trainings)
        row["model_interval"] = self.interval
        self.train_returns, self.trainings, self.epoch_start = [], 0, time.time()
        with open(self.csv_path, "a", newline="") as f:
            csv.DictWriter(f, CSV_FIELDS, restval=float("nan"), extrasaction="ignore").writerow(row)
        self.scalars(step, "charts", dict(eval_return=eval_return, SPS=sps))
        k, ft = model_stats.get("rollout_length", "-"), model_stats.get("finetune_steps_kept", "-")  # of the last training
        line = f"step {step:>7d}  eval {eval_return:8.1f}  train {train_return:8.1f}  sps {sps:6.1f}  k {k}  ft {ft}  "
        line += f"mse {model_stats.get('holdout_mse_phase2', math.nan):.4f}"
        self.bar.set_postfix(sps=f"{sps:.1f}", eval=f"{eval_return:.0f}")
        if self.bar.disable:
            print(line, flush=True)
        else:
            self.bar.write(line)
        self.last_print = time.time()

    def end_of_step(self, step, loop_state):  # a checkpoint when one is due or a signal asked to stop; then stop
        self.bar.update(1)
        if step == self.args.learning_starts:  # the ETA from here on: the model-based steps, not the fast random ones
            self.bar.bar_format, self.bar.initial, self.bar.start_t = None, self.bar.n, time.time()
        every, (epoch, into_epoch) = self.args.checkpoint_every, divmod(step, self.args.epoch_length)
        if every and (self.signal or step == self.args.total_timesteps or into_epoch == 0 and epoch % every == 0):
            path, state = os.path.join(self.run_dir, "checkpoint.pt"), {name: save() for name, (save, _) in self.parts.items()}
            loop = dict(format=CHECKPOINT_FORMAT, args=vars(self.args), global_step=step, **loop_state)
            try:
                torch.save({**state, **loop}, path + ".tmp")
            except RuntimeError as e:  # how torch reports a failed write
                raise OSError(f"could not write {path}.tmp ({str(e).splitlines()[0]}); is the disk full?") from None
            os.replace(path + ".tmp", path)
            self.saved_step = step
        if self.signal:
            raise SystemExit(f"usbpo: stopped by {self.signal} at step {step}; {self.last_checkpoint()}")

    def last_checkpoint(self):  # for the messages that stop the run
        if self.saved_step is None:
            return "no checkpoint was written, so the run cannot be continued"
        return f"continue from the checkpoint of step {self.saved_step} with: {self.resume_command}"

    def __enter__(self):  # restore the checkpoint's parts, if any (on envs reset once), and catch the stop signals
        for name, (_, restore) in self.parts.items() if self.checkpoint else ():
            restore(self.checkpoint.pop(name))  # popped: the run does not keep a second copy of its buffers
        on_main = threading.current_thread() is threading.main_thread()  # Python delivers signals to the main thread only
        self.previous = {s: signal.signal(s, self.request) for s in (signal.SIGINT, signal.SIGTERM) if on_main}
        return self

    def request(self, signum, frame):  # the loop reads self.signal at the end of each env step
        name = signal.Signals(signum).name
        if self.signal is not None:
            raise SystemExit(f"usbpo: stopped at once by a second {name}; {self.last_checkpoint()}")
        self.signal = name
        print(
            f"usbpo: {name}: stopping with a checkpoint after the current env step; a second {name} stops at once", flush=True
        )

    def __exit__(self, kind, error, traceback):
        self.bar.close()
        self.writer.close()
        if self.wandb:
            self.wandb.finish()
        for s, handler in self.previous.items():
            signal.signal(s, handler)
        if kind is FloatingPointError or kind and issubclass(kind, OSError):  # OSError: a full disk, a quota, a folder removed
            what = f"non-finite values in the {error}" if kind is FloatingPointError else error
            raise SystemExit(f"usbpo: error: {what} at step {self.step}; {self.last_checkpoint()}")


def checkpoint_parts(agent, model, model_optim, authors, cmlo, real_buffer, model_buffer, env, eval_env, run):
    """What a checkpoint holds besides the loop's own variables, as {name: (save, restore)}, in tensors and plain values.
    Last, what the episode in progress needs: MuJoCo's whole MjData (Ant's and Humanoid's next reward reads its derived
    positions), the time limit's counter, the episode statistics and the random generators (Python, NumPy, torch, envs)."""
    stateful = dict(agent=agent, model=model, model_optim=model_optim, real_buffer=real_buffer, model_buffer=model_buffer)
    stateful.update(log=run, actor_optim=agent.actor_optim, qf_optim=agent.qf_optim, alpha_optim=agent.alpha_optim)
    stateful.update({"finetune_optim": authors} if authors else {})  # the authors' Adam lives across trainings
    parts = {name: (obj.state_dict, obj.load_state_dict) for name, obj in stateful.items()}
    parts.update({"cmlo": (lambda: dict(vars(cmlo)), vars(cmlo).update)} if cmlo else {})  # its state: its attributes
    # the real buffer keeps the size of this run's budget: --total-timesteps may have extended the run
    parts["real_buffer"] = (real_buffer.state_dict, lambda state: real_buffer.load_state_dict(state, real_buffer.capacity))
    cuda = agent.log_alpha.device if agent.log_alpha.is_cuda else None  # its GPU only: a requeued job may have fewer

    def generators():  # read each time: a reset with a seed replaces an env's generator
        return [env.action_space.np_random, env.unwrapped.np_random, eval_env.unwrapped.np_random]

    def save():
        torch_rngs = [torch.get_rng_state(), torch.cuda.get_rng_state(cuda) if cuda is not None else None]
        name, keys, position, has_gauss, gauss = np.random.get_state()
        numpy_rng = (name, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, gauss)
        state = dict(mjdata=env.unwrapped.data.__getstate__(), elapsed_steps=env.get_wrapper_attr("_elapsed_steps"))
        state["episode_stats"] = (float(env.episode_returns), int(env.episode_lengths))
        state["rngs"] = [random.getstate(), numpy_rng, *torch_rngs]
        state["generators"] = [g.bit_generator.state for g in generators()]
        return state

    def restore(state):  # on envs that have been reset once
        mjdata = mujoco.MjData.__new__(mujoco.MjData)
        mjdata.__setstate__(state["mjdata"])  # MuJoCo's own reader of its bytes, not pickle
        mujoco.mj_copyData(env.unwrapped.data, env.unwrapped.model, mjdata)
        env.set_wrapper_attr("_elapsed_steps", state["elapsed_steps"])
        env.episode_returns, env.episode_lengths = state["episode_stats"]
        python, (name, keys, position, has_gauss, gauss), torch_cpu, cuda_rng = state["rngs"]
        random.setstate(python)
        np.random.set_state((name, keys.numpy().astype(np.uint32), position, has_gauss, gauss))
        torch.set_rng_state(torch_cpu)
        if cuda_rng is not None and cuda is not None:
            torch.cuda.set_rng_state(cuda_rng, cuda)
        for generator, generator_state in zip(generators(), state["generators"]):
            generator.bit_generator.state = generator_state

    return {**parts, "env_and_rng": (save, restore)}


# ==== 11. The training loop ========================================================================
def main(argv=None):
    """MBPO's loop with USB-PO's model update, in the steps marked below; returns the run folder."""
    args, checkpoint = parse_args(argv)
    if args.evaluate:
        return evaluate_saved(args.evaluate, args.eval_episodes, args.capture_video)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)  # 1 by default: a run never collapses on a shared machine, nor depends on its cores
    torch.backends.cudnn.deterministic, device = args.torch_deterministic, torch.device(args.device)
    env, termination_fn = make_env(args.env_id, args.seed), get_termination_fn(args.env_id)
    obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    agent = SAC(obs_dim, act_dim, env.action_space.low, env.action_space.high, args).to(device)
    act_scale, act_bias = (b.cpu().numpy() for b in (agent.actor.act_scale, agent.actor.act_bias))  # stored: [-1, 1]
    model = GaussianEnsemble(obs_dim, act_dim, args.ensemble_size, args.num_elites, args.model_hidden).to(device)
    model_optim = torch.optim.Adam(model.parameters(), lr=args.model_lr, fused=True)
    authors = SharedMomentsAdam(model_optim, args.finetune_lr) if args.finetune_objective == "authors" else None
    cmlo = CMLOTrigger(args.cmlo_threshold, args.cmlo_check_every) if args.cmlo else None
    real_buffer, k0 = ReplayBuffer(args.total_timesteps, obs_dim, act_dim, device), rollout_length(0, args.rollout_schedule)
    model_buffer = ReplayBuffer(model_buffer_capacity(args, k0), obs_dim, act_dim, device)
    sac_update = torch.compile(agent.update, mode="reduce-overhead") if args.compile else agent.update  # CUDA graphs on a GPU
    run = Run(args, dict(device=str(device), obs_dim=obs_dim, act_dim=act_dim), checkpoint)
    eval_env = make_env(args.env_id, args.seed + 10_000, f"{run.run_dir}/videos" if args.capture_video else None)
    run.parts = checkpoint_parts(agent, model, model_optim, authors, cmlo, real_buffer, model_buffer, env, eval_env, run)
    obs, _ = env.reset(seed=args.seed + run.start_step)
    with run:
        if checkpoint:
            obs, model_stats, episode, epoch, epoch_start = (checkpoint[key] for key in LOOP_STATE)
            obs = obs.numpy()
        else:
            model_stats, episode, epoch, epoch_start = {}, [], 0, None
        for global_step in range(run.start_step, args.total_timesteps + 1):
            run.step = global_step
            samples = global_step - 1  # env steps taken before this one
            # --- the order of one step of the authors' `_train` (mbpo.py l. 196-254). Uniform random actions until the real
            # buffer holds learning_starts transitions (softlearning's initial exploration: it ends with an episode); then
            # epochs of epoch_length steps, each lasting until the real buffer holds min_pool_size (ready_to_train)
            random_phase = real_buffer.size < args.learning_starts
            if not random_phase:
                if epoch_start is None:
                    epoch_start = samples
                epoch_over = samples - epoch_start >= args.epoch_length and real_buffer.size >= args.min_pool_size
                if epoch_over:
                    epoch += 1
                    epoch_start = samples
                timestep = samples - epoch_start
                # --- phase 1 and phase 2 every model_train_freq steps into the epoch, first thing in the step (CMLO: at
                # the first epoch's start, then at the step after its trigger fires)
                if cmlo:
                    model_update_due = cmlo.due
                else:
                    model_update_due = timestep % args.model_train_freq == 0
                if model_update_due:
                    model_stats = update_model(model, model_optim, real_buffer, model_buffer, args, authors, run.phase)
                    if cmlo:
                        model_stats.update(cmlo_s_ev=cmlo.last_s_ev, cmlo_e_bar=cmlo.e_bar)
                        cmlo.due = False
                    run.trained(global_step, model_stats)
                # --- fresh model rollouts from real states, on MBPO's schedule (CMLO too, trained or not)
                if timestep % args.model_train_freq == 0:
                    rollouts = model_rollouts(model, agent.actor, termination_fn, real_buffer, model_buffer, args, epoch)
                    model_stats.update(rollouts)
                    run.scalars(global_step, "model", rollouts)
            # --- act in the real environment (NumPy only here, at the env boundary). The episode reaches the real buffer
            # when it ends (terminated, or the time limit), as softlearning's SimpleSampler adds whole paths
            if random_phase:
                action = env.action_space.sample()
            else:
                action = numpy_action(agent.actor, obs, device)
            next_obs, reward, terminated, truncated, info = env.step(action)
            transition = np.concatenate([obs, (action - act_bias) / act_scale, [reward], next_obs, [float(terminated)]])
            row = torch.as_tensor(transition, dtype=torch.float32).to(device)[None]
            episode.append(row)
            if cmlo:  # CMLO's trigger observes every step's transition, as its own code does
                cmlo.observe(model, real_buffer, row, global_step, model_trained=not random_phase)
            obs = next_obs
            if terminated or truncated:
                real_buffer.add(torch.cat(episode))
                episode = []
                run.episode(global_step, info["episode"])
                obs, _ = env.reset()
            # --- SAC on mixed real and model data, once the real buffer holds min_pool_size transitions
            sac_due = not random_phase and args.updates_per_step > 0 and real_buffer.size >= args.min_pool_size
            if sac_due:
                losses = sac_updates(sac_update, real_buffer, model_buffer, args)
                check_finite(torch.stack(list(losses.values())), "SAC update")
                if global_step % 100 == 0:  # CleanRL's logging interval
                    run.scalars(global_step, "losses", losses)
            # --- every epoch_length steps: evaluate and log (the authors evaluate at their epochs' ends, which follow the
            # random phase's last episode; a fixed grid lets seeds be averaged, and evaluating changes no training)
            if global_step % args.epoch_length == 0:
                run.epoch(global_step, lambda: evaluate(agent.actor, eval_env, args.eval_episodes, device), model_stats)
            # --- checkpoint every checkpoint_every epochs, at the end, and on a signal
            loop_state = (torch.from_numpy(obs), model_stats, episode, epoch, epoch_start)
            run.end_of_step(global_step, dict(zip(LOOP_STATE, loop_state)))
    if args.save_model:
        nets = {"actor": agent.actor, "qf": agent.qf, "qf_target": agent.qf_target, "ensemble": model}
        torch.save({**{name: net.state_dict() for name, net in nets.items()}, "args": vars(args)}, f"{run.run_dir}/model.pt")
        print(f"saved the policy, critics and ensemble to {run.run_dir}/model.pt; evaluate it with --evaluate")
    env.close()
    eval_env.close()
    return run.run_dir


if __name__ == "__main__":
    main()
