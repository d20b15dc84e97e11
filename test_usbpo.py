"""Tests of the USB-PO reference: python -m pytest test_usbpo.py

Each test checks a claim of usbpo.py against something independent of it: a closed form
against numerical integration, a termination function against the real environment, a
training step against the holdout data, a run against the files it must write.
"""

import copy
import csv
import glob
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import usbpo
from conftest import HERE, assert_failed_with_one_line, final_state, rows_in, tiny_args_argv, usbpo_command

ALL_ENV_IDS = [f"{family}-{v}" for family in usbpo.PRESETS for v in usbpo.SUPPORTED_VERSIONS]


def tiny_args(*extra, env_id="InvertedPendulum-v4"):
    return usbpo.parse_args(tiny_args_argv(*extra, env_id=env_id))[0]


def random_transitions(env_id, n, seed=0):
    """n real transitions of the uniform random policy, as rows of a ReplayBuffer."""
    env = usbpo.make_env(env_id, seed)
    obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    buffer = usbpo.ReplayBuffer(n, obs_dim, act_dim, "cpu")
    obs, _ = env.reset(seed=seed)
    for _ in range(n):
        act = env.action_space.sample()
        next_obs, rew, terminated, truncated, _ = env.step(act)
        buffer.add(torch.as_tensor(np.concatenate([obs, act, [rew], next_obs, [terminated]]), dtype=torch.float32)[None])
        obs = env.reset()[0] if terminated or truncated else next_obs
    return buffer, obs_dim, act_dim


def assert_one_line_error(argv, message):
    result = subprocess.run(usbpo_command(argv), capture_output=True, text=True, timeout=120)
    assert_failed_with_one_line(result.returncode, result.stderr, message)


def assert_same_run(run_a, run_b):
    (rows_a, end_a), (rows_b, end_b) = final_state(run_a), final_state(run_b)
    assert rows_a == rows_b and end_a["global_step"] == end_b["global_step"]
    for key in ["agent", "model"]:
        for name, tensor in end_a[key].items():
            assert torch.equal(tensor, end_b[key][name]), (key, name)
    assert torch.equal(end_a["real_buffer"]["rows"], end_b["real_buffer"]["rows"])


# --------------------------------------------------------------------------------------
# W2 between diagonal Gaussians
# --------------------------------------------------------------------------------------


def psd_sqrt(m):
    w, v = np.linalg.eigh(m)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def w2_general(mu1, cov1, mu2, cov2):
    """The general Gaussian formula: ||m1 - m2||^2 + tr(S1 + S2 - 2 (S2^1/2 S1 S2^1/2)^1/2), via eigendecompositions."""
    root2 = psd_sqrt(cov2)
    cross = psd_sqrt(root2 @ cov1 @ root2)
    return math.sqrt(np.sum((mu1 - mu2) ** 2) + np.trace(cov1 + cov2 - 2 * cross))


def w2_quantiles(mu1, std1, mu2, std2, n=20000):
    """W2^2 = sum over dims of int_0^1 (F1^-1(q) - F2^-1(q))^2 dq, by the midpoint rule (independent dims couple)."""
    z = np.array([statistics.NormalDist().inv_cdf((i + 0.5) / n) for i in range(n)])
    return math.sqrt(sum(np.mean(((m1 + s1 * z) - (m2 + s2 * z)) ** 2) for m1, s1, m2, s2 in zip(mu1, std1, mu2, std2)))


def test_w2_gaussian_matches_independent_computations():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=(8, 5)), rng.normal(size=(8, 5))
    std1, std2 = rng.uniform(0.1, 2.0, size=(8, 5)), rng.uniform(0.1, 2.0, size=(8, 5))
    ours = usbpo.w2_gaussian(*(torch.as_tensor(a) for a in (mu1, std1, mu2, std2))).numpy()
    assert ours.shape == (8,)
    for i in range(8):
        general = w2_general(mu1[i], np.diag(std1[i] ** 2), mu2[i], np.diag(std2[i] ** 2))
        assert ours[i] == pytest.approx(general, rel=1e-9)
        assert ours[i] == pytest.approx(w2_quantiles(mu1[i], std1[i], mu2[i], std2[i]), rel=2e-3)


def test_w2_gaussian_zero_symmetric_differentiable():
    mu, std = torch.randn(4, 3, 6, dtype=torch.float64), torch.rand(4, 3, 6, dtype=torch.float64) + 0.1
    mu2, std2 = torch.randn_like(mu), torch.rand_like(std) + 0.1
    assert torch.equal(usbpo.w2_gaussian(mu, std, mu, std), torch.zeros(4, 3, dtype=torch.float64))
    assert torch.allclose(usbpo.w2_gaussian(mu, std, mu2, std2), usbpo.w2_gaussian(mu2, std2, mu, std))
    args = tuple(t.clone().requires_grad_() for t in (mu, std, mu2, std2))
    assert torch.autograd.gradcheck(lambda *a: usbpo.w2_gaussian(*a), args)
    # at identical inputs the gradient is zero, not NaN, so a fine-tune step from M2 == M1 is safe
    a = mu.clone().requires_grad_()
    usbpo.w2_gaussian(a, std, mu, std).sum().backward()
    assert torch.equal(a.grad, torch.zeros_like(mu))


# --------------------------------------------------------------------------------------
# Termination functions against the real environments
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("env_id", ALL_ENV_IDS)
def test_termination_fn_agrees_with_env(env_id):
    """Every step of real episodes: random actions, bang-bang actions, and states pushed by random kicks."""
    env = usbpo.make_env(env_id, 0)
    termination_fn = usbpo.get_termination_fn(env_id)
    sim = env.unwrapped
    rng = np.random.default_rng(0)
    obs, _ = env.reset(seed=0)
    observed, expected, acts = [], [], []
    for step in range(3000):
        if step % 3 == 0:  # a kick to qpos and qvel reaches states (flips, jumps, falls) random play rarely sees
            sim.set_state(
                sim.data.qpos + rng.normal(scale=0.3, size=sim.model.nq),
                sim.data.qvel + rng.normal(scale=3.0, size=sim.model.nv),
            )
            obs = env.unwrapped._get_obs()[: env.observation_space.shape[0]]
        act = env.action_space.sample() if step % 2 else np.sign(env.action_space.sample()) * env.action_space.high
        next_obs, _, terminated, truncated, _ = env.step(act)
        observed.append(np.concatenate([obs, next_obs]))
        acts.append(act)
        expected.append(terminated)
        obs = env.reset()[0] if terminated or truncated else next_obs
    obs_next = torch.as_tensor(np.array(observed))
    n = env.observation_space.shape[0]
    got = termination_fn(obs_next[:, :n], torch.as_tensor(np.array(acts)), obs_next[:, n:])
    assert got.dtype == torch.bool and got.shape == (3000,)
    wrong = got != torch.tensor(expected)
    if env_id.startswith("InvertedDoublePendulum"):
        # The env reads the tip height from MuJoCo's site positions, which mj_step leaves from inside
        # the last RK4 substep (dt = 0.01), not from the state it returns. The observation cannot show
        # that state, so a transition may disagree only when the tip is within one substep's motion of
        # the boundary: |height - 1| < 0.6 dt (|w1| + |w1 + w2|). In plain episodes that is ~1 in 20,000.
        s1, s2, c1, c2 = obs_next[:, n + 1], obs_next[:, n + 2], obs_next[:, n + 3], obs_next[:, n + 4]
        w1, w2 = obs_next[:, n + 6], obs_next[:, n + 7]
        margin = (0.6 * (c1 + c1 * c2 - s1 * s2) - 1.0).abs()
        wrong &= margin > 0.6 * 0.01 * (w1.abs() + (w1 + w2).abs())
        assert wrong.sum() + 3 >= (got != torch.tensor(expected)).sum()  # the allowance excuses at most a few
    assert not wrong.any(), f"disagrees with the env at steps {wrong.nonzero().flatten().tolist()}"
    if not env_id.startswith("HalfCheetah"):
        assert 0 < sum(expected) < 3000, "the episodes must show both outcomes for the check to mean something"


def test_inverted_double_pendulum_termination_is_the_authors_on_predictions_off_the_unit_circle():
    """A model's (sin, cos) pairs need not lie on the unit circle: there the rule must be the authors' static fn
    (mbpo/static/inverted_double_pendulum.py), angles by arctan2 and cos t1 as predicted, written out in NumPy."""
    rng = np.random.default_rng(0)
    next_obs = rng.normal(size=(20_000, 11)) * 0.5
    next_obs[:, 3:5] += 1.0  # near upright, where the boundary height 1 lies
    s1, s2, c1, c2 = next_obs[:, 1], next_obs[:, 2], next_obs[:, 3], next_obs[:, 4]
    y = 0.6 * (c1 + np.cos(np.arctan2(s1, c1) + np.arctan2(s2, c2)))
    keep = np.abs(y - 1.0) > 1e-6  # float32 rounding may flip a point that lies on the boundary
    for env_id in ("InvertedDoublePendulum-v4", "InvertedDoublePendulum-v5"):
        got = usbpo.get_termination_fn(env_id)(None, None, torch.as_tensor(next_obs, dtype=torch.float32)).numpy()
        assert np.array_equal(got[keep], (y <= 1.0)[keep])
    unnormalised = 0.6 * (c1 + c1 * c2 - s1 * s2) <= 1.0  # the same on real observations, not here
    assert ((y <= 1.0) != unnormalised).sum() > 1000 and 0.2 < (y <= 1.0).mean() < 0.8  # so the check can tell them apart


def test_unknown_env_refused_with_supported_list():
    with pytest.raises(SystemExit, match="Hopper-v4"):
        usbpo.get_termination_fn("Swimmer-v4")


def test_observation_sizes_match_mbpo():
    for env_id, n in [("Ant-v4", 27), ("Ant-v5", 27), ("Humanoid-v4", 45), ("Humanoid-v5", 45), ("Hopper-v5", 11)]:
        assert usbpo.make_env(env_id, 0).reset(seed=0)[0].shape == (n,)


# --------------------------------------------------------------------------------------
# The dynamics ensemble
# --------------------------------------------------------------------------------------


