"""On-policy algorithms: a shared loop in ``base.py`` and one small file per method."""

from rlpost.algorithms.base import OnPolicyAlgorithm
from rlpost.algorithms.grpo import GRPO
from rlpost.algorithms.sft import SFT

__all__ = ["GRPO", "OnPolicyAlgorithm", "SFT"]
