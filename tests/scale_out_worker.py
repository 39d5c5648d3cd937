"""Training runs that the scale-out tests launch on one process (in the test) or on two (``torchrun``, gloo).

    torchrun --standalone --nproc_per_node 2 tests/scale_out_worker.py invariance ROLLOUT OUT
    torchrun --standalone --nproc_per_node 2 tests/scale_out_worker.py sharding OUT

- ``invariance``: each configuration of :data:`INVARIANCE` fits one optimizer step on a fixed rollout
  (``Rollout.save``d by the test; with W processes each rank replays its 1/W of it) and saves the
  logged losses, the gradients at the optimizer step and each rank's advantages.
- ``sharding``: each configuration of :data:`SHARDING` fits two steps under DDP and under
  ``ModelParallelStrategy`` (FSDP2) and saves every rank's final parameters (gathered); then the default
  ``ModelParallelStrategy()`` is tried (refused), and a sharded policy generates for different lengths
  on the two ranks.
Not collected by pytest (no ``test_`` prefix).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
from lightning import Callback, Trainer, seed_everything

sys.path.insert(0, str(Path(__file__).parents[1]))

from rlpost.algorithms import GRPO, PPO, ReinforcePlusPlus  # noqa: E402
from rlpost.rollout import Rollout  # noqa: E402
from tests.conftest import ToyTask  # noqa: E402

COMMON = dict(model_name_or_path="builtin:tiny", num_generations=4, max_completion_length=4, beta=0.04,
              save_policy=False, max_grad_norm=0.0, optimizer=lambda p: torch.optim.AdamW(p, lr=1e-2))
CRITIC_OPT = dict(critic_optimizer=lambda p: torch.optim.AdamW(p, lr=1e-2))
INVARIANCE = {
    "grpo_loss-grpo_scale-batch": (GRPO, dict(loss_type="grpo", scale_rewards="batch")),
    "grpo_loss-dapo_scale-batch": (GRPO, dict(loss_type="dapo", scale_rewards="batch")),
    "grpo_loss-dr_grpo_scale-group": (GRPO, dict(loss_type="dr_grpo", scale_rewards="group")),
    "ppo_whiten_loss-dapo": (PPO, dict(loss_type="dapo", critic="separate", **CRITIC_OPT)),
    "ppo_whiten_loss-grpo_value-head": (PPO, dict(loss_type="grpo", critic="value_head")),
    "reinforce_pp": (ReinforcePlusPlus, dict(loss_type="grpo")),
}
SHARDING = {
    "grpo": (GRPO, {}),
    "ppo_separate": (PPO, dict(critic="separate", **CRITIC_OPT)),
    "ppo_value_head": (PPO, dict(critic="value_head")),
}


def reward_by_length(prompts, completions, **_):
    """Varied rewards, so every group carries a learning signal."""
    return [len(c) / 4.0 for c in completions]


class Grads(Callback):
    """Every optimizer's gradient at its (first) step, flattened."""

    def __init__(self):
        self.grads: list[torch.Tensor] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        self.grads.append(torch.cat([_full(p.grad).flatten() for p in params]).clone())


class DumpParams(Callback):
    """Saves this rank's policy parameters and how Lightning saw the launch (``--trainer.callbacks+=``)."""

    def __init__(self, out: str):
        self.out = Path(out)

    def on_train_end(self, trainer, pl_module):
        self.out.mkdir(parents=True, exist_ok=True)
        torch.save({"params": torch.cat([_full(p).flatten() for p in pl_module.policy.parameters()]),
                    "world_size": trainer.world_size, "num_nodes": trainer.num_nodes, "node_rank": trainer.node_rank,
                    "environment": type(trainer.strategy.cluster_environment).__name__, "steps": trainer.global_step},
                   self.out / f"rank{trainer.global_rank}.pt")


def _full(t: torch.Tensor) -> torch.Tensor:
    return t.full_tensor() if hasattr(t, "full_tensor") else t.detach()


def trainer(root: Path, strategy, devices: int, max_steps: int, callbacks=()) -> Trainer:
    return Trainer(accelerator="cpu", strategy=strategy, devices=devices, max_steps=max_steps, max_epochs=-1,
                   logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                   num_sanity_val_steps=0, limit_val_batches=0, default_root_dir=str(root), callbacks=list(callbacks))


