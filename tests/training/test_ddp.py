"""DDP and FSDP2 on CPU (gloo): 2 processes with per-process batch b reach the loss of 1 process with batch 2b; so do
two torchrun "nodes" of one process each (multi-node DDP).

FSDP2 runs through Lightning's `ModelParallelStrategy` (`configs/strategy-fsdp.yaml`); Lightning's FSDP1
`strategy: fsdp` refuses CPU, and torch's FSDP1 itself needs an accelerator (see docs/training.md).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from trainutil import fit, free_port, loss_on_fixed_batch, two_node_args


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp", "ddp_spawn"])
def test_two_processes_match_one_process(strategy, one_process_run, tmp_path):
    log = fit(tmp_path / "two", devices=2, batch_size=8, strategy=strategy)
    assert "distributed_backend=gloo" in log and "Starting with 2 processes" in log
    one, two = loss_on_fixed_batch(one_process_run / "model"), loss_on_fixed_batch(tmp_path / "two" / "model")
    print(
        f"{strategy}: loss after 10 steps: 1 process {one:.8f}, 2 processes {two:.8f}, rel. {abs(one - two) / one:.1e}"
    )
    assert abs(one - two) / abs(one) <= 1e-4, (one, two)
    a = torch.load(one_process_run / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(tmp_path / "two" / "checkpoints" / "last.ckpt", weights_only=True)
    assert a["global_step"] == b["global_step"] == 10


@pytest.fixture(scope="module")
def lora_one_process_run(one_process_run, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("lora-one-process")
    fit(run, 1, 16, "auto", f"--model.pretrained={one_process_run / 'model'}", "--model.lora={r: 4}")
    return run


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_lora_two_processes_match_one_process(strategy, one_process_run, lora_one_process_run, tmp_path):
    """LoRA fine-tuning (frozen base weights, adapters and head trained) under DDP and FSDP2 as in one process."""
    run = tmp_path / "two"
    fit(run, 2, 8, strategy, f"--model.pretrained={one_process_run / 'model'}", "--model.lora={r: 4}")
    one, two = loss_on_fixed_batch(lora_one_process_run / "model"), loss_on_fixed_batch(run / "model")
    assert abs(one - two) / abs(one) <= 1e-4, (one, two)
    assert one != loss_on_fixed_batch(one_process_run / "model")  # the adapters trained
    assert (run / "adapter" / "adapter_model.safetensors").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_grad_checkpointing_two_processes_match_one_process(strategy, one_process_run, tmp_path):
    """Activation checkpointing inside DDP and inside FSDP2's sharded layers (recomputation all-gathers again)
    trains to the one-process loss without it."""
    fit(tmp_path / "two", 2, 8, strategy, "--model.grad_checkpointing=true")
    one, two = loss_on_fixed_batch(one_process_run / "model"), loss_on_fixed_batch(tmp_path / "two" / "model")
    assert abs(one - two) / abs(one) <= 1e-4, (one, two)


@pytest.mark.slow
def test_two_nodes_match_one_process(one_process_run, tmp_path):
    """Multi-node as docs/training.md launches it: torchrun on each node (here two "nodes" of one process each on this
    machine, a shared run directory as on a cluster's shared storage) with `--trainer.num_nodes 2`. Each node keeps
    its own cores for its process, and training matches one process with the whole batch."""
    port = free_port()
    args = two_node_args(tmp_path / "two-nodes")
    launch = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1"]
    rendezvous = ["--master_addr=127.0.0.1", f"--master_port={port}"]
    nodes = [
        subprocess.Popen(
            [*launch, f"--node_rank={rank}", *rendezvous, "-m", "perceiver.training.cli", "fit", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in (0, 1)
    ]
    try:
        logs = [node.communicate(timeout=900)[0] for node in nodes]
    finally:  # one node failing must not leave the other waiting at the rendezvous
        for node in nodes:
            node.kill()
    for node, log in zip(nodes, logs):
        assert node.returncode == 0, log[-4000:]
    assert "Starting with 2 processes" in logs[0] and "GLOBAL_RANK: 1, MEMBER: 2/2" in logs[1]
    cores = len(os.sched_getaffinity(0))
    assert all(f"{cores} CPU threads ({cores} usable core(s) shared by 1 process(es))" in log for log in logs), logs
    one, two = loss_on_fixed_batch(one_process_run / "model"), loss_on_fixed_batch(tmp_path / "two-nodes" / "model")
    print(f"two nodes: loss after 10 steps: 1 process {one:.8f}, 2 nodes {two:.8f}, rel. {abs(one - two) / one:.1e}")
    assert abs(one - two) / abs(one) <= 1e-4, (one, two)


EMA = ["--trainer.callbacks+=EMAWeightAveraging", "--trainer.callbacks.decay=0.8"]


@pytest.mark.slow
def test_ema_two_ddp_processes_match_one_process_and_fsdp_refuses_it(tmp_path):
    """Lightning's `EMAWeightAveraging` under DDP: each process averages the same weights, so the saved average of 2
    processes equals 1 process's. Under FSDP2 it cannot copy the sharded model: a clear error, not FSDP's
    "does not support deepcopy" from inside the first step."""
    fit(tmp_path / "one", 1, 16, "auto", *EMA)
    fit(tmp_path / "two", 2, 8, "ddp", *EMA)
    one, two = loss_on_fixed_batch(tmp_path / "one" / "model"), loss_on_fixed_batch(tmp_path / "two" / "model")
    assert abs(one - two) / abs(one) <= 1e-4, (one, two)
    with pytest.raises(AssertionError, match=r"EMAWeightAveraging keeps an unsharded copy .* --trainer.strategy ddp"):
        fit(tmp_path / "fsdp", 2, 8, "fsdp", *EMA)
