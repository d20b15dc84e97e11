"""What the test files share (test_usbpo.py, results/test_stats.py, results/test_evidence.py, benchmarks/test_benchmarks.py):
one thread for torch in every test, the repository's root, and the helpers more than one test file uses. pytest loads
this file before the test files and puts its folder on sys.path; they import from it with `from conftest import ...`."""

import csv
import os
import sys

import torch

torch.set_num_threads(1)  # as usbpo.py by default: results that do not depend on the machine's core count, no collapse
HERE = os.path.dirname(os.path.abspath(__file__))  # the repository's root, where usbpo.py is


def tiny_args_argv(*extra, env_id="InvertedPendulum-v4"):
    """The command line of a configuration small enough for a run to go through every phase in seconds."""
    small = (
        "--total-timesteps 750 --learning-starts 250 --epoch-length 250 --model-train-freq 250 --rollout-batch-size 500 "
        "--updates-per-step 2 --eval-episodes 1 --model-max-epochs 5 --finetune-steps 20 --no-progress --min-pool-size 0"
    )
    return ["--env-id", env_id, *small.split(), *extra]


def usbpo_command(argv):
    return [sys.executable, os.path.join(HERE, "usbpo.py"), *argv]


def assert_failed_with_one_line(returncode, stderr, message):
    assert returncode != 0
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in stderr, stderr


def rows_in(run_dir):
    path = os.path.join(run_dir, "progress.csv")
    return sum(1 for _ in open(path)) - 1 if os.path.isfile(path) else 0


def final_state(run_dir):
    """The CSV rows without timing columns, and the last checkpoint."""
    with open(os.path.join(run_dir, "progress.csv")) as f:
        rows = [{k: v for k, v in r.items() if k not in ("sps", "wall_time")} for r in csv.DictReader(f)]
    return rows, torch.load(os.path.join(run_dir, "checkpoint.pt"), weights_only=True)
