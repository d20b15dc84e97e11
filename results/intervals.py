"""The env steps between consecutive model trainings of a run, from its TensorBoard log (model/interval), as a CSV
with columns env_steps, interval (the first training has none):
    python results/intervals.py RUN_DIR OUT_CSV
run_evidence.sh writes one per CMLO run to results/<env>/intervals/, for plot.py. A resumed run has logged the steps
after its checkpoint twice; the later record of each step wins (it is the run that went on)."""

import csv
import sys

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def intervals(run_dir):
    log = EventAccumulator(run_dir, size_guidance={"scalars": 0})  # 0: keep every record
    log.Reload()
    latest = {}
    for event in sorted(log.Scalars("model/interval"), key=lambda e: e.wall_time):
        latest[event.step] = event.value
    return sorted(latest.items())


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python results/intervals.py RUN_DIR OUT_CSV")
    run_dir, out = sys.argv[1:]
    with open(out, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["env_steps", "interval"])
        writer.writerows((step, "" if value != value else int(value)) for step, value in intervals(run_dir))
