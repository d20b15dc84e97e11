"""How good each run's final rollout model is where it matters: python results/model_check.py DATA_RUN RUN...

Loads each RUN's last checkpoint.pt and predicts, with the elites' mean, the reward and next observation of the
same real transitions for every model: the last 2000 of DATA_RUN's real buffer (a run whose policy still falls:
where every policy balances, there is no fall to count). Prints the MSE of the predicted next observation and
reward, and how often the termination function applied to the prediction disagrees with the real `terminated`
flag (a wrong "alive" lets SAC bootstrap through a fall; a wrong "terminated" cuts off a good state's value).
"""

import glob
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import usbpo  # noqa: E402


def checkpoint(run_dir):
    paths = glob.glob(os.path.join(run_dir, "**", "checkpoint.pt"), recursive=True)
    if not paths:
        sys.exit(f"no checkpoint.pt under {run_dir}")
    return torch.load(paths[0], weights_only=False)  # our own runs, some written before checkpoints held plain values only


def dims(state):
    """(obs_dim, act_dim) of a saved ensemble's state: outputs are [r, s' - s], inputs [s, a]."""
    obs_dim = state["max_logvar"].shape[-1] - 1
    return obs_dim, state["input_mean"].shape[0] - obs_dim


def real_rows(ckpt):
    """The real buffer's rows, oldest first."""
    return ckpt["real_buffer"]["rows"] if isinstance(ckpt["real_buffer"], dict) else ckpt["real_buffer"]  # older checkpoints


@torch.no_grad()
def score(model, env_id, rows):
    """One model on real rows: the table cells next-obs MSE | reward MSE | missed terminations | false terminations."""
    obs, act, rew, next_obs, terminated = usbpo.ReplayBuffer(1, *dims(model.state_dict()), "cpu").split(rows)
    pred = model(torch.cat([obs, act], -1).expand(len(model.elites), -1, -1), model.elites)[0].mean(0)
    pred_next = obs + pred[:, 1:]
    done, real = usbpo.get_termination_fn(env_id)(obs, act, pred_next), terminated.bool()
    mse_obs, mse_rew = (pred_next - next_obs).square().mean(), (pred[:, 0] - rew).square().mean()
    wrong_alive, wrong_done = f"{(~done & real).sum()} of {real.sum()}", f"{(done & ~real).sum()} of {(~real).sum()}"
    return f"{mse_obs:.4f} | {mse_rew:.4f} | {wrong_alive} | {wrong_done}"


def main():
    if len(sys.argv) < 3:
        sys.exit("usage: " + __doc__.split("\n")[0].split(": ", 1)[-1])
    data = checkpoint(sys.argv[1])
    rows = real_rows(data)[-2000:]
    print(f"data: the last 2000 real transitions of {sys.argv[1]} (step {data['global_step']})\n")
    print(
        "| run | step | next-obs MSE | reward MSE | predicted alive, really terminated | predicted terminated, really alive |"
    )
    print("|---|---|---|---|---|---|")
    for run_dir in sys.argv[2:]:
        ckpt = checkpoint(run_dir)
        args, state = ckpt["args"], ckpt["model"]
        model = usbpo.GaussianEnsemble(*dims(state), args["ensemble_size"], args["num_elites"], args["model_hidden"])
        model.load_state_dict(state)
        name = os.path.basename(os.path.normpath(run_dir))
        print(f"| {name} | {ckpt['global_step']} | {score(model, args['env_id'], rows)} |")


if __name__ == "__main__":
    main()
