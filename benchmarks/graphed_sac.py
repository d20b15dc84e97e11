"""One env step's SAC work as one CUDA graph replay (issue 23): python benchmarks/graphed_sac.py [--json PATH]

PREPARED WITHOUT A GPU: none of this file's CUDA code has been run yet, and no figure it prints has been measured.
First run: `python benchmarks/graphed_sac.py` on a CUDA machine (or `bash benchmarks/gpu_session.sh`, which runs it
first); on a machine without CUDA it prints one line saying so and exits 0.

`GraphedSACStep` does what `usbpo.sac_updates`, the loop's env step of SAC work (usbpo.main calls it once per env
step), does, and `graphed_sac_updates()` stands in for that function, so that a GPU window can time the whole loop with
it: `benchmarks/speed.py` on CUDA runs usbpo.main with `usbpo.sac_updates` replaced, in the same run as the eager loop.
Until it has been checked on a GPU, usbpo.py does not use it, and its CPU path and seeded CSVs are unchanged.

On a GPU the loop is bound by the 20 SAC updates of each env step, about a hundred small kernels each, every one shorter
than its launch (benchmarks/README.md). The class replays all of one env step's SAC work as one CUDA graph, with no
host sync:

  * the minibatches of all `updates_per_step` updates, `real_ratio` of each from the real buffer and the rest from the
    model buffer, by usbpo.sac_updates' rule but with the buffers' sizes read on the device (row = randint(2**62) mod size,
    uniform up to a bias of size / 2**62; (rand * size).long() would favour some rows of a 6M-row pool 1.5x, as float32
    rand has 2**24 values), so that a buffer that grows needs no new capture;
  * the `updates_per_step` calls of `usbpo.SAC.update` itself (critics, actor, temperature, Polyak target update),
    with usbpo's own fused Adam, marked `capturable` (the fused kernel keeps its step count on the device already).

Buffers: the graph reads the `usbpo.ReplayBuffer`s' own `.data` tensors in place; `ReplayBuffer.add` writes into them in
place, so growth is only a new size. A buffer's tensor is replaced only when its capacity changes (the model pool each
time the rollout schedule changes k, about 10 times in a 125k-step Hopper run) or on resume; the step sees the new data
pointer and captures again. Before each capture, `WARMUP` (3) env steps run the same work eagerly on a side stream, as
torch.cuda.graph's documentation asks (Adam's lazy state, cuBLAS set-up). They are training steps like any other, so
no state has to be saved and put back around a capture.

`equivalence_check` runs two copies of the agent on the same buffers with the same random numbers
(`torch.cuda.manual_seed` before each env step): one through the graphed step, one through the same class with capture
switched off (the same work, eagerly), with the real buffer growing every env step and the model pool resized once,
which must cause exactly one more warm-up and capture. Bitwise equality is expected but not guaranteed (cuBLAS may
pick other algorithms in a captured stream, and Adam turns a rounding-level difference in a near-zero gradient into
up to about 2 lr in a weight), so the tolerances are 1e-5 relative (1e-6 absolute) on the losses and 1e-4 absolute on
weights and Adam state; it says whether the two were bitwise equal. It is not equivalence with `usbpo.sac_updates`, whose
torch.randint(size) draws other random numbers from the same distribution.

`timing` measures ms per env step of the eager usbpo path (`usbpo.sac_updates`: sampling + 20 x `SAC.update`, as main
runs them) and of the graphed step, synchronised around every env step, at the Hopper preset (obs 11, act 3, 20 updates
of batch 256, real_ratio 0.05) with 5k-6k real rows growing by one per env step and the epoch-1 model pool (400,000
rows); `loop_estimate` runs real Hopper steps (acting, env step, storing, graphed SAC, the finiteness check): the loop
without model training, rollouts, evaluation and logging. The issue's targets: a graphed env step <= 10 ms (eager:
86-94 ms on an H100), the Hopper loop <= 25 s per 1000 steps.
"""

import argparse
import copy
import functools
import json
import math
import os
import statistics
import sys
import time
import traceback
import warnings

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import usbpo  # noqa: E402

OBS_DIM, ACT_DIM = 11, 3  # Hopper
LOSS_TOL = dict(rtol=1e-5, atol=1e-6)
WEIGHT_ATOL = 1e-4
# a warm-up after a re-capture steps Adams already made capturable, eagerly: torch warns each time that it may be slower
warnings.filterwarnings("ignore", "This instance was constructed with capturable=True")


