"""gradient_checkpointing (TRL's name): every block's forward runs again in the backward pass, and the
gradients are those without it."""

import pytest
import torch

from rlpost.algorithms import GRPO, PPO
from rlpost.algorithms.base import Counts
from tests.conftest import attached, built

ALGOS = {
    "grpo": lambda **kw: GRPO(**kw),
    "ppo_separate": lambda **kw: PPO(critic="separate", **kw),
    "ppo_value_head": lambda **kw: PPO(critic="value_head", **kw),
}


def gradients(tmp_path, algo: str, checkpointing: bool):
    """Gradients of one micro-batch loss, and how often the first block of each trunk ran its attention."""
    torch.manual_seed(0)  # the critic's head
    # arith-sft loads with from_pretrained, in eval mode (which Lightning keeps); transformers checkpoints
    # only in training mode, so the flag must also switch the mode
    model = built(ALGOS[algo](model_name_or_path="builtin:arith-sft", num_generations=4, max_completion_length=4,
                              beta=0.04, save_policy=False, gradient_checkpointing=checkpointing))
    rollout = attached(model, tmp_path, rewards=torch.tensor([1.0, 0.0, 2.0, 0.0, 0.0, 1.0, 1.0, 3.0]))
    trunks = [model.policy.model] + ([model.critic.trunk] if algo == "ppo_separate" else [])
    calls = [0] * len(trunks)
    for i, trunk in enumerate(trunks):
        # the block's attention: transformers re-runs the block's forward itself, not through its hooks
        trunk.layers[0].self_attn.register_forward_pre_hook(lambda *a, i=i: calls.__setitem__(i, calls[i] + 1))
    loss, _ = model.minibatch_loss(rollout, Counts(len(rollout), rollout.completion_mask.sum().float()))
    loss.backward()
    params = [p for p in model.parameters() if p.grad is not None]
    return torch.cat([p.grad.flatten() for p in params]), calls


@pytest.mark.parametrize("algo", sorted(ALGOS))
def test_checkpointing_recomputes_the_blocks_and_keeps_the_gradient(tmp_path, algo):
    plain, calls_plain = gradients(tmp_path / "plain", algo, checkpointing=False)
    ckpt, calls_ckpt = gradients(tmp_path / "ckpt", algo, checkpointing=True)
    # without checkpointing the policy runs each group's prompt once, then the completions (two calls); a
    # checkpointed model runs prompt + completion in one call (a recomputed block cannot share the prompt's
    # cache), and again in the backward pass (policy and separate critic)
    assert all(c >= 1 for c in calls_plain)
    assert all(c == 2 for c in calls_ckpt)
    assert plain.abs().max() > 1e-3
    torch.testing.assert_close(ckpt, plain, atol=1e-5, rtol=1e-5)  # the two forwards round differently


def test_the_reference_is_not_checkpointed():
    model = built(GRPO(model_name_or_path="builtin:tiny", beta=0.04, save_policy=False, gradient_checkpointing=True))
    checkpointed = lambda m: any(getattr(x, "gradient_checkpointing", False) for x in m.modules())  # noqa: E731
    assert checkpointed(model.policy) and not checkpointed(model.reference)
