"""PPO with a learned critic (Schulman et al., arXiv:1707.06347; as in Ouyang et al., arXiv:2203.02155)."""

from __future__ import annotations

from typing import Literal

import torch
from lightning.pytorch.cli import OptimizerCallable
from torch import Tensor

from rlpost.algorithms.base import Counts, KLInReward, OnPolicyAlgorithm
from rlpost.algorithms.critic import CRITICS, Critic
from rlpost.losses import clipped_value_loss, gae, masked_sum, moment_sums, whiten
from rlpost.rollout import Rollout, TokenScores, completion_logprobs

CriticType = Literal["separate", "value_head"]


def default_critic_optimizer(params) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=1e-5, weight_decay=0.0)


class PPO(KLInReward, OnPolicyAlgorithm):
    """PPO: GRPO's group baseline is replaced by a learned critic and per-token credit assignment.

        r_t = -beta * (log pi_old(o_t) - log pi_ref(o_t)) + [t = last] * score   (KL in the reward, not the loss)
        A_t = GAE(gamma, lam) over r_t and the critic's V_t, whitened over the tokens of every rank's rollout
        L   = clipped surrogate(A_t) + vf_coef * clipped value loss(V_t, V_old, R_t)

    The critic (:mod:`rlpost.algorithms.critic`) starts from the policy's weights with a fresh scalar
    head (V starts near 0). No group is needed: ``num_generations`` may be 1.

    Args:
        gamma: discount, gamma.
        lam: GAE's lambda (TRL ``lam``).
        vf_coef: weight of the value loss, c_1 (TRL ``vf_coef``); with ``critic="value_head"`` only
            (default 0.1), where it weighs the value loss against the policy loss in the shared trunk
            and optimizer. A separate critic has its own optimizer, which undoes any such weight
            (Adam-type optimizers are invariant to it), so it is refused there.
        cliprange_value: clip range of the value update around V_old (TRL ``cliprange_value``).
        whiten_advantages: whiten A over the completion tokens of the rollout (of every rank: global mean and variance).
        critic: ``"separate"``: a copy of the policy's trunk with a scalar head (its own parameters,
            gradients and optimizer state; under LoRA the frozen base trunk with adapters of its own);
            ``"value_head"``: a scalar head on the policy's own trunk, computed in the policy's forward
            pass and trained by the policy's optimizer (under LoRA, with the policy's adapters).
        critic_optimizer: optimizer factory of a separate critic.
        (every other argument: see :class:`~rlpost.algorithms.base.OnPolicyAlgorithm`; ``beta`` is the
        KL coefficient of the per-token reward.)
    """

    def __init__(
        self,
        gamma: float = 1.0,
        lam: float = 0.95,
        vf_coef: float | None = None,
        cliprange_value: float = 0.2,
        whiten_advantages: bool = True,
        critic: CriticType = "separate",
        critic_optimizer: OptimizerCallable = default_critic_optimizer,
        **kwargs,
    ):
        for name, v in (("gamma", gamma), ("lam", lam)):
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {v}")
        if critic not in CRITICS:
            raise ValueError(f"critic {critic!r} is unknown; choose from {sorted(CRITICS)}")
        if critic == "separate" and vf_coef is not None:
            raise ValueError(f"vf_coef={vf_coef} has no effect with critic='separate' (its own optimizer undoes the "
                             "weight); leave it unset, or use critic='value_head'")
        vf_coef = 0.1 if vf_coef is None and critic == "value_head" else vf_coef
        if vf_coef is not None and vf_coef <= 0:
            raise ValueError(f"vf_coef must be > 0 (the critic would never learn), got {vf_coef}")
        if cliprange_value <= 0:
            raise ValueError(f"cliprange_value must be > 0, got {cliprange_value}")
        super().__init__(**kwargs)
        self.save_hyperparameters(ignore=["optimizer", "critic_optimizer"])
        self.save_hyperparameters({"vf_coef": vf_coef})
        self.critic_optimizer_factory = critic_optimizer

    # ================================================================== critic
    def configure_critic(self) -> Critic:
        return CRITICS[self.hparams.critic](self.policy, self.lora)

    def critic_optimizers(self) -> list[torch.optim.Optimizer]:
        opt = self.critic.optimizer(self.critic_optimizer_factory)
        return [] if opt is None else [opt]

    def policy_parameters(self) -> list:
        shared = list(self.critic.parameters()) if self.critic.on_policy_trunk else []
        return [*super().policy_parameters(), *shared]

    def policy_scores(self, mb: Rollout) -> TokenScores:
        return completion_logprobs(self.policy, mb.prompt_ids, mb.prompt_mask, mb.completion_ids, mb.completion_mask,
                                   self.hparams.temperature, with_entropy=True,
                                   with_hidden=self.critic.on_policy_trunk, group_size=mb.group_size)

    # ================================================================== hooks
    def on_rollout(self, rollout: Rollout) -> None:
        with torch.no_grad(), self.record.phase("values"):
            scores = self.policy_scores(rollout) if self.critic.on_policy_trunk else None
            rollout.values = self.critic.values(rollout, scores)

    def compute_advantages(self, rollout: Rollout) -> Tensor:
        h, mask = self.hparams, rollout.completion_mask
        advantages, rollout.returns = gae(self.token_rewards(rollout), rollout.values, mask, gamma=h.gamma, lam=h.lam)
        if not h.whiten_advantages:
            return advantages
        return whiten(advantages, mask, sums=self.global_sum(moment_sums(advantages, mask)))  # over every rank's tokens

    def extra_loss(self, mb: Rollout, counts: Counts, scores: TokenScores) -> tuple[Tensor, dict[str, Tensor]]:
        """The clipped value loss, aggregated like the policy loss (global counts); weighted by vf_coef
        when the critic shares the policy's trunk and optimizer."""
        values, mask = self.critic.values(mb, scores), mb.completion_mask
        out = clipped_value_loss(values, mb.values, mb.returns, clip=self.hparams.cliprange_value)
        value_loss = self.aggregate(out.loss, mask, counts)
        share = lambda x: masked_sum(x.float(), mask) / counts.num_tokens  # noqa: E731
        stats = {"value_loss": value_loss.detach(), "value_clip_ratio": share(out.clipped),
                 "values_mean": share(mb.values), "returns_mean": share(mb.returns)}
        return (self.hparams.vf_coef or 1.0) * value_loss, stats
