"""One env step's SAC work as one CUDA graph replay (issue 23): python benchmarks/graphed_sac.py [--json PATH]

PREPARED WITHOUT A GPU: none of this file's CUDA code has been run yet, and no figure it prints has been measured.
First run: `python benchmarks/graphed_sac.py` on a CUDA machine (or `bash benchmarks/gpu_session.sh`, which runs it
first); on a machine without CUDA it prints one line saying so and exits 0.

A prototype beside usbpo.py, which it imports and does not change (the CPU path, and its seeded CSVs, stay as they
are). On a GPU the loop is bound by the 20 SAC updates of each env step, about a hundred small kernels each, every one
shorter than its launch (benchmarks/README.md). `GraphedSACStep` captures, once, all of one env step's SAC work:

  * the minibatches of all `updates_per_step` updates, `real_ratio` of each from the real buffer and the rest from the
    model buffer, as `usbpo.sample_batches`, but with the buffers' sizes read on the device (`draw_rows`), so that
    a buffer that grows needs no new capture;
  * the `updates_per_step` updates in sequence, through `usbpo.SAC.update` itself (critics, actor, temperature,
    Polyak target update), its three Adam optimisers replaced by `Adam(fused=True, capturable=True)`: the same fused
    kernel as usbpo's `Adam(fused=True)` (torch's `_fused_adam` ignores `capturable`), with the step count on the device;
  * the losses of every update written to one static tensor `losses` [updates_per_step, 8] (keys `loss_keys`, in
    `SAC.update`'s order) and a device flag `finite` (every loss of the env step finite): no host sync anywhere.

`step()` writes the two buffer sizes into int64 device scalars (`fill_`, asynchronous) and replays the graph.

Buffers (the choice the issue asks to document): the graph reads the `usbpo.ReplayBuffer`s' own `.data` tensors in
place. `ReplayBuffer.add` writes rows into that tensor in place, so growth is only a new size: no re-capture. A
buffer's tensor is replaced only when its capacity changes (`ReplayBuffer.resize`: the model buffer each time the
rollout schedule changes k, about 10 times in a 125k-step Hopper run, where k goes 1 -> 11), or on resume
(`load_state_dict`); `step()` sees the change in the tensors' data pointers and shapes and captures again before the
replay. It never re-captures on a size change. Chosen over static copies at the largest capacity because that copy
would be a second model pool (at the schedule's largest k, 15, Hopper's is 6M rows, 648 MB) and a copy after every
rollout phase; a re-capture costs a few eager env steps of warm-up and one capture (not yet measured).

A capture leaves no trace: the warm-up iterations it needs (Adam's state is created at its first step) run on a side
stream as the torch.cuda.graph documentation prescribes, and then the weights, target critics, temperature, Adam state
and the CUDA RNG state are put back, in place, to what they were before it.

Sampling: `draw_rows` draws index = randint(2**62) % size, uniform up to a bias of size / 2**62. The formula
(rand * size).long() suggested in the issue is not used: float32 rand has 2**24 values, so over a 6M-row pool some rows
would be drawn 1.5 times as often as others, and rand * size can round up to size itself.

`equivalence_check` runs the graphed step against an eager step that calls the same Python function (same sampling
formula, same ops, same random numbers through `torch.cuda.manual_seed` before each, usbpo's own fused Adam), with
growth every step and one capacity change (one re-capture). Bitwise equality is expected but not guaranteed: the same
kernels run in both, but cuBLAS may pick other algorithms for a captured stream's workspace, and Adam turns a
rounding-level difference in a near-zero gradient into up to about 2 lr (6e-4) in a weight, so the tolerances are 1e-5
relative (1e-6 absolute) on the losses and 1e-4 absolute on weights and Adam state; it says whether the two were
bitwise equal. It is not equivalence with `usbpo.sample_batches`, whose torch.randint(size) draws other random numbers
from the same distribution.

`timing` measures ms per env step of the eager usbpo path (`usbpo.sample_batches` + 20 x `SAC.update`, as
usbpo.main runs them) and of the graphed step, each with torch.cuda.synchronize() around every env step, at the Hopper
preset (obs 11, act 3, 20 updates of batch 256, real_ratio 0.05) with 5k-6k real rows growing by one per env step and
the epoch-1 model pool (`usbpo.model_buffer_capacity` at k = 1: 400,000 rows); `loop_estimate` runs real Hopper steps
(acting, env step, storing, graphed SAC): the loop without model training, rollouts, evaluation and logging.
The issue's targets: a graphed env step <= 10 ms (eager: 86-94 ms on an H100), the Hopper loop <= 25 s per 1000 steps.

Not done here: usbpo.main does not use this yet (integration: build `GraphedSACStep(agent, real_buffer, model_buffer,
...)` after the buffers on CUDA, call `step()` instead of the sample_batches loop, check `finite` where check_finite
is called, log `losses_dict()`).
"""

