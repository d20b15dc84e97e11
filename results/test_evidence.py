"""Tests of results/run_evidence.sh and results/sweep.sbatch, run from the repository's root as the README's test command
does; their helpers are in conftest.py."""

import csv
import glob
import os
import subprocess
import time

import pytest

import usbpo
from conftest import HERE, assert_failed_with_one_line, rows_in, tiny_args_argv, usbpo_command


def test_run_evidence_extends_refuses_and_never_deletes_a_run(tmp_path):
    """results/run_evidence.sh: a finished run given a larger budget is extended (equal to a run started with it), a
    smaller budget is refused in one line with nothing touched, a folder without a checkpoint is kept aside."""
    if not os.path.exists(os.path.join(HERE, ".venv", "bin", "python")):
        pytest.skip("results/run_evidence.sh runs .venv/bin/python, which this checkout lacks")
    env_id, out = "InvertedPendulum-v4", tmp_path / "out"
    env = {**os.environ, "USBPO_OUT": str(out), "VARIANTS": "mbpo", "LANES": "1",
           "EXTRA_FLAGS": " ".join(tiny_args_argv()[2:])}  # fmt: skip

    def evidence(steps):
        return subprocess.run(["bash", "results/run_evidence.sh", env_id, steps, "1"], cwd=HERE, env=env,
                              capture_output=True, text=True, timeout=300)  # fmt: skip

    assert evidence("500").returncode == 0
    csv_path = out / "results" / env_id / "mbpo_seed1.csv"
    assert evidence("750").returncode == 0
    whole = usbpo.main(tiny_args_argv("--no-finetune", "--exp-name", "mbpo", "--runs-dir", str(tmp_path / "whole")))
    with open(csv_path) as a, open(os.path.join(whole, "progress.csv")) as b:
        strip = [[{k: v for k, v in r.items() if k not in ("sps", "wall_time")} for r in csv.DictReader(f)] for f in (a, b)]
    assert strip[0] == strip[1] and [r["env_steps"] for r in strip[0]] == ["250", "500", "750"]
    files = sorted(out.rglob("*"))
    result = evidence("500")
    assert_failed_with_one_line(result.returncode, result.stderr, "holds a run of 750 steps, more than 500")
    assert sorted(out.rglob("*")) == files
    run_dir = out / "runs" / "evidence" / env_id / "mbpo_1"
    (folder,) = glob.glob(str(run_dir / "*"))  # made a run stopped before its first checkpoint: kept aside, a new one made
    os.remove(os.path.join(folder, "checkpoint.pt"))
    with open(os.path.join(folder, "progress.csv")) as f:
        first_row = f.readlines()[:2]
    with open(os.path.join(folder, "progress.csv"), "w") as f:
        f.writelines(first_row)
    assert evidence("750").returncode == 0 and len(glob.glob(str(run_dir) + ".no-checkpoint-*/*/progress.csv")) == 1


# --------------------------------------------------------------------------------------
# The evidence sweep as a Slurm job array (results/sweep.sbatch), against a real Slurm
# --------------------------------------------------------------------------------------