# ---- one CUDA graph per step: capture after a warm-up, then replay ---------------------------------------------------------
class Replayed:
    """`work()` replayed as one CUDA graph, without a host sync. The first WARMUP calls run it eagerly on a side stream,
    as torch.cuda.graph asks (Adam's lazy state, cuBLAS set-up): they are training steps like any other, so nothing is
    saved and put back. The next call captures it, with the Adams in `self.optims` made capturable (they stay fused: the
    fused kernel keeps its step count on the device already), and replays it; every later call replays it, until
    `self.graph = None` asks for a new warm-up and capture. `self.out`: work()'s result, tensors each replay overwrites."""

    WARMUP, graph, warm, out = 3, None, 0, None

    def replay(self):
        if self.graph is None and self.warm < self.WARMUP:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                self.out, self.warm = self.work(), self.warm + 1
            torch.cuda.current_stream().wait_stream(side)
            return self.out
        if self.graph is None:
            for optim in self.optims:
                optim.param_groups[0]["capturable"] = True  # one group each
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.out = self.work()
        self.graph.replay()
        return self.out


# ---- the graphed env step: usbpo.sac_updates, replayed as one CUDA graph -------------------------------------------------
class GraphedSACStep(Replayed):
    """One env step's SAC work (the minibatches of all its updates, then the updates) as one CUDA graph: on a GPU an
    update is about a hundred small kernels, each shorter than its launch. The buffer sizes are read on the device, so a
    growing buffer needs no new capture; a new buffer tensor (the model pool resized for a new k, or restored) does. The
    update itself is usbpo's, uncompiled."""

    def __init__(self, agent, real_buffer, model_buffer, args):
        self.buffers, self.args, self.update = (real_buffer, model_buffer), args, agent.update
        self.optims, self.layout = (agent.actor_optim, agent.qf_optim, agent.alpha_optim), None
        self.sizes = torch.zeros(2, dtype=torch.int64, device=real_buffer.data.device)

    def work(self):  # usbpo.sac_updates' rule with the sizes on the device (row = randint(2^62) mod size), then the updates
        shape, n_real = (self.args.updates_per_step, self.args.batch_size), int(self.args.batch_size * self.args.real_ratio)
        real, model = (
            b.data[torch.randint(2**62, shape, device=n.device) % n.clamp_min(1)] for b, n in zip(self.buffers, self.sizes)
        )
        rows = torch.where(self.sizes[1] > 0, torch.cat([real[:, :n_real], model[:, n_real:]], 1), real)  # all real at first
        for batch in rows:
            losses = self.update(*self.buffers[0].split(batch))
        return losses

    def __call__(self):  # the losses of the env step's last update: tensors that the next replay overwrites
        for n, buffer in zip(self.sizes, self.buffers):
            n.fill_(buffer.size)  # a kernel argument: no host sync
        if (layout := [buffer.data.data_ptr() for buffer in self.buffers]) != self.layout:  # a new tensor: capture again
            self.graph, self.layout, self.warm = None, layout, 0
        return self.replay()


def graphed_sac_updates():
    """A stand-in for usbpo.sac_updates(update, real_buffer, model_buffer, args): the same work through one GraphedSACStep
    per agent (the agent whose uncompiled update is passed)."""
    steps = {}

    def sac_updates(update, real_buffer, model_buffer, args):
        agent = update.__self__
        if agent not in steps:
            steps[agent] = GraphedSACStep(agent, real_buffer, model_buffer, args)
        return steps[agent]()

    return sac_updates