import argparse
import copy
import json
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


# ---- the graphed env step -------------------------------------------------------------------------------------------
def draw_rows(data, size, shape):
    """Rows drawn uniformly with replacement from data[:size], size an int64 device scalar (0: row 0): [*shape, row]."""
    return data[torch.randint(2**62, shape, device=data.device) % size.clamp_min(1)]


def sample_minibatches(real_buffer, model_buffer, real_size, model_size, n_updates, batch_size, real_ratio):
    """usbpo.sample_batches with device-side sizes: [n_updates, batch_size, row]. While the model buffer is empty, the
    whole batch is real, as there (torch.where on the device instead of a host branch)."""
    n_real = int(batch_size * real_ratio)
    real_rows = draw_rows(real_buffer.data, real_size, (n_updates, batch_size))
    if n_real == batch_size:
        return real_rows
    model_rows = draw_rows(model_buffer.data, model_size, (n_updates, batch_size - n_real))
    model_rows = torch.where(model_size > 0, model_rows, real_rows[:, n_real:])
    return torch.cat([real_rows[:, :n_real], model_rows], dim=1)


def env_step_work(agent, real_buffer, model_buffer, real_size, model_size, cfg, losses_out, finite_out):
    """One env step's SAC work, captured by GraphedSACStep and run eagerly by the equivalence check: the minibatches,
    then cfg.updates_per_step x SAC.update, losses into losses_out [updates, 8]. Returns the loss keys."""
    n = cfg.updates_per_step
    rows = sample_minibatches(real_buffer, model_buffer, real_size, model_size, n, cfg.batch_size, cfg.real_ratio)
    for i in range(n):
        out = agent.update(*real_buffer.split(rows[i]))
        losses_out[i].copy_(torch.stack(list(out.values())))
    finite_out.copy_(torch.isfinite(losses_out).all())
    return list(out)


def capturable_adam(old, fused=True):
    """The same optimiser (param groups, hyperparameters, state) as Adam(capturable=True), fused or foreach."""
    impl = dict(fused=True, foreach=None) if fused else dict(fused=None, foreach=True)
    own = ("capturable", "fused", "foreach")
    groups = [{k: v for k, v in group.items() if k not in own} for group in old.param_groups]
    new = torch.optim.Adam(groups, capturable=True, **impl)
    if old.state:
        new.load_state_dict(old.state_dict())  # takes the saved groups' flags too: set ours again
        for group in new.param_groups:
            group.update(capturable=True, **impl)
        for p, state in new.state.items():  # capturable Adam counts its steps on the device
            if "step" in state:
                state["step"] = state["step"].to(device=p.device, dtype=torch.float32)
    return new


