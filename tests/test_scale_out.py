"""Two CPU processes (gloo), launched by torchrun as on a cluster (tests/scale_out_worker.py):

- FSDP2 (ModelParallelStrategy) trains like DDP, and the default ModelParallelStrategy() is refused;
- world-size invariance: 1 process x 2B prompts and 2 processes x B give the same loss and gradient;
- two "nodes" (two torchrun launches with a c10d rendezvous on 127.0.0.1) keep identical parameters.
"""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests import scale_out_worker as worker

ROOT = Path(__file__).parents[1]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(cmd: list[str], timeout: int = 900) -> None:
    proc = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]


def two_processes(*args: str) -> None:
    run([*TORCHRUN, "--standalone", "--nproc_per_node", "2", str(ROOT / "tests/scale_out_worker.py"), *args])


@pytest.mark.slow
def test_fsdp2_on_two_processes_trains_like_ddp_and_the_default_mesh_is_refused(tmp_path):
    two_processes("sharding", str(tmp_path))
    for name in worker.SHARDING:
        ddp, fsdp = ({r: torch.load(tmp_path / f"{name}_{s}_rank{r}.pt", weights_only=True) for r in (0, 1)}
                     for s in ("ddp", "fsdp2"))
        assert fsdp[0]["sharded"] and not ddp[0]["sharded"]
        # each rank holds half of the model state (its shards), DDP all of it
        assert fsdp[0]["breakdown"]["accounted_bytes"] < 0.55 * ddp[0]["breakdown"]["accounted_bytes"]
        for part, params in fsdp[0]["params"].items():
            assert torch.equal(params, fsdp[1]["params"][part]), (name, part)  # the ranks agree (gradients synced)
            torch.testing.assert_close(params, ddp[0]["params"][part], atol=5e-5, rtol=0, msg=lambda m: f"{name} {part}: {m}")
        assert fsdp[0]["loss"] == pytest.approx(ddp[0]["loss"], abs=1e-5)
        assert (tmp_path / f"{name}_fsdp2" / "policy" / "model.safetensors").is_file()  # gathered and exported
    for rank in (0, 1):
        assert "data_parallel_size=1, tensor_parallel_size=2" in (tmp_path / f"refused_rank{rank}.txt").read_text()
    # ranks that stop generating at different lengths (1 and 6 tokens) neither hang nor change the tokens
    uneven = [torch.load(tmp_path / f"uneven_rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert [u["got"].shape[1] for u in uneven] == [1, 6]
    assert all(torch.equal(u["got"], u["want"]) for u in uneven)


def fixed_rollout(path: Path) -> None:
    """2B = 4 prompts x G = 4 completions with log pi_old and pi_ref; rewards whose halves differ in mean and std."""
    from rlpost.rollout import make_rollout
    from tests.conftest import ToyTask, built

    torch.manual_seed(0)
    model = built(worker.GRPO(**worker.COMMON))
    task = ToyTask()
    task.setup()
    rollout = make_rollout(model.policy, model.tokenizer, task.sample_prompts(4, torch.Generator().manual_seed(0)),
                           task.scorers(), num_generations=4, sampling=model.sampling, reference=model.reference,
                           need_old_logprobs=True)
    rollout.rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.5, 0.5, 1.0, 0.0, 2.0, 0.0, 3.0, 1.0, 0.0, 0.0, 0.0, 4.0])
    rollout.save(path)


@pytest.mark.slow
def test_loss_and_gradient_do_not_depend_on_the_world_size(tmp_path):
    """Every loss_type, scale_rewards=batch (global std), PPO's whitening (global mean and variance, separate
    critic and value head) and REINFORCE++: 1 process with the whole rollout = 2 processes with half each."""
    path = tmp_path / "rollout.pt"
    fixed_rollout(path)
    two_processes("invariance", str(path), str(tmp_path))
    for name in worker.INVARIANCE:
        worker.replay(name, path, tmp_path, world_size=1)
        one = torch.load(tmp_path / f"{name}_world1_rank0.pt", weights_only=True)
        halves = [torch.load(tmp_path / f"{name}_world2_rank{r}.pt", weights_only=True) for r in (0, 1)]
        # each rank's advantages are its half of the single process's: the statistics are global
        torch.testing.assert_close(torch.cat([h["advantages"] for h in halves]), one["advantages"], atol=1e-6, rtol=0)
        for key, value in one["losses"].items():
            assert halves[0]["losses"][key] == pytest.approx(value, abs=1e-6), (name, key)
        assert len(one["grads"]) == len(halves[0]["grads"]) >= 1
        for g1, g2 in zip(one["grads"], halves[0]["grads"]):
            assert g1.abs().max() > 1e-3, name  # a real gradient
            torch.testing.assert_close(g2, g1, atol=1e-6, rtol=1e-5, msg=lambda m: f"{name}: {m}")


@pytest.mark.slow
def test_two_nodes_launched_by_torchrun_keep_identical_parameters(tmp_path):
    """The README's multi-node command on 127.0.0.1: 2 nodes x 1 process, rlpost fit with the multinode preset."""
    port, out = free_port(), tmp_path / "params"
    fit = ["-m", "rlpost.cli", "fit", "--config", "configs/grpo_arith.yaml", "--config", "configs/trainer/multinode.yaml",
           "--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.max_steps", "2",
           "--trainer.default_root_dir", str(tmp_path),
           "--trainer.enable_progress_bar", "false", "--data.init_args.num_prompts", "64",
           "--data.init_args.num_val_prompts", "8", "--data.init_args.prompts_per_step", "2",
           "--model.init_args.num_generations", "4",
           f'--trainer.callbacks+={{"class_path": "tests.scale_out_worker.DumpParams", "init_args": {{"out": "{out}"}}}}']
    nodes = [subprocess.Popen([*TORCHRUN, "--nnodes", "2", "--nproc_per_node", "1", "--node_rank", str(rank),
                               "--rdzv_backend", "c10d", "--rdzv_endpoint", f"127.0.0.1:{port}", "--rdzv_id", "two_nodes",
                               *fit], cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for rank in (0, 1)]
    logs = [p.communicate(timeout=900)[0] for p in nodes]
    assert [p.returncode for p in nodes] == [0, 0], "\n".join(log[-3000:] for log in logs)
    ranks = [torch.load(out / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    for r, info in enumerate(ranks):
        assert (info["world_size"], info["num_nodes"], info["node_rank"], info["steps"]) == (2, 2, r, 2)
        assert info["environment"] == "TorchElasticEnvironment"  # Lightning read torchrun's environment
    assert torch.equal(ranks[0]["params"], ranks[1]["params"])
    from rlpost.models import load_policy

    start = torch.cat([p.detach().flatten() for p in load_policy("builtin:arith-sft").parameters()])
    assert not torch.equal(start, ranks[0]["params"])  # the two steps did update the policy
