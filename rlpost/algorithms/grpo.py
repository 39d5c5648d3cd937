"""GRPO: Group Relative Policy Optimization (Shao et al., DeepSeekMath, arXiv:2402.03300)."""

from __future__ import annotations

from typing import Literal

from torch import Tensor

from rlpost.algorithms.base import OnPolicyAlgorithm
from rlpost.losses import batch_scaled_group_advantages, group_advantages, moment_sums, require_groups
from rlpost.rollout import Rollout


class GRPO(OnPolicyAlgorithm):
    """GRPO: drops PPO's critic; a completion's advantage is its reward relative to its group.

        A_i = (r_i - mean(r_group)) / (std(r_group) + eps), the same for every token of o_i,

    with the clipped surrogate and a k3 KL penalty to the frozen reference in the loss.

    Args:
        scale_rewards: ``"group"`` divides by the group's std (paper), ``"batch"`` by the std
            of the whole batch (every rank's rewards), ``"none"`` does not scale (Dr. GRPO).
        (every other argument: see :class:`~rlpost.algorithms.base.OnPolicyAlgorithm`.)
    """

    def __init__(self, scale_rewards: Literal["group", "batch", "none"] = "group", **kwargs):
        if scale_rewards not in ("group", "batch", "none"):
            raise ValueError(f"scale_rewards {scale_rewards!r} is unknown; choose from ['batch', 'group', 'none']")
        super().__init__(**kwargs)
        require_groups(self.hparams.num_generations)
        self.save_hyperparameters({"scale_rewards": scale_rewards})  # by value: a subclass may fix it

    def compute_advantages(self, rollout: Rollout) -> Tensor:
        g, mode = self.hparams.num_generations, self.hparams.scale_rewards
        if mode == "batch":  # the std of every rank's rewards
            return batch_scaled_group_advantages(rollout.rewards, g, sums=self.global_sum(moment_sums(rollout.rewards)))
        return group_advantages(rollout.rewards, g, scale=mode == "group")
