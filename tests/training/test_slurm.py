"""SLURM as docs/training.md and docs/cli.md use it, simulated on one machine without SLURM: processes started with
the environment `srun` gives its tasks (Lightning's `SLURMEnvironment` reads ranks, world size and master address
from it), and a fake `scontrol` on PATH that records what Lightning asks of it.

- `srun perceiver fit ... --trainer.num_nodes 2`: two "nodes" of one task each train as one process with the
  whole batch.
- Requeue: on SIGUSR1 Lightning writes `RUN_DIR/hpc_ckpt_N.ckpt` and calls `scontrol requeue JOB_ID`; SLURM then
  stops the job (SIGTERM) and starts the same job script again, same job id. With `--ckpt_path last_if_any` that
  start resumes from the requeue checkpoint and ends with the weights of an uninterrupted run.
- A fresh `fit` (no `--ckpt_path`) does not resume from a requeue checkpoint, as Lightning would under SLURM.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from trainutil import free_port, loss_on_fixed_batch, tiny_args, two_node_args

from perceiver.training.cli import main
from perceiver.training.run_dir import resume_path

#: what `sbatch` / `srun` set for every task of the job (and Lightning reads), apart from the nodes and ranks
JOB = {
    "SLURM_JOB_ID": "4242",
    "SLURM_JOB_NAME": "perceiver-test",  # not "bash" / "interactive", which Lightning takes as no SLURM launch
    "SLURM_NTASKS_PER_NODE": "1",
}

#: variables of an outer launcher (torchrun, a real SLURM job running the tests) that would spoil the simulation
OUTER_PREFIXES = ("SLURM_", "TORCHELASTIC_")
OUTER = (
    "MASTER_ADDR",
    "MASTER_PORT",
    "RANK",
    "LOCAL_RANK",
    "GROUP_RANK",
    "NODE_RANK",
    "WORLD_SIZE",
    "LOCAL_WORLD_SIZE",
)


def srun_env(nodes: int, node: int, **extra: str) -> dict[str, str]:
    """The environment of the task on node `node` of a job of `nodes` nodes with one task each, as `srun` starts it.
    No MASTER_ADDR: Lightning takes the first node of the node list, 127.0.0.1 (127.0.0.[1-2] for two nodes)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(OUTER_PREFIXES) and k not in OUTER}
    nodelist = f"127.0.0.[1-{nodes}]" if nodes > 1 else "127.0.0.1"
    ranks = {"SLURM_PROCID": str(node), "SLURM_LOCALID": "0", "SLURM_NODEID": str(node)}
    job = {"SLURM_NTASKS": str(nodes), "SLURM_NNODES": str(nodes), "SLURM_NODELIST": nodelist}
    return {**env, **JOB, **job, "SLURM_JOB_NODELIST": nodelist, **ranks, **extra}


