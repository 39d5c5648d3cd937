"""bf16 through Lightning's ``precision``: 2 steps of GRPO and PPO on CPU under bf16-mixed and bf16-true.

bf16-mixed keeps float32 parameters and runs the forward under bfloat16 autocast; bf16-true holds the
parameters in bfloat16. In both, log-probs, advantages and losses are float32."""

import math

import pytest
import torch

from rlpost.algorithms import GRPO, PPO
from tests.conftest import ToyTask, make_trainer

ALGOS = {
    "grpo": lambda **kw: GRPO(**kw),
    "ppo": lambda **kw: PPO(critic_optimizer=lambda p: torch.optim.AdamW(p, lr=1e-3), **kw),
}


def reward_by_length(prompts, completions, **_):
    return [len(c) / 4.0 for c in completions]


@pytest.mark.parametrize("precision", ["bf16-mixed", "bf16-true"])
@pytest.mark.parametrize("algo", sorted(ALGOS))
def test_two_steps_under_bf16_keep_the_promised_dtypes(tmp_path, algo, precision):
    model = ALGOS[algo](model_name_or_path="builtin:tiny", num_generations=4, max_completion_length=4, beta=0.04,
                        save_policy=False, optimizer=lambda p: torch.optim.AdamW(p, lr=1e-3))
    seen: dict[str, set] = {"logprobs": set(), "autocast": set(), "rollout": set()}
    scores, advantages = model.policy_scores, model.compute_advantages

    def spy_scores(mb):
        out = scores(mb)
        seen["logprobs"].add(out.logprobs.dtype)
        seen["autocast"].add(torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16)
        return out

    def spy_advantages(rollout):
        out = advantages(rollout)
        seen["rollout"] |= {out.dtype, rollout.rewards.dtype, rollout.old_logprobs.dtype if rollout.old_logprobs is not None
                            else torch.float32, rollout.ref_logprobs.dtype}
        return out

    model.policy_scores, model.compute_advantages = spy_scores, spy_advantages
    make_trainer(tmp_path, max_steps=2, precision=precision).fit(model, datamodule=ToyTask(scorer=reward_by_length))

    losses = [row[k] for row in model.history for k in ("train/policy_loss", "train/value_loss") if k in row]
    assert len(losses) == (4 if algo == "ppo" else 2) and all(math.isfinite(v) for v in losses)
    assert seen["logprobs"] == seen["rollout"] == {torch.float32}
    want = torch.bfloat16 if precision == "bf16-true" else torch.float32
    trained = [model.policy] + ([model.critic] if model.critic is not None else [])
    assert {p.dtype for m in trained for p in m.parameters()} == {want}
    assert seen["autocast"] == {precision == "bf16-mixed"}  # autocast in the update only under bf16-mixed
