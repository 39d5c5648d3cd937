"""The on-policy loop every method shares: rollout -> score -> advantages -> mu epochs of updates.

A variant overrides the hook where it differs (each has one obvious default):

- :meth:`~OnPolicyAlgorithm.compute_advantages` (required): [N] per completion or [N, T] per token;
- :meth:`~OnPolicyAlgorithm.policy_objective`: per-token loss from current/old log-probs and advantages;
- :meth:`~OnPolicyAlgorithm.kl_penalty`: the per-token KL term of the loss (default beta * k3 to the
  reference); :class:`KLInReward` moves the KL into a per-token reward instead (PPO, REINFORCE++);
- :meth:`~OnPolicyAlgorithm.needs_old_logprobs`: whether log pi_old is computed at rollout time;
- :meth:`~OnPolicyAlgorithm.aggregate`: per-token loss -> scalar (``loss_type``);
- :meth:`~OnPolicyAlgorithm.rollout`: how a batch of prompts becomes a :class:`Rollout` (DAPO);
- :meth:`~OnPolicyAlgorithm.configure_critic`, :meth:`~OnPolicyAlgorithm.on_rollout`,
  :meth:`~OnPolicyAlgorithm.extra_loss`: a critic and its loss (PPO).

Timers, memory, history, ``summary.json`` and the saved policy belong to the run record
(:class:`rlpost.run_record.RunRecord`), a callback every algorithm adds itself. A hook may put
per-step numbers in ``self.step_metrics``; they are logged as ``train/<name>``.
"""

from __future__ import annotations

from dataclasses import asdict, is_dataclass
from typing import Literal, NamedTuple

import torch
from lightning.pytorch.cli import OptimizerCallable
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn

from rlpost import losses
from rlpost.checks import non_negative, positive, probability
from rlpost.generation import Sampling, make_backend
from rlpost.guards import check_entropy_floor, check_step
from rlpost.lora import LoRA, as_lora, reference_policy
from rlpost.losses import clipped_surrogate, kl_k3, kl_shaped_token_rewards, masked_sum
from rlpost.memory_plan import memory_plan_of
from rlpost.models import load_tokenizer
from rlpost.preflight import step_plan
from rlpost.rollout import (Rollout, TokenScores, completion_lengths, completion_logprobs, make_rollout,
                            rollout_metrics)
from rlpost.sampling_correction import ImportanceSampling, as_importance_sampling
from rlpost.algorithms.policy_module import PolicyModule
from rlpost.run_record import RunRecord
from rlpost.sharding import checkpoint_activations

LossType = Literal["grpo", "dapo", "dr_grpo"]


def default_optimizer(params) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=1e-5, weight_decay=0.0)


class Counts(NamedTuple):
    """Normalisers of one optimizer step over all its micro-batches, as a mean over ranks: a rank's
    sum divided by them, averaged over ranks (DDP's gradient mean), is the global mean."""

    num_seqs: float
    num_tokens: Tensor | float