# ---- the graphed maximum-likelihood step: one minibatch of usbpo.train_ensemble ------------------------------------------
class GraphedMLEStep(Replayed):
    """One minibatch step of usbpo.train_ensemble (the Gaussian NLL of the E members on their [E, batch] bootstrap rows,
    weight decay and bound penalty, then the fused Adam step) as one CUDA graph. The rows' indices are copied into a
    static buffer and the graph gathers the training tensors in place, so one capture serves a whole training; a new
    training (new tensors) would capture again. train_ensemble's last, shorter minibatch of an epoch would stay eager."""

    def __init__(self, model, optimizer, inputs, targets, batch):
        self.model, self.optims, self.inputs, self.targets = model, (optimizer,), inputs, targets
        self.idx = torch.zeros(model.ensemble_size, batch, dtype=torch.int64, device=inputs.device)

    def work(self):  # train_ensemble's minibatch step, word for word
        loss = self.model.loss(self.inputs[self.idx], self.targets[self.idx])
        self.optims[0].zero_grad(set_to_none=True)
        loss.backward()
        self.optims[0].step()
        return loss.detach()

    def __call__(self, idx):  # idx [E, batch]: copied on the device, then the step replayed
        self.idx.copy_(idx)
        return self.replay()


# ---- Hopper-sized setup -----------------------------------------------------------------------------------------------
def hopper_args(device):
    return usbpo.parse_args(["--env-id", "Hopper-v4", "--device", str(device)])[0]


def random_rows(n, generator, device):
    """Rows shaped like Hopper transitions: N(0, 1) obs, reward, next obs; U(-1, 1) actions; 1% terminations."""
    obs, next_obs = (torch.randn(n, OBS_DIM, generator=generator, device=device) for _ in range(2))
    act = torch.rand(n, ACT_DIM, generator=generator, device=device) * 2 - 1
    rew = torch.randn(n, 1, generator=generator, device=device)
    term = (torch.rand(n, 1, generator=generator, device=device) < 0.01).float()
    return torch.cat([obs, act, rew, next_obs, term], dim=1)


def hopper_setup(device, real_rows=5000, seed=0, fused=True):
    """Hopper preset args, agent, and buffers: the real one of the run's capacity (total_timesteps) holding real_rows,
    the model pool at k = 1 (model_buffer_capacity: 400,000 rows at the preset), full. fused=False: the agent's three
    Adams are foreach ones instead (tells a fused-kernel problem from a capture problem)."""
    args = hopper_args(device)
    torch.manual_seed(seed)
    gen = torch.Generator(device).manual_seed(seed)
    agent = usbpo.SAC(OBS_DIM, ACT_DIM, -np.ones(ACT_DIM), np.ones(ACT_DIM), args).to(device)
    if not fused:
        optims = dict(actor_optim=agent.actor.parameters(), qf_optim=agent.qf.parameters(), alpha_optim=[agent.log_alpha])
        for name, params in optims.items():
            setattr(agent, name, torch.optim.Adam(params, lr=args.lr, foreach=True))
    real = usbpo.ReplayBuffer(args.total_timesteps, OBS_DIM, ACT_DIM, device)
    model = usbpo.ReplayBuffer(usbpo.model_buffer_capacity(args, 1), OBS_DIM, ACT_DIM, device)
    real.add(random_rows(real_rows, gen, device))
    model.add(random_rows(model.capacity, gen, device))
    return args, agent, real, model, gen


def call(step, capture_seconds, *args):
    """step(*args); the seconds of a call that captured a graph (capture and first replay) go to capture_seconds."""
    before, start = step.graph, time.perf_counter()
    losses = step(*args)
    if step.graph is not None and step.graph is not before:
        torch.cuda.synchronize()
        capture_seconds.append(time.perf_counter() - start)
    return losses


def agent_tensors(agent, optims=None):
    """Name -> tensor of everything an update changes: weights, target critics, temperature, Adam state (of the agent's
    three Adams, or of optims)."""
    out = {f"weight {name}": p.detach() for name, p in agent.named_parameters()}
    names = {id(p): name for name, p in agent.named_parameters()}
    for optim in optims or (agent.actor_optim, agent.qf_optim, agent.alpha_optim):
        for p, state in optim.state.items():
            for k, v in state.items():
                out[f"adam {names[id(p)]}.{k}"] = v.detach().float()
    return out


# ---- equivalence ------------------------------------------------------------------------------------------------------
def compare_tensors(a, b):
    """Two agent_tensors dicts: the largest absolute difference, the tensor it is in, and whether all are equal."""
    assert a.keys() == b.keys(), sorted(set(a) ^ set(b))
    diffs = {name: (a[name] - b[name]).abs().max().item() for name in a}
    worst = max(diffs, key=diffs.get)
    return diffs[worst], worst, all(torch.equal(a[name], b[name]) for name in a)


