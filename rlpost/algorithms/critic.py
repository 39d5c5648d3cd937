"""PPO's critics: one interface, two kinds, chosen by name (``PPO(critic=...)``).

A critic gives V(s_t) at every completion token ([N, T], float) through :meth:`Critic.values`,
owns its parameters, and says how they are optimised (:meth:`Critic.optimizer`):

- :class:`SeparateCritic` (``"separate"``): a copy of the policy's trunk with a scalar head; its own
  parameters, gradients and optimizer state (what GRPO saves by having no critic). Under LoRA the
  copy is the frozen base trunk with adapters of its own: one frozen copy of the base, and only its
  adapters and head train (:func:`rlpost.lora.trunk_copy`).
- :class:`ValueHead` (``"value_head"``): a scalar head on the policy's own trunk, read from the hidden
  states of the policy's forward pass (the trunk runs once for log-probs and values); its
  parameters join the policy's optimizer, and the value loss also trains the trunk (under LoRA:
  the policy's adapters). No model copy at all: the cheapest critic.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from rlpost.lora import LoRA, trunk_copy
from rlpost.rollout import Rollout, TokenScores, model_inputs


def scalar_head(policy: nn.Module) -> nn.Linear:
    """hidden -> 1, initialised like a Hugging Face token-classification head (so V starts near 0)."""
    dtype = next(policy.parameters()).dtype
    head = nn.Linear(policy.config.hidden_size, 1, dtype=dtype)
    nn.init.normal_(head.weight, std=getattr(policy.config, "initializer_range", 0.02))
    nn.init.zeros_(head.bias)
    return head


class Critic(nn.Module):
    """V(s_t) for each completion token. ``on_policy_trunk``: a head on the policy's trunk, whose values
    come from the hidden states of the policy's own forward (``scores.hidden``) and whose parameters
    the policy's optimizer trains."""

    on_policy_trunk = False

    def values(self, mb: Rollout, scores: TokenScores | None = None) -> Tensor:
        raise NotImplementedError

    def optimizer(self, factory) -> torch.optim.Optimizer | None:
        """Its own optimizer from ``factory``, or None when its parameters join the policy's."""
        raise NotImplementedError


class SeparateCritic(Critic):
    """A copy of the policy's trunk with a scalar head: its own parameters and optimizer."""

    def __init__(self, policy: nn.Module, lora: LoRA | None = None):
        super().__init__()
        self.trunk, self.head = trunk_copy(policy, lora), scalar_head(policy)

    def values(self, mb: Rollout, scores: TokenScores | None = None) -> Tensor:
        hidden = self.trunk(**model_inputs(mb.prompt_ids, mb.prompt_mask, mb.completion_ids, mb.completion_mask),
                            use_cache=False).last_hidden_state
        T = mb.completion_ids.shape[1]
        return self.head(hidden[:, -T - 1 : -1]).squeeze(-1).float()  # the positions that predict o_t

    def optimizer(self, factory) -> torch.optim.Optimizer:
        return factory(self.parameters())


class ValueHead(Critic):
    """A scalar head on the policy's trunk, read from the policy's forward (one trunk pass for both)."""

    on_policy_trunk = True

    def __init__(self, policy: nn.Module, lora: LoRA | None = None):
        super().__init__()
        self.head = scalar_head(policy)  # on the policy's trunk, adapters (if any) included

    def values(self, mb: Rollout, scores: TokenScores | None = None) -> Tensor:
        if scores is None or scores.hidden is None:
            raise ValueError("a value head reads the policy's hidden states: pass the policy's TokenScores "
                             "computed with with_hidden=True")
        return self.head(scores.hidden.to(self.head.weight.dtype)).squeeze(-1).float()

    def optimizer(self, factory) -> None:
        return None  # trained by the policy's optimizer


CRITICS: dict[str, type[Critic]] = {"separate": SeparateCritic, "value_head": ValueHead}
