"""The on-policy loop every method shares: rollout -> score -> advantages -> mu epochs of updates.

A variant overrides one or two hooks:

- :meth:`compute_advantages` (required): [N] per completion or [N, T] per token;
- :meth:`policy_objective`: per-token loss from current/old log-probs and advantages;
- :meth:`aggregate`: per-token loss -> scalar (``loss_type``);
- :meth:`rollout`: how a batch of prompts becomes a :class:`Rollout` (DAPO's dynamic sampling);
- :meth:`on_rollout` / :meth:`extra_loss` / :meth:`configure_critic` / :meth:`critic_optimizers`:
  a critic (PPO). Class flags ``kl_in_loss`` and ``needs_rollout_logprobs`` serve methods that
  fold the KL into the reward (PPO, REINFORCE++).

A hook may put per-step numbers in ``self.step_metrics`` (name -> float); :meth:`log_step` logs
them as ``train/<name>`` with the rest and clears them (e.g. DAPO's resampled prompt count).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Literal, NamedTuple

import torch
from lightning import LightningModule
from lightning.pytorch.cli import OptimizerCallable
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn

from rlpost import losses
from rlpost.evaluation import HeldOutEvaluator, val_metrics
from rlpost.losses import clipped_surrogate, kl_k3, masked_mean, zero_signal_groups
from rlpost.memory import model_state_bytes, peak_memory_bytes, reset_peak_memory
from rlpost.models import context_length, frozen_copy, load_policy, load_tokenizer
from rlpost.plan import rollout_plan
from rlpost.rollout import Rollout, completion_logprobs, make_rollout
from rlpost.scoring import ScorerSet

LossType = Literal["grpo", "dapo", "dr_grpo"]


def default_optimizer(params) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=1e-5, weight_decay=0.0)


class Counts(NamedTuple):
    """Normalisers of one optimizer step, over all its micro-batches and all ranks."""

    num_seqs: float
    num_tokens: float


class OnPolicyAlgorithm(LightningModule):
    """Shared on-policy loop (manual optimization).

    Args:
        model_name_or_path: policy to train (HF name, local path, ``builtin:tiny`` or ``builtin:arith-sft``).
        num_generations: completions per prompt, G.
        max_completion_length: new tokens per completion at most.
        temperature, top_p, top_k: sampling of the rollout (top_k = 0: off).
        beta: KL coefficient to the frozen reference, beta. 0 builds no reference model.
        num_iterations: updates per rollout over the same samples, mu.
        mini_batch_size: completions per optimizer step (per device); None = the whole rollout.
        micro_batch_size: completions per forward/backward (gradient accumulation); None = mini batch.
        epsilon: lower clip range, eps_low.
        epsilon_high: upper clip range, eps_high (None = epsilon).
        max_grad_norm: gradient clipping by global norm (0 disables).
        optimizer: policy optimizer factory.
        eval_temperature: temperature of the sampled held-out accuracy.
        save_policy: save the final policy (HF format) in ``<log_dir>/policy``.
        max_entropy_collapse: stop when mean token entropy falls below this (0 disables).
        dtype: dtype the policy is loaded in (None = as stored).
    """

    kl_in_loss: bool = True  # False: the KL shapes the reward instead (PPO, REINFORCE++)
    needs_rollout_logprobs: bool = False  # True: log pi_old is always computed at rollout time

    def __init__(
        self,
        model_name_or_path: str = "builtin:arith-sft",
        num_generations: int = 8,
        max_completion_length: int = 8,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        beta: float = 0.04,
        num_iterations: int = 1,
        mini_batch_size: int | None = None,
        micro_batch_size: int | None = None,
        epsilon: float = 0.2,
        epsilon_high: float | None = None,
        loss_type: LossType = "grpo",
        max_grad_norm: float = 1.0,
        optimizer: OptimizerCallable = default_optimizer,
        eval_temperature: float = 1.0,
        save_policy: bool = True,
        max_entropy_collapse: float = 0.0,
        dtype: str | None = None,
    ):
        super().__init__()
        self.save_hyperparameters(ignore=["optimizer"])
        # The values in use, also those a subclass fixes (DrGRPO's loss_type): under LightningCLI the
        # line above saves only the parsed config.
        self.save_hyperparameters({k: v for k, v in locals().items() if k not in ("self", "optimizer", "__class__")})
        if num_generations < 2:
            raise ValueError(f"num_generations must be >= 2 (a group needs a baseline), got {num_generations}")
        _check_positive(max_completion_length=max_completion_length, num_iterations=num_iterations,
                        temperature=temperature)
        if epsilon <= 0 or (epsilon_high is not None and epsilon_high <= 0):
            raise ValueError(f"epsilon and epsilon_high must be > 0, got {epsilon}, {epsilon_high}")
        if beta < 0:
            raise ValueError(f"beta must be >= 0, got {beta}")
        if loss_type not in AGGREGATIONS:
            raise ValueError(f"loss_type {loss_type!r} is unknown; choose from {sorted(AGGREGATIONS)}")
        self.automatic_optimization = False
        self.optimizer_factory = optimizer
        self.tokenizer = load_tokenizer(model_name_or_path)
        self.policy = load_policy(model_name_or_path, dtype=dtype)
        # beta = 0: the reference is never built nor run.
        self.reference = frozen_copy(self.policy) if beta > 0 else None
        self.critic: nn.Module | None = self.configure_critic()
        self.history: list[dict] = []
        self.summary: dict = {}
        self._timers = {"generation_s": 0.0, "training_s": 0.0, "completion_tokens": 0, "completions_generated": 0}
        self._memory_breakdown: dict | None = None
        self.step_metrics: dict[str, float] = {}  # a hook's numbers for this step, logged as train/<name>

    # ================================================================== hooks
    def configure_critic(self) -> nn.Module | None:
        """A value model, if the method has one (PPO). Built once, in ``__init__``."""
        return None

    def compute_advantages(self, rollout: Rollout) -> Tensor:
        """[N] (one advantage per completion) or [N, T] (per token)."""
        raise NotImplementedError

    def on_rollout(self, rollout: Rollout) -> None:
        """Called after scoring, before advantages (e.g. PPO stores the critic's values)."""

    def policy_objective(self, logprobs: Tensor, mb: Rollout) -> losses.SurrogateOutput:
        """Per-token policy loss; default: PPO clipped surrogate with (eps_low, eps_high)."""
        old = mb.old_logprobs if mb.old_logprobs is not None else logprobs.detach()
        return clipped_surrogate(logprobs, old, mb.advantages, self.hparams.epsilon, self.hparams.epsilon_high)

    def aggregate(self, per_token_loss: Tensor, mask: Tensor, counts: Counts) -> Tensor:
        """Per-token loss -> scalar by ``loss_type`` (global counts of the optimizer step)."""
        return AGGREGATIONS[self.hparams.loss_type](self, per_token_loss, mask, counts)

    def extra_loss(self, mb: Rollout, counts: Counts) -> tuple[Tensor, dict[str, Tensor]]:
        """Added to the policy loss (e.g. PPO's value loss)."""
        return torch.zeros((), device=self.device), {}

    def critic_optimizers(self) -> list[torch.optim.Optimizer]:
        return []

    # ================================================================== Lightning
    def configure_optimizers(self):
        opts = [self.optimizer_factory(self.policy.parameters()), *self.critic_optimizers()]
        return opts if len(opts) > 1 else opts[0]

    def setup(self, stage: str) -> None:
        if stage != "fit":
            return
        dm = self.trainer.datamodule
        if dm is None:
            raise ValueError("rlpost algorithms need a task datamodule (trainer.fit(model, datamodule=task))")
        self.scorer_set: ScorerSet = dm.scorers()
        self.evaluator = HeldOutEvaluator(dm.accuracy_scorer(), self.scorer_set, batch_size=dm.eval_batch_size,
                                          max_completion_length=self.hparams.max_completion_length,
                                          temperature=self.hparams.eval_temperature)
        dm.setup("fit")
        self.check_plan(dm)

    def check_plan(self, dm) -> None:
        """Refuse an impossible configuration before the first generation, with the numbers."""
        h = self.hparams
        plan = rollout_plan(dm.prompts_per_step, h.num_generations, h.mini_batch_size, h.micro_batch_size,
                            h.num_iterations, self.trainer.max_steps)  # trainer.max_steps counts optimizer steps
        self.steps_per_rollout = plan.optimizer_steps_per_rollout
        # mu = 1 and one optimizer step per rollout: the update's own first forward gives log pi_old.
        self.need_old_logprobs = self.steps_per_rollout > 1 or self.needs_rollout_logprobs
        ctx = context_length(self.policy)
        if ctx is not None:
            for split, ds in (("train", dm.train_dataset), ("validation", dm.val_dataset)):
                longest = max(ds["prompt"], key=lambda p: len(self.tokenizer(p, add_special_tokens=False)["input_ids"]))
                n_tok = len(self.tokenizer(longest, add_special_tokens=False)["input_ids"])
                if n_tok + h.max_completion_length > ctx:
                    raise ValueError(
                        f"{split} prompt {longest[:80]!r} has {n_tok} tokens; with max_completion_length="
                        f"{h.max_completion_length} that exceeds the model's context of {ctx} tokens"
                    )
        self.plan = dict(asdict(plan), world_size=self.trainer.world_size, need_old_logprobs=self.need_old_logprobs,
                         reference_model=self.reference is not None, critic=self.critic is not None)
        rank_zero_info(f"[rlpost] plan: {self.plan}")

    def on_train_start(self) -> None:
        acc = self.evaluate()
        self.summary.update(accuracy_before=acc["greedy"], accuracy_before_sampled=acc["sampled"],
                            reward_before=acc["reward"], rewards_before=acc["rewards"])
        self.log_metrics(val_metrics(acc))
        rank_zero_info(f"[rlpost] held-out accuracy before training: greedy {acc['greedy']:.3f}, sampled "
                       f"{acc['sampled']:.3f}; held-out reward {acc['reward']:.3f}")
        self._peak_reset = reset_peak_memory(self.device)

    def training_step(self, batch: dict, batch_idx: int) -> None:
        t0 = time.perf_counter()
        rollout = self.rollout(batch)
        t1 = time.perf_counter()
        self.on_rollout(rollout)
        rollout.advantages = self.compute_advantages(rollout)
        stats = self.update(rollout)
        t2 = time.perf_counter()
        self._timers["generation_s"] += t1 - t0
        self._timers["training_s"] += t2 - t1
        self._timers["completion_tokens"] += int(rollout.completion_mask.sum())
        self.log_step(rollout, stats, generation_s=t1 - t0, training_s=t2 - t1)

    def rollout(self, batch: dict) -> Rollout:
        """Generate and score G completions per prompt. Every completion generated here is counted
        in ``summary.json``'s ``completions_generated``, also those an override drops (DAPO)."""
        h = self.hparams
        rollout = make_rollout(
            self.policy, self.tokenizer, batch, self.scorer_set, num_generations=h.num_generations,
            max_completion_length=h.max_completion_length, temperature=h.temperature, top_p=h.top_p, top_k=h.top_k,
            reference=self.reference, need_old_logprobs=self.need_old_logprobs,
        )
        self._timers["completions_generated"] += len(rollout)
        return rollout

    # ================================================================== the update
    def update(self, rollout: Rollout) -> dict[str, float]:
        """mu epochs over ``rollout`` in shuffled mini-batches; one optimizer step per mini-batch."""
        h = self.hparams
        opts = self.optimizers()
        opts = opts if isinstance(opts, list) else [opts]
        n = len(rollout)
        mini = h.mini_batch_size or n
        micro = h.micro_batch_size or mini
        sums: dict[str, float] = {}
        steps = 0
        for _ in range(h.num_iterations):
            order = torch.randperm(n, device=rollout.rewards.device) if mini < n else torch.arange(n, device=rollout.rewards.device)
            for start in range(0, n, mini):
                mb_index = order[start : start + mini]
                counts = Counts(float(len(mb_index)), self._global_mean(rollout.completion_mask[mb_index].sum()))
                for opt in opts:
                    opt.zero_grad(set_to_none=True)
                for m in range(0, len(mb_index), micro):
                    loss, stats = self.minibatch_loss(rollout.select(mb_index[m : m + micro]), counts)
                    if not torch.isfinite(loss):
                        raise FloatingPointError(f"non-finite loss {loss.item()} at step {self.global_step}; "
                                                 f"first prompt of the mini-batch: {rollout.prompts[int(mb_index[m])]!r}")
                    self.manual_backward(loss)
                    for k, v in stats.items():
                        sums[k] = sums.get(k, 0.0) + float(v) * (min(micro, len(mb_index) - m) / len(mb_index))
                self.step_optimizers(opts)
                steps += 1
        return {k: v / steps for k, v in sums.items()}

    def step_optimizers(self, opts: list) -> None:
        """Clip and step. The policy optimizer steps through Lightning (it counts ``global_step``);
        a critic optimizer steps through the strategy directly so that one update is one step."""
        for i, opt in enumerate(opts):
            if self.hparams.max_grad_norm > 0:
                self.clip_gradients(opt, gradient_clip_val=self.hparams.max_grad_norm, gradient_clip_algorithm="norm")
            if self._memory_breakdown is None and i == len(opts) - 1:
                self._pending_breakdown = True
            if i == 0:
                opt.step()
            else:
                self.trainer.strategy.optimizer_step(opt.optimizer, closure=lambda: None, model=self)
        if getattr(self, "_pending_breakdown", False):
            self._memory_breakdown = self.memory_breakdown()  # after the first step: grads and state exist
            self._pending_breakdown = False

    def minibatch_loss(self, mb: Rollout, counts: Counts) -> tuple[Tensor, dict[str, Tensor]]:
        """Policy loss (+ KL if ``kl_in_loss``) + :meth:`extra_loss` on one micro-batch."""
        h = self.hparams
        logprobs, entropy = completion_logprobs(
            self.policy, mb.prompt_ids, mb.prompt_mask, mb.completion_ids, mb.completion_mask, h.temperature, with_entropy=True
        )
        mask = mb.completion_mask
        surrogate = self.policy_objective(logprobs, mb)
        per_token = surrogate.loss
        stats = {
            "clip_ratio/low_mean": masked_mean(surrogate.clipped_low.float(), mask),
            "clip_ratio/high_mean": masked_mean(surrogate.clipped_high.float(), mask),
            "clip_ratio/region_mean": masked_mean((surrogate.clipped_low | surrogate.clipped_high).float(), mask),
            "entropy": masked_mean(entropy, mask),
        }
        if mb.ref_logprobs is not None:
            kl = kl_k3(logprobs, mb.ref_logprobs)
            stats["kl"] = masked_mean(kl.detach(), mask)
            if self.kl_in_loss:
                per_token = per_token + h.beta * kl
        loss = self.aggregate(per_token, mask, counts)
        extra, extra_stats = self.extra_loss(mb, counts)
        stats.update(extra_stats, policy_loss=loss.detach())
        return loss + extra, {k: v.detach() for k, v in stats.items()}

    def _global_mean(self, x: Tensor) -> float:
        """Mean of a per-rank count over ranks: a rank's loss divided by it, then DDP's gradient mean,
        gives a sum over all ranks divided by the global total, whatever the world size."""
        if self.trainer.world_size > 1:
            x = self.trainer.strategy.reduce(x.float(), reduce_op="mean")
        return float(x)

    # ================================================================== evaluation
    def evaluate(self) -> dict:
        """Held-out accuracy and reward (see :class:`~rlpost.evaluation.HeldOutEvaluator`) over the
        task's validation split, sharded over ranks."""
        ds = self.trainer.datamodule.val_dataset
        if self.trainer.world_size > 1:
            ds = ds.shard(num_shards=self.trainer.world_size, index=self.trainer.global_rank, contiguous=True)
        return self.evaluator(self.policy, self.tokenizer, ds)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        pass  # held-out accuracy is measured by ``evaluate`` in on_validation_epoch_end (whole split at once)

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return
        self.log_dict(val_metrics(self.evaluate()), sync_dist=False, rank_zero_only=True)

    # ================================================================== logging
    def log_step(self, rollout: Rollout, stats: dict[str, float], generation_s: float, training_s: float) -> None:
        h = self.hparams
        lengths = rollout.completion_mask.sum(dim=1).float()
        metrics = {
            "reward": rollout.rewards.mean(),
            "reward_std": rollout.rewards.std(),
            "frac_reward_zero_std": zero_signal_groups(rollout.rewards, h.num_generations).float().mean(),
            "completions/mean_length": lengths.mean(),
            "completions/max_length": lengths.max(),
            "completions/clipped_ratio": rollout.truncated.float().mean(),
            "time/generation_s": torch.tensor(generation_s),
            "time/training_s": torch.tensor(training_s),
            "completion_tokens_per_s": lengths.sum() / max(generation_s, 1e-9),
            "peak_memory_bytes": torch.tensor(float(peak_memory_bytes(self.device))),
        }
        for name, scores in rollout.scorer_rewards.items():
            metrics[f"rewards/{name}/mean"] = torch.nanmean(scores)
            metrics[f"rewards/{name}/std"] = _nanstd(scores)
        metrics.update({k: torch.tensor(v) for k, v in stats.items()})
        metrics.update({k: torch.tensor(float(v)) for k, v in self.step_metrics.items()})
        self.step_metrics.clear()
        metrics = {f"train/{k}": v.float().to(self.device) for k, v in metrics.items()}
        if self.trainer.world_size > 1:
            keys = list(metrics)
            reduced = self.trainer.strategy.reduce(torch.stack([metrics[k] for k in keys]), reduce_op="mean")
            metrics = dict(zip(keys, reduced))
        values = {k: float(v) for k, v in metrics.items()}
        self.history.append({"step": self.global_step, "wall_s": time.perf_counter() - self._t_start, **values})
        self.log_dict(values, on_step=True, prog_bar=False, rank_zero_only=True)
        self.log("reward", values["train/reward"], prog_bar=True, logger=False)
        if h.max_entropy_collapse > 0 and values.get("train/entropy", math.inf) < h.max_entropy_collapse:
            raise RuntimeError(f"entropy collapsed to {values['train/entropy']:.4f} < max_entropy_collapse="
                               f"{h.max_entropy_collapse} at step {self.global_step}; e.g. prompt {rollout.prompts[0]!r} "
                               f"-> {rollout.completions[0]!r}")

    def log_metrics(self, metrics: dict[str, float]) -> None:
        if self.logger is not None and self.trainer.is_global_zero:
            self.logger.log_metrics(metrics, step=self.global_step)

    def on_fit_start(self) -> None:
        self._t_start = time.perf_counter()

    # ================================================================== end of run
    def memory_breakdown(self) -> dict:
        opts = self.optimizers()
        opts = [o.optimizer for o in (opts if isinstance(opts, list) else [opts])]
        return {
            "policy": model_state_bytes(self.policy, opts),
            "reference": model_state_bytes(self.reference, opts),
            "critic": model_state_bytes(self.critic, opts),
        }

    def on_train_end(self) -> None:
        acc = self.evaluate()
        self.log_metrics(val_metrics(acc))
        peak, generated = peak_memory_bytes(self.device), self._timers["completions_generated"]
        if self.trainer.world_size > 1:
            reduce = self.trainer.strategy.reduce
            peak = int(reduce(torch.tensor(float(peak), device=self.device), reduce_op="max"))
            generated = int(reduce(torch.tensor(float(generated), device=self.device), reduce_op="sum"))
        log_dir = Path(self.trainer.log_dir or self.trainer.default_root_dir)  # a collective: every rank asks
        if not self.trainer.is_global_zero:
            return
        gen_s = self._timers["generation_s"]
        breakdown = self._memory_breakdown or self.memory_breakdown()
        breakdown["accounted_bytes"] = sum(sum(v.values()) for v in breakdown.values() if isinstance(v, dict))
        self.summary.update(
            algorithm=type(self).__name__,
            seed=_seed(),
            steps=self.global_step,
            rollouts=len(self.history),
            accuracy_after=acc["greedy"],
            accuracy_after_sampled=acc["sampled"],
            reward_after=acc["reward"],
            rewards_after=acc["rewards"],
            eval_prompts=acc["n"],
            peak_memory_bytes=peak,
            peak_memory_measure=("cuda max_memory_allocated" if self.device.type == "cuda" else
                                 "peak RSS (VmHWM) since training start" + ("" if self._peak_reset else " (reset unavailable: since process start)")),
            memory_breakdown=breakdown,
            generation_s=gen_s,
            training_s=self._timers["training_s"],
            completion_tokens=self._timers["completion_tokens"],
            completion_tokens_per_s=self._timers["completion_tokens"] / max(gen_s, 1e-9),
            completions_generated=generated,  # all ranks, counted as generated (not from the plan)
            plan=self.plan,
            hparams={k: v for k, v in self.hparams.items()},
            history=self.history,
        )
        log_dir.mkdir(parents=True, exist_ok=True)
        if self.hparams.save_policy:
            self.policy.save_pretrained(log_dir / "policy")
            self.tokenizer.save_pretrained(log_dir / "policy")
        path = log_dir / "summary.json"
        path.write_text(json.dumps(self.summary, indent=2, default=str))
        self.summary_path = path
        print(f"[rlpost] held-out accuracy {self.summary['accuracy_before']:.3f} -> {acc['greedy']:.3f}, reward "
              f"{self.summary['reward_before']:.3f} -> {acc['reward']:.3f}; summary: {path}")


AGGREGATIONS = {
    "grpo": lambda self, loss, mask, c: losses.seq_mean_token_mean(loss, mask, num_seqs=c.num_seqs),
    "dapo": lambda self, loss, mask, c: losses.token_mean(loss, mask, num_tokens=c.num_tokens),
    "dr_grpo": lambda self, loss, mask, c: losses.token_sum_norm(
        loss, mask, self.hparams.max_completion_length, num_seqs=c.num_seqs),
}


def _nanstd(x: Tensor) -> Tensor:
    x = x[~torch.isnan(x)]
    return x.std() if x.numel() > 1 else torch.zeros(())


def _seed() -> int | None:
    import os

    s = os.environ.get("PL_GLOBAL_SEED")
    return int(s) if s is not None else None


def _check_positive(**values) -> None:
    for name, v in values.items():
        if v <= 0:
            raise ValueError(f"{name} must be > 0, got {v}")