def test_constant_input_keeps_unit_scale():
    """A column constant in the data so far (IDP's constraint force before the first contact) must not blow up a
    later nonzero value: as MBPO's scaler, std < 1e-12 is replaced by 1."""
    model = usbpo.GaussianEnsemble(2, 1, 3, 2, 8)
    x = torch.cat([torch.randn(100, 1), torch.zeros(100, 1), torch.randn(100, 1)], -1)
    model.fit_normaliser(x)
    assert model.input_std[1] == 1.0 and np.isclose(model.input_std[0], np.std(x[:, 0].numpy()))  # NumPy's population std
    mean, _ = model(torch.tensor([[[0.0, 10.0, 0.0]]]).expand(3, 1, 3))
    assert mean.abs().max() < 1e3


def test_ensemble_first_weights_are_mbpo_truncated_normal():
    """MBPO's fc.py: TF's truncated_normal_initializer, std 1 / (2 sqrt(fan_in)), values beyond 2 std redrawn (so the
    spread is 0.8796 std, the std of a normal truncated at +-2), biases 0."""
    torch.manual_seed(0)
    model = usbpo.GaussianEnsemble(11, 1, 7, 5, 200)
    truncated_std = math.sqrt(1 - 4 * math.exp(-2) / math.sqrt(2 * math.pi) / math.erf(2 / math.sqrt(2)))
    assert truncated_std == pytest.approx(0.8796, abs=1e-4)
    for layer in model.layers:
        std = 1 / (2 * math.sqrt(layer.weight.shape[1]))
        w = layer.weight.detach()
        assert w.abs().max() <= 2 * std and w.abs().max() > 1.9 * std
        assert w.std().item() == pytest.approx(truncated_std * std, rel=0.03) and torch.all(layer.bias == 0)


def test_ensemble_members_are_independent():
    model = usbpo.GaussianEnsemble(4, 1, ensemble_size=7, hidden=32)
    mean, logvar = model(torch.randn(7, 16, 5))
    (mean[2].sum() + logvar[2].sum()).backward()
    for layer in model.layers:
        for p in (layer.weight, layer.bias):
            others = torch.cat([p.grad[:2].flatten(), p.grad[3:].flatten()])
            assert torch.count_nonzero(others) == 0 and torch.count_nonzero(p.grad[2]) > 0


def test_ensemble_training_lowers_holdout_mse_and_picks_elites():
    torch.manual_seed(0)
    buffer, obs_dim, act_dim = random_transitions("Hopper-v4", 3000)
    args = tiny_args("--model-max-epochs", "30")
    model = usbpo.GaussianEnsemble(obs_dim, act_dim, 7, 5, 200)
    inputs, targets = buffer.model_data(buffer.rows())
    model.fit_normaliser(inputs)
    mse_before = model.scores(inputs, targets)[0]
    holdout, mse, epochs = usbpo.train_ensemble(model, torch.optim.Adam(model.parameters(), 1e-3), inputs, targets, args)
    assert len(holdout) == 600 and 1 <= epochs <= 30
    assert torch.all(mse < 0.5 * mse_before), (mse, mse_before)
    assert torch.allclose(mse, model.scores(inputs[holdout], targets[holdout])[0])
    assert sorted(model.elites.tolist()) == sorted(torch.argsort(mse)[:5].tolist())


class ScriptedOptimizer:
    """Stands in for Adam in train_ensemble: sets the weights only where a test says, at the first minibatch of the
    listed epochs, so that which epochs improve the holdout MSE is known in advance."""

    def __init__(self, model, steps_per_epoch, weights_at_epoch):
        self.model, self.steps_per_epoch, self.weights_at_epoch, self.steps = model, steps_per_epoch, weights_at_epoch, 0

    def zero_grad(self, set_to_none=True):
        pass

    def step(self):
        epoch, first = divmod(self.steps, self.steps_per_epoch)
        self.steps += 1
        if first == 0 and epoch + 1 in self.weights_at_epoch:
            set_weights(self.model, self.weights_at_epoch[epoch + 1])


def member_weights(model):
    return [p.detach().clone() for layer in model.layers for p in (layer.weight, layer.bias)]


@torch.no_grad()
def set_weights(model, values):
    for p, v in zip((p for layer in model.layers for p in (layer.weight, layer.bias)), values):
        p.copy_(v)


@pytest.fixture(scope="module")
def warm_start():
    """A model trained a little (the warm start) on InvertedPendulum data, the data, and weights worse for every member."""
    torch.manual_seed(3)
    buffer, obs_dim, act_dim = random_transitions("InvertedPendulum-v4", 1000)
    inputs, targets = buffer.model_data(buffer.rows())
    model = usbpo.GaussianEnsemble(obs_dim, act_dim, 7, 5, 32)
    usbpo.train_ensemble(model, torch.optim.Adam(model.parameters(), 1e-3), inputs, targets, tiny_args())
    worse = [w + 0.3 * torch.randn_like(w) for w in member_weights(model)]
    return model, inputs, targets, worse


