"""GSPO: Group Sequence Policy Optimization (Zheng et al., arXiv:2507.18071)."""

from __future__ import annotations

import torch

from rlpost.algorithms.grpo import GRPO
from rlpost.losses import SurrogateOutput, clipped_surrogate, masked_mean
from rlpost.rollout import Rollout


class GSPO(GRPO):
    r"""GRPO with one importance ratio per completion, clipped at the sequence level.

    GRPO weighs each token by its own ratio pi_theta/pi_old, a noisy estimate that GSPO
    replaces with the length-normalised sequence likelihood ratio (arXiv:2507.18071 eq. 7):

        log s_i = 1/|o_i| * sum_t (log pi_theta(o_{i,t}) - log pi_old(o_{i,t}))
        l_i     = -min(s_i * A_i, clip(s_i, 1 - eps_low, 1 + eps_high) * A_i)
        L       = 1/N * sum_i l_i            (plus the KL term when beta > 0)

    A_i is GRPO's group-relative advantage (``scale_rewards``). ``l_i`` is spread over the tokens
    of o_i and aggregated as a per-sequence mean (``loss_type="grpo"``, fixed), which gives
    exactly 1/N sum_i l_i. With mu = 1 and one step per rollout, pi_old is the detached current
    policy: s_i = 1 in value while its gradient is the mean token score, as in the paper.

    Same as TRL ``GRPOConfig(importance_sampling_level="sequence", loss_type="grpo")``. The
    clip range defaults to the paper's (eps_low, eps_high) = (3e-4, 4e-4): sequence ratios
    stay far closer to 1 than token ratios.
    """

    def __init__(self, epsilon: float = 3e-4, epsilon_high: float | None = 4e-4, **kwargs):
        super().__init__(epsilon=epsilon, epsilon_high=epsilon_high, loss_type="grpo", **kwargs)

    def policy_objective(self, logprobs: torch.Tensor, mb: Rollout) -> SurrogateOutput:
        old = mb.old_logprobs if mb.old_logprobs is not None else logprobs.detach()
        log_s = masked_mean(logprobs - old, mb.completion_mask, dim=1).unsqueeze(1)  # [N, 1] log s_i
        out = clipped_surrogate(log_s, torch.zeros_like(log_s), mb.advantages, self.hparams.epsilon,
                                self.hparams.epsilon_high)
        return SurrogateOutput(*(t.expand_as(logprobs) for t in out))  # each l_i on every token of o_i