def slurm_command(cmd, env, timeout=60):
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture
def slurm_cluster(tmp_path):
    """A one-node Slurm cluster as root (munged, slurmctld, slurmd, in a fresh folder, on free ports): the environment
    that points Slurm's commands at it. Every daemon is stopped by its pid afterwards, its jobs cancelled first."""
    import shutil
    import socket
    import tempfile

    missing = [p for p in ("munged", "slurmctld", "slurmd", "sbatch", "scontrol", "squeue", "scancel") if not shutil.which(p)]
    if missing:
        pytest.skip(f"no {', '.join(missing)}: apt-get install -y slurmctld slurmd munge (as .ci/run does)")
    if os.geteuid() != 0:
        pytest.skip("the test cluster's daemons run as root, and this is not root")
    if not os.access(os.path.join(HERE, ".venv", "bin", "python"), os.X_OK):
        pytest.skip("results/sweep.sbatch runs .venv/bin/python, which this checkout lacks")
    ports = []
    for _ in range(2):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    d = tempfile.mkdtemp(prefix="usbpo-slurm-")  # a short path: a socket's path has at most 107 characters
    os.makedirs(f"{d}/state"), os.makedirs(f"{d}/spool")
    with open(f"{d}/munge.key", "wb") as f:
        f.write(os.urandom(1024))
    os.chmod(f"{d}/munge.key", 0o600)
    conf = f"""ClusterName=usbpotest
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
SlurmctldPort={ports[0]}
SlurmdPort={ports[1]}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={d}/munge.socket
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd.pid
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
KillWait=30
MinJobAge=600
NodeName=localhost NodeAddr=127.0.0.1 CPUs={os.cpu_count()} State=UNKNOWN
PartitionName=test Nodes=localhost Default=YES MaxTime=INFINITE State=UP
"""
    with open(f"{d}/slurm.conf", "w") as f:
        f.write(conf)
    env = {**os.environ, "SLURM_CONF": f"{d}/slurm.conf"}
    daemons = {
        "munged": ["munged", "-F", "--force", f"--key-file={d}/munge.key", f"--socket={d}/munge.socket",
                   f"--pid-file={d}/munged.pid", f"--log-file={d}/munged.log", f"--seed-file={d}/munged.seed"],
        "slurmctld": ["slurmctld", "-D", "-f", f"{d}/slurm.conf"],
        "slurmd": ["slurmd", "-D", "-N", "localhost", "-f", f"{d}/slurm.conf"],
    }  # fmt: skip
    up = {
        "munged": lambda: os.path.exists(f"{d}/munge.socket"),
        "slurmctld": lambda: "is UP" in slurm_command(["scontrol", "ping"], env).stdout,
        "slurmd": lambda: slurm_command(["sinfo", "-h", "-o", "%T"], env).stdout.strip() == "idle",
    }
    procs = []
    try:
        for name, cmd in daemons.items():
            with open(f"{d}/{name}.out", "w") as log:
                procs.append(subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT))
            deadline = time.time() + 60
            while not up[name]() and procs[-1].poll() is None and time.time() < deadline:
                time.sleep(0.5)
            if not up[name]():
                last = open(f"{d}/{name}.out").read().strip().splitlines()[-1:] or ["(no output)"]
                pytest.skip(f"{name} did not come up within 60 s here: {last[0]}")
        yield env
    finally:
        if procs and up["slurmctld"]():  # cancel what is left, and wait until its processes are gone
            slurm_command(["scancel", "--partition=test"], env)
            deadline = time.time() + 120
            while slurm_command(["squeue", "-h"], env).stdout.strip() and time.time() < deadline:
                time.sleep(0.5)
        for proc in reversed(procs):
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=30)
        shutil.rmtree(d, ignore_errors=True)


