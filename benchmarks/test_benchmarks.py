"""Tests of benchmarks/graphed_sac.py (with usbpo.sac_updates, which it replaces) and benchmarks/projection.py, run
from the repository's root as the README's test command does; their helpers are in conftest.py."""

import contextlib
import math
import os
from types import SimpleNamespace

import pytest
import torch

import usbpo
from conftest import HERE, final_state

# --------------------------------------------------------------------------------------
# sac_updates, the loop's env step of SAC work, and its CUDA-graphed form (benchmarks/graphed_sac.py): the samplers
# and the graph's bookkeeping here (stand-ins for torch.cuda), the graph itself on a GPU
# --------------------------------------------------------------------------------------


def load_graphed_sac():
    import importlib.util

    spec = importlib.util.spec_from_file_location("graphed_sac", os.path.join(HERE, "benchmarks", "graphed_sac.py"))
    graphed_sac = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(graphed_sac)
    return graphed_sac


@pytest.mark.parametrize("graphed", [False, True])
def test_sac_step_samples_real_ratio_real_rows_and_model_rows(graphed):
    """Both samplers, usbpo.sac_updates' and the graphed step's (with the buffer sizes on the device; it runs on the CPU
    too), draw rows only from the filled part of each buffer, every such row, and all of a batch real while the model
    buffer is empty, then its first int(batch * real_ratio) rows real and the rest model data; one batch per update."""
    args = SimpleNamespace(updates_per_step=4, batch_size=256, real_ratio=0.05, compile=False)
    real, model = usbpo.ReplayBuffer(100, 2, 1, "cpu"), usbpo.ReplayBuffer(50, 2, 1, "cpu")
    real.add(torch.arange(1.0, 31.0)[:, None].expand(30, real.data.shape[1]))  # real rows 1..30 (in 100 slots)
    batches = []
    agent = SimpleNamespace(update=lambda obs, *rest: batches.append(obs[:, 0]) or {"loss": obs.sum()})
    agent.actor_optim = agent.qf_optim = agent.alpha_optim = None  # not stepped here
    if graphed:
        step = load_graphed_sac().GraphedSACStep(agent, real, model, args)
    torch.manual_seed(0)
    for model_rows in (0, 20):
        model.add(torch.arange(1001.0, 1001.0 + model_rows)[:, None].expand(model_rows, model.data.shape[1]))
        batches.clear()
        if graphed:
            step.sizes.copy_(torch.tensor([real.size, model.size]))  # what step() writes before a warm-up or replay
            step.work()
        else:
            usbpo.sac_updates(agent.update, real, model, args)
        ids = torch.stack(batches)
        n_real = 256 if model_rows == 0 else int(256 * 0.05)
        real_ids, model_ids = (set(part.unique().tolist()) for part in ids.split([n_real, 256 - n_real], dim=1))
        assert ids.shape == (4, 256) and len({tuple(row.tolist()) for row in ids}) == 4
        if model_rows == 0:  # 1024 draws: every real row comes up (each misses with probability < 1e-15)
            assert real_ids == set(range(1, 31)) and not model_ids
        else:  # 976 model draws cover its 20 rows (each missed w.p. < 1e-21)
            assert real_ids <= set(range(1, 31)) and model_ids == set(range(1001, 1021))


@pytest.fixture
def cuda_stand_ins(monkeypatch):
    """torch.cuda's streams and graphs replaced by stand-ins, so that the graphed steps' bookkeeping runs on the CPU: a
    stand-in capture runs the work once, as capture and first replay do, and a later replay runs it again and writes its
    result into the captured output in place. Returns the lists of captured steps and of replayed graphs."""
    captured, replays = [], []

    class Graph:
        def replay(self):
            replays.append(self)
            if getattr(self, "step", None):
                out, new = self.step.out, self.step.work()
                for old_value, new_value in zip(out.values(), new.values()) if isinstance(out, dict) else [(out, new)]:
                    old_value.copy_(new_value)
            self.step = captured[-1]

    stream = SimpleNamespace(wait_stream=lambda other: None)
    monkeypatch.setattr(torch.cuda, "Stream", lambda: stream)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda: stream)
    monkeypatch.setattr(torch.cuda, "stream", lambda s: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "CUDAGraph", Graph)
    monkeypatch.setattr(torch.cuda, "graph", lambda g: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "manual_seed", torch.manual_seed)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: None)
    graphed_sac = load_graphed_sac()
    for cls in (graphed_sac.GraphedSACStep, graphed_sac.GraphedMLEStep):
        monkeypatch.setattr(cls, "work", lambda self, work=cls.work: captured.append(self) or work(self))
    return graphed_sac, captured, replays


def test_graphed_sac_step_warms_up_and_captures_again_only_for_a_new_buffer_tensor(cuda_stand_ins):
    """The graphed env step's bookkeeping, on the CPU with stand-ins for torch.cuda: 3 eager warm-ups, then one
    capture, replays while the real buffer grows, and warm-ups and a capture again only after the model pool's tensor
    is replaced; its results equal the same work run eagerly, bit for bit."""
    graphed_sac, captured, replays = cuda_stand_ins
    report = graphed_sac.equivalence_check(device="cpu")  # 10 env steps, the model pool resized at the 6th
    assert report["captures"] == len(set(replays)) == 2, report
    assert report["replays"] == len(replays) == 4, report  # env steps 3, 4, 8, 9: a replay each
    assert report["bitwise"] and report["ok"], report