def replay(name: str, rollout_path: Path, out: Path, world_size: int) -> None:
    """Fit one step of configuration ``name`` on this rank's share of the saved rollout."""
    cls, kwargs = INVARIANCE[name]
    seed_everything(0)
    model = cls(**COMMON, **kwargs)
    model.configure_model()  # built here, from the same seed, whatever the world size
    rank = int(os.environ.get("RANK", 0))  # torchrun's
    whole = Rollout.load(rollout_path)
    share = len(whole) // world_size
    model.rollout = lambda batch: whole.select(torch.arange(rank * share, (rank + 1) * share))
    advantages = []
    compute = model.compute_advantages
    model.compute_advantages = lambda r: advantages.append(compute(r)) or advantages[-1]
    grads = Grads()
    prompts = share // model.hparams.num_generations
    trainer(out / name, "ddp" if world_size > 1 else "auto", world_size, 1, [grads]).fit(
        model, datamodule=ToyTask(prompts_per_step=prompts, scorer=reward_by_length))
    losses = {k: v for k, v in model.history[0].items() if k.endswith("_loss")}
    torch.save({"losses": losses, "grads": grads.grads, "advantages": advantages[0]},
               out / f"{name}_world{world_size}_rank{rank}.pt")


def sharded_and_ddp(name: str, out: Path) -> None:
    """Fit two steps of configuration ``name`` under DDP and under FSDP2; save each rank's parameters.
    The held-out split (3 prompts, batches of 1) gives the ranks shards of 2 and 1 prompts."""
    from lightning.pytorch.strategies import ModelParallelStrategy

    from rlpost.sharding import is_sharded

    cls, kwargs = SHARDING[name]
    for label, strategy in (("ddp", "ddp"), ("fsdp2", ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1))):
        seed_everything(0)
        model = cls(**dict(COMMON, max_grad_norm=1.0, save_policy=True), **kwargs)
        task = ToyTask(prompts_per_step=2, scorer=reward_by_length, val_prompts=["1+1=", "2+3=", "4+1="])
        task.eval_batch_size = 1
        t = trainer(out / f"{name}_{label}", strategy, 2, 2)
        t.fit(model, datamodule=task)
        params = {part: torch.cat([_full(p).flatten() for p in m.parameters()])
                  for part, m in (("policy", model.policy), ("critic", model.critic)) if m is not None}
        torch.save({"params": params, "loss": model.history[-1]["train/policy_loss"], "sharded": is_sharded(model.policy),
                    "breakdown": model.record.breakdown}, out / f"{name}_{label}_rank{t.global_rank}.pt")


def default_model_parallel_is_refused(out: Path) -> None:
    """``ModelParallelStrategy()`` on one node of 2 processes (all tensor-parallel): the refusal's message."""
    from lightning.pytorch.strategies import ModelParallelStrategy

    t = trainer(out / "default", ModelParallelStrategy(), 2, 1)
    try:
        t.fit(GRPO(**COMMON), datamodule=ToyTask(prompts_per_step=2))
    except ValueError as err:
        (out / f"refused_rank{t.global_rank}.txt").write_text(str(err))


def uneven_generation(out: Path) -> None:
    """A sharded policy generates on rank 0 until its first token (its EOS), on rank 1 for 6 tokens: no
    collective may run after the first step. Saves each rank's completion and the unsharded policy's."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    from rlpost.generation import HFBackend, Sampling
    from rlpost.models import load_policy
    from rlpost.sharding import shard_models

    if not dist.is_initialized():
        dist.init_process_group("gloo")
    rank = dist.get_rank()
    plain, sharded = load_policy("builtin:tiny"), load_policy("builtin:tiny")
    shard_models([sharded], init_device_mesh("cpu", (dist.get_world_size(),)))
    prompt = torch.randint(3, 20, (1, 4 + rank), generator=torch.Generator().manual_seed(rank))
    mask, greedy = torch.ones_like(prompt), Sampling(max_new_tokens=6, do_sample=False)
    first = HFBackend().generate(plain, prompt, mask, greedy, eos_token_id=-1, pad_token_id=0).completion_ids[0, 0]
    eos = int(first) if rank == 0 else -1  # rank 1: no EOS at all
    want = HFBackend().generate(plain, prompt, mask, greedy, eos_token_id=eos, pad_token_id=0).completion_ids
    got = HFBackend().generate(sharded, prompt, mask, greedy, eos_token_id=eos, pad_token_id=0).completion_ids
    dist.barrier()
    torch.save({"got": got, "want": want}, out / f"uneven_rank{rank}.pt")


def main(argv: list[str]) -> None:
    mode, *args = argv
    if mode == "invariance":
        rollout_path, out = Path(args[0]), Path(args[1])
        for name in INVARIANCE:
            replay(name, rollout_path, out, world_size=2)
    elif mode == "sharding":
        for name in SHARDING:
            sharded_and_ddp(name, Path(args[0]))
        default_model_parallel_is_refused(Path(args[0]))
        uneven_generation(Path(args[0]))
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