def equivalence_check(n_steps=10, resize_at=5, seed=0, device="cuda", fused=True):
    """The graphed step against the same class with capture switched off (the same work, eagerly) on a copy of the
    agent, both reading the same buffers with the same random numbers; the real buffer grows by one row every env step,
    and at env step resize_at the model pool is resized to k = 2 and refilled, as model_rollouts does, which must cause
    one more warm-up and capture. With the defaults, env steps 0-2 and 5-7 are warm-ups, 3 and 8 capture and replay, 4
    and 9 replay. Returns a dict with `ok` and the largest differences."""
    device, warmup = torch.device(device), GraphedSACStep.WARMUP
    assert warmup < resize_at < n_steps - warmup, "each phase needs its warm-up and a capture"
    args, agent, real, model, gen = hopper_setup(device, seed=seed, fused=fused)
    eager_agent = copy.deepcopy(agent)
    graphed, eager = GraphedSACStep(agent, real, model, args), GraphedSACStep(eager_agent, real, model, args)
    eager.WARMUP = math.inf  # never captures: every env step is a warm-up, the same work run eagerly
    capture_seconds, replays, loss_abs, loss_rel, losses_ok, bitwise = [], 0, 0.0, 0.0, True, True
    for t in range(n_steps):
        if t == resize_at:
            model.resize(usbpo.model_buffer_capacity(args, 2))
            model.add(random_rows(args.rollout_batch_size, gen, device))
        torch.cuda.manual_seed(seed + 1 + t)
        out = torch.stack(list(call(graphed, capture_seconds).values()))
        replays += graphed.graph is not None  # a call that finds (or makes) a graph replays it
        torch.cuda.manual_seed(seed + 1 + t)
        ref = torch.stack(list(eager().values()))
        diff = (out - ref).abs()
        loss_abs = max(loss_abs, diff.max().item())
        loss_rel = max(loss_rel, (diff / ref.abs().clamp_min(1e-30)).max().item())
        losses_ok &= torch.allclose(out, ref, **LOSS_TOL) and bool(torch.isfinite(out).all())
        bitwise &= torch.equal(out, ref)
        real.add(random_rows(1, gen, device))  # the buffer grows every env step
    tensor_diff, worst, tensors_equal = compare_tensors(agent_tensors(agent), agent_tensors(eager_agent))
    bitwise &= tensors_equal
    report = dict(
        env_steps=n_steps, updates_per_step=args.updates_per_step, captures=len(capture_seconds), expected_captures=2,
        replays=replays, loss_max_abs_diff=loss_abs, loss_max_rel_diff=loss_rel,
        tensor_max_abs_diff=tensor_diff, worst_tensor=worst, losses_ok=bool(losses_ok),
        tensors_ok=tensor_diff <= WEIGHT_ATOL, bitwise=bool(bitwise), adam="fused" if fused else "foreach",
        capture_seconds=capture_seconds,
    )  # fmt: skip
    report["ok"] = report["losses_ok"] and report["tensors_ok"] and len(capture_seconds) == 2
    return report


# ---- timing -----------------------------------------------------------------------------------------------------------
def time_steps(step, real, gen, n_steps, warmup):
    """Wall ms of each of n_steps calls of step() after warm-up, synchronised around each; one real row added between
    env steps (not timed), as the loop stores one transition per env step."""
    times = []
    for i in range(warmup + n_steps):
        torch.cuda.synchronize()
        start = time.perf_counter()
        step()
        torch.cuda.synchronize()
        if i >= warmup:
            times.append((time.perf_counter() - start) * 1e3)
        real.add(random_rows(1, gen, real.data.device))
    return times


def summary(times):
    return dict(median_ms=statistics.median(times), mean_ms=statistics.fmean(times),
                p90_ms=float(np.percentile(times, 90)), n=len(times))  # fmt: skip


