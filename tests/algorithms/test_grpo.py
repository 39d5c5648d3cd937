import json

import pytest
import torch
from datasets import Dataset

from rlpost.algorithms import GRPO
from rlpost.algorithms.base import Counts
from rlpost.scoring import ScorerError, ScorerSet
from tests.conftest import ToyTask, assert_split_keeps_the_gradient, attached, built, make_trainer


def tiny_grpo(**kw):
    args = dict(model_name_or_path="builtin:tiny", num_generations=4, max_completion_length=4, beta=0.0,
                save_policy=False, optimizer=lambda p: torch.optim.AdamW(p, lr=3e-3))
    args.update(kw)
    return built(GRPO(**args))


# ----------------------------------------------------------------------------- config errors


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(num_generations=1), "num_generations must be >= 2"),
        (dict(loss_type="gpro"), "loss_type 'gpro' is unknown"),
        (dict(scale_rewards="yes"), "scale_rewards 'yes' is unknown"),
        (dict(beta=-0.1), "beta must be >= 0"),
        (dict(epsilon=0.0), r"epsilon must be > 0, got 0.0"),
        (dict(epsilon_high=-0.1), r"epsilon_high must be > 0, got -0.1"),
        (dict(max_completion_length=0), "max_completion_length must be > 0"),
        (dict(top_p=1.5), r"top_p must be in \(0, 1\], got 1.5"),  # trained silently before
        (dict(top_p=0.0), r"top_p must be in \(0, 1\], got 0.0"),
        (dict(top_p=float("nan")), r"top_p must be in \(0, 1\], got nan"),
        (dict(top_k=-1), r"top_k must be >= 0, got -1"),
        (dict(eval_temperature=0.0), r"eval_temperature must be > 0, got 0.0"),  # failed in transformers before
        (dict(temperature=-1.0), r"temperature must be > 0, got -1.0"),
        (dict(max_grad_norm=-1.0), r"max_grad_norm must be >= 0, got -1.0"),  # turned clipping off before
        (dict(max_entropy_collapse=-0.5), r"max_entropy_collapse must be >= 0, got -0.5"),
    ],
    ids=lambda v: str(v)[:40] if isinstance(v, dict) else None,
)
def test_bad_hyperparameters_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        tiny_grpo(**kwargs)


def test_beta_zero_builds_no_reference_and_beta_positive_does():
    assert tiny_grpo(beta=0.0).reference is None
    model = tiny_grpo(beta=0.1)
    assert model.reference is not None and not any(p.requires_grad for p in model.reference.parameters())


def test_mini_batch_that_does_not_divide_the_rollout_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"mini_batch_size=3 does not divide the 8 completions"):
        make_trainer(tmp_path).fit(tiny_grpo(mini_batch_size=3), datamodule=ToyTask(prompts_per_step=2))


def test_max_steps_not_a_multiple_of_steps_per_rollout_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"max_steps=3 is not a multiple of the 2 optimizer steps"):
        make_trainer(tmp_path, max_steps=3).fit(tiny_grpo(num_iterations=2), datamodule=ToyTask())


def test_prompt_longer_than_context_is_refused(tmp_path):
    long_prompt = "1+" * 40 + "1="  # 82 tokens; the tiny model's context is 64
    task = ToyTask(prompts=["1+2=", long_prompt], answers=["3", "41"], prompts_per_step=1)
    with pytest.raises(ValueError, match=r"train prompt '1\+1\+.*' has 82 tokens.*context of 64 tokens"):
        make_trainer(tmp_path).fit(tiny_grpo(), datamodule=task)


def test_dataset_missing_column_or_empty_is_refused():
    task = ToyTask()
    with pytest.raises(ValueError, match=r"my split is missing column\(s\) \['answer'\]"):
        task.check_dataset(Dataset.from_dict({"prompt": ["1+1="]}), "my split")
    with pytest.raises(ValueError, match=r"my split is missing column\(s\) \['prompt'\]"):
        task.check_dataset(Dataset.from_dict({"question": ["1+1="], "answer": ["2"]}), "my split")
    with pytest.raises(ValueError, match="my split is empty"):
        task.check_dataset(Dataset.from_dict({"prompt": [], "answer": []}), "my split")


