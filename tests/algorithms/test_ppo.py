import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from rlpost.algorithms import GRPO, PPO
from rlpost.algorithms.base import Counts, KLInReward
from rlpost.algorithms.critic import SeparateCritic, ValueHead
from rlpost.data import ArithmeticTask
from rlpost.losses import masked_mean
from tests.conftest import ToyTask, assert_split_keeps_the_gradient, attached, built, make_trainer

ROOT = Path(__file__).parents[2]


def tiny_ppo(**kw):
    args = dict(model_name_or_path="builtin:tiny", num_generations=4, max_completion_length=4, beta=0.0,
                save_policy=False, optimizer=lambda p: torch.optim.AdamW(p, lr=3e-3),
                critic_optimizer=lambda p: torch.optim.AdamW(p, lr=3e-3))
    args.update(kw)
    return built(PPO(**args))


def grads(module):
    return [p.grad for p in module.parameters()]


# ----------------------------------------------------------------------------- config errors


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(gamma=1.5), r"gamma must be in \[0, 1\], got 1.5"),
        (dict(lam=-0.1), r"lam must be in \[0, 1\], got -0.1"),
        (dict(critic="value_head", vf_coef=0.0), "vf_coef must be > 0"),
        (dict(vf_coef=0.5), r"vf_coef=0.5 has no effect with critic='separate'"),
        (dict(cliprange_value=0.0), "cliprange_value must be > 0"),
        (dict(critic="shared"), r"critic 'shared' is unknown; choose from \['separate', 'value_head'\]"),
        (dict(num_generations=0), "num_generations must be >= 1"),  # the base's checks still apply
    ],
)
def test_bad_hyperparameters_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        tiny_ppo(**kwargs)


def test_kl_in_the_reward_and_the_critic_starts_from_the_policy():
    model = tiny_ppo()
    assert isinstance(model, KLInReward) and model.needs_old_logprobs() is True
    assert model.kl_penalty(torch.zeros(1, 1), None) is None  # the KL is in the reward, not the loss
    assert tiny_ppo(num_generations=1).hparams.num_generations == 1  # no group needed
    assert isinstance(model.critic, SeparateCritic)
    trunk, policy_trunk = model.critic.trunk.state_dict(), model.policy.base_model.state_dict()
    assert trunk.keys() == policy_trunk.keys() and all(torch.equal(trunk[k], policy_trunk[k]) for k in trunk)
    assert all(a.data_ptr() != b.data_ptr() for a, b in zip(model.critic.trunk.parameters(), model.policy.parameters()))
    head = tiny_ppo(critic="value_head").critic
    assert isinstance(head, ValueHead) and head.head.out_features == 1
    assert "critic_optimizer" not in model.hparams and model.hparams.critic == "separate"


# ----------------------------------------------------------------------------- memory breakdown


def test_memory_breakdown_has_the_critic_in_ppo_and_none_in_grpo(tmp_path):
    summaries = {}
    for name, model in (("ppo", tiny_ppo()), ("ppo_head", tiny_ppo(critic="value_head")),
                        ("grpo", GRPO(model_name_or_path="builtin:tiny", num_generations=4, max_completion_length=4,
                                      beta=0.0, save_policy=False))):
        make_trainer(tmp_path / name, max_steps=1).fit(model, datamodule=ToyTask())
        summaries[name] = json.loads((tmp_path / name / "summary.json").read_text())["memory_breakdown"]
    ppo, head, grpo = summaries["ppo"], summaries["ppo_head"], summaries["grpo"]
    policy_params = ppo["policy"]["parameters"]
    # tiny Llama, tied embeddings: the trunk holds every policy parameter; the head adds 128 + 1 floats
    assert ppo["critic"]["parameters"] == policy_params + (128 + 1) * 4
    assert ppo["critic"]["gradients"] == ppo["critic"]["parameters"]
    assert ppo["critic"]["optimizer_state"] >= 2 * ppo["critic"]["parameters"]  # AdamW: two moments
    assert head["critic"]["parameters"] == (128 + 1) * 4 and head["critic"]["gradients"] == (128 + 1) * 4
    assert head["critic"]["optimizer_state"] >= 2 * (128 + 1) * 4
    assert grpo["critic"] == {"parameters": 0, "gradients": 0, "optimizer_state": 0}
    assert grpo["policy"] == ppo["policy"] and ppo["reference"]["parameters"] == 0  # beta = 0: no reference
    critic_total = sum(ppo["critic"].values())
    assert ppo["accounted_bytes"] == grpo["accounted_bytes"] + critic_total


# ----------------------------------------------------------------------------- the critic's gradients