def timing(n_steps=200, warmup=20, seed=0, device="cuda"):
    """ms per env step: the eager usbpo path (usbpo.SACStep without --compile) and the graphed step. A graphed
    step that fails is reported as an error next to the eager figure."""
    device = torch.device(device)
    args, agent, real, model, gen = hopper_setup(device, seed=seed)
    graphed_agent = copy.deepcopy(agent)

    eager_step = functools.partial(usbpo.sac_updates, agent.update, real, model, args)  # as usbpo.main without --compile

    rows_before = real.size
    out = dict(eager=summary(time_steps(eager_step, real, gen, n_steps, warmup)), model_rows=model.size)
    try:
        graphed, capture_seconds = GraphedSACStep(graphed_agent, real, model, args), []
        times = time_steps(lambda: call(graphed, capture_seconds), real, gen, n_steps, warmup)
        out.update(graphed=summary(times), captures=len(capture_seconds), capture_seconds=capture_seconds,
                   speedup=out["eager"]["median_ms"] / statistics.median(times))  # fmt: skip
    except Exception as e:  # a capture that fails: keep the eager figure, say why
        out["graphed_error"] = f"{type(e).__name__}: {e}"
        traceback.print_exc()
    out["real_rows"] = (rows_before, real.size)
    return out


def loop_estimate(n_steps=200, warmup=20, seed=0, device="cuda"):
    """Real Hopper-v4 env steps with acting (the policy on the device, as usbpo.main after learning starts), storing
    and the graphed SAC step: ms per env step of the loop without model training, rollouts, evaluation and logging."""
    device = torch.device(device)
    args, agent, real, model, _ = hopper_setup(device, seed=seed)
    graphed, capture_seconds = GraphedSACStep(agent, real, model, args), []
    env = usbpo.make_env("Hopper-v4", seed)
    obs, _ = env.reset(seed=seed)
    times = []
    for i in range(warmup + n_steps):
        start = time.perf_counter()
        action = usbpo.numpy_action(agent.actor, obs, device)  # Hopper acts in [-1, 1]: stored as it is
        next_obs, reward, terminated, truncated, _ = env.step(action)
        row = np.concatenate([obs, action, [reward], next_obs, [float(terminated)]])
        real.add(torch.as_tensor(row, dtype=torch.float32).to(device)[None])
        obs = env.reset()[0] if terminated or truncated else next_obs
        losses = call(graphed, capture_seconds)
        usbpo.check_finite(torch.stack(list(losses.values())), "SAC update")  # the loop's host sync, as usbpo.main
        if i >= warmup:
            times.append((time.perf_counter() - start) * 1e3)
    torch.cuda.synchronize()
    env.close()
    return dict(summary(times), s_per_1000_env_steps=statistics.fmean(times), captures=len(capture_seconds))


# ---- the maximum-likelihood step ----------------------------------------------------------------------------------------
def mle_setup(device, n, seed=0):
    """A fresh Hopper-preset ensemble with its fused Adam (as usbpo.main builds them), its normaliser fitted, and
    train_ensemble's inputs and targets from n rows shaped like Hopper transitions (random_rows)."""
    args = hopper_args(device)
    torch.manual_seed(seed)
    gen = torch.Generator(device).manual_seed(seed)
    buffer = usbpo.ReplayBuffer(n, OBS_DIM, ACT_DIM, device)
    buffer.add(random_rows(n, gen, device))
    inputs, targets = buffer.model_data(buffer.data)
    model = usbpo.GaussianEnsemble(OBS_DIM, ACT_DIM, args.ensemble_size, args.num_elites, args.model_hidden).to(device)
    model.fit_normaliser(inputs)
    return args, model, torch.optim.Adam(model.parameters(), lr=args.model_lr, fused=True), inputs, targets, gen


def mle_batches(n_steps, model, n, batch, gen):
    """n_steps minibatches of [E, batch] row indices, as train_ensemble's bootstrap order hands them out."""
    return [torch.randint(n, (model.ensemble_size, batch), generator=gen, device=gen.device) for _ in range(n_steps)]


def mle_copy(model, args):  # an independent ensemble with the same weights, and its own fresh fused Adam
    twin = copy.deepcopy(model)
    return twin, torch.optim.Adam(twin.parameters(), lr=args.model_lr, fused=True)