class OnPolicyAlgorithm(PolicyModule):
    """Shared on-policy loop (manual optimization). Models are built in ``configure_model``.

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
        loss_type: aggregation of the per-token loss (``grpo``, ``dapo``, ``dr_grpo``).
        max_grad_norm: gradient clipping by global norm (0 disables).
        optimizer: policy optimizer factory.
        eval_temperature: temperature of the sampled held-out accuracy.
        save_policy: save the final policy (HF format) in ``<log_dir>/policy``.
        max_entropy_collapse: a floor despite its name: stop when a step's mean token entropy falls below
            it (0 disables); checked when the history is read back (every ``log_every_n_steps``).
        dtype: dtype the policy is loaded in (None = as stored).
        generation_backend, generation_kwargs: ``lean`` (a bare decode loop, the same samples as ``generate``,
            faster), ``hf`` (``transformers`` ``generate``) or ``vllm``, and its settings (:mod:`rlpost.generation`).
            The held-out evaluation uses it too.
        lora: train LoRA adapters (:class:`~rlpost.lora.LoRA`, needs peft); the reference is the adapter-off base.
        mask_truncated_completions: no loss on completions without EOS (scored, and in their group's statistics).
        importance_sampling_correction: reweight by the sampler's log-probs (:mod:`rlpost.sampling_correction`).
        log_completions_every_n_steps: completion samples every n steps (0: off; None: each logging interval).
        gradient_checkpointing: recompute activations in the backward pass (policy, separate critic's trunk).
    """

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
        generation_backend: str = "lean",
        generation_kwargs: dict | None = None,
        lora: LoRA | None = None,
        mask_truncated_completions: bool = False,
        importance_sampling_correction: ImportanceSampling | None = None,
        log_completions_every_n_steps: int | None = None,
        gradient_checkpointing: bool = False,
    ):
        super().__init__()
        self.save_hyperparameters(ignore=["optimizer"])
        # The values in use, also those a subclass fixes (DrGRPO's loss_type): under LightningCLI the
        # line above saves only the parsed config.
        self.save_hyperparameters(plain_hparams(locals()))
        if num_generations < 1:
            raise ValueError(f"num_generations must be >= 1, got {num_generations}")
        positive(max_completion_length=max_completion_length, num_iterations=num_iterations, temperature=temperature,
                 eval_temperature=eval_temperature, epsilon=epsilon,
                 **({} if epsilon_high is None else {"epsilon_high": epsilon_high}))
        non_negative(beta=beta, top_k=top_k, max_grad_norm=max_grad_norm, max_entropy_collapse=max_entropy_collapse)
        probability(top_p=top_p)
        if loss_type not in AGGREGATIONS:
            raise ValueError(f"loss_type {loss_type!r} is unknown; choose from {sorted(AGGREGATIONS)}")
        self.automatic_optimization = False
        self.optimizer_factory = optimizer
        self.tokenizer = load_tokenizer(model_name_or_path)
        self.sampling = Sampling(max_completion_length, temperature, top_p, top_k)
        self.backend = make_backend(generation_backend, generation_kwargs)
        self.lora, self.importance_sampling = as_lora(lora), as_importance_sampling(importance_sampling_correction)
        self.record = RunRecord(save_model=save_policy, log_completions_every_n_steps=log_completions_every_n_steps)
        self.policy: nn.Module | None = None
        self.reference: nn.Module | None = None
        self.critic: nn.Module | None = None
        self.step_metrics: dict[str, float] = {}  # a hook's numbers for this step, logged as train/<name>
        self.last_rollout: Rollout | None = None

    # ================================================================== hooks
    def configure_reference(self) -> nn.Module | None:
        """The frozen reference: a copy of the starting policy, the adapter-off base with LoRA; None at beta = 0."""
        return reference_policy(self.policy, self.lora) if self.hparams.beta > 0 else None

    def configure_critic(self) -> nn.Module | None:
        """A value model, if the method has one (PPO)."""
        return None

    def compute_advantages(self, rollout: Rollout) -> Tensor:
        """[N] (one advantage per completion) or [N, T] (per token)."""
        raise NotImplementedError(f"{type(self).__name__} must define compute_advantages")

    def needs_old_logprobs(self) -> bool:
        """Compute log pi_old at rollout time? Only when the update cannot give it: with mu = 1 and one
        optimizer step per rollout, the update's own first forward (detached) is log pi_old."""
        return self.plan.optimizer_steps_per_rollout > 1

    def on_rollout(self, rollout: Rollout) -> None:
        """Called after scoring, before advantages (e.g. PPO stores the critic's values)."""

    def policy_scores(self, mb: Rollout) -> TokenScores:
        """The policy's forward over a micro-batch: log-probs and entropy of its completion tokens."""
        return completion_logprobs(self.policy, mb.prompt_ids, mb.prompt_mask, mb.completion_ids, mb.completion_mask,
                                   self.hparams.temperature, with_entropy=True, group_size=mb.group_size)

    def policy_objective(self, logprobs: Tensor, mb: Rollout) -> losses.SurrogateOutput:
        """Per-token policy loss; default: PPO clipped surrogate with (eps_low, eps_high)."""
        old = mb.old_logprobs if mb.old_logprobs is not None else logprobs.detach()
        return clipped_surrogate(logprobs, old, mb.advantages, self.hparams.epsilon, self.hparams.epsilon_high)

    def kl_penalty(self, logprobs: Tensor, mb: Rollout) -> Tensor | None:
        """Per-token KL term added to the policy loss: beta * k3(pi_theta, pi_ref); None without a reference."""
        return None if mb.ref_logprobs is None else self.hparams.beta * kl_k3(logprobs, mb.ref_logprobs)

    def aggregate(self, per_token_loss: Tensor, mask: Tensor, counts: Counts) -> Tensor:
        """Per-token loss -> scalar by ``loss_type`` (global counts of the optimizer step)."""
        return AGGREGATIONS[self.hparams.loss_type](self, per_token_loss, mask, counts)

    def extra_loss(self, mb: Rollout, counts: Counts, scores: TokenScores) -> tuple[Tensor, dict[str, Tensor]]:
        """Added to the policy loss (e.g. PPO's value loss); stats as shares of the optimizer step's value."""
        return torch.zeros((), device=self.device), {}

    def critic_optimizers(self) -> list[torch.optim.Optimizer]:
        return []

    def policy_parameters(self) -> list[nn.Parameter]:
        """What the policy optimizer updates (PPO's value head joins it)."""
        return [p for p in self.policy.parameters() if p.requires_grad]

    # ================================================================== Lightning
    def configure_models(self) -> None:
        self.reference = self.configure_reference()
        self.critic = self.configure_critic()
        if self.hparams.gradient_checkpointing:
            checkpoint_activations(self.policy, self.critic)

    def configure_optimizers(self):
        opts = [self.optimizer_factory(self.policy_parameters()), *self.critic_optimizers()]
        return opts if len(opts) > 1 else opts[0]

    def setup(self, stage: str) -> None:
        super().setup(stage)
        if stage == "fit":
            self.check_plan(self.trainer.datamodule)

    def check_plan(self, dm) -> None:
        """Refuse an impossible configuration before any model is loaded, with the numbers (``rlpost.preflight``)."""
        self.plan = step_plan(self, dm, self.trainer.max_steps, self.trainer.world_size)
        rank_zero_info(f"[rlpost] plan: {dict(asdict(self.plan), world_size=self.trainer.world_size)}")
        rank_zero_info(memory_plan_of(self).format())

    def plan_summary(self) -> dict:
        return dict(asdict(self.plan), world_size=self.trainer.world_size, need_old_logprobs=self.needs_old_logprobs(),
                    reference_model=self.reference is not None, critic=self.critic is not None)

    def training_step(self, batch: dict, batch_idx: int) -> None:
        rollout = self.next_rollout(batch)
        self.on_rollout(rollout)
        rollout.advantages = self.compute_advantages(rollout)
        stats = self.update(rollout)
        metrics = {**rollout_metrics(rollout, self.hparams.num_generations), **stats, **self.step_metrics}
        self.record.step(self.global_step, {k if k.startswith("train/") else f"train/{k}": v for k, v in metrics.items()})
        self.step_metrics.clear()
        self.record.sample(self.global_step, rollout)  # completion samples; the example the entropy guard names
        self.last_rollout = rollout  # read by the guards (entropy floor, DegenerationGuard)

    def rollout(self, batch: dict) -> Rollout:
        """Generate and score G completions per prompt. Every completion generated here is counted
        in ``summary.json``'s ``completions_generated``, also those an override drops (DAPO)."""
        rollout = make_rollout(self.policy, self.tokenizer, batch, self.scorer_set,
                               num_generations=self.hparams.num_generations, sampling=self.sampling,
                               backend=self.backend, reference=self.reference,
                               need_old_logprobs=self.needs_old_logprobs(), phase=self.record.phase,
                               trainer_state=self.trainer_state(), importance_sampling=self.importance_sampling,
                               mask_truncated_completions=self.hparams.mask_truncated_completions)
        self.record.count(completions=len(rollout), tokens=completion_lengths(rollout).sum())
        return rollout

    # ================================================================== the update
    def update(self, rollout: Rollout) -> dict[str, Tensor]:
        """mu epochs over ``rollout`` in shuffled mini-batches; one optimizer step per mini-batch.
        Returns each statistic's mean over the optimizer steps (device tensors: no host sync)."""
        opts = self.optimizers()
        opts = opts if isinstance(opts, list) else [opts]
        n, mini, micro = len(rollout), self.plan.mini_batch_size, self.plan.micro_batch_size
        sums: dict[str, Tensor] = {}
        for _ in range(self.hparams.num_iterations):
            order = torch.randperm(n) if mini < n else torch.arange(n)  # on the host: selecting needs no sync
            batches = [order[s : s + mini] for s in range(0, n, mini)]
            for index, counts in zip(batches, self.step_counts(rollout, batches)):
                for opt in opts:
                    opt.zero_grad(set_to_none=True)
                step_loss = 0.0
                for m in range(0, len(index), micro):
                    with self.record.phase("forward"):
                        loss, stats = self.minibatch_loss(rollout.select(index[m : m + micro]), counts)
                    with self.record.phase("backward"):
                        self.manual_backward(loss)
                    step_loss = step_loss + loss.detach()
                    for k, v in stats.items():  # each a share of the step's value: shares add up
                        sums[k] = sums.get(k, 0.0) + v
                norm = check_step(self, step_loss, rollout, index, counts, opts)  # one host sync; names the culprit rows
                sums["grad_norm"] = sums.get("grad_norm", 0.0) + norm
                with self.record.phase("optimizer"):
                    self.step_optimizers(opts)
        steps = self.plan.optimizer_steps_per_rollout
        return {k: v / steps for k, v in sums.items()}

    def step_counts(self, rollout: Rollout, batches: list[Tensor]) -> list[Counts]:
        """Each mini-batch's normalisers; token counts are averaged over ranks in one reduce."""
        mask = rollout.completion_mask  # host indices, copied without a sync
        tokens = torch.stack([mask[i.to(mask.device, non_blocking=True)].sum() for i in batches]).float()
        if self.trainer.world_size > 1:
            tokens = self.trainer.strategy.reduce(tokens, reduce_op="mean")
        return [Counts(float(len(i)), t) for i, t in zip(batches, tokens)]

    def step_optimizers(self, opts: list) -> None:
        """Clip and step. The policy optimizer steps through Lightning (it counts ``global_step``);
        a critic optimizer steps through the strategy directly so that one update is one step."""
        for i, opt in enumerate(opts):
            if self.hparams.max_grad_norm > 0:
                self.clip_gradients(opt, gradient_clip_val=self.hparams.max_grad_norm, gradient_clip_algorithm="norm")
            if i == 0:
                opt.step()
            else:
                self.trainer.strategy.optimizer_step(opt.optimizer, closure=lambda: None, model=self)
        self.backend.sync_weights(self.policy)

    def minibatch_loss(self, mb: Rollout, counts: Counts) -> tuple[Tensor, dict[str, Tensor]]:
        """Policy loss (+ :meth:`kl_penalty`) + :meth:`extra_loss` on one micro-batch, and its statistics,
        each the micro-batch's share of the optimizer step's value (so they add up over micro-batches)."""
        scores = self.policy_scores(mb)
        mask = mb.completion_mask
        surrogate = self.policy_objective(scores.logprobs, mb)
        per_token = surrogate.loss if mb.importance_weights is None else surrogate.loss * mb.importance_weights
        share = lambda x: masked_sum(x.detach().float(), mask) / counts.num_tokens  # noqa: E731
        stats = {"clip_ratio/low_mean": share(surrogate.clipped_low), "clip_ratio/high_mean": share(surrogate.clipped_high),
                 "clip_ratio/region_mean": share(surrogate.clipped_low | surrogate.clipped_high),
                 "entropy": share(scores.entropy)}
        if mb.ref_logprobs is not None:
            stats["kl"] = share(kl_k3(scores.logprobs, mb.ref_logprobs))
        penalty = self.kl_penalty(scores.logprobs, mb)
        if penalty is not None:
            per_token = per_token + penalty
        loss = self.aggregate(per_token, mask, counts)
        extra, extra_stats = self.extra_loss(mb, counts, scores)
        stats.update(extra_stats, policy_loss=loss.detach())
        return loss + extra, stats

    @staticmethod
    def global_sum(x: Tensor) -> Tensor:
        """``x`` summed over every rank (itself on one process): for statistics of the global batch."""
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            x = x.clone()
            torch.distributed.all_reduce(x)
        return x

    def on_history(self, rows: list[dict]) -> None:
        """Called with the steps just read back from the device (every logging interval)."""
        self.log("reward", rows[-1]["train/reward"], prog_bar=True, logger=False)
        check_entropy_floor(rows, self.hparams.max_entropy_collapse, self.last_rollout)

    def summary_fields(self) -> dict:
        return {**super().summary_fields(), "plan": self.plan_summary()}