def test_sweep_on_slurm_survives_requeue_and_time_limit_signal(slurm_cluster, tmp_path):
    """results/sweep.sbatch on a real Slurm: two array tasks (USB-PO and MBPO, seed 1). Mid-run, one is requeued by
    scontrol (Slurm's SIGTERM to every process of the task, as in a preemption); the other gets the time limit's SIGUSR1
    at its batch shell alone (scancel --batch), which passes it on as SIGTERM and requeues the task. Both continue from
    a checkpoint of the step they were stopped at and end with the CSVs of runs never stopped, in <out>/results/<env>/.
    Bad input gets one line, submits nothing and makes no folder."""
    env_id, out = "InvertedPendulum-v4", tmp_path / "out"
    runs, extra = out / "runs" / "evidence" / env_id, tiny_args_argv("--checkpoint-every", "1")[2:]  # the sweep gives --env-id
    variants = {"usbpo": [], "mbpo": ["--no-finetune"]}
    env = {**slurm_cluster, "USBPO_OUT": str(out), "VARIANTS": " ".join(variants), "EXTRA_FLAGS": " ".join(extra)}

    def sweep(*args, **overrides):
        return subprocess.run(["bash", "results/sweep.sbatch", *args], cwd=HERE, env={**env, **overrides},
                              capture_output=True, text=True, timeout=300)  # fmt: skip

    def tasks():  # {array task: (state, reason)} of the tasks still queued or running
        lines = slurm_command(["squeue", "-h", "-r", "-o", "%i %T %r"], env).stdout.split("\n")
        return {line.split()[0]: tuple(line.split()[1:3]) for line in lines if line.strip()}

    def rows(path):
        with open(path) as f:
            return [{k: v for k, v in r.items() if k not in ("sps", "wall_time")} for r in csv.DictReader(f)]

    for args, overrides, message in [
        ((env_id, "750"), {}, "usage: bash results/sweep.sbatch ENV_ID STEPS SEED..."),
        ((env_id, "750", "1"), {"VARIANTS": "usbpo nope"}, "unknown variant 'nope'"),
        (("Hopper-v3", "750", "1"), {}, "unsupported environment 'Hopper-v3'"),
    ]:
        result = sweep(*args, **overrides)
        assert_failed_with_one_line(result.returncode, result.stderr, message)
    assert not out.exists() and not tasks()

    whole = {}  # the same runs, never stopped, alongside
    try:
        for v, flags in variants.items():
            argv = [*extra, "--env-id", env_id, "--seed", "1", *flags, "--exp-name", v, "--runs-dir", str(tmp_path / v)]
            with open(tmp_path / f"{v}.log", "w") as log:
                whole[v] = subprocess.Popen(usbpo_command(argv), env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=log,
                                            stderr=subprocess.STDOUT)  # fmt: skip
        submitted = sweep(env_id, "750", "1")
        assert submitted.returncode == 0 and "Submitted batch job" in submitted.stdout, submitted.stderr
        job = submitted.stdout.split()[-1]
        task = {"usbpo": f"{job}_0", "mbpo": f"{job}_1"}  # seeds outer, variants inner, as run_evidence.sh
        stop = {  # USB-PO after its first checkpoint; MBPO after its second, while USB-PO runs again (a requeue of
            # the whole array instead of the one task would requeue that one too: Restarts=2)
            "usbpo": (lambda d: os.path.exists(os.path.join(d, "checkpoint.pt")), ["scontrol", "requeue", task["usbpo"]]),
            "mbpo": (lambda d: rows_in(d) >= 2, ["scancel", "--batch", "--signal=USR1", task["mbpo"]]),
        }
        deadline, requeued = time.time() + 600, {}
        while (stop or tasks()) and time.time() < deadline:
            for v in [v for v, (ready, _) in stop.items() if any(map(ready, glob.glob(str(runs / f"{v}_1" / "*"))))]:
                result = slurm_command(stop.pop(v)[1], env)
                assert result.returncode == 0, result.stderr
            for t in [t for t, (state, reason) in tasks().items() if (state, reason) == ("PENDING", "BeginTime")]:
                # a requeued task waits (BeginTime); started here 2 s on, not at once: Slurm refuses a start in the
                # second its old credential was revoked ("Job credential revoked": FAILED, ExitCode 1:0)
                if time.time() - requeued.setdefault(t, time.time()) > 2:
                    slurm_command(["scontrol", "update", f"JobId={t}", "StartTime=now"], env)
            time.sleep(0.2)
        assert not stop and not tasks(), f"not ended within 10 minutes: {list(stop)} not stopped; {tasks()} in the queue"
        for v in variants:
            record = slurm_command(["scontrol", "-o", "show", "job", task[v]], env).stdout
            assert all(f in record.split() for f in ("JobState=COMPLETED", "Restarts=1", "ExitCode=0:0")), record
            log = (runs / f"{v}_1.log").read_text()
            assert log.count("usbpo: stopped by SIGTERM at step ") == 1, log
            step = int(log.split("stopped by SIGTERM at step ")[1].split(";")[0])
            assert 250 <= step < 750 and "continuing from " in log and f"at step {step}\n" in log.split("resumed from ")[1]
            assert whole[v].wait(timeout=600) == 0, (tmp_path / f"{v}.log").read_text()
            (whole_dir,) = glob.glob(str(tmp_path / v / "*"))
            csv_path = out / "results" / env_id / f"{v}_seed1.csv"
            assert [r["env_steps"] for r in rows(csv_path)] == ["250", "500", "750"]
            assert rows(csv_path) == rows(os.path.join(whole_dir, "progress.csv")), v
    finally:
        for proc in whole.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    files = sorted(out.rglob("*"))  # a budget below the runs' own: refused, nothing touched
    result = sweep(env_id, "500", "1")
    assert_failed_with_one_line(result.returncode, result.stderr, "holds a run of 750 steps, more than 500")
    assert sorted(out.rglob("*")) == files and not tasks()
