"""REINFORCE++ (Hu et al., arXiv:2501.03262): critic-free, with global advantage normalisation."""

from __future__ import annotations

import torch
from torch import Tensor

from rlpost.algorithms.base import KLInReward, OnPolicyAlgorithm
from rlpost.losses import gae, moment_sums, whiten
from rlpost.rollout import Rollout


class ReinforcePlusPlus(KLInReward, OnPolicyAlgorithm):
    r"""REINFORCE with PPO's tricks but no critic and no per-prompt baseline (arXiv:2501.03262 sec. 3).

    The KL to the reference is folded into a per-token reward (so it is not a loss term), the
    return-to-go (gamma = 1) of that reward is each token's advantage, and advantages are
    whitened over the global batch, every completion token of the rollout on every rank:

        r_t = -beta * (log pi_old(o_t) - log pi_ref(o_t)) + [t = |o|] * score
        R_t = sum_{s >= t} r_s
        A_t = (R_t - mean(R)) / sqrt(var(R) + 1e-8)     over all tokens of the global batch

    The loss is the shared clipped surrogate with per-token A_t and ``loss_type`` aggregation.
    ``beta = 0`` drops the KL term (and the reference model).
    """

    def compute_advantages(self, rollout: Rollout) -> Tensor:
        mask = rollout.completion_mask
        rewards = self.token_rewards(rollout)
        returns = gae(rewards, torch.zeros_like(rewards), mask, gamma=1.0, lam=1.0).returns  # V = 0, lam = 1: R_t
        return whiten(returns, mask, sums=self.global_sum(moment_sums(returns, mask)))  # global batch: every rank's tokens