def mle_equivalence_check(n_steps=10, n=5000, seed=0, device="cuda"):
    """GraphedMLEStep against the same class with capture switched off (the same work, eagerly), on a copy of the
    ensemble with its own Adam, on the same minibatches: 3 warm-ups, a capture, 6 replays. Returns a dict with `ok`."""
    device = torch.device(device)
    args, model, optimizer, inputs, targets, gen = mle_setup(device, n, seed)
    eager_model, eager_optimizer = mle_copy(model, args)
    graphed = GraphedMLEStep(model, optimizer, inputs, targets, args.model_batch_size)
    eager = GraphedMLEStep(eager_model, eager_optimizer, inputs, targets, args.model_batch_size)
    eager.WARMUP = math.inf  # never captures
    capture_seconds, replays, losses_ok, bitwise, loss_abs = [], 0, True, True, 0.0
    for idx in mle_batches(n_steps, model, n, args.model_batch_size, gen):
        out = call(graphed, capture_seconds, idx).clone()
        replays += graphed.graph is not None
        ref = eager(idx)
        loss_abs = max(loss_abs, (out - ref).abs().item())
        losses_ok &= torch.allclose(out, ref, **LOSS_TOL) and bool(torch.isfinite(out))
        bitwise &= torch.equal(out, ref)
    tensor_diff, worst, tensors_equal = compare_tensors(
        agent_tensors(model, [optimizer]), agent_tensors(eager_model, [eager_optimizer])
    )
    bitwise &= tensors_equal
    report = dict(steps=n_steps, captures=len(capture_seconds), replays=replays, loss_max_abs_diff=loss_abs,
                  tensor_max_abs_diff=tensor_diff, worst_tensor=worst, losses_ok=bool(losses_ok),
                  tensors_ok=tensor_diff <= WEIGHT_ATOL, bitwise=bool(bitwise), capture_seconds=capture_seconds)  # fmt: skip
    report["ok"] = report["losses_ok"] and report["tensors_ok"] and len(capture_seconds) == 1
    return report