def test_value_loss_trains_the_separate_critic_and_leaves_the_policy_untouched(tmp_path):
    model = tiny_ppo()
    rollout = attached(model, tmp_path, rewards=torch.tensor([1.0, 0, 0, 1, 0, 1, 1, 0]))
    counts = Counts(8.0, float(rollout.completion_mask.sum()))
    loss, stats = model.extra_loss(rollout, counts, None)
    assert loss > 0 and stats["value_loss"] > 0
    loss.backward()
    assert all(g is None for g in grads(model.policy))
    assert all(g is not None and g.abs().sum() > 0 for g in (model.critic.head.weight.grad, model.critic.head.bias.grad))
    trunk_grads = [g for g in grads(model.critic.trunk) if g is not None]
    assert trunk_grads and sum(float(g.abs().sum()) for g in trunk_grads) > 0
    # and the policy loss leaves the critic untouched
    model.zero_grad(set_to_none=True)
    model.extra_loss = lambda mb, counts, scores: (torch.zeros(()), {})
    model.minibatch_loss(rollout, counts)[0].backward()
    assert all(g is None for g in grads(model.critic))
    assert any(g is not None and g.abs().sum() > 0 for g in grads(model.policy))


def test_value_head_option_trains_the_policy_trunk_through_the_value_loss(tmp_path):
    model = tiny_ppo(critic="value_head")
    rollout = attached(model, tmp_path, rewards=torch.tensor([1.0, 0, 0, 1, 0, 1, 1, 0]))
    model.extra_loss(rollout, Counts(8.0, float(rollout.completion_mask.sum())), model.policy_scores(rollout))[0].backward()
    assert model.critic.head.weight.grad.abs().sum() > 0
    trunk = [g for g in grads(model.policy.base_model) if g is not None]
    assert trunk and sum(float(g.abs().sum()) for g in trunk) > 0


def test_value_loss_micro_batch_split_does_not_change_the_critic_gradient(tmp_path):
    model = tiny_ppo(loss_type="dapo")
    rollout = attached(model, tmp_path, rewards=torch.arange(8, dtype=torch.float32) % 3)
    counts = Counts(8.0, float(rollout.completion_mask.sum()))

    assert_split_keeps_the_gradient(model.critic, lambda idx: model.extra_loss(rollout.select(idx), counts, None)[0])


