"""On-policy algorithms: a shared loop in ``base.py`` and one small file per method."""

from rlpost.algorithms.base import OnPolicyAlgorithm
from rlpost.algorithms.dapo import DAPO
from rlpost.algorithms.dr_grpo import DrGRPO
from rlpost.algorithms.grpo import GRPO
from rlpost.algorithms.gspo import GSPO
from rlpost.algorithms.ppo import PPO
from rlpost.algorithms.reinforce_pp import ReinforcePlusPlus
from rlpost.algorithms.rloo import RLOO
from rlpost.algorithms.sft import SFT

__all__ = ["DAPO", "GRPO", "GSPO", "PPO", "RLOO", "SFT", "DrGRPO", "OnPolicyAlgorithm", "ReinforcePlusPlus"]