def mle_timing(n=50_000, n_steps=200, warmup=20, seed=0, device="cuda"):
    """ms per minibatch step of the maximum-likelihood training on n transitions (Hopper preset: 7 x 4 x 200, batch 256
    per member): usbpo.train_ensemble's step as it runs it, and the graphed step; and the seconds of one epoch each
    way (n_train / 256 steps, n_train = n less the holdout), to compare with a whole epoch measured by speed.py."""
    device = torch.device(device)
    args, model, optimizer, inputs, targets, gen = mle_setup(device, n, seed)
    batches = mle_batches(warmup + n_steps, model, n, args.model_batch_size, gen)

    def eager_step(idx):  # train_ensemble's minibatch step
        loss = model.loss(inputs[idx], targets[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def timed(step):
        times = []
        for i, idx in enumerate(batches):
            torch.cuda.synchronize()
            start = time.perf_counter()
            step(idx)
            torch.cuda.synchronize()
            if i >= warmup:
                times.append((time.perf_counter() - start) * 1e3)
        return summary(times)

    steps_per_epoch = math.ceil((n - min(int(n * args.holdout_ratio), args.max_holdout)) / args.model_batch_size)
    out = dict(n=n, steps_per_epoch=steps_per_epoch, eager=timed(eager_step))
    out["eager_epoch_s"] = out["eager"]["median_ms"] * steps_per_epoch / 1e3
    twin, twin_optimizer = mle_copy(model, args)
    graphed, capture_seconds = GraphedMLEStep(twin, twin_optimizer, inputs, targets, args.model_batch_size), []
    out["graphed"] = timed(lambda idx: call(graphed, capture_seconds, idx))
    out.update(graphed_epoch_s=out["graphed"]["median_ms"] * steps_per_epoch / 1e3, capture_seconds=capture_seconds,
               speedup=out["eager"]["median_ms"] / out["graphed"]["median_ms"])  # fmt: skip
    return out


# ---- command line -----------------------------------------------------------------------------------------------------
def section(results, name, fn, *a, **kw):
    """results[name] = fn(...), or the error (with its traceback on stderr): one failing part does not hide the next."""
    try:
        results[name] = fn(*a, **kw)
    except Exception as e:
        traceback.print_exc()
        results[name] = dict(error=f"{type(e).__name__}: {e}")
        print(f"{name}: FAILED with {results[name]['error']}", flush=True)
    return results[name]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=200, help="timed env steps per path (after 20 of warm-up)")
    p.add_argument("--loop-steps", type=int, default=200, help="real Hopper env steps of the loop estimate (0: skip)")
    p.add_argument("--json", default=None, help="also write the results to this file")
    opts = p.parse_args()
    if not torch.cuda.is_available():
        print("graphed_sac.py: needs a CUDA GPU (torch.cuda.is_available() is False here); nothing was run")
        return 0
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}, CUDA {torch.version.cuda}", flush=True)
    results = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "cuda": torch.version.cuda}

    eq = section(results, "equivalence", equivalence_check)
    if "error" not in eq:
        print(
            f"equivalence ({eq['env_steps']} env steps x {eq['updates_per_step']} updates, {eq['replays']} of them "
            f"replays; real buffer growing, model pool resized once): {'PASS' if eq['ok'] else 'FAIL'}; "
            f"bitwise equal: {'yes' if eq['bitwise'] else 'no'}; "
            f"max |d loss| {eq['loss_max_abs_diff']:.3g} (relative {eq['loss_max_rel_diff']:.3g}); max |d tensor| "
            f"{eq['tensor_max_abs_diff']:.3g} ({eq['worst_tensor']}); "
            f"captures {eq['captures']} (expected {eq['expected_captures']}), "
            f"{', '.join(f'{s:.2f}' for s in eq['capture_seconds'])} s each",
            flush=True,
        )
    if not eq.get("ok"):  # the other capturable Adam: tells a fused-kernel problem from a capture problem
        eq2 = section(results, "equivalence_foreach_adam", equivalence_check, fused=False)
        print(f"  with foreach capturable Adam instead: {eq2}", flush=True)

    tm = section(results, "timing", timing, opts.steps)
    if "eager" in tm:
        e = tm["eager"]
        print(
            f"ms per env step ({e['n']} steps; real rows {tm['real_rows'][0]} -> {tm['real_rows'][1]}, model pool "
            f"{tm['model_rows']}): eager usbpo (sac_updates: sampling + 20 x SAC.update) median {e['median_ms']:.2f} "
            f"(mean {e['mean_ms']:.2f}, p90 {e['p90_ms']:.2f})",
            flush=True,
        )
    if "graphed" in tm:
        g = tm["graphed"]
        print(
            f"ms per env step, graphed: median {g['median_ms']:.2f} (mean {g['mean_ms']:.2f}, p90 {g['p90_ms']:.2f}); "
            f"captures {tm['captures']} ({tm['capture_seconds'][0]:.2f} s)",
            flush=True,
        )
        print(f"speed-up: {tm['speedup']:.1f}x (target: graphed <= 10 ms per env step)", flush=True)
    elif "graphed_error" in tm:
        print(f"graphed step FAILED: {tm['graphed_error']}", flush=True)
    meq = section(results, "mle_equivalence", mle_equivalence_check)
    if "error" not in meq:
        print(f"maximum-likelihood step, graphed against eager ({meq['steps']} steps, {meq['replays']} replays): "
              f"{'PASS' if meq['ok'] else 'FAIL'}; bitwise equal: {'yes' if meq['bitwise'] else 'no'}; max |d loss| "
              f"{meq['loss_max_abs_diff']:.3g}; max |d tensor| {meq['tensor_max_abs_diff']:.3g} ({meq['worst_tensor']})",
              flush=True)  # fmt: skip
    mt = section(results, "mle_timing", mle_timing)
    if "error" not in mt:
        e, g = mt["eager"], mt["graphed"]
        print(f"maximum-likelihood step at {mt['n']} transitions, ms: eager {e['median_ms']:.3f} (p90 {e['p90_ms']:.3f}), "
              f"graphed {g['median_ms']:.3f} (p90 {g['p90_ms']:.3f}), {mt['speedup']:.1f}x; one epoch of "
              f"{mt['steps_per_epoch']} steps: eager {mt['eager_epoch_s']:.3f} s, graphed {mt['graphed_epoch_s']:.3f} s",
              flush=True)  # fmt: skip
    if opts.loop_steps:
        lp = section(results, "loop", loop_estimate, opts.loop_steps)
        if "error" not in lp:
            print(
                f"Hopper loop without the model side (act, env step, store, graphed SAC, check): {lp['mean_ms']:.2f} "
                f"ms per env step = {lp['s_per_1000_env_steps']:.1f} s per 1000 steps; add model training and "
                f"rollouts (speed.py's breakdown) for the loop figure (target <= 25 s)",
                flush=True,
            )
    if opts.json:
        with open(opts.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0 if eq.get("ok") and "graphed" in tm and meq.get("ok") else 1


if __name__ == "__main__":
    sys.exit(main())
