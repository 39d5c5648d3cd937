"""DAPO: Decoupled Clip and Dynamic sAmpling Policy Optimization (Yu et al., arXiv:2503.14476)."""

from __future__ import annotations

import torch
from trl.rewards import get_soft_overlong_punishment

from rlpost.algorithms.grpo import GRPO
from rlpost.losses import zero_signal_groups
from rlpost.rollout import Rollout, completion_lengths, concat_rollouts
from rlpost.sharding import is_sharded


class DAPO(GRPO):
    r"""GRPO with DAPO's four changes (arXiv:2503.14476 sec. 3):

    - Clip-higher: eps_high > eps_low, so low-probability tokens can grow (``epsilon_high``,
      paper 0.28 with ``epsilon`` 0.2).
    - Token-level loss: L = sum_{i,t} l_{i,t} / sum_i |o_i| (``loss_type="dapo"``, fixed), so long
      completions weigh in by their tokens.
    - Dynamic sampling (eq. 11): a group whose G rewards are all equal has zero advantage and only
      dilutes the batch. Such groups are dropped, and B more prompts at a time
      (``TaskDataModule.sample_prompts``) are rolled out until B groups with signal are in hand
      (any beyond B are dropped), for at most ``max_resample_rounds`` extra rounds; if still short,
      zero-signal groups fill the batch (advantage 0), so every step trains on B*G completions.
      Logged per step: ``train/dynamic_sampling/extra_prompts`` (prompts drawn beyond B, each
      with G completions: the extra generation budget) and ``.../zero_signal_kept``.
    - Overlong soft punishment (eq. 13; TRL's ``trl.rewards.get_soft_overlong_punishment``), added
      to the reward before filtering, with L_max = ``max_completion_length``, L_cache =
      ``overlong_buffer_len``, |o| counting EOS:

          R_len(o) = min(0, (L_max - L_cache - |o|) / L_cache) * overlong_penalty_factor

      and logged as scorer ``overlong_penalty``. ``overlong_buffer_len = 0`` turns it off.

    No KL term by default (``beta = 0``, as in the paper). Advantages are GRPO's (``scale_rewards``).
    """

    def __init__(self, epsilon_high: float = 0.28, beta: float = 0.0, overlong_buffer_len: int = 0,
                 overlong_penalty_factor: float = 1.0, max_resample_rounds: int = 3, **kwargs):
        super().__init__(epsilon_high=epsilon_high, beta=beta, loss_type="dapo", **kwargs)
        h = self.hparams
        if epsilon_high <= h.epsilon:
            raise ValueError(f"epsilon_high={epsilon_high} must exceed epsilon={h.epsilon} (clip-higher)")
        if not 0 <= overlong_buffer_len < h.max_completion_length:
            raise ValueError(f"overlong_buffer_len={overlong_buffer_len} must be in [0, max_completion_length="
                             f"{h.max_completion_length})")
        if overlong_penalty_factor < 0 or max_resample_rounds < 0:
            raise ValueError(f"overlong_penalty_factor={overlong_penalty_factor} and max_resample_rounds="
                             f"{max_resample_rounds} must be >= 0")
        self.save_hyperparameters(dict(overlong_buffer_len=overlong_buffer_len, max_resample_rounds=max_resample_rounds,
                                       overlong_penalty_factor=overlong_penalty_factor))

    def rollout(self, batch: dict) -> Rollout:
        h, want, G = self.hparams, len(batch["prompt"]), self.hparams.num_generations
        generator = torch.Generator().manual_seed(int(torch.randint(2**62, ())) + self.global_rank)
        kept, spare, extra = [], [], 0
        for resample_round in range(h.max_resample_rounds + 1):
            r = self.overlong_punishment(super().rollout(batch))
            zero = zero_signal_groups(r.rewards, G).repeat_interleave(G)
            kept.append(r.select(torch.nonzero(~zero).flatten()))
            spare.append(r.select(torch.nonzero(zero).flatten()))
            short = max(want - sum(map(len, kept)) // G, 0)
            if resample_round == h.max_resample_rounds or self.groups_missing(short) == 0:
                break
            batch = self.trainer.datamodule.sample_prompts(want, generator)  # a whole batch more, as the paper
            extra += want
        self.step_metrics.update({"dynamic_sampling/extra_prompts": extra, "dynamic_sampling/zero_signal_kept": short})
        # groups with signal first, then zero-signal ones only if still short: B groups, B*G completions
        return concat_rollouts([*kept, *spare], self.tokenizer.pad_token_id).select(torch.arange(want * G))

    def groups_missing(self, short: int) -> float:
        """Groups still missing: this rank's, or, for a sharded policy (whose generation is a collective, so
        every rank must resample the same number of times), the sum over ranks."""
        return self.global_sum(torch.tensor(float(short), device=self.device)) if is_sharded(self.policy) else short

    def overlong_punishment(self, rollout: Rollout) -> Rollout:
        h = self.hparams
        if h.overlong_buffer_len > 0:
            punish = get_soft_overlong_punishment(h.max_completion_length, h.overlong_buffer_len)
            lengths = completion_lengths(rollout).tolist()  # one transfer, not one per row
            ids = [row[:n] for row, n in zip(rollout.completion_ids.tolist(), lengths)]
            penalty = torch.tensor(punish(ids), device=rollout.rewards.device) * h.overlong_penalty_factor
            rollout.rewards = rollout.rewards + penalty.to(rollout.rewards.dtype)
            rollout.scorer_rewards["overlong_penalty"] = penalty
        return rollout