@pytest.mark.parametrize(
    "scorer, match",
    [
        (lambda prompts, completions, **_: 1 / 0, r"scorer 'toy' raised ZeroDivisionError.*first prompt: '"),
        (lambda prompts, completions, **_: [float("nan")] * len(completions), r"scorer 'toy' returned nan for prompt '\d\+\d='"),
        (lambda prompts, completions, **_: [1.0], r"scorer 'toy' returned 1 values for \d+ completions"),
    ],
    ids=["raises", "nan", "wrong-count"],
)
def test_bad_scorer_stops_the_run_naming_the_prompt(tmp_path, scorer, match):
    model = tiny_grpo()
    before = {k: v.clone() for k, v in model.policy.state_dict().items()}
    with pytest.raises(ScorerError, match=match):
        make_trainer(tmp_path).fit(model, datamodule=ToyTask(scorer=scorer))
    # no garbage step was taken
    assert all(torch.equal(before[k], v) for k, v in model.policy.state_dict().items())


# ----------------------------------------------------------------------------- behaviour


def test_fit_writes_summary_with_the_contracted_fields(tmp_path):
    trainer = make_trainer(tmp_path, max_steps=2)
    model = tiny_grpo(beta=0.04)
    trainer.fit(model, datamodule=ToyTask())
    summary = json.loads((tmp_path / "summary.json").read_text())
    for key in ("algorithm", "seed", "steps", "accuracy_before", "accuracy_after", "peak_memory_bytes",
                "memory_breakdown", "generation_s", "training_s", "completion_tokens_per_s"):
        assert key in summary, key
    assert summary["algorithm"] == "GRPO" and summary["steps"] == 2 and summary["peak_memory_bytes"] > 0
    mb = summary["memory_breakdown"]
    assert mb["policy"]["gradients"] == mb["policy"]["parameters"] > 0
    assert mb["policy"]["optimizer_state"] >= 2 * mb["policy"]["parameters"]  # AdamW: two moments
    assert mb["reference"]["parameters"] == mb["policy"]["parameters"] and mb["reference"]["gradients"] == 0
    assert mb["critic"] == {"parameters": 0, "gradients": 0, "optimizer_state": 0}
    assert len(summary["history"]) == 2 and "train/kl" in summary["history"][0]


def test_held_out_reward_is_the_scorers_mean_on_greedy_completions(tmp_path):
    """summary.json's reward_before/after: the training scorers on the greedy held-out completions,
    checked against a generation and scoring done here, independently of evaluate()."""
    from rlpost.generation import Sampling
    from rlpost.rollout import decode_completions, generate_completions

    length = lambda prompts, completions, **_: [float(len(c)) for c in completions]  # noqa: E731
    even = lambda prompts, completions, **_: [1.0 if len(c) % 2 == 0 else None for c in completions]  # noqa: E731
    task = ToyTask(val_prompts=["1+2=", "3+4=", "5+6=", "7+8=", "9+9=", "1+1=", "45+67="])
    task.scorers = lambda: ScorerSet({"length": length, "even": even}, {"even": 2.0})
    model = tiny_grpo(model_name_or_path="builtin:arith-sft", optimizer=lambda p: torch.optim.AdamW(p, lr=1e-4))
    make_trainer(tmp_path, max_steps=2).fit(model, datamodule=task)
    summary = json.loads((tmp_path / "summary.json").read_text())
    _, _, ids, mask, *_ = generate_completions(model.policy, model.tokenizer, task.val_prompts, 1,
                                               Sampling(max_new_tokens=4, do_sample=False))
    lengths = [len(t) for t in decode_completions(model.tokenizer, ids, mask)]
    assert len(set(lengths)) > 1  # the case is not degenerate
    assert summary["rewards_after"]["length"] == pytest.approx(sum(lengths) / 7)
    n_even = sum(n % 2 == 0 for n in lengths)
    if n_even:  # None (odd lengths) is left out of the scorer's own mean ...
        assert summary["rewards_after"]["even"] == pytest.approx(1.0)
    # ... and counts 0 in the weighted total
    assert summary["reward_after"] == pytest.approx((sum(lengths) + 2.0 * n_even) / 7)
    assert set(summary["rewards_before"]) == {"length", "even"} and summary["reward_before"] >= 0


