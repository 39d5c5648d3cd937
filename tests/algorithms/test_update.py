"""The shared update: what it logs does not depend on how a mini-batch is split into micro-batches,
and PPO's vf_coef changes the update where it is accepted (value head, shared optimizer)."""

import math

import pytest
import torch

from rlpost.algorithms import GRPO, PPO
from rlpost.rollout import make_rollout
from tests.conftest import ToyTask, built, make_trainer

ALGOS = {
    "grpo": lambda **kw: GRPO(**kw),
    "ppo": lambda **kw: PPO(critic_optimizer=lambda p: torch.optim.AdamW(p, lr=3e-3), **kw),
    "ppo_value_head": lambda **kw: PPO(critic="value_head", **kw),
}


def make(algo: str, **kw):
    args = dict(model_name_or_path="builtin:tiny", num_generations=4, max_completion_length=4, beta=0.04,
                save_policy=False, loss_type="grpo", optimizer=lambda p: torch.optim.AdamW(p, lr=3e-3))
    args.update(kw)
    return built(ALGOS[algo](**args))


def fixed_rollout(model):
    """One rollout of 2 prompts x 4, with log pi_old and pi_ref, and rewards that give every group signal."""
    torch.manual_seed(0)
    task = ToyTask()
    task.setup()
    rollout = make_rollout(model.policy, model.tokenizer, task.sample_prompts(2, torch.Generator().manual_seed(0)),
                           task.scorers(), num_generations=4, sampling=model.sampling, reference=model.reference,
                           need_old_logprobs=True)
    rollout.rewards = torch.tensor([1.0, 0.0, 2.0, 0.0, 0.0, 1.0, 1.0, 3.0])
    return rollout


def first_step_metrics(tmp_path, algo: str, rollout, **kw) -> dict[str, float]:
    """Fit one step on exactly ``rollout``; the logged train/ metrics of that step."""
    torch.manual_seed(0)  # the critic's head is initialised at random
    model = make(algo, **kw)
    model.rollout = lambda batch: rollout.select(torch.arange(len(rollout)))  # a fresh copy each call
    make_trainer(tmp_path, max_steps=1).fit(model, datamodule=ToyTask(prompts_per_step=2))
    row = model.history[0]
    return {k: v for k, v in row.items() if k.startswith("train/") and not k.startswith("train/time")}


@pytest.mark.parametrize("algo", ["grpo", "ppo", "ppo_value_head"])
def test_logged_metrics_do_not_depend_on_micro_batching(tmp_path, algo):
    rollout = fixed_rollout(make(algo))
    whole = first_step_metrics(tmp_path / "1", algo, rollout)
    assert {"train/policy_loss", "train/entropy", "train/kl", "train/clip_ratio/region_mean"} <= set(whole)
    if algo.startswith("ppo"):
        assert {"train/value_loss", "train/value_clip_ratio", "train/values_mean", "train/returns_mean"} <= set(whole)
        assert whole["train/value_loss"] > 0
    for micro in (4, 2):
        split = first_step_metrics(tmp_path / str(micro), algo, rollout, micro_batch_size=micro)
        assert split.keys() == whole.keys()
        for k, v in whole.items():
            assert math.isclose(split[k], v, rel_tol=1e-4, abs_tol=1e-6), (micro, k, split[k], v)


def test_vf_coef_changes_the_update_with_a_value_head(tmp_path):
    rollout = fixed_rollout(make("ppo_value_head"))
    trunks = {}
    for coef in (0.1, 1.0):
        torch.manual_seed(0)
        model = make("ppo_value_head", vf_coef=coef)
        start = [p.detach().clone() for p in model.policy.model.layers[0].parameters()]
        model.rollout = lambda batch: rollout.select(torch.arange(len(rollout)))
        make_trainer(tmp_path / str(coef), max_steps=1).fit(model, datamodule=ToyTask(prompts_per_step=2))
        trunks[coef] = torch.cat([(p.detach() - s).flatten() for p, s in zip(model.policy.model.layers[0].parameters(),
                                                                               start)])
    # the value loss reaches the shared trunk weighted by vf_coef: a 10x weight moves it differently
    assert trunks[0.1].abs().sum() > 0 and not torch.allclose(trunks[0.1], trunks[1.0], atol=1e-6, rtol=1e-3)