def scripted_training(warm_start, patience, weights_at_epoch):
    """train_ensemble from the warm start, the weights set at the given epochs and never moved otherwise."""
    model, inputs, targets, _ = copy.deepcopy(warm_start)
    args = tiny_args("--model-patience", str(patience))
    args.model_max_epochs = None
    n_train = len(inputs) - min(int(len(inputs) * args.holdout_ratio), args.max_holdout)
    optim = ScriptedOptimizer(model, -(-n_train // args.model_batch_size), weights_at_epoch)
    holdout, _, epochs = usbpo.train_ensemble(model, optim, inputs, targets, args)
    return model, epochs, inputs[holdout], targets[holdout]


def test_first_epoch_is_kept_even_when_worse_than_the_warm_start(warm_start):
    """bnn.py's _start_train: every member's best holdout loss starts at 1e10, so the first epoch's weights are kept
    (mbrl-lib would restore the warm start here, and the model would never have trained on the new data)."""
    warm, worse = member_weights(warm_start[0]), warm_start[3]
    model, epochs, x, y = scripted_training(warm_start, 5, {1: worse})
    assert all(torch.equal(p, w) for p, w in zip(member_weights(model), worse))  # every member keeps its epoch-1 weights
    set_weights(reference := copy.deepcopy(model), warm)
    assert torch.all(model.scores(x, y)[0] > reference.scores(x, y)[0])  # though each is worse than its warm start
    assert epochs == 1 + 5 + 1  # the first epoch, then more than 5 without a gain


@pytest.mark.parametrize("patience", [1, 2, 5])
def test_training_stops_after_patience_plus_one_epochs_without_improvement(warm_start, patience):
    """bnn.py's _save_best: stop once epochs_since_update > max_epochs_since_update. Epoch 1 makes every member worse
    (kept: the first snapshot), epoch 3 brings back the warm start (every member improves, the count resets), and no
    later epoch moves the weights: training ends after epoch 3 + patience + 1, each member with epoch 3's weights."""
    warm, worse = member_weights(warm_start[0]), warm_start[3]
    model, epochs, _, _ = scripted_training(warm_start, patience, {1: worse, 3: warm})
    assert epochs == 3 + patience + 1
    assert all(torch.equal(p, w) for p, w in zip(member_weights(model), warm))


def test_normaliser_is_fitted_on_the_training_split_only(warm_start):
    """bnn.py's union_train fits the scaler after the holdout split, on the training rows, with NumPy's (population)
    std: the holdout rows must not move it."""
    model, inputs, targets, _ = copy.deepcopy(warm_start)
    inputs[::7] *= 50.0  # rows far from the rest, some of which land in the holdout split
    holdout, _, _ = usbpo.train_ensemble(model, torch.optim.Adam(model.parameters(), 1e-3), inputs, targets, tiny_args())
    x = np.delete(inputs.numpy(), holdout.numpy(), axis=0)
    assert len(x) == 800
    assert np.allclose(model.input_mean.numpy(), x.mean(0), rtol=1e-5, atol=1e-6)
    assert np.allclose(model.input_std.numpy(), x.std(0), rtol=1e-5, atol=1e-6)
    assert not np.allclose(model.input_std.numpy(), inputs.numpy().std(0), rtol=1e-2)  # all rows would give others


def test_logvar_stays_within_bounds():
    model = usbpo.GaussianEnsemble(4, 1, 3, 2, 32)
    with torch.no_grad():
        model.layers[-1].bias.fill_(100.0)
        _, high = model(torch.randn(3, 64, 5) * 1e3)
        model.layers[-1].bias.fill_(-100.0)
        _, low = model(torch.randn(3, 64, 5) * 1e3)
    # the two softplus bounds nest: min < logvar <= min + softplus(max - min), which is max + ~3e-5 here
    assert torch.all(high <= model.min_logvar + torch.nn.functional.softplus(model.max_logvar - model.min_logvar))
    assert torch.all(high > model.max_logvar - 1e-3) and torch.all(low >= model.min_logvar)


def test_model_step_uses_elites_only():
    """Each row comes back in its place, predicted by one elite from that row's own (s, a), the elites in equal shares."""
    torch.manual_seed(0)
    model = usbpo.GaussianEnsemble(4, 1, 7, 2, 16)
    with torch.no_grad():
        model.max_logvar.fill_(-30.0), model.min_logvar.fill_(-40.0)  # (almost) noiseless: std < 1e-6
    model.elites.copy_(torch.tensor([2, 5]))
    for n in (1, 3, 1001):  # uneven shares and fewer rows than elites
        obs, act = torch.randn(n, 4), torch.randn(n, 1)
        rew, next_obs = model.step(obs, act)
        assert rew.shape == (n,) and next_obs.shape == (n, 4)
        with torch.no_grad():  # every member's prediction for every row, [7, n, 5]
            mean, _ = model(torch.cat([obs, act], -1).expand(7, n, 5))
        error = (mean - torch.cat([rew[:, None], next_obs - obs], -1)).abs().amax(-1)  # [7, n]
        member = error.argmin(0)
        assert torch.all(error.min(0).values < 1e-4) and set(member.tolist()) <= {2, 5}
        assert abs((member == 2).sum().item() - (member == 5).sum().item()) <= 1
    assert set(member.tolist()) == {2, 5}


# --------------------------------------------------------------------------------------
# The USB fine-tune
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained_pair():
    """M1 trained on early real data, M2 = M1 retrained on more, and a model buffer from M1."""
    torch.manual_seed(1)
    buffer, obs_dim, act_dim = random_transitions("Hopper-v4", 2000)
    args = tiny_args("--model-max-epochs", "10", "--finetune-steps", "30")
    model = usbpo.GaussianEnsemble(obs_dim, act_dim, 7, 5, 64)
    optim = torch.optim.Adam(model.parameters(), 1e-3)
    early = buffer.rows()[:1000]
    usbpo.train_ensemble(model, optim, *buffer.model_data(early), args)
    prev = copy.deepcopy(model).requires_grad_(False)
    model_inputs = torch.cat(buffer.model_data(early), -1)[:, : obs_dim + act_dim] + 0.05 * torch.randn(
        1000, obs_dim + act_dim
    )
    inputs, targets = buffer.model_data(buffer.rows())
    holdout, _, _ = usbpo.train_ensemble(model, optim, inputs, targets, args)
    return model, prev, model_inputs, inputs[holdout][:1024], args


def test_finetune_never_worsens_validation_objective(trained_pair):
    model, prev, model_inputs, val, args = trained_pair
    model = copy.deepcopy(model)
    stats = usbpo.usb_finetune(model, prev, model_inputs, val, args)
    assert stats["objective_after"] <= stats["objective_before"]
    assert stats["finetune_steps_kept"] > 0, "on this data the fine-tune should find an improvement"
    check, shift, bias = usbpo.usb_objective(model, prev, val, 1.0, 1.0)
    assert check.item() == pytest.approx(stats["objective_after"], rel=1e-5)
    assert shift.item() == pytest.approx(stats["shift_after"], rel=1e-5)


def test_finetune_with_zero_coefficients_changes_nothing(trained_pair):
    model, prev, model_inputs, val, args = trained_pair
    model = copy.deepcopy(model)
    before = copy.deepcopy(model.state_dict())
    args = copy.copy(args)
    args.shift_coef = args.bias_coef = 0.0
    stats = usbpo.usb_finetune(model, prev, model_inputs, val, args)
    assert stats["finetune_steps_kept"] == 0
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_shift_zero_when_models_equal_and_gradients_reach_m2_only(trained_pair):
    model, _, _, val, _ = trained_pair
    model = copy.deepcopy(model)
    twin = copy.deepcopy(model).requires_grad_(False)
    loss, shift, bias = usbpo.usb_objective(model, twin, val, 1.0, 1.0)
    assert shift.item() == 0.0 and bias.item() > 0.0
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    assert model.layers[0].weight.grad.abs().sum() > 0
    # with the shift term alone, M2 is pulled towards M1: one step from a perturbed M2 lowers it
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    shift_before = usbpo.usb_objective(model, twin, val, 1.0, 0.0)[1]
    optim = torch.optim.SGD(model.parameters(), lr=1e-3)
    optim.zero_grad()
    usbpo.usb_objective(model, twin, val, 1.0, 0.0)[0].backward()
    optim.step()
    assert usbpo.usb_objective(model, twin, val, 1.0, 0.0)[1] < shift_before


def test_model_bias_excludes_self_pairs():
    torch.manual_seed(0)
    model, x = usbpo.GaussianEnsemble(4, 1, 3, 2, 16), torch.randn(10, 5)
    mean, std = usbpo.predict(model, x)
    pairs = [usbpo.w2_gaussian(mean[i], std[i], mean[j], std[j]).mean() for i in range(3) for j in range(3) if i != j]
    bias = usbpo.usb_objective(model, model, x, 1.0, 1.0)[2]
    assert bias.item() == pytest.approx(torch.stack(pairs).mean().item(), rel=1e-6)


def authors_loss_by_hand(mean1, std1, mean2, std2, p, q):
    """The authors' shift and bias written out term by term in float64 NumPy, from the formulas of their code:
    shift = (1/B) sqrt(sum_bd (mu1[p_b,b,d] - mu2[q_b,b,d])^2 + sum_{k<min(B,D)} (sd1[p_k,k,k] - sd2[q_k,k,k])^2),
    bias = 1/(B (E-1)) sum_e sqrt(sum_bd (mu2[q_b,b,d] - mu2[e,b,d])^2 + sum_{k<min(B,D)} (sd2[q_k,k,k] - sd2[e,k,k])^2)."""
    mean1, std1, mean2, std2 = (t.double().numpy() for t in (mean1, std1, mean2, std2))
    E, B, D = mean2.shape
    sq = sum((mean1[p[b], b, d] - mean2[q[b], b, d]) ** 2 for b in range(B) for d in range(D))
    sq += sum((std1[p[k], k, k] - std2[q[k], k, k]) ** 2 for k in range(min(B, D)))
    shift = math.sqrt(sq) / B
    bias = 0.0
    for e in range(E):
        sq = sum((mean2[q[b], b, d] - mean2[e, b, d]) ** 2 for b in range(B) for d in range(D))
        sq += sum((std2[q[k], k, k] - std2[e, k, k]) ** 2 for k in range(min(B, D)))
        bias += math.sqrt(sq)
    return shift, bias / (B * (E - 1))


@pytest.mark.parametrize("B, D", [(6, 9), (13, 4)])  # fewer and more rows than dimensions: the trace keeps min(B, D)
def test_authors_objective_matches_formulas_written_out(B, D):
    gen = torch.Generator().manual_seed(B)
    E = 5
    mean1, mean2 = torch.randn(E, B, D, generator=gen), torch.randn(E, B, D, generator=gen)
    std1, std2 = torch.rand(E, B, D, generator=gen) + 0.1, torch.rand(E, B, D, generator=gen) + 0.1
    p, q = torch.randint(E, (2, B), generator=gen)
    shift, bias = usbpo.authors_shift_bias(mean1, std1, mean2, std2, p, q)
    want_shift, want_bias = authors_loss_by_hand(mean1, std1, mean2, std2, p.tolist(), q.tolist())
    assert shift.item() == pytest.approx(want_shift, rel=1e-5) and bias.item() == pytest.approx(want_bias, rel=1e-5)


def test_authors_m1_runs_with_the_current_normaliser_and_bounds(trained_pair):
    """Their M1 is the old weights run through M2's scaler and log-variance bounds: with the same weights and p = q,
    M1 and M2 agree whatever the old model's normaliser and bounds were; and the bounds get gradient through M1."""
    model, _, _, val, _ = trained_pair
    model, old = copy.deepcopy(model), copy.deepcopy(model)
    old.input_mean.add_(1.0), old.max_logvar.data.sub_(1.0)
    layers = {k: v.detach() for k, v in old.named_parameters() if k.startswith("layers.")}
    p = torch.randint(model.ensemble_size, (len(val),))
    shift, _ = usbpo.authors_shift_bias(*usbpo.predict(model, val, layers), *usbpo.predict(model, val), p, p)
    assert shift.item() == pytest.approx(0.0, abs=1e-6)
    with torch.no_grad():
        layers = {k: v + 0.01 * torch.randn_like(v) for k, v in layers.items()}
    model.requires_grad_(False).max_logvar.requires_grad_(True)
    m2_mean, m2_std = (t.detach() for t in usbpo.predict(model, val))
    m1_mean, m1_std = usbpo.predict(model, val, layers)
    usbpo.authors_shift_bias(m1_mean, m1_std, m2_mean, m2_std, p, p)[0].backward()
    assert model.max_logvar.grad.abs().sum() > 0  # through M1 alone: M2's predictions are detached


def test_authors_run_keeps_indices_adam_and_batch_size(tmp_path, monkeypatch):
    """In a run: p and q are the same in every call and reproducible from the seed, every batch has exactly
    --finetune-batch rows (validation included), and the fine-tune's Adam carries its step count across trainings."""
    calls, adam_steps = [], []
    real_shift_bias, real_finetune = usbpo.authors_shift_bias, usbpo.usb_finetune

    def shift_bias(mean1, std1, mean2, std2, p, q):
        calls.append((p.clone(), q.clone(), mean2.shape[1]))
        return real_shift_bias(mean1, std1, mean2, std2, p, q)

    def finetune(model, prev_model, train_inputs, val_inputs, args, authors=None, progress=lambda text: None):
        adam_steps.append(authors.t)
        return real_finetune(model, prev_model, train_inputs, val_inputs, args, authors, progress)

    monkeypatch.setattr(usbpo, "authors_shift_bias", shift_bias)
    monkeypatch.setattr(usbpo, "usb_finetune", finetune)
    argv = ["--finetune-objective", "authors", "--finetune-batch", "64", "--seed", "3", "--total-timesteps", "1000"]
    args = tiny_args(*argv)
    run_dir = usbpo.main(tiny_args_argv(*argv, "--runs-dir", str(tmp_path)))
    assert "usbpo_authors" in run_dir and len(adam_steps) == 2 and adam_steps[0] == 0 < adam_steps[1]
    seeded_p, seeded_q = torch.randint(args.ensemble_size, (2, 64), generator=torch.Generator().manual_seed(3))  # the rule
    assert not torch.equal(seeded_p, seeded_q)
    for p, q, rows in calls:
        assert torch.equal(p, seeded_p) and torch.equal(q, seeded_q) and rows == 64
    with open(os.path.join(run_dir, "progress.csv")) as f:
        rows = list(csv.DictReader(f))
    assert all(math.isfinite(float(r[k])) for r in rows[2:] for k in ["shift_before", "shift_after", "bias_after"])


def test_authors_finetune_adam_shares_phase_one_moments_as_tf1():
    """Their fine-tune Adam's slots ARE phase 1's (variable_scope reuse): two fine-tune steps, computed by hand in float64
    with TF1's update, move the weights and leave phase 1's moments decayed as theirs; its own step count carries on,
    phase 1's is untouched."""
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(5, dtype=torch.float64))
    phase1 = torch.optim.Adam([w], lr=1e-3)
    for _ in range(3):  # phase 1 leaves moments of its own gradients
        phase1.zero_grad()
        (w**3).sum().backward()
        phase1.step()
    m, v, w_ref = (phase1.state[w][k].clone().numpy() for k in ("exp_avg", "exp_avg_sq")), None, w.detach().clone().numpy()
    m, v = list(m)
    finetune, lr, b1, b2 = usbpo.SharedMomentsAdam(phase1, 1e-4), 1e-4, 0.9, 0.999
    for t in (1, 2):
        finetune.zero_grad()
        (w - 1.0).square().sum().backward()
        g = 2 * (w_ref - 1.0)  # the fine-tune loss's gradient, by hand
        m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g**2
        w_ref = w_ref - lr * np.sqrt(1 - b2**t) / (1 - b1**t) * m / (np.sqrt(v) + 1e-8)
        finetune.step()
        assert np.allclose(w.detach().numpy(), w_ref, rtol=0, atol=1e-12)
    assert np.allclose(phase1.state[w]["exp_avg"].numpy(), m) and np.allclose(phase1.state[w]["exp_avg_sq"].numpy(), v)
    assert finetune.state_dict() == {"t": 2} and int(phase1.state[w]["step"]) == 3


@pytest.mark.parametrize("objective", ["w2", "authors"])
def test_finetune_stops_after_more_than_patience_steps_without_a_gain(trained_pair, objective):
    """`_union_save_best`: one stop rule for both objectives. With a learning rate too small to gain 1e-4, the
    fine-tune keeps nothing and stops at step patience + 1 (11 by default)."""
    model, prev, model_inputs, val, args = trained_pair
    model, args = copy.deepcopy(model), copy.copy(args)
    args.finetune_steps, args.finetune_lr = 100, 1e-12
    val = val[torch.randint(len(val), (args.finetune_batch,))]  # the authors' objective needs finetune_batch rows
    steps, optim = [], torch.optim.Adam(model.parameters(), 1e-3)
    model.loss(*[torch.randn(7, 4, n) for n in (model.layers[0].weight.shape[1], model.out_dim)]).backward()
    optim.step()  # phase-1 moments exist, as after a training
    authors = usbpo.SharedMomentsAdam(optim, args.finetune_lr) if objective == "authors" else None
    stats = usbpo.usb_finetune(model, prev, model_inputs, val, args, authors, lambda text: steps.append(text))
    assert stats["finetune_steps_kept"] == 0 and len(steps) == args.finetune_patience + 1 == 11


# --------------------------------------------------------------------------------------
# CMLO's trigger
# --------------------------------------------------------------------------------------


def fires(trigger, steps, error, volume, every):
    """Steps at which the trigger fires on a stream: the same error at every step, the same hull volume every
    `every` steps (all after the first training)."""
    return [t for t in range(1, steps + 1) if trigger.step(t, error, volume(t) if t % every == 0 else None)]


def test_cmlo_trigger_fires_where_the_rule_says():
    # Equal volumes and e = 1: each ratio adds log(1 + 1 * 1) = 0.69; the first volume (step 20) has no ratio.
    # alpha 3 is passed at the 5th ratio (step 120, 3.47), but n >= 150 holds first at step 160: the lower clamp.
    # After a trigger S_ev and n restart from 0 (the ratio count does not): next at 320, then 480.
    assert fires(usbpo.CMLOTrigger(3.0, 20), 500, 1.0, lambda t: 5.0, 20) == [160, 320, 480]
    # With C = 100 and alpha 1, two ratios (steps 200 and 300, 1.39 > 1) are needed: the threshold decides, at 300;
    # then S_ev passes 1 again at the second ratio after it (step 500, n = 200).
    assert fires(usbpo.CMLOTrigger(1.0, 100), 700, 1.0, lambda t: 5.0, 100) == [300, 500, 700]
    # A threshold never reached: the upper clamp retrains every 500 steps.
    assert fires(usbpo.CMLOTrigger(1e9, 20), 1200, 1.0, lambda t: 5.0, 20) == [500, 1000]
    # Growing volumes count through rho: V doubles every check and e = 0.5, so each ratio adds log(1 + 2 * 0.5).
    trigger = usbpo.CMLOTrigger(1e9, 20)
    fires(trigger, 100, 0.5, lambda t: 2.0 ** (t // 20), 20)
    assert trigger.s_ev == pytest.approx(4 * math.log(2.0)) and trigger.e_bar == 0.5 and trigger.n == 100


def test_cmlo_run_trains_when_triggered_and_rolls_out_on_schedule(tmp_path, monkeypatch):
    """CMLO on MBPO's base: the first training where MBPO's is (the first step after the random phase), then one at the
    step after each time the trigger fires; rollouts every model_train_freq steps from the first training."""
    trained, rolled, fired = [], [], []
    real_trained, real_scalars, real_step = usbpo.Run.trained, usbpo.Run.scalars, usbpo.CMLOTrigger.step

    def step(self, t, error=None, volume=None):
        out = real_step(self, t, error, volume)
        fired.extend([t] if out else [])
        return out

    def scalars(run, t, group, values):
        rolled.extend([t] if "rollout_length" in values else [])
        return real_scalars(run, t, group, values)

    monkeypatch.setattr(usbpo.CMLOTrigger, "step", step)
    monkeypatch.setattr(usbpo.Run, "trained", lambda run, t, stats: trained.append(t) or real_trained(run, t, stats))
    monkeypatch.setattr(usbpo.Run, "scalars", scalars)
    argv = tiny_args_argv("--total-timesteps", "1000", "--cmlo-threshold", "0.2", "--cmlo-check-every", "20")
    run_dir = usbpo.main(argv + ["--runs-dir", str(tmp_path)])
    first = trained[0]
    assert "__cmlo__" in run_dir and fired and first > 250 and all(t >= first for t in fired)
    assert trained == [first, *[t + 1 for t in fired if t < 1000]] and rolled == list(range(first, 1001, 250))
    with open(os.path.join(run_dir, "progress.csv")) as f:
        rows = list(csv.DictReader(f))
    assert sum(int(r["model_trainings"]) for r in rows) == len(trained) and rows[-1]["cmlo_e_bar"] != "nan"
    assert all(r["finetune_steps_kept"] == "nan" for r in rows)  # no fine-tune in CMLO mode


# --------------------------------------------------------------------------------------
# Rollouts and the model buffer
# --------------------------------------------------------------------------------------


def test_rollout_length_schedule():
    schedule = (20, 150, 1, 15)
    assert [usbpo.rollout_length(e, schedule) for e in (0, 20, 85, 149, 150, 400)] == [1, 1, 8, 14, 15, 15]
    assert usbpo.rollout_length(7, (1, 15, 1, 1)) == 1
    assert [usbpo.rollout_length(e, (20, 20, 1, 15)) for e in (0, 20, 21)] == [1, 1, 15]  # K0 up to E0, as MBPO


def test_terminated_rollouts_stop():
    torch.manual_seed(0)
    model = usbpo.GaussianEnsemble(4, 1, 7, 5, 16)
    actor = usbpo.Actor(4, 1, np.array([-3.0]), np.array([3.0]))
    real = usbpo.ReplayBuffer(1000, 4, 1, "cpu")
    real.add(torch.randn(1000, 11))  # the start states
    alive = []

    def half_fn(obs, act, next_obs):  # ends every other rollout at each step
        alive.append(len(obs))
        return torch.arange(len(obs)) % 2 == 0

    def rollout(termination_fn, k):
        buffer = usbpo.ReplayBuffer(1, 4, 1, "cpu")
        args = tiny_args("--rollout-schedule", "0", "0", str(k), str(k), "--rollout-batch-size", "1000")
        usbpo.model_rollouts(model, actor, termination_fn, real, buffer, args, epoch=0)
        return buffer

    buffer = rollout(half_fn, 4)
    assert alive == [1000, 500, 250, 125] and buffer.size == 1875
    terminated = buffer.split(buffer.rows())[4]
    assert terminated.sum().item() == 500 + 250 + 125 + 63
    assert rollout(lambda obs, act, next_obs: torch.ones(len(obs), dtype=torch.bool), 5).size == 1000


def test_model_buffer_sized_and_filled_as_mbpo():
    torch.manual_seed(0)
    args = tiny_args(
        "--rollout-schedule",
        "0",
        "2",
        "1",
        "3",
        "--rollout-batch-size",
        "400",
        "--retain-epochs",
        "2",
        env_id="HalfCheetah-v4",
    )  # never terminates: every rollout runs k steps
    real, obs_dim, act_dim = random_transitions("HalfCheetah-v4", 500)
    agent = usbpo.SAC(obs_dim, act_dim, -np.ones(act_dim), np.ones(act_dim), args)
    model = usbpo.GaussianEnsemble(obs_dim, act_dim, 7, 5, 32)
    optim = torch.optim.Adam(model.parameters(), 1e-3)
    model_buffer = usbpo.ReplayBuffer(1, obs_dim, act_dim, "cpu")
    termination_fn = usbpo.get_termination_fn(args.env_id)
    for epoch, k in [(0, 1), (1, 2), (2, 3), (2, 3), (2, 3)]:
        size_before = model_buffer.size
        stats = usbpo.update_model(model, optim, real, model_buffer, args)
        stats.update(usbpo.model_rollouts(model, agent.actor, termination_fn, real, model_buffer, args, epoch))
        capacity = 2 * 400 * (250 // 250) * k  # retain_epochs * rollout_batch * rollouts per epoch * k
        assert stats["rollout_length"] == k and model_buffer.capacity == capacity
        assert model_buffer.size == min(capacity, min(size_before, capacity) + 400 * k)
        assert ("finetune_steps_kept" in stats) == (size_before > 0)


def test_replay_buffer_keeps_newest_rows_on_resize():
    buffer = usbpo.ReplayBuffer(5, 1, 1, "cpu")
    buffer.add(torch.arange(7.0)[:, None].expand(7, 5))
    assert buffer.rows()[:, 0].tolist() == [2, 3, 4, 5, 6]
    buffer.resize(3)
    assert buffer.rows()[:, 0].tolist() == [4, 5, 6]
    buffer.resize(6)
    buffer.add(torch.full((1, 5), 7.0))
    assert buffer.rows()[:, 0].tolist() == [4, 5, 6, 7] and buffer.capacity == 6


# --------------------------------------------------------------------------------------
# SAC
# --------------------------------------------------------------------------------------


def test_sac_first_weights_are_keras_dense_defaults():
    """softlearning's feedforward_model builds actor and critics of Keras Dense layers with their defaults:
    glorot-uniform kernels, U(-sqrt(6 / (fan_in + fan_out)), +sqrt(...)), and zero biases."""
    torch.manual_seed(0)
    agent = usbpo.SAC(11, 3, -np.ones(3), np.ones(3), tiny_args())
    actor = [(layer.weight.detach().T, layer.bias.detach()) for layer in agent.actor.net[::2]]
    critics = [(layer.weight.detach()[i], layer.bias.detach()[i]) for layer in agent.qf.layers for i in range(2)]
    assert len(actor) == 3 and len(critics) == 6
    for w, b in actor + critics:  # w: [fan_in, fan_out]
        limit = math.sqrt(6 / (w.shape[0] + w.shape[1]))
        assert torch.all(b == 0) and w.abs().max() <= limit
        if w.numel() > 500:  # the spread of a uniform on [-limit, limit]: limit / sqrt(3)
            assert w.abs().max() > 0.95 * limit and w.std().item() == pytest.approx(limit / math.sqrt(3), rel=0.1)
    assert torch.equal(agent.qf_target.layers[0].weight, agent.qf.layers[0].weight)


def test_termination_cuts_bootstrap():
    torch.manual_seed(0)
    args = tiny_args()
    batch = [torch.randn(64, 4), torch.rand(64, 1) * 6 - 3, torch.randn(64), torch.randn(64, 4)]
    losses = {}
    for term in (0.0, 1.0):
        for shift in (0.0, 5.0):
            agent = usbpo.SAC(4, 1, np.array([-3.0]), np.array([3.0]), args)
            agent.load_state_dict(usbpo.SAC(4, 1, np.array([-3.0]), np.array([3.0]), args).state_dict())
            torch.manual_seed(1)  # same policy noise in every case
            obs, act, rew, next_obs = batch
            losses[term, shift] = agent.update(obs, act, rew, next_obs + shift, torch.full((64,), term))["qf_loss"]
    assert losses[1.0, 0.0] == losses[1.0, 5.0], "a terminated transition must not bootstrap from s'"
    assert losses[0.0, 0.0] != losses[0.0, 5.0]


def test_compiled_update_matches_eager(monkeypatch):
    """--compile computes the same SAC update: same losses and weights on the same batch and noise."""
    args = tiny_args()
    torch.manual_seed(0)
    eager = usbpo.SAC(4, 1, np.array([-3.0]), np.array([3.0]), args)
    compiled = copy.deepcopy(eager)
    monkeypatch.setattr(torch._inductor.config, "fallback_random", True)  # the eager RNG's noise, to compare
    update = torch.compile(compiled.update)
    batches = [
        [
            torch.randn(256, 4),
            torch.rand(256, 1) * 6 - 3,
            torch.randn(256),
            torch.randn(256, 4),
            (torch.rand(256) < 0.1).float(),
        ]
        for _ in range(3)
    ]
    for batch in batches:
        torch.manual_seed(1)
        expected = eager.update(*batch)
        torch.manual_seed(1)
        got = update(*batch)
        for key in expected:
            assert torch.allclose(got[key], expected[key], rtol=1e-4, atol=1e-5), key
    for (name, a), b in zip(eager.state_dict().items(), compiled.state_dict().values()):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5), name


def plain_sac_update(actor, q1, q2, q1_t, q2_t, log_alpha, optims, batch, args):
    """Textbook SAC step: two separate critics, requires_grad toggling, unfused Adam, a loop for the targets."""
    obs, act, rew, next_obs, terminated = batch
    alpha = log_alpha.exp().detach()
    with torch.no_grad():
        next_act, next_log_prob = actor(next_obs)
        x = torch.cat([next_obs, next_act], -1)
        next_q = torch.min(q1_t(x), q2_t(x)).squeeze(-1) - alpha * next_log_prob
        target_q = rew + args.gamma * (1.0 - terminated) * next_q
    x = torch.cat([obs, act], -1)
    qf1_loss, qf2_loss = ((q1(x).squeeze(-1) - target_q) ** 2).mean(), ((q2(x).squeeze(-1) - target_q) ** 2).mean()
    qf_loss = qf1_loss + qf2_loss
    optims["q"].zero_grad()
    qf_loss.backward()
    optims["q"].step()
    for p in [*q1.parameters(), *q2.parameters()]:
        p.requires_grad_(False)
    new_act, log_prob = actor(obs)
    x = torch.cat([obs, new_act], -1)
    actor_loss = (alpha * log_prob - torch.min(q1(x), q2(x)).squeeze(-1)).mean()
    optims["actor"].zero_grad()
    actor_loss.backward()
    optims["actor"].step()
    for p in [*q1.parameters(), *q2.parameters()]:
        p.requires_grad_(True)
    alpha_loss = -(log_alpha * (log_prob.detach() + args.target_entropy)).mean()
    optims["alpha"].zero_grad()
    alpha_loss.backward()
    optims["alpha"].step()
    with torch.no_grad():
        for net, target in ((q1, q1_t), (q2, q2_t)):
            for p, p_t in zip(net.parameters(), target.parameters()):
                p_t.mul_(1 - args.tau).add_(args.tau * p)
    return dict(qf_loss=qf_loss / 2, qf1_loss=qf1_loss, qf2_loss=qf2_loss, actor_loss=actor_loss, alpha_loss=alpha_loss)


def test_optimised_update_matches_plain_sac():
    """The batched twin critic, fused Adam, backward(inputs=...) and foreach target update change nothing:
    a textbook SAC with the same weights gives the same losses and weights over several updates."""
    args = tiny_args()
    torch.manual_seed(0)
    agent = usbpo.SAC(4, 1, np.array([-3.0]), np.array([3.0]), args)

    def member(twin, i):  # member i of a TwinQ as an ordinary nn.Sequential
        linears = [torch.nn.Linear(layer.weight.shape[1], layer.weight.shape[2]) for layer in twin.layers]
        for lin, layer in zip(linears, twin.layers):
            lin.weight.data.copy_(layer.weight[i].T)
            lin.bias.data.copy_(layer.bias[i, 0])
        return torch.nn.Sequential(linears[0], torch.nn.ReLU(), linears[1], torch.nn.ReLU(), linears[2])

    actor = copy.deepcopy(agent.actor)
    q1, q2, q1_t, q2_t = member(agent.qf, 0), member(agent.qf, 1), member(agent.qf_target, 0), member(agent.qf_target, 1)
    log_alpha = torch.nn.Parameter(torch.zeros(()))
    optims = dict(
        q=torch.optim.Adam([*q1.parameters(), *q2.parameters()], lr=args.lr),
        actor=torch.optim.Adam(actor.parameters(), lr=args.lr),
        alpha=torch.optim.Adam([log_alpha], lr=args.lr),
    )
    for step in range(5):
        batch = [
            torch.randn(256, 4),
            torch.rand(256, 1) * 6 - 3,
            torch.randn(256),
            torch.randn(256, 4),
            (torch.rand(256) < 0.1).float(),
        ]
        torch.manual_seed(100 + step)
        got = agent.update(*batch)
        torch.manual_seed(100 + step)
        expected = plain_sac_update(actor, q1, q2, q1_t, q2_t, log_alpha, optims, batch, args)
        for key in expected:
            assert torch.allclose(got[key], expected[key], rtol=1e-5, atol=1e-6), (step, key)
    assert torch.allclose(agent.log_alpha, log_alpha)
    for a, b in zip(agent.actor.parameters(), actor.parameters()):
        assert torch.allclose(a, b, atol=1e-6)
    for i, (net, target) in enumerate(((q1, q1_t), (q2, q2_t))):
        for twin, plain in ((agent.qf, net), (agent.qf_target, target)):
            for layer, lin in zip(twin.layers, plain[::2]):
                assert torch.allclose(layer.weight[i].T, lin.weight, atol=1e-6)
                assert torch.allclose(layer.bias[i, 0], lin.bias, atol=1e-6)


def test_ensemble_linear_equals_one_linear_per_member():
    """The baddbmm layer is E ordinary linear layers, with or without a per-sample member index."""
    torch.manual_seed(0)
    layer = usbpo.EnsembleLinear(7, 5, 3)
    x = torch.randn(7, 10, 5)
    expected = torch.stack([torch.nn.functional.linear(x[e], layer.weight[e].T, layer.bias[e, 0]) for e in range(7)])
    assert torch.allclose(layer(x), expected, atol=1e-6)
    members = torch.tensor([4, 0, 6])
    assert torch.allclose(layer(x[members], members), expected[members], atol=1e-6)


def test_actor_log_prob_matches_torch_distributions():
    """The log-probability of the action's [-1, 1] form tanh(u), as softlearning's (its envs' actions are normalised)."""
    from torch.distributions import Normal, TanhTransform, TransformedDistribution

    torch.manual_seed(0)
    actor = usbpo.Actor(3, 2, np.array([-2.0, -1.0]), np.array([2.0, 1.0])).double()
    obs = torch.randn(500, 3, dtype=torch.float64)
    torch.manual_seed(1)
    act, log_prob = actor(obs)
    assert torch.all(act.abs() <= 1)  # softlearning's units: the env's range only at the env (numpy_action)
    mean, log_std = actor.net(obs).chunk(2, dim=-1)
    torch.manual_seed(1)
    u = mean + torch.randn_like(mean) * log_std.clamp(-20.0, 2.0).exp()  # softlearning's bounds
    reference = TransformedDistribution(Normal(mean, log_std.exp()), [TanhTransform()]).log_prob(torch.tanh(u)).sum(-1)
    assert torch.allclose(act, torch.tanh(u))
    keep = u.abs().max(-1).values < 3  # where atanh inside torch.distributions is still accurate
    assert keep.sum() > 400
    assert torch.allclose(log_prob[keep], reference[keep], rtol=1e-6, atol=1e-6)


def test_humanoid_entropy_target_is_reachable_in_normalised_action_units():
    """softlearning wraps every env in NormalizeActionWrapper, so the configs' target entropies are those of the action
    in [-1, 1]. Humanoid acts in +-0.4: per raw unit its entropy is at most 17 ln 0.8 = -3.8, below the target -2, and
    the temperature would grow without bound. The log-probability must not depend on the action's scale."""
    space = usbpo.make_env("Humanoid-v4", 0).action_space
    assert np.allclose(space.high, 0.4) and np.allclose(space.low, -0.4)
    torch.manual_seed(0)
    actor, unit = usbpo.Actor(45, 17, space.low, space.high), usbpo.Actor(45, 17, -np.ones(17), np.ones(17))
    unit.net.load_state_dict(actor.net.state_dict())
    obs = torch.randn(4096, 45)
    torch.manual_seed(1)
    act, log_prob = actor(obs)
    torch.manual_seed(1)
    unit_act, unit_log_prob = unit(obs)
    assert torch.equal(log_prob, unit_log_prob) and torch.equal(act, unit_act)
    assert np.allclose(usbpo.numpy_action(actor, obs[0].numpy(), "cpu", True), 0.4 * unit(obs[:1], True)[0][0].detach())
    assert -log_prob.mean() > usbpo.PRESETS["Humanoid"]["target_entropy"] > -log_prob.mean() + 17 * math.log(0.4)


def authors_train_schedule(episode_ends, n_initial, epoch_length, model_train_freq, min_pool_size, total):
    """The control flow of the authors' `_train` (mbpo.py l. 182-254) with softlearning's initial exploration
    (`while pool.size < n_initial: sample()`) and SimpleSampler (whole paths reach the pool), transcribed for given episode
    ends: the steps at which the model trains, with the epoch, and those with SAC updates, numbered as usbpo numbers
    them (the env step being taken)."""
    samples, pool, model, sac, epoch = 0, 0, [], [], 0

    def sample():
        nonlocal samples, pool
        samples += 1
        if samples in episode_ends:  # add_path: the pool holds every step up to the last episode end
            pool = samples

    while pool < n_initial:
        sample()
    while samples < total:
        start = samples
        while samples < total:
            if samples >= start + epoch_length and pool >= min_pool_size:  # ready_to_train
                break
            if (samples - start) % model_train_freq == 0:
                model.append((samples + 1, epoch))
            sample()
            if pool >= min_pool_size:
                sac.append(samples)
        epoch += 1
    return model, sac


def test_loop_follows_the_authors_train_step_by_step(tmp_path, monkeypatch):
    """Whole episodes reach the real buffer; the random phase ends with the episode that brings it to learning_starts;
    the model trains (then rolls out) first thing in a step, every model_train_freq steps into an epoch; an epoch lasts
    until the buffer holds min_pool_size; SAC updates after the env step once it does. Checked against the authors'
    loop transcribed independently, on a run whose first epoch is stretched (min_pool_size 700 > 250 + 250)."""
    assert (usbpo.PRESETS["InvertedDoublePendulum"]["learning_starts"], usbpo.parse_args([])[0].min_pool_size) == (500, 1000)
    trained, epochs, episode_ends, sac_calls, sac_counts = [], [], set(), [], {}
    real_trained, real_rollouts, real_sac_updates = usbpo.Run.trained, usbpo.model_rollouts, usbpo.sac_updates
    real_episode, real_end, real_finetune = usbpo.Run.episode, usbpo.Run.end_of_step, usbpo.usb_finetune
    monkeypatch.setattr(usbpo.Run, "trained", lambda run, step, stats: trained.append(step) or real_trained(run, step, stats))
    monkeypatch.setattr(usbpo, "model_rollouts", lambda *a: epochs.append(a[-1]) or real_rollouts(*a))
    monkeypatch.setattr(usbpo, "sac_updates", lambda *a: sac_calls.append(1) or real_sac_updates(*a))
    monkeypatch.setattr(usbpo.Run, "episode", lambda run, t, stats: episode_ends.add(t) or real_episode(run, t, stats))

    def end_of_step(run, step, loop_state):
        sac_counts[step] = len(sac_calls)
        checkpoint_episode = loop_state["episode"]  # the episode in progress, not yet in the real buffer
        assert len(checkpoint_episode) == step - max([0, *episode_ends])
        return real_end(run, step, loop_state)

    def finetune(model, prev_model, train_inputs, val_inputs, args, *rest):  # validation: the authors' (bnn.py l. 452)
        validation_rows.append(len(val_inputs))  # finetune_batch holdout rows drawn with replacement (the holdout: ~50)
        return real_finetune(model, prev_model, train_inputs, val_inputs, args, *rest)

    validation_rows = []
    monkeypatch.setattr(usbpo.Run, "end_of_step", end_of_step)
    monkeypatch.setattr(usbpo, "usb_finetune", finetune)
    usbpo.main(tiny_args_argv("--total-timesteps", "1000", "--min-pool-size", "700", "--runs-dir", str(tmp_path)))
    sac_steps = [t for t in sorted(sac_counts) if sac_counts[t] > sac_counts.get(t - 1, 0)]
    model, sac = authors_train_schedule(episode_ends, 250, 250, 250, 700, 1000)
    assert list(zip(trained, epochs)) == model and sac_steps == sac
    assert model[0][0] - 1 in episode_ends and model[0][0] >= 251 and [e for _, e in model[:3]] == [0, 0, 1]
    assert len(sac_calls) == len(sac) and validation_rows == [1024] * (len(model) - 1)


def test_evaluation_episodes_leave_training_unchanged(tmp_path):
    """The number of evaluation episodes changes the evaluations only: the training is the same bit for bit."""
    runs = [usbpo.main(tiny_args_argv("--eval-episodes", n, "--runs-dir", str(tmp_path / n))) for n in ("1", "3")]
    (rows_a, end_a), (rows_b, end_b) = (final_state(run) for run in runs)
    for row in rows_a + rows_b:
        row.pop("eval_return")
    assert rows_a == rows_b
    for key in ["agent", "model"]:
        for name, tensor in end_a[key].items():
            assert torch.equal(tensor, end_b[key][name]), (key, name)


def kill_at_evaluation(monkeypatch, n):
    """Make the n-th evaluation raise KeyboardInterrupt, as a kill would; monkeypatch.undo() lifts it."""
    calls, real_evaluate = [], usbpo.evaluate

    def evaluate(*a):
        calls.append(1)
        if len(calls) == n:
            raise KeyboardInterrupt
        return real_evaluate(*a)

    monkeypatch.setattr(usbpo, "evaluate", evaluate)


def test_truncation_does_not_terminate_and_run_resumes(tmp_path, monkeypatch):
    """HalfCheetah is truncated at 1000 steps and never terminated: the stored flags must all be 0."""
    argv = (
        "--env-id HalfCheetah-v4 --total-timesteps 1250 --learning-starts 1000 --epoch-length 250 --model-train-freq 250 "
        "--rollout-batch-size 200 --updates-per-step 1 --eval-episodes 1 --model-max-epochs 2 --finetune-steps 3 "
        "--checkpoint-every 1 --no-progress"
    ).split() + ["--runs-dir", str(tmp_path)]
    kill_at_evaluation(monkeypatch, 5)  # the evaluation of step 1250, after the checkpoint of step 1000
    with pytest.raises(KeyboardInterrupt):
        usbpo.main(argv)
    run_dir = glob.glob(str(tmp_path / "*"))[0]
    ckpt = torch.load(os.path.join(run_dir, "checkpoint.pt"), weights_only=True)
    assert ckpt["global_step"] == 1000
    assert ckpt["real_buffer"]["rows"].shape[0] == 1000 and torch.all(ckpt["real_buffer"]["rows"][:, -1] == 0)
    monkeypatch.undo()
    usbpo.main(["--resume", run_dir])
    with open(os.path.join(run_dir, "progress.csv")) as f:
        rows = list(csv.DictReader(f))
    assert [int(r["env_steps"]) for r in rows] == [250, 500, 750, 1000, 1250]


@pytest.mark.parametrize("objective", ["w2", "authors"])  # authors: their fine-tune's Adam lives across trainings
def test_resumed_run_matches_uninterrupted_run(tmp_path, monkeypatch, objective):
    """A kill and --resume cost nothing but time: the same evaluations, model statistics and final weights as a
    run never stopped, with the checkpoint falling in the middle of an episode."""
    argv = (
        "--env-id Hopper-v4 --total-timesteps 600 --learning-starts 200 --epoch-length 200 --model-train-freq 100 "
        "--rollout-batch-size 200 --updates-per-step 2 --eval-episodes 1 --model-max-epochs 2 --finetune-steps 3 "
        "--checkpoint-every 1 --no-progress --min-pool-size 0 --finetune-objective"
    ).split() + [objective]
    whole = usbpo.main(argv + ["--runs-dir", str(tmp_path / "whole")])
    kill_at_evaluation(monkeypatch, 3)  # the evaluation of step 600, after the checkpoint of step 400
    with pytest.raises(KeyboardInterrupt):
        usbpo.main(argv + ["--runs-dir", str(tmp_path / "killed")])
    killed = glob.glob(str(tmp_path / "killed" / "*"))[0]
    ckpt = torch.load(os.path.join(killed, "checkpoint.pt"), weights_only=True)
    assert ckpt["global_step"] == 400 and ckpt["env_and_rng"]["elapsed_steps"] > 0  # mid-episode
    monkeypatch.undo()
    usbpo.main(["--resume", killed])

    assert_same_run(whole, killed)  # CSV rows, final step, weights and real buffer
    rows, end = final_state(killed)
    assert [int(r["env_steps"]) for r in rows] == [200, 400, 600] and end["global_step"] == 600
    with open(os.path.join(killed, "progress.csv")) as f:
        last_two = list(csv.DictReader(f))[-2:]
    wall, sps = [float(r["wall_time"]) for r in last_two], float(last_two[1]["sps"])
    assert wall[1] >= wall[0] + 0.99 * 200 / sps  # the run's own time carries on across the resume


# --------------------------------------------------------------------------------------
# End to end
# --------------------------------------------------------------------------------------


def test_end_to_end_run_writes_every_output(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    args = (
        "--env-id InvertedPendulum-v4 --total-timesteps 750 --learning-starts 250 --rollout-batch-size 500 "
        "--updates-per-step 2 --eval-episodes 2 --model-max-epochs 5 --finetune-steps 10 --save-model --no-progress "
        "--min-pool-size 0"
    ).split() + ["--runs-dir", str(tmp_path)]
    run_dir = usbpo.main(args)
    with open(os.path.join(run_dir, "progress.csv")) as f:
        rows = list(csv.DictReader(f))
    assert [int(r["env_steps"]) for r in rows] == [250, 500, 750]
    assert set(usbpo.CSV_FIELDS) <= set(rows[0])
    with open(os.path.join(run_dir, "config.json")) as f:
        config = json.load(f)
    assert config["total_timesteps"] == 750 and config["versions"]["torch"] == torch.__version__
    assert config["versions"]["mujoco"] == __import__("mujoco").__version__
    assert config["versions"]["cpu"] == torch.backends.cpu.get_cpu_capability()  # the last digits differ across CPUs
    # the first training (after step 250: the random phase ends with an episode) has no model buffer yet; the second,
    # 250 steps later, goes through phase 2
    assert rows[0]["finetune_steps_kept"] == rows[1]["finetune_steps_kept"] == "nan"
    for r in rows[2:]:
        for key in [
            "holdout_mse_phase1",
            "holdout_mse_phase2",
            "holdout_nll_phase1",
            "holdout_nll_phase2",
            "shift_before",
            "shift_after",
            "bias_before",
            "bias_after",
            "finetune_steps_kept",
        ]:
            assert math.isfinite(float(r[key])), key
        assert float(r["shift_before"]) > 0 and int(float(r["rollout_length"])) == 1
    events = EventAccumulator(run_dir)
    events.Reload()
    tags = set(events.Tags()["scalars"])
    for tag in [
        "charts/episodic_return",
        "charts/SPS",
        "charts/eval_return",
        "losses/qf_loss",
        "losses/qf1_loss",
        "losses/qf2_loss",
        "losses/qf1_values",
        "losses/qf2_values",
        "losses/actor_loss",
        "losses/alpha",
        "model/interval",
        "model/holdout_mse_phase1",
        "model/shift_after",
        "model/finetune_steps_kept",
    ]:
        assert tag in tags, tag
    # the real buffer holds the actions in [-1, 1], as softlearning's pool (its envs rescale them): replayed from each
    # stored state, InvertedPendulum (+-3) given 3 a reaches the stored next state, in the random phase and after it
    rows = torch.load(os.path.join(run_dir, "checkpoint.pt"), weights_only=True)["real_buffer"]["rows"].double()
    obs, act, _, next_obs, _ = usbpo.ReplayBuffer(1, 4, 1, "cpu").split(rows)
    assert 0.9 < act.abs().max() <= 1
    env = usbpo.make_env("InvertedPendulum-v4", 0).unwrapped
    for i in (10, 100, 300, 500, 700):
        env.set_state(obs[i, :2].numpy(), obs[i, 2:].numpy())
        assert np.allclose(env.step(3 * act[i].numpy())[0], next_obs[i].numpy(), atol=1e-4), i
    saved = torch.load(os.path.join(run_dir, "model.pt"))
    actor = usbpo.Actor(4, 1, np.array([-3.0]), np.array([3.0]))
    actor.load_state_dict(saved["actor"])
    assert set(saved) >= {"actor", "qf", "ensemble", "args"}
    returns = usbpo.main(["--evaluate", os.path.join(run_dir, "model.pt"), "--eval-episodes", "3"])  # the entry point
    assert len(returns) == 3 and all(1 <= r <= 1000 for r in returns)
    assert usbpo.main(["--evaluate", os.path.join(run_dir, "checkpoint.pt"), "--eval-episodes", "3"]) == returns  # same actor
    assert_one_line_error(["--evaluate", os.path.join(run_dir, "config.json")], "could not read")
    torch.save({"args": saved["args"]}, no_actor := os.path.join(run_dir, "no_actor.pt"))  # the run, but no weights
    assert_one_line_error(["--evaluate", no_actor], "holds no saved policy")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--env-id", "CartPole-v1"], "unsupported environment"),
        (["--env-id", "Hopper-v3"], "unsupported environment"),
        (["--total-timesteps", "-5"], "--total-timesteps: must be positive"),
        (["--total-timesteps", "1000", "--learning-starts", "5000"], "beyond --total-timesteps"),
        (["--num-elites", "9"], "cannot exceed"),
        (["--real-ratio", "1.5"], "--real-ratio"),
        (["--seed", "abc"], "invalid int value"),
        (["--gamma", "1.5"], "--gamma: must be in [0, 1]"),
        (["--cmlo", "--env-id", "InvertedPendulum-v4"], "no threshold for InvertedPendulum-v4"),
        (["--cmlo", "--finetune-objective", "authors"], "CMLO mode has no fine-tune"),
        (["--cmlo-threshold", "-1"], "--cmlo-threshold: must be positive"),
        (["--device", "cuda:0"] if not torch.cuda.is_available() else ["--device", "nonsense"], "--device"),
    ],
)
def test_bad_input_gives_one_line_error(argv, message):
    assert_one_line_error(argv, message)


def test_help_shows_presets_and_cleanrl_flags_parse():
    text = subprocess.run(usbpo_command(["--help"]), capture_output=True, text=True, timeout=120).stdout
    assert "(default: None)" not in text and "(preset: 20 for Hopper, Walker2d" in " ".join(text.split())
    assert usbpo.parse_args(["--torch-deterministic", "false"])[0].torch_deterministic is False
    assert usbpo.parse_args(["--torch-deterministic"])[0].torch_deterministic is True
    assert_one_line_error(["--evaluate", "nowhere/model.pt"], "no saved model at nowhere/model.pt")


def test_track_sends_the_run_to_weights_and_biases_offline(tmp_path):
    """--track for real, in W&B's offline mode (no network): the W&B run holds the config and the TensorBoard scalars."""
    pytest.importorskip("wandb")
    argv = tiny_args_argv("--track", "--wandb-project-name", "usbpo-test", "--runs-dir", str(tmp_path))
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    result = subprocess.run(usbpo_command(argv), capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    (run_dir,) = glob.glob(str(tmp_path / "*"))
    (wandb_file,) = glob.glob(os.path.join(run_dir, "wandb", "offline-run-*", "run-*.wandb"))
    data = open(wandb_file, "rb").read()
    assert os.path.getsize(wandb_file) > 1000 and b"finetune_objective" in data and b"charts/eval_return" in data


def test_capture_video_records_the_scene(tmp_path):
    """--capture-video for real, with MuJoCo's EGL offscreen rendering: evaluation videos of a run and of --evaluate
    exist, have frames, and show the scene (not a blank image)."""
    pytest.importorskip("moviepy")
    env = {**os.environ, "MUJOCO_GL": "egl"}
    argv = tiny_args_argv("--capture-video", "--save-model", "--runs-dir", str(tmp_path))
    result = subprocess.run(usbpo_command(argv), capture_output=True, text=True, timeout=600, env=env)
    if result.returncode != 0 and "cannot render here" in result.stderr:
        pytest.skip(f"no offscreen OpenGL on this machine: {result.stderr.strip()}")
    assert result.returncode == 0, result.stderr[-2000:]
    (run_dir,) = glob.glob(str(tmp_path / "*"))
    command = ["--evaluate", os.path.join(run_dir, "model.pt"), "--eval-episodes", "2", "--capture-video"]
    assert subprocess.run(usbpo_command(command), capture_output=True, text=True, timeout=600, env=env).returncode == 0
    from moviepy import VideoFileClip

    for folder, count in [("videos", 2), ("videos-evaluate", 2)]:  # the run: eval episodes 0 and 1 (CleanRL's schedule)
        videos = sorted(glob.glob(os.path.join(run_dir, folder, "*.mp4")))
        assert len(videos) == count, videos
        frames = list(VideoFileClip(videos[0]).iter_frames())
        assert len(frames) >= 3 and frames[0].std() > 5 and len(np.unique(frames[0].reshape(-1, 3), axis=0)) > 50


class CreatesAFile:  # unpickled, it would create its file: a stand-in for code hidden in a shared model.pt
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.parametrize("name", ["model.pt", "checkpoint.pt"])
def test_a_file_holding_code_is_refused_before_anything_in_it_runs(tmp_path, name):
    """--evaluate and --resume load with weights_only=True: a crafted file, a real one's contents with one object
    whose unpickling would create a file, is refused in one line, and the file is never created."""
    run_dir = usbpo.main(tiny_args_argv("--total-timesteps", "300", "--save-model", "--runs-dir", str(tmp_path / "run")))
    saved = torch.load(os.path.join(run_dir, name), weights_only=True)  # the genuine file loads safely
    assert usbpo.main(["--evaluate", os.path.join(run_dir, name), "--eval-episodes", "1"])
    marker, crafted = tmp_path / "pwned", tmp_path / "crafted"
    crafted.mkdir()
    torch.save({**saved, "note": CreatesAFile(str(marker))}, crafted / name)
    message = "nothing in it was run"
    assert_one_line_error(["--evaluate", str(crafted / name)], message)
    if name == "checkpoint.pt":
        assert_one_line_error(["--resume", str(crafted)], message)
    assert not marker.exists()


def test_missing_or_unreadable_checkpoint_gives_one_line_error(tmp_path):
    assert_one_line_error(["--resume", str(tmp_path)], "no checkpoint at")
    (tmp_path / "checkpoint.pt").write_bytes(b"cut off by a full disk")
    assert_one_line_error(["--resume", str(tmp_path)], "could not read")
    torch.save({"args": {}, "global_step": 5}, tmp_path / "checkpoint.pt")  # what an older usbpo.py wrote
    assert_one_line_error(["--resume", str(tmp_path)], "written by an older usbpo.py")
    torch.save(torch.zeros(3), tmp_path / "checkpoint.pt")  # a torch file, but no checkpoint
    assert_one_line_error(["--resume", str(tmp_path)], "written by an older usbpo.py or another program")


def stop_real_run(argv, run_dir_glob, sig, ready):
    """Start usbpo.py in a subprocess, send it sig once ready(run_dir) holds; returns (returncode, stdout, stderr)."""
    proc = subprocess.Popen(usbpo_command(argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 180
    while time.time() < deadline and not any(ready(d) for d in glob.glob(run_dir_glob)):
        time.sleep(0.05)
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=180)
    return proc.returncode, stdout, stderr


def test_ctrl_c_writes_a_checkpoint_and_prints_how_to_continue(tmp_path):
    """Ctrl-C: the run stops at the end of the current env step with a checkpoint there, one line, no traceback, and
    the command that continues it (with the Python that ran it)."""
    argv = ["--env-id", "InvertedPendulum-v4", "--total-timesteps", "5000", "--no-progress", "--runs-dir", str(tmp_path)]
    code, stdout, stderr = stop_real_run(argv, str(tmp_path / "*"), signal.SIGINT, lambda d: rows_in(d) >= 1)
    assert_failed_with_one_line(code, stderr, "stopped by SIGINT at step")
    (run_dir,) = glob.glob(os.path.join(tmp_path, "*"))
    step = int(stderr.split("at step ")[1].split(";")[0])
    assert f"{sys.executable} {os.path.join(HERE, 'usbpo.py')} --resume {run_dir}" in stderr + stdout
    assert "usbpo: SIGINT: stopping with a checkpoint after the current env step" in stdout  # said at once
    assert torch.load(os.path.join(run_dir, "checkpoint.pt"), weights_only=True)["global_step"] == step >= 250


def test_sigterm_stops_at_the_current_step_and_the_resumed_run_matches(tmp_path):
    """Preemption: a scheduler's SIGTERM to a real run writes a checkpoint at the current env step (mid-epoch) and
    ends with one line; resuming from it gives the same evaluations and weights as a run never stopped."""
    argv = tiny_args_argv("--total-timesteps", "1500", "--checkpoint-every", "100")  # no regular checkpoint before the end
    whole = usbpo.main(argv + ["--runs-dir", str(tmp_path / "whole")])
    stopped = tmp_path / "stopped"
    code, _, stderr = stop_real_run(
        argv + ["--runs-dir", str(stopped)], str(stopped / "*"), signal.SIGTERM, lambda d: rows_in(d) >= 2
    )
    assert_failed_with_one_line(code, stderr, "stopped by SIGTERM at step")
    (run_dir,) = glob.glob(str(stopped / "*"))
    step = torch.load(os.path.join(run_dir, "checkpoint.pt"), weights_only=True)["global_step"]
    assert 500 <= step < 1500 and f"at step {step};" in stderr
    usbpo.main(["--resume", run_dir])
    assert_same_run(whole, run_dir)


def test_resume_extends_a_finished_run_as_if_started_with_the_larger_budget(tmp_path, capsys):
    """A finished run, here one whose budget ends mid-epoch (600 steps, epochs of 250), has its checkpoint at its last
    step, says it is finished, and extended to 750 steps equals a run started with 750."""
    short = usbpo.main(tiny_args_argv("--total-timesteps", "600", "--runs-dir", str(tmp_path / "short")))
    with pytest.raises(SystemExit) as finished:  # finished: says so, changes nothing, exit code 0
        usbpo.main(["--resume", short])
    assert finished.value.code == 0
    assert "is finished (600 steps); --total-timesteps N extends it" in capsys.readouterr().out
    assert_one_line_error(["--resume", short, "--env-id", "Walker2d-v4"], "--env-id Walker2d-v4 differs from the run's")
    assert_one_line_error(["--resume", short, "--total-timesteps", "400"], "is below the 600 steps")
    with pytest.raises(SystemExit) as finished:  # --device auto: wherever the run was made
        usbpo.main(["--resume", short, "--device", "auto"])
    assert finished.value.code == 0
    checkpoint = torch.load(os.path.join(short, "checkpoint.pt"), weights_only=True)
    del checkpoint["args"]["finetune_patience"]  # as if written before the flag existed: the run had its default
    os.makedirs(older := str(tmp_path / "older"))
    torch.save(checkpoint, os.path.join(older, "checkpoint.pt"))
    assert_one_line_error(["--resume", older, "--finetune-patience", "3"], "--finetune-patience 3 differs from the run's 10")
    usbpo.main(["--resume", older, "--total-timesteps", "750"])  # a folder holding only its checkpoint: a new CSV
    with open(os.path.join(older, "progress.csv")) as f:
        assert [row["env_steps"] for row in csv.DictReader(f)] == ["750"]
    usbpo.main(["--resume", short, "--total-timesteps", "750"])
    with open(os.path.join(short, "config.json")) as f:  # the budget a script reads to continue it (run_evidence.sh)
        assert json.load(f)["total_timesteps"] == 750
    longer = usbpo.main(tiny_args_argv("--runs-dir", str(tmp_path / "long")))  # 750 steps from the start
    assert_same_run(short, longer)


def test_failed_start_gives_one_line_and_leaves_no_run_folder(tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    runs = ["--runs-dir", str(tmp_path / "runs")]
    assert_one_line_error(["--device", "mps", *runs], "--device 'mps' is not supported")
    assert_one_line_error(["--rollout-batch-size", "2000000000", *runs], "the replay buffers need")
    assert_one_line_error(["--seed", "-1", *runs], "--seed: must be zero or positive")
    assert not (tmp_path / "runs").exists()
    for where in [a_file / "runs", "/proc/usbpo-test"]:  # under a file; on a read-only file system
        assert_one_line_error(["--env-id", "InvertedPendulum-v4", "--runs-dir", str(where)], "cannot create the run folder")


def test_a_failed_checkpoint_write_keeps_the_last(tmp_path, monkeypatch):
    """A full disk (torch.save failing as it does on /dev/full) stops the run in one line that names the last whole
    checkpoint, which stays on disk."""
    run = usbpo.main(tiny_args_argv("--total-timesteps", "500", "--checkpoint-every", "1", "--runs-dir", str(tmp_path)))

    def full_disk(obj, path):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")

    monkeypatch.setattr(usbpo.torch, "save", full_disk)
    with pytest.raises(SystemExit) as stop:
        usbpo.main(["--resume", run, "--total-timesteps", "750"])
    message = str(stop.value)
    assert message.startswith("usbpo: error: could not write") and "is the disk full?" in message, message
    assert "at step 750; continue from the checkpoint of step 500 with:" in message and "--resume" in message, message
    assert torch.load(os.path.join(run, "checkpoint.pt"), weights_only=True)["global_step"] == 500


@pytest.mark.parametrize("phase", ["SAC update", "model rollout", "phase 2 (fine-tune)", "phase 1 (maximum likelihood)"])
def test_non_finite_values_stop_the_run_before_a_checkpoint(tmp_path, monkeypatch, phase):
    """A NaN injected after the first checkpoint stops the run with one line naming the phase and the step; the
    checkpoint on disk is still the last good one."""
    calls, target = [], {"SAC update": (usbpo.SAC, "update"), "model rollout": (usbpo.GaussianEnsemble, "step"),
                         "phase 2 (fine-tune)": (usbpo, "usb_objective"),
                         "phase 1 (maximum likelihood)": (usbpo.GaussianEnsemble, "loss")}[phase]  # fmt: skip
    real = getattr(*target)

    def poisoned(*a, **kw):
        out = real(*a, **kw)
        calls.append(1)
        first_bad = {"SAC update": 100, "model rollout": 1, "phase 2 (fine-tune)": 5, "phase 1 (maximum likelihood)": 6}
        if len(calls) > first_bad[phase] and isinstance(out, torch.Tensor):  # phase 1: the loss of a batch
            return out * math.nan
        if len(calls) > first_bad[phase]:
            out = (
                type(out)({k: v * math.nan for k, v in out.items()})
                if isinstance(out, dict)
                else tuple(v * math.nan for v in out)
            )
        return out

    monkeypatch.setattr(*target, poisoned)
    with pytest.raises(SystemExit) as stop:
        usbpo.main(tiny_args_argv("--checkpoint-every", "1", "--runs-dir", str(tmp_path)))
    message, last_good = str(stop.value), 250 if phase == "SAC update" else 500  # the model's 2nd training: after 500
    assert f"non-finite values in the {phase} at step" in message
    assert f"continue from the checkpoint of step {last_good}" in message
    (run_dir,) = glob.glob(str(tmp_path / "*"))
    checkpoint = torch.load(os.path.join(run_dir, "checkpoint.pt"), weights_only=True)
    assert checkpoint["global_step"] == last_good and all(torch.isfinite(t).all() for t in checkpoint["model"].values())


def test_run_does_not_depend_on_the_callers_thread_count(tmp_path):
    """usbpo.main sets torch's threads itself (--threads, default 1): a run is the same whatever the calling process
    (or OMP_NUM_THREADS) had set, so no verdict below can depend on the machine's core count."""
    runs = []
    for n in (2, 1):
        torch.set_num_threads(n)
        runs.append(usbpo.main(tiny_args_argv("--runs-dir", str(tmp_path / str(n)))))
    assert torch.get_num_threads() == 1 and final_state(runs[0])[0] == final_state(runs[1])[0]


@pytest.mark.skipif(
    not os.environ.get("USBPO_LEARNING_TEST"), reason="a learning run of several minutes: USBPO_LEARNING_TEST=1"
)
def test_learns_inverted_pendulum(tmp_path):
    """A real task learnt end to end, at the preset: the deterministic policy balances the pendulum (return 1000)."""
    run_dir = usbpo.main(["--env-id", "InvertedPendulum-v4", "--seed", "1", "--total-timesteps", "5000",
                          "--eval-episodes", "5", "--no-progress", "--runs-dir", str(tmp_path)])  # fmt: skip
    with open(os.path.join(run_dir, "progress.csv")) as f:
        returns = [float(r["eval_return"]) for r in csv.DictReader(f)]
    assert max(returns) >= 900, returns