def test_completions_generated_counts_what_was_generated_not_the_plan(tmp_path):
    """An override that generates twice per step and keeps one rollout (as DAPO's dynamic sampling
    does) is charged for both: summary.json's budget figure comes from generation, not the plan."""

    class TwiceGRPO(GRPO):
        def rollout(self, batch):
            super().rollout(batch)
            return super().rollout(batch)

    model = TwiceGRPO(model_name_or_path="builtin:tiny", num_generations=4, max_completion_length=4, beta=0.0,
                      save_policy=False)
    make_trainer(tmp_path, max_steps=3).fit(model, datamodule=ToyTask())
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["plan"]["completions_per_rollout"] == 2 * 4
    assert summary["completions_generated"] == 2 * (3 * 2 * 4)


def test_micro_batch_split_does_not_change_the_gradient(tmp_path):
    """Gradient accumulation over micro-batches with global counts equals one big batch (dapo: token mean)."""
    model = tiny_grpo(loss_type="dapo")
    rollout = attached(model, tmp_path, rewards=torch.arange(8, dtype=torch.float32) % 3)  # non-trivial advantages
    counts = Counts(8.0, float(rollout.completion_mask.sum()))

    assert_split_keeps_the_gradient(model.policy, lambda idx: model.minibatch_loss(rollout.select(idx), counts)[0])


@pytest.mark.parametrize("mode, expected", [
    # rewards [1,0,0,1 | 3,1,1,1]. group 0: mean .5, std sqrt(1/3)=.57735 -> +-.5/.57745 = +-.86588.
    # group 1: mean 1.5, std sqrt(3/3)=1 -> 1.5/1.0001=1.49985, -.5/1.0001=-.49995.
    # batch: mean 1, sum (r-1)^2 = 0+1+1+0+4+0+0+0 = 6, std sqrt(6/7)=.92582 -> +-.5/.92592=+-.54000, 1.5/.92592=1.62001
    ("group", [0.86588, -0.86588, -0.86588, 0.86588, 1.49985, -0.49995, -0.49995, -0.49995]),
    ("none", [0.5, -0.5, -0.5, 0.5, 1.5, -0.5, -0.5, -0.5]),
    ("batch", [0.54000, -0.54000, -0.54000, 0.54000, 1.62001, -0.54000, -0.54000, -0.54000]),
])
def test_scale_rewards_modes(mode, expected):
    from types import SimpleNamespace

    model = tiny_grpo(scale_rewards=mode)
    adv = model.compute_advantages(SimpleNamespace(rewards=torch.tensor([1.0, 0, 0, 1, 3, 1, 1, 1])))
    torch.testing.assert_close(adv, torch.tensor(expected), atol=1e-4, rtol=0)


def test_grpo_learns_a_toy_preference_from_scratch(tmp_path):
    """From a random tiny model, rewarding completions that start with '7' raises the reward.
    A flipped update sign would drive it down instead (see the slow test for that contrast)."""
    torch.manual_seed(0)
    model = tiny_grpo(num_generations=8, optimizer=lambda p: torch.optim.AdamW(p, lr=3e-3))
    make_trainer(tmp_path, max_steps=30).fit(model, datamodule=ToyTask(prompts_per_step=4))
    rewards = [h["train/reward"] for h in model.history]
    first, last = sum(rewards[:5]) / 5, sum(rewards[-5:]) / 5
    assert last > first + 0.3 and last > 0.5, (first, last)