def test_graphed_mle_step_warms_up_captures_once_and_matches_eager(cuda_stand_ins):
    """The graphed maximum-likelihood step, likewise: 3 warm-ups, one capture, then replays of the minibatches copied
    into its static index buffer; losses, weights and Adam state equal the same steps run eagerly, bit for bit."""
    graphed_sac, captured, replays = cuda_stand_ins
    report = graphed_sac.mle_equivalence_check(device="cpu", n=600)  # 10 steps
    assert report["captures"] == len(set(replays)) == 1 and report["replays"] == len(replays) == 7, report
    assert report["bitwise"] and report["ok"], report


def test_graphed_sac_env_step_matches_eager():
    """One env step's sampling and 20 SAC updates replayed as a CUDA graph give the losses, weights and Adam state of
    the same work run eagerly (same random numbers), while the real buffer grows (no new capture) and once the model
    pool is resized (one more warm-up and capture); so do the maximum-likelihood minibatch steps replayed as a graph.
    Prepared without a GPU: its first run is in gpu_session.sh."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU: benchmarks/graphed_sac.py captures CUDA graphs (run on a GPU by gpu_session.sh)")
    graphed_sac = load_graphed_sac()
    report, mle_report = graphed_sac.equivalence_check(), graphed_sac.mle_equivalence_check()
    assert report["ok"] and mle_report["ok"], (report, mle_report)


def test_graphed_env_steps_run_the_loop_through_pool_resizes_and_a_resume(tmp_path, monkeypatch):
    """usbpo.main with the graphed env step on a GPU: it warms up and captures, replays while the real buffer grows, and
    captures again when the model pool is resized for a new k or restored from a checkpoint (k goes 1, 2, 3 over the
    authors' epochs of 200 steps, and the run to 400 is extended to 600: two captures at least), and the run's figures
    stay finite. Not yet run on a GPU since the loop took the authors' order."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU: benchmarks/graphed_sac.py captures CUDA graphs (run on a GPU by gpu_session.sh)")
    graphed_sac = load_graphed_sac()
    calls, call = [], graphed_sac.GraphedSACStep.__call__

    def counted(step):  # the graph each env step's SAC work replayed (None: run eagerly, a warm-up)
        losses = call(step)
        calls.append(step.graph)
        return losses

    monkeypatch.setattr(graphed_sac.GraphedSACStep, "__call__", counted)
    monkeypatch.setattr(usbpo, "sac_updates", graphed_sac.graphed_sac_updates())  # as benchmarks/speed.py times the loop
    argv = (
        "--env-id Hopper-v4 --learning-starts 200 --epoch-length 200 --model-train-freq 100 --rollout-batch-size 200 "
        "--updates-per-step 2 --eval-episodes 1 --model-max-epochs 2 --finetune-steps 3 --checkpoint-every 1 --no-progress "
        "--min-pool-size 0 --rollout-schedule 0 2 1 3 --device cuda --total-timesteps 400"
    ).split()
    run_dir = usbpo.main(argv + ["--runs-dir", str(tmp_path)])
    usbpo.main(["--resume", run_dir, "--total-timesteps", "600"])
    graphs = [g for g in calls if g is not None]  # SAC from the random phase's end (an episode's, after step 200) to 600
    assert 200 < len(calls) < 400 and len(set(map(id, graphs))) >= 2 and len(calls) - len(graphs) >= 6, len(graphs)
    rows, end = final_state(run_dir)
    assert [int(r["env_steps"]) for r in rows] == [200, 400, 600] and end["global_step"] == 600
    assert all(math.isfinite(float(r["eval_return"])) and math.isfinite(float(r["holdout_mse_phase2"])) for r in rows)


def test_projection_sums_the_measured_pieces_over_the_paper_budget():
    """benchmarks/projection.py against the same sums in closed form: Walker2d's 295 blocks of 1000 steps after its 5k
    random ones, each with 4 trainings of E epochs at the block's middle N (an arithmetic series), k = 1 throughout."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("projection", os.path.join(HERE, "benchmarks", "projection.py"))
    projection = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(projection)
    opts = SimpleNamespace(sac_s=100.0, finetune_s=10.0, rest_s=1.0, rollout_s=0.5, steps=None)
    a, b, epochs, first = 0.2, 5e-5, 12.0, 80.0
    parts = projection.project("Walker2d", lambda n: a + b * n, first, opts, epochs, finetune=True)
    blocks = (300_000 - 5_000) // 1000
    middle_n_sum = blocks * 5_500 + 1000 * blocks * (blocks - 1) / 2  # sum of block + 500 over the blocks
    expected = dict(sac=blocks * 100.0, finetune=blocks * 10.0, rest=blocks * 1.0, rollouts=blocks * 4 * 0.5,
                    phase1=first + 4 * epochs * (a * blocks + b * middle_n_sum))  # fmt: skip
    assert parts == pytest.approx(expected, rel=1e-12)
