"""RLOO: REINFORCE Leave-One-Out (Ahmadian et al., "Back to Basics", arXiv:2402.14740)."""

from __future__ import annotations

from torch import Tensor

from rlpost.algorithms.base import OnPolicyAlgorithm
from rlpost.losses import leave_one_out_advantages, require_groups
from rlpost.rollout import Rollout


class RLOO(OnPolicyAlgorithm):
    r"""GRPO's loop with the leave-one-out baseline in place of the group mean and std.

    Each completion is compared with the mean reward of the other G-1 samples of its prompt
    (Kool et al. 2019; arXiv:2402.14740 eq. 6), an unbiased baseline with no std scaling:

        A_i = r_i - 1/(G-1) * sum_{j != i} r_j  =  G/(G-1) * (r_i - mean(r_group))

    the same for every token of o_i. Everything else is the shared loop: clipped surrogate (the
    paper's plain REINFORCE when mu = 1 and one step per rollout, since the ratio is then 1),
    the KL to the reference as a k3 loss term weighted by ``beta`` (the paper and TRL's
    ``RLOOTrainer`` subtract ``beta * KL`` from the reward instead), and ``loss_type``.
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        require_groups(self.hparams.num_generations)

    def compute_advantages(self, rollout: Rollout) -> Tensor:
        return leave_one_out_advantages(rollout.rewards, self.hparams.num_generations)