@pytest.mark.slow
def test_srun_two_nodes_match_one_process(one_process_run, tmp_path):
    """The job script of docs/training.md (`srun perceiver fit ... --trainer.num_nodes 2`) with 2 nodes x 1 task:
    Lightning takes ranks and the master address from SLURM's variables (no MASTER_ADDR given: it comes from
    SLURM_NODELIST) and trains as 1 process with the whole batch."""
    run = tmp_path / "two-nodes"
    args = two_node_args(run)
    port = str(free_port())
    tasks = [
        subprocess.Popen(
            [sys.executable, "-m", "perceiver.training.cli", "fit", *args],
            env=srun_env(2, node, MASTER_PORT=port),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for node in (0, 1)
    ]
    try:
        logs = [task.communicate(timeout=600)[0] for task in tasks]
    finally:
        for task in tasks:  # a task left waiting for the other one
            task.kill()
    for task, log in zip(tasks, logs, strict=True):
        assert task.returncode == 0, log[-4000:]
    # Lightning's cluster environment was SLURM's in both tasks (its signal handlers are installed only for it), and
    # the ranks are SLURM_PROCID's: not two single-process runs, nor a launcher of its own
    assert all("SLURM auto-requeueing enabled" in log for log in logs), logs
    assert "Starting with 2 processes" in logs[0] and "GLOBAL_RANK: 1, MEMBER: 2/2" in logs[1], logs
    one, two = loss_on_fixed_batch(one_process_run / "model"), loss_on_fixed_batch(run / "model")
    print(
        f"srun, 2 nodes: loss after 10 steps: 1 process {one:.8f}, 2 nodes {two:.8f}, rel. {abs(one - two) / one:.1e}"
    )
    assert abs(one - two) / abs(one) <= 1e-4, (one, two)
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 10


# -- requeue -------------------------------------------------------------------------------------------------------

PAUSER = '''
import time
from pathlib import Path
from lightning.pytorch.callbacks import Callback

class PauseAtStep(Callback):
    """After optimizer step `step`: write `marker`, then wait for SIGTERM (the test's SLURM), at most 2 minutes."""

    def __init__(self, step: int, marker: str) -> None:
        self.step, self.marker = step, marker

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step != self.step:
            return
        Path(self.marker).write_text(str(self.step))
        deadline = time.monotonic() + 120
        while not trainer.received_sigterm and time.monotonic() < deadline:
            time.sleep(0.02)
'''

#: records its arguments, as the real one would requeue the job
SCONTROL = '#!/bin/sh\necho "$@" >> "$SCONTROL_LOG"\n'

#: 3 epochs of 4 steps, dropout and shifts on (resuming inside an epoch must restore the batches and the RNG draws)
BUDGET = [
    "--trainer.max_epochs=3",
    "--trainer.limit_train_batches=4",
    "--trainer.precision=32",
    "--model.model_kwargs.ff_dropout=0.1",
    "--data.augment=true",
]


def cli(args: list[str], env: dict[str, str] | None = None, log: Path | None = None) -> subprocess.Popen:
    """`perceiver ARGS` in the background, its output (stdout and stderr) to `log` or to a pipe."""
    cmd = [sys.executable, "-m", "perceiver.training.cli", *args]
    if log is None:
        return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    with log.open("w") as out:
        return subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 300) -> None:
    """Until `path` exists; fails when `proc` exits first or after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, f"exited with {proc.returncode} before {path.name} appeared"
        assert time.monotonic() < deadline, f"no {path.name} after {timeout} s"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Iterator[tuple[Path, subprocess.Popen]]:
    """The requeue tests' budget in one go (no SLURM), started in the background: (run directory, process)."""
    run = tmp_path_factory.mktemp("uninterrupted")
    proc = cli(["fit", *tiny_args("digits", run, *BUDGET)], log=run / "log.txt")
    yield run, proc
    proc.kill()
    proc.wait()