class GraphedSACStep:
    """One env step's SAC work (sampling + updates_per_step SAC updates) as one CUDA graph; see the module docstring.

    step() returns the static `losses` tensor [updates_per_step, 8], overwritten by the next replay (read or clone it
    first); `finite` is a device bool. The agent's optimisers are replaced by capturable ones (same state)."""

    def __init__(self, agent, real_buffer, model_buffer, updates_per_step, batch_size, real_ratio, warmup=3, fused=True):
        self.device = real_buffer.data.device
        if self.device.type != "cuda":
            raise ValueError(f"GraphedSACStep needs CUDA buffers, got {self.device}")
        self.agent, self.real, self.model, self.warmup = agent, real_buffer, model_buffer, warmup
        self.cfg = argparse.Namespace(updates_per_step=updates_per_step, batch_size=batch_size, real_ratio=real_ratio)
        params = {id(p) for p in agent.parameters()}
        for name in ("actor_optim", "qf_optim", "alpha_optim"):
            old = getattr(agent, name)
            assert all(id(p) in params for g in old.param_groups for p in g["params"]), f"{name} holds foreign params"
            setattr(agent, name, capturable_adam(old, fused))
        self.real_size, self.model_size = (torch.zeros((), dtype=torch.int64, device=self.device) for _ in range(2))
        self.losses = torch.zeros(updates_per_step, 8, device=self.device)
        self.finite = torch.ones((), dtype=torch.bool, device=self.device)
        self.graph, self.layout, self.held, self.captures, self.loss_keys = None, None, None, 0, None
        self.capture_seconds = []

    def buffer_layout(self):
        return tuple((b.data.data_ptr(), tuple(b.data.shape)) for b in (self.real, self.model))

    def set_sizes(self):
        self.real_size.fill_(self.real.size)  # a kernel argument: no host sync
        self.model_size.fill_(self.model.size)

    def work(self):
        return env_step_work(
            self.agent, self.real, self.model, self.real_size, self.model_size, self.cfg, self.losses, self.finite
        )

    def snapshot(self):
        """Copies of everything a warm-up changes: parameters, buffers, Adam state, CUDA RNG."""
        tensors = [*self.agent.parameters(), *self.agent.buffers()]
        optim_state = {}
        for optim in (self.agent.actor_optim, self.agent.qf_optim, self.agent.alpha_optim):
            for group in optim.param_groups:
                for p in group["params"]:
                    state = optim.state.get(p)
                    optim_state[optim, p] = {k: v.clone() for k, v in state.items()} if state else None
        return [t.detach().clone() for t in tensors], optim_state, torch.cuda.get_rng_state(self.device)

    def restore(self, saved):
        """Puts the snapshot back in place (the graph holds these tensors' addresses); Adam state created by the warm-up
        goes back to what a fresh Adam starts from: step 0, zero moments."""
        values, optim_state, rng = saved
        with torch.no_grad():
            for t, v in zip([*self.agent.parameters(), *self.agent.buffers()], values):
                t.copy_(v)
            for (optim, p), before in optim_state.items():
                for k, v in optim.state[p].items():
                    if before is None:
                        v.zero_()
                    else:
                        v.copy_(before[k])
        torch.cuda.set_rng_state(rng, self.device)

    def capture(self):
        """Warm-up on a side stream (lazy Adam state), capture, then undo the warm-up (see snapshot/restore)."""
        start = time.perf_counter()
        self.graph = self.held = None  # frees the previous graph's pool
        torch.cuda.synchronize(self.device)
        saved = self.snapshot()
        self.set_sizes()
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side), warnings.catch_warnings():  # capturable Adam warns when it runs uncaptured
            warnings.filterwarnings("ignore", message="This instance was constructed with capturable=True")
            for _ in range(self.warmup):
                self.loss_keys = self.work()
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):  # update() sets the grads to None, so backward allocates them in the graph's pool
            self.work()
        self.restore(saved)
        torch.cuda.synchronize(self.device)
        self.graph, self.layout = graph, self.buffer_layout()
        self.held = (self.real.data, self.model.data)  # the captured addresses stay allocated while the graph lives
        self.captures += 1
        self.capture_seconds.append(time.perf_counter() - start)

    def step(self):
        """One env step's SAC work: re-capture only if a buffer's tensor was replaced (a capacity change)."""
        if self.graph is None or self.buffer_layout() != self.layout:
            self.capture()
        self.set_sizes()
        self.graph.replay()
        return self.losses

    def losses_dict(self, update=-1):
        """The losses of one update of the last replay, as usbpo's SAC.update names them (cloned)."""
        return dict(zip(self.loss_keys, self.losses[update].clone()))


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


def hopper_setup(device, real_rows=5000, seed=0):
    """Hopper preset args, agent, and buffers: the real one of the run's capacity (total_timesteps) holding real_rows,
    the model pool at k = 1 (model_buffer_capacity: 400,000 rows at the preset), full."""
    args = hopper_args(device)
    torch.manual_seed(seed)
    gen = torch.Generator(device).manual_seed(seed)
    agent = usbpo.SAC(OBS_DIM, ACT_DIM, -np.ones(ACT_DIM), np.ones(ACT_DIM), args).to(device)
    real = usbpo.ReplayBuffer(args.total_timesteps, OBS_DIM, ACT_DIM, device)
    model = usbpo.ReplayBuffer(usbpo.model_buffer_capacity(args, 1), OBS_DIM, ACT_DIM, device)
    real.add(random_rows(real_rows, gen, device))
    model.add(random_rows(model.capacity, gen, device))
    return args, agent, real, model, gen


