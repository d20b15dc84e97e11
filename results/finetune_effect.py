"""What the fine-tune alone does to a model: python results/finetune_effect.py DATA_RUN RUN [SEED...]

From RUN's last checkpoint (its model, optimisers and both buffers) one more model update is made from the same random
state in three ways: phase 1 only (MBPO's update of RUN's model), phase 1 followed by RUN's own fine-tune (its
objective, coefficients and, for the authors' loss, its Adam state), and phase 1 from a fresh initialisation on the
same data. Phase 1 is identical in the first two, so what differs between them is the fine-tune's; the third is what
the data alone gives, without the run's history of warm-started, fine-tuned models. Each model is scored as
model_check.score scores a run's model, on the last 2000 real transitions of DATA_RUN (a run of the same seed whose
policy still falls, or the falls cannot be counted): MSE of the next observation and reward predicted by the elites'
mean, and how often the termination function applied to that prediction disagrees with the real `terminated` flag.
One row per model and SEED (default 1 2 3).
"""

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from model_check import checkpoint, dims, real_rows, score  # noqa: E402

import usbpo  # noqa: E402

VARIANTS = ("phase 1 only", "phase 1 + fine-tune", "phase 1 from a fresh model")


def main():
    if len(sys.argv) < 3:
        sys.exit("usage: " + __doc__.split("\n")[0].split(": ", 1)[-1])
    data_run, run, *seeds = sys.argv[1:]
    ckpt = checkpoint(run)
    args = argparse.Namespace(**{**vars(usbpo.build_parser().parse_args([])), **ckpt["args"], "device": "cpu"})
    state = ckpt["model"]
    obs_dim, act_dim = dims(state)
    real_buffer, model_buffer = usbpo.ReplayBuffer(1, obs_dim, act_dim, "cpu"), usbpo.ReplayBuffer(1, obs_dim, act_dim, "cpu")
    real_buffer.load_state_dict(ckpt["real_buffer"])
    model_buffer.load_state_dict(ckpt["model_buffer"])
    data = real_rows(checkpoint(data_run))[-2000:]

    print(f"{run}: step {ckpt['global_step']}, {args.finetune_objective} loss; data: last 2000 transitions of {data_run}\n")
    print("| seed | model | next-obs MSE | reward MSE | predicted alive, really terminated "
          "| predicted terminated, really alive | steps kept |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for seed in [int(s) for s in seeds] or [1, 2, 3]:
        for variant in VARIANTS:
            torch.manual_seed(seed)
            model = usbpo.GaussianEnsemble(obs_dim, act_dim, args.ensemble_size, args.num_elites, args.model_hidden)
            optimizer = torch.optim.Adam(model.parameters(), lr=args.model_lr)
            if variant != VARIANTS[2]:  # the run's model and optimiser (M1), as its next update would start from them
                model.load_state_dict(state)
                optimizer.load_state_dict(ckpt["model_optim"])
            authors = None
            if variant == VARIANTS[1] and args.finetune_objective == "authors":
                authors = torch.optim.Adam(model.parameters(), lr=args.finetune_lr)  # the run's, as usbpo.main makes it
                authors.load_state_dict(ckpt["finetune_optim"])
            torch.manual_seed(seed)  # the same random state for the update of each variant
            update = argparse.Namespace(**{**vars(args), "no_finetune": variant != VARIANTS[1]})
            kept = usbpo.update_model(model, optimizer, real_buffer, model_buffer, update, authors).get(
                "finetune_steps_kept", "-"
            )
            print(f"| {seed} | {variant} | {score(model, args.env_id, data)} | {kept} |", flush=True)


if __name__ == "__main__":
    main()