@pytest.mark.slow
@pytest.mark.parametrize("step", [2, 6], ids=["before-first-last-ckpt", "after-epoch-1-last-ckpt"])
def test_requeued_job_resumes_from_its_requeue_checkpoint(step, uninterrupted, tmp_path):
    """A job script `srun perceiver fit ... --ckpt_path last_if_any` gets SLURM's requeue signal (SIGUSR1) after
    optimizer step `step`: Lightning writes RUN_DIR/hpc_ckpt_1.ckpt and calls `scontrol requeue 4242`, SLURM stops
    the job (SIGTERM); the requeued job (same command, same job id) resumes from the requeue checkpoint and ends with
    the weights of the uninterrupted run. Step 2 comes before the first last.ckpt (end of epoch 0, step 4), step 6
    after it: the requeue checkpoint is the newer one."""
    tools = tmp_path / "tools"
    tools.mkdir()
    (tools / "slurm_pause.py").write_text(PAUSER)
    (tools / "scontrol").write_text(SCONTROL)
    (tools / "scontrol").chmod(0o755)
    marker, requeued = tmp_path / "paused", tmp_path / "scontrol.log"
    pause = tmp_path / "pause.yaml"
    pause.write_text(
        "trainer:\n  callbacks:\n    - class_path: slurm_pause.PauseAtStep\n"
        f"      init_args:\n        step: {step}\n        marker: {marker}\n"
    )
    run = tmp_path / "run"
    job_script = ["fit", *tiny_args("digits", run, *BUDGET), "--config", str(pause), "--ckpt_path=last_if_any"]
    env = srun_env(
        1,
        0,
        PATH=f"{tools}{os.pathsep}{os.environ['PATH']}",
        PYTHONPATH=os.pathsep.join([str(tools), os.environ.get("PYTHONPATH", "")]),
        SCONTROL_LOG=str(requeued),
    )

    first = cli(job_script, env)
    try:
        wait_for(marker, first)
        first.send_signal(signal.SIGUSR1)  # `#SBATCH --signal=SIGUSR1@90`, before the time limit
        wait_for(requeued, first, timeout=60)
        first.send_signal(signal.SIGTERM)  # what `scontrol requeue` does to the running job
        log = first.communicate(timeout=120)[0]
    finally:
        first.kill()
    assert requeued.read_text() == f"requeue {JOB['SLURM_JOB_ID']}\n", log[-3000:]
    hpc = torch.load(run / "hpc_ckpt_1.ckpt", map_location="cpu", weights_only=True)
    assert hpc["global_step"] == step
    assert not (run / "model").exists()  # stopped before the end

    second = cli(job_script, {**env, "SLURM_RESTART_COUNT": "1"})
    log = second.communicate(timeout=600)[0]
    assert second.returncode == 0, log[-4000:]
    assert f"Restoring states from the checkpoint path at {run / 'hpc_ckpt_1.ckpt'}" in log, log[-4000:]
    assert f"skipping the {step % 4} batches trained before the checkpoint" in log
    assert requeued.read_text().count("requeue") == 1  # not requeued again

    reference, proc = uninterrupted
    assert proc.wait(timeout=600) == 0, (reference / "log.txt").read_text()[-4000:]
    a = torch.load(reference / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    b = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert a["global_step"] == b["global_step"] == 12
    diff = max((a["state_dict"][k].float() - b["state_dict"][k].float()).abs().max().item() for k in a["state_dict"])
    print(f"requeued after step {step}: max weight difference to the uninterrupted run {diff:.1e}")
    assert diff <= 1e-6, f"the requeued run's weights differ from the uninterrupted run's by {diff}"


def test_last_is_the_newest_of_the_last_and_the_requeue_checkpoints(tmp_path):
    """`--ckpt_path last` / `last_if_any` resume from what `resume_path` says: Lightning's "last" (the newest of the
    last checkpoints) unless a SLURM requeue checkpoint of the run directory is newer (the newest of those then)."""
    last = tmp_path / "checkpoints" / "last.ckpt"
    last.parent.mkdir()
    last.write_bytes(b"")
    assert resume_path(set(), tmp_path) is None
    assert resume_path({str(last)}, tmp_path) == "last"
    now = time.time()
    hpc = [tmp_path / f"hpc_ckpt_{n}.ckpt" for n in (1, 2)]
    for n, path in enumerate(hpc, 1):
        path.write_bytes(b"")
        os.utime(path, (now + n, now + n))
    (tmp_path / ".hpc_ckpt_3.ckpt.99.tmp").write_bytes(b"")  # a write killed half-way: no checkpoint
    assert resume_path({str(last)}, tmp_path) == resume_path(set(), tmp_path) == str(hpc[1])
    os.utime(last, (now + 3, now + 3))  # the resumed run wrote last.ckpt after the requeue checkpoints
    assert resume_path({str(last)}, tmp_path) == "last"


def test_a_fresh_fit_does_not_resume_from_a_requeue_checkpoint(tmp_path, monkeypatch):
    """Under SLURM Lightning resumes from RUN_DIR/hpc_ckpt_N.ckpt whenever `fit` has no checkpoint path: a fresh
    `perceiver fit` refuses a run directory holding one, and `--overwrite true` deletes it (and the leftover of a
    killed requeue checkpoint write) before it trains from scratch."""
    for key in os.environ:
        if key.startswith(OUTER_PREFIXES) or key in OUTER:
            monkeypatch.delenv(key)
    for key, value in srun_env(1, 0).items():
        monkeypatch.setenv(key, value)
    hpc, leftover = tmp_path / "hpc_ckpt_1.ckpt", tmp_path / ".hpc_ckpt_2.ckpt.99.tmp"
    hpc.write_bytes(b"not a checkpoint")
    leftover.write_bytes(b"")
    with pytest.raises(SystemExit, match=r"already holds a run \(hpc_ckpt_1.ckpt\)"):
        main(["fit", *tiny_args("digits", tmp_path)])
    assert hpc.is_file()
    main(["fit", *tiny_args("digits", tmp_path), "--overwrite=true"])
    assert not hpc.exists() and not leftover.exists()
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 2