def agent_tensors(agent):
    """Name -> tensor of everything an update changes: weights, target critics, temperature, Adam state."""
    out = {f"weight {name}": p.detach() for name, p in agent.named_parameters()}
    names = {id(p): name for name, p in agent.named_parameters()}
    for optim_name in ("actor_optim", "qf_optim", "alpha_optim"):
        optim = getattr(agent, optim_name)
        for p, state in optim.state.items():
            for k, v in state.items():
                out[f"adam {names[id(p)]}.{k}"] = v.detach().float()
    return out


# ---- equivalence ------------------------------------------------------------------------------------------------------
def equivalence_check(n_steps=8, resize_at=4, seed=0, device="cuda", fused=True):
    """The graphed step against the same work run eagerly on a copy of the agent (usbpo's fused Adam), both reading the
    same buffers with the same random numbers; the real buffer grows by one row every env step, and at env step
    resize_at (None: never) the model pool is resized to k = 2 and refilled, as model_rollouts does, which must cause
    exactly one re-capture. Returns a dict with `ok` and the largest differences."""
    device = torch.device(device)
    args, eager, real, model, gen = hopper_setup(device, seed=seed)
    graphed_agent = copy.deepcopy(eager)
    rng_before = torch.cuda.get_rng_state(device)
    graphed = GraphedSACStep(graphed_agent, real, model, args.updates_per_step, args.batch_size, args.real_ratio,
                             fused=fused)  # fmt: skip
    graphed.capture()  # here, to check that a capture leaves no trace
    invisible = torch.equal(rng_before, torch.cuda.get_rng_state(device)) and all(
        torch.equal(p, q) for p, q in zip(graphed_agent.state_dict().values(), eager.state_dict().values())
    )
    sizes = [torch.zeros((), dtype=torch.int64, device=device) for _ in range(2)]
    eager_losses = torch.zeros_like(graphed.losses)
    eager_finite = torch.ones((), dtype=torch.bool, device=device)
    loss_abs = loss_rel = 0.0
    losses_ok = bitwise = True
    for t in range(n_steps):
        if t == resize_at:
            model.resize(usbpo.model_buffer_capacity(args, 2))
            model.add(random_rows(args.rollout_batch_size, gen, device))
        torch.cuda.manual_seed(seed + 1 + t)
        sizes[0].fill_(real.size), sizes[1].fill_(model.size)
        env_step_work(eager, real, model, *sizes, graphed.cfg, eager_losses, eager_finite)
        torch.cuda.manual_seed(seed + 1 + t)
        out = graphed.step()
        diff = (out - eager_losses).abs()
        loss_abs = max(loss_abs, diff.max().item())
        loss_rel = max(loss_rel, (diff / eager_losses.abs().clamp_min(1e-30)).max().item())
        losses_ok &= torch.allclose(out, eager_losses, **LOSS_TOL) and bool(graphed.finite == eager_finite)
        bitwise &= torch.equal(out, eager_losses)
        real.add(random_rows(1, gen, device))  # the buffer grows every env step
    a, b = agent_tensors(graphed_agent), agent_tensors(eager)
    assert a.keys() == b.keys(), sorted(set(a) ^ set(b))
    diffs = {name: (a[name] - b[name]).abs().max().item() for name in a}
    worst = max(diffs, key=diffs.get)
    expected_captures = 1 + (resize_at is not None and 0 < resize_at < n_steps)
    bitwise &= all(torch.equal(a[name], b[name]) for name in a)
    report = dict(
        env_steps=n_steps, updates_per_step=args.updates_per_step, captures=graphed.captures,
        expected_captures=expected_captures, loss_max_abs_diff=loss_abs, loss_max_rel_diff=loss_rel,
        tensor_max_abs_diff=diffs[worst], worst_tensor=worst, losses_ok=bool(losses_ok),
        tensors_ok=diffs[worst] <= WEIGHT_ATOL, bitwise=bool(bitwise), adam="fused" if fused else "foreach",
        capture_seconds=graphed.capture_seconds, capture_invisible=bool(invisible),
    )  # fmt: skip
    report["ok"] = report["losses_ok"] and report["tensors_ok"] and invisible and graphed.captures == expected_captures
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
    """ms per env step: the eager usbpo path (usbpo.sample_batches + SAC.update x 20) and the graphed step. A graphed
    step that fails is reported as an error next to the eager figure."""
    device = torch.device(device)
    args, agent, real, model, gen = hopper_setup(device, seed=seed)
    graphed_agent = copy.deepcopy(agent)

    def eager_step():
        for rows in usbpo.sample_batches(real, model, args):
            agent.update(*real.split(rows))

    rows_before = real.size
    out = dict(eager=summary(time_steps(eager_step, real, gen, n_steps, warmup)), model_rows=model.size)
    try:
        graphed = GraphedSACStep(graphed_agent, real, model, args.updates_per_step, args.batch_size, args.real_ratio)
        times = time_steps(graphed.step, real, gen, n_steps, warmup)
        out.update(graphed=summary(times), captures=graphed.captures, capture_seconds=graphed.capture_seconds,
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
    graphed = GraphedSACStep(agent, real, model, args.updates_per_step, args.batch_size, args.real_ratio)
    env = usbpo.make_env("Hopper-v4", seed)
    obs, _ = env.reset(seed=seed)
    times = []
    for i in range(warmup + n_steps):
        start = time.perf_counter()
        with torch.no_grad():
            action = agent.actor(torch.as_tensor(obs, dtype=torch.float32, device=device)[None])[0][0].cpu().numpy()
        next_obs, reward, terminated, truncated, _ = env.step(action)
        row = np.concatenate([obs, action, [reward], next_obs, [float(terminated)]])
        real.add(torch.as_tensor(row, dtype=torch.float32).to(device)[None])
        obs = env.reset()[0] if terminated or truncated else next_obs
        graphed.step()
        usbpo.check_finite(graphed.losses[-1], "SAC update")  # the loop's host sync (usbpo.main checks every step)
        if i >= warmup:
            times.append((time.perf_counter() - start) * 1e3)
    torch.cuda.synchronize()
    env.close()
    return dict(summary(times), s_per_1000_env_steps=statistics.fmean(times), captures=graphed.captures)


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
    p.add_argument("--equiv-steps", type=int, default=8, help="env steps of the equivalence check")
    p.add_argument("--loop-steps", type=int, default=200, help="real Hopper env steps of the loop estimate (0: skip)")
    p.add_argument("--json", default=None, help="also write the results to this file")
    opts = p.parse_args()
    if not torch.cuda.is_available():
        print("graphed_sac.py: needs a CUDA GPU (torch.cuda.is_available() is False here); nothing was run")
        return 0
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}, CUDA {torch.version.cuda}", flush=True)
    results = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "cuda": torch.version.cuda}

    eq = section(results, "equivalence", equivalence_check, opts.equiv_steps, resize_at=opts.equiv_steps // 2)
    if "error" not in eq:
        print(
            f"equivalence ({eq['env_steps']} env steps x {eq['updates_per_step']} updates, real buffer growing, model "
            f"pool resized {'once' if eq['expected_captures'] == 2 else 'never'}): {'PASS' if eq['ok'] else 'FAIL'}; "
            f"bitwise equal: {'yes' if eq['bitwise'] else 'no'}; "
            f"max |d loss| {eq['loss_max_abs_diff']:.3g} (relative {eq['loss_max_rel_diff']:.3g}); max |d tensor| "
            f"{eq['tensor_max_abs_diff']:.3g} ({eq['worst_tensor']}); capture left no trace: {eq['capture_invisible']}; "
            f"captures {eq['captures']} (expected {eq['expected_captures']}), "
            f"{', '.join(f'{s:.2f}' for s in eq['capture_seconds'])} s each",
            flush=True,
        )
    if not eq.get("ok"):  # the other capturable Adam: tells a fused-kernel problem from a capture problem
        eq2 = section(results, "equivalence_foreach_adam", equivalence_check, opts.equiv_steps, fused=False)
        print(f"  with foreach capturable Adam instead: {eq2}", flush=True)

    tm = section(results, "timing", timing, opts.steps)
    if "eager" in tm:
        e = tm["eager"]
        print(
            f"ms per env step ({e['n']} steps; real rows {tm['real_rows'][0]} -> {tm['real_rows'][1]}, model pool "
            f"{tm['model_rows']}): eager usbpo (sample_batches + 20 x SAC.update) median {e['median_ms']:.2f} "
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
    return 0 if eq.get("ok") and "graphed" in tm else 1


if __name__ == "__main__":
    sys.exit(main())
