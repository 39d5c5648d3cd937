"""Dr. GRPO: GRPO Done Right (Liu et al., "Understanding R1-Zero-Like Training", arXiv:2503.20783)."""

from __future__ import annotations

from rlpost.algorithms.grpo import GRPO


class DrGRPO(GRPO):
    r"""GRPO without its two normalisations, which bias the update (Dr. GRPO, arXiv:2503.20783 sec. 3.1).

    Drops the std scaling of the advantage (a question-level difficulty bias):

        A_i = r_i - mean(r_group)

    and the per-completion length normalisation 1/|o_i| (a response-length bias: long wrong
    answers are penalised less per token). The token losses are summed and divided by a
    constant, L_max = ``max_completion_length``:

        L = 1/(N * L_max) * sum_i sum_t l_{i,t}

    Same as TRL ``GRPOConfig(scale_rewards="none", loss_type="dr_grpo")``; both are fixed here,
    every other argument is :class:`~rlpost.algorithms.GRPO`'s.
    """

    def __init__(self, **kwargs):
        super().__init__(scale_rewards="none", loss_type="dr_grpo", **kwargs)