class KLInReward:
    """Mixin: the KL to the reference shapes a per-token reward instead of being a loss term
    (Ouyang et al., arXiv:2203.02155; PPO, REINFORCE++), which needs log pi_old at rollout time:

        r_t = -beta * (log pi_old(o_t) - log pi_ref(o_t)) + [t = last] * score
    """

    def kl_penalty(self, logprobs: Tensor, mb: Rollout) -> None:
        return None

    def needs_old_logprobs(self) -> bool:
        return True

    def token_rewards(self, rollout: Rollout) -> Tensor:
        """[N, T] KL-shaped per-token rewards (:func:`~rlpost.losses.kl_shaped_token_rewards`)."""
        return kl_shaped_token_rewards(rollout.rewards, rollout.old_logprobs, rollout.ref_logprobs,
                                       rollout.completion_mask, self.hparams.beta)


AGGREGATIONS = {
    "grpo": lambda self, loss, mask, c: losses.seq_mean_token_mean(loss, mask, num_seqs=c.num_seqs),
    "dapo": lambda self, loss, mask, c: losses.token_mean(loss, mask, num_tokens=c.num_tokens),
    "dr_grpo": lambda self, loss, mask, c: losses.token_sum_norm(
        loss, mask, self.hparams.max_completion_length, num_seqs=c.num_seqs),
}


def plain_hparams(args: dict) -> dict:
    """``__init__``'s arguments as hyperparameters: records (LoRA, ...) as plain dicts, so that checkpoints
    and ``hparams.yaml`` hold only plain data."""
    return {k: asdict(v) if is_dataclass(v) else v for k, v in args.items() if k not in ("self", "optimizer", "__class__")}

