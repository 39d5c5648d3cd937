"""PPO with a learned critic (Schulman et al., arXiv:1707.06347; as in Ouyang et al., arXiv:2203.02155)."""

from __future__ import annotations

import copy
from typing import Literal

import torch
from lightning.pytorch.cli import OptimizerCallable
from torch import Tensor, nn

from rlpost.algorithms.base import Counts, OnPolicyAlgorithm
from rlpost.losses import clipped_value_loss, gae, kl_shaped_token_rewards, masked_mean, whiten
from rlpost.rollout import Rollout

CriticType = Literal["separate", "value_head"]


def default_critic_optimizer(params) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=1e-5, weight_decay=0.0)


class ValueModel(nn.Module):
    """A transformer trunk and a scalar head: V at every position, [N, L] from [N, L] token ids."""

    def __init__(self, trunk: nn.Module, head: nn.Linear):
        super().__init__()
        self.trunk, self.head = trunk, head

    def forward(self, **inputs) -> Tensor:
        return self.head(self.trunk(**inputs, use_cache=False).last_hidden_state).squeeze(-1)


class PPO(OnPolicyAlgorithm):
    """PPO: GRPO's group baseline is replaced by a learned critic and per-token credit assignment.

        r_t = -beta * (log pi_old(o_t) - log pi_ref(o_t)) + [t = last] * score   (KL in the reward, not the loss)
        A_t = GAE(gamma, lam) over r_t and the critic's V_t, whitened over the rollout's tokens
        L   = clipped surrogate(A_t) + vf_coef * clipped value loss(V_t, V_old, R_t)

    The policy and the critic have their own optimizers (manual optimization); one update is
    one optimizer step. The critic starts from the policy's weights with a fresh scalar head
    (initialised like a Hugging Face token-classification head), so V starts near 0.

    Args:
        gamma: discount, gamma.
        lam: GAE's lambda (TRL ``lam``).
        vf_coef: weight of the value loss, c_1 (TRL ``vf_coef``). With ``critic="value_head"`` it weighs the
            value loss against the policy loss in the shared trunk; with a separate critic and an Adam-type
            optimizer it acts only through the critic's gradient clipping (``max_grad_norm`` applies to the
            weighted gradient) and Adam's eps.
        cliprange_value: clip range of the value update around V_old (TRL ``cliprange_value``).
        whiten_advantages: whiten A over the completion tokens of the rollout.
        critic: ``"separate"``: a copy of the policy's trunk with a scalar head (its own parameters,
            gradients and optimizer state); ``"value_head"``: a scalar head on the policy's own trunk
            (the value loss also trains the trunk; the critic optimizer steps only the head).
        critic_optimizer: optimizer factory for the critic's parameters.
        (every other argument: see :class:`~rlpost.algorithms.base.OnPolicyAlgorithm`; ``beta`` is the
        KL coefficient of the per-token reward.)
    """

    kl_in_loss = False
    needs_rollout_logprobs = True

    def __init__(
        self,
        gamma: float = 1.0,
        lam: float = 0.95,
        vf_coef: float = 0.1,
        cliprange_value: float = 0.2,
        whiten_advantages: bool = True,
        critic: CriticType = "separate",
        critic_optimizer: OptimizerCallable = default_critic_optimizer,
        **kwargs,
    ):
        for name, v in (("gamma", gamma), ("lam", lam)):
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {v}")
        if vf_coef <= 0:
            raise ValueError(f"vf_coef must be > 0 (the critic would never learn), got {vf_coef}")
        if cliprange_value <= 0:
            raise ValueError(f"cliprange_value must be > 0, got {cliprange_value}")
        if critic not in ("separate", "value_head"):
            raise ValueError(f"critic {critic!r} is unknown; choose from ['separate', 'value_head']")
        super().__init__(**kwargs)  # calls configure_critic, which reads hparams.critic
        self.save_hyperparameters(ignore=["optimizer", "critic_optimizer"])
        self.critic_optimizer_factory = critic_optimizer

    # ================================================================== critic
    def configure_critic(self) -> nn.Module:
        hidden = self.policy.config.hidden_size
        trunk = self.policy.base_model
        dtype = next(trunk.parameters()).dtype
        head = nn.Linear(hidden, 1, dtype=dtype)
        nn.init.normal_(head.weight, std=getattr(self.policy.config, "initializer_range", 0.02))
        nn.init.zeros_(head.bias)
        if self.hparams.critic == "value_head":
            return head  # the trunk stays the policy's: only the head is the critic's own
        return ValueModel(copy.deepcopy(trunk), head)

    def critic_optimizers(self) -> list[torch.optim.Optimizer]:
        return [self.critic_optimizer_factory(self.critic.parameters())]

    def values(self, mb: Rollout) -> Tensor:
        """V(s_t) for each completion token: [N, T] float, from the position that predicts o_t."""
        input_ids = torch.cat([mb.prompt_ids, mb.completion_ids], dim=1)
        attention_mask = torch.cat([mb.prompt_mask, mb.completion_mask], dim=1)
        inputs = dict(input_ids=input_ids, attention_mask=attention_mask,
                      position_ids=(attention_mask.cumsum(dim=1) - 1).clamp(min=0))
        if isinstance(self.critic, ValueModel):
            v = self.critic(**inputs)
        else:  # value head on the policy's trunk: a forward of the trunk alone
            v = self.critic(self.policy.base_model(**inputs, use_cache=False).last_hidden_state).squeeze(-1)
        return v[:, mb.prompt_ids.shape[1] - 1 : -1].float()

    # ================================================================== hooks
    def on_rollout(self, rollout: Rollout) -> None:
        with torch.no_grad():
            rollout.extras["values"] = self.values(rollout)

    def compute_advantages(self, rollout: Rollout) -> Tensor:
        h, mask = self.hparams, rollout.completion_mask
        rewards = kl_shaped_token_rewards(rollout.rewards, rollout.old_logprobs, rollout.ref_logprobs, mask, h.beta)
        advantages, returns = gae(rewards, rollout.extras["values"], mask, gamma=h.gamma, lam=h.lam)
        rollout.extras["returns"] = returns
        if h.whiten_advantages:
            advantages = whiten(advantages, mask)
        return advantages

    def extra_loss(self, mb: Rollout, counts: Counts) -> tuple[Tensor, dict[str, Tensor]]:
        """vf_coef x the clipped value loss, aggregated like the policy loss (global counts)."""
        values, old, returns, mask = self.values(mb), mb.extras["values"], mb.extras["returns"], mb.completion_mask
        per_token = clipped_value_loss(values, old, returns, clip=self.hparams.cliprange_value)  # [N, T]
        value_loss = self.aggregate(per_token, mask, counts)
        c = self.hparams.cliprange_value
        clipped = (old + (values - old).clamp(-c, c) - returns) ** 2 > (values - returns) ** 2  # clipped term won
        stats = {"value_loss": value_loss.detach(), "value_clip_ratio": masked_mean(clipped.float(), mask),
                 "values_mean": masked_mean(old, mask), "returns_mean": masked_mean(returns, mask)}
        return self.hparams.vf_coef * value_loss, stats