def test_values_do_not_depend_on_left_padding(tmp_path):
    """V(s_t) of a completion is the same alone and in a batch where its prompt is left padded."""
    model = tiny_ppo()
    rollout = attached(model, tmp_path)
    alone = rollout.select(torch.tensor([0]))
    p = rollout.prompt_ids.shape[1]
    padded = alone.select(torch.tensor([0]))
    padded.prompt_ids = torch.cat([torch.zeros(1, 3, dtype=torch.long), alone.prompt_ids], dim=1)
    padded.prompt_mask = torch.cat([torch.zeros(1, 3, dtype=torch.long), alone.prompt_mask], dim=1)
    with torch.no_grad():
        v_alone, v_padded = model.critic.values(alone), model.critic.values(padded)
    assert v_alone.shape == alone.completion_ids.shape and padded.prompt_ids.shape[1] == p + 3
    mask = alone.completion_mask.bool()
    torch.testing.assert_close(v_alone[mask], v_padded[mask], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(rollout.values[:1][mask], v_alone[mask], atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------- advantages


def fake_rollout(values):
    # two completions: 2 tokens (then padding) and 3 tokens; scores 1 and 0
    return SimpleNamespace(
        rewards=torch.tensor([1.0, 0.0]),
        old_logprobs=torch.tensor([[-1.0, -2.0, 0.0], [-1.0, -1.0, -1.0]]),
        ref_logprobs=torch.tensor([[-1.5, -1.0, 0.0], [-1.0, -1.0, -3.0]]),
        completion_mask=torch.tensor([[1, 1, 0], [1, 1, 1]]),
        values=values,
    )


def test_compute_advantages_hand_computed():
    model = tiny_ppo(beta=0.5, gamma=1.0, lam=1.0, whiten_advantages=False)
    # r_t = -0.5 (old - ref) + score on the last token:
    #   row 0: [-0.5*0.5, -0.5*(-1) + 1] = [-0.25, 1.5];  row 1: [0, 0, -0.5*2 + 0] = [0, 0, -1]
    # gamma = lam = 1, V = 0: A = R = reward-to-go: [1.25, 1.5, 0] and [-1, -1, -1]
    rollout = fake_rollout(torch.zeros(2, 3))
    adv = model.compute_advantages(rollout)
    torch.testing.assert_close(adv, torch.tensor([[1.25, 1.5, 0.0], [-1.0, -1.0, -1.0]]))
    torch.testing.assert_close(rollout.returns, adv)
    # gamma = 0.5, lam = 0.5, V = [0.5, 1.0 | 0.2, 0.4, 0.8] (0 past the end):
    #   row 0: t1: d = 1.5 - 1.0 = 0.5; A = 0.5.  t0: d = -0.25 + 0.5*1.0 - 0.5 = -0.25; A = -0.25 + 0.25*0.5 = -0.125
    #   row 1: t2: d = -1 - 0.8 = -1.8; A = -1.8.  t1: d = 0.5*0.8 - 0.4 = 0; A = 0.25*-1.8 = -0.45
    #          t0: d = 0.5*0.4 - 0.2 = 0; A = 0.25*-0.45 = -0.1125.  returns = A + V
    values = torch.tensor([[0.5, 1.0, 9.0], [0.2, 0.4, 0.8]])
    model = tiny_ppo(beta=0.5, gamma=0.5, lam=0.5, whiten_advantages=False)
    rollout = fake_rollout(values)
    adv = model.compute_advantages(rollout)
    torch.testing.assert_close(adv, torch.tensor([[-0.125, 0.5, 0.0], [-0.1125, -0.45, -1.8]]))
    torch.testing.assert_close(rollout.returns, torch.tensor([[0.375, 1.5, 0.0], [0.0875, -0.05, -1.0]]))


def test_whiten_advantages_option_changes_the_output():
    rollout = fake_rollout(torch.zeros(2, 3))
    raw = tiny_ppo(beta=0.5, lam=1.0, whiten_advantages=False).compute_advantages(rollout)
    white = tiny_ppo(beta=0.5, lam=1.0, whiten_advantages=True).compute_advantages(fake_rollout(torch.zeros(2, 3)))
    mask = rollout.completion_mask
    assert not torch.allclose(raw, white) and white[0, 2] == 0
    # 5 tokens [1.25, 1.5, -1, -1, -1]: mean -0.05; squared deviations 1.69 + 2.4025 + 3 * 0.9025 = 6.8,
    # unbiased var 6.8 / 4 = 1.7 -> (1.25 + 0.05) / sqrt(1.7) = 0.99705
    torch.testing.assert_close(masked_mean(white, mask), torch.tensor(0.0), atol=1e-6, rtol=0)
    torch.testing.assert_close(white[0, 0], torch.tensor(0.99705), atol=1e-4, rtol=0)


# ----------------------------------------------------------------------------- end to end


def test_ppo_config_runs_through_the_cli_with_checkpointing(tmp_path):
    from rlpost.cli import cli_main

    cli_main(["fit", "--config", str(ROOT / "configs/ppo_arith.yaml"), "--trainer.max_steps", "2",
              "--trainer.default_root_dir", str(tmp_path), "--trainer.callbacks.init_args.every_n_train_steps", "1",
              "--data.init_args.num_val_prompts", "16", "--data.init_args.prompts_per_step", "2",
              "--trainer.enable_progress_bar", "false"])
    summary = json.loads(next(tmp_path.rglob("summary.json")).read_text())
    assert summary["algorithm"] == "PPO" and summary["steps"] == 2 and summary["plan"]["critic"] is True
    assert summary["memory_breakdown"]["critic"]["optimizer_state"] > 0
    assert "train/value_loss" in summary["history"][0] and next(tmp_path.rglob("*.ckpt"))


@pytest.mark.slow
def test_ppo_learns_a_toy_preference_from_scratch(tmp_path):
    """From a random tiny model, rewarding completions that start with '7' raises the reward
    (over 20 s on 2 cores, hence slow)."""
    torch.manual_seed(0)
    model = tiny_ppo(num_generations=8)
    make_trainer(tmp_path, max_steps=30).fit(model, datamodule=ToyTask(prompts_per_step=4))
    rewards = [h["train/reward"] for h in model.history]
    first, last = sum(rewards[:5]) / 5, sum(rewards[-5:]) / 5
    assert last > first + 0.3 and last > 0.5, (first, last)


@pytest.mark.slow
def test_ppo_raises_held_out_accuracy_on_arithmetic_from_the_warm_start(tmp_path):
    torch.manual_seed(0)
    model = tiny_ppo(model_name_or_path="builtin:arith-sft", num_generations=8, max_completion_length=6, beta=0.04,
                     loss_type="dapo", optimizer=lambda p: torch.optim.AdamW(p, lr=3e-4),
                     critic_optimizer=lambda p: torch.optim.AdamW(p, lr=1e-3))
    make_trainer(tmp_path, max_steps=80).fit(model, datamodule=ArithmeticTask(num_val_prompts=200, prompts_per_step=8))
    s = model.summary
    assert s["accuracy_before"] <= 0.6
    assert s["accuracy_after"] - s["accuracy_before"] >= 0.2, s
