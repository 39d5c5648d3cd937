"""LoRA (rlpost.lora): the reference is the base model exactly, only adapters train, the saved policy
loads back (adapter or merged), and PPO's critics under LoRA."""

import sys

import pytest
import torch
from transformers import AutoModelForCausalLM

from rlpost.algorithms import GRPO, PPO
from rlpost.lora import LoRA, apply_lora
from rlpost.models import load_policy
from rlpost.rollout import completion_logprobs
from tests.conftest import ToyTask, attached, built, make_trainer

peft = pytest.importorskip("peft", reason="LoRA needs peft: pip install 'rlpost[peft]'")

LORA = {"r": 4, "alpha": 8}


def make(cls=GRPO, **kw):
    args = dict(model_name_or_path="builtin:arith-sft", num_generations=4, max_completion_length=4, beta=0.04,
                save_policy=False, lora=LORA, optimizer=lambda p: torch.optim.AdamW(p, lr=1e-2))
    args.update(kw)
    return cls(**args)


def perturb_adapters(policy, seed=0):
    """Adapters start as a no-op (B = 0); give them weight so that the policy differs from its base."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)


def test_reference_log_probs_equal_the_base_models_exactly(tmp_path):
    model = built(make())
    rollout = attached(model, tmp_path)
    perturb_adapters(model.policy)
    args = (rollout.prompt_ids, rollout.prompt_mask, rollout.completion_ids, rollout.completion_mask)
    base = completion_logprobs(load_policy("builtin:arith-sft").eval(), *args).logprobs
    reference = completion_logprobs(model.reference, *args).logprobs
    policy = completion_logprobs(model.policy, *args).logprobs
    assert torch.equal(reference, base)  # bit for bit: the same weights, adapters off
    assert (policy - base).abs().max() > 1e-2  # and the adapters do change the policy
    assert list(model.reference.parameters()) == []  # no second copy
    model.policy.train()  # the reference runs in eval mode; the policy's mode is restored
    completion_logprobs(model.reference, *args)
    assert model.policy.training


def test_only_adapters_get_gradients_and_optimizer_state(tmp_path):
    model = make()
    make_trainer(tmp_path, max_steps=1).fit(model, datamodule=ToyTask())
    named = dict(model.policy.named_parameters())
    with_grad = {n for n, p in named.items() if p.grad is not None}
    assert with_grad and all("lora_" in n for n in with_grad)
    assert with_grad == {n for n, p in named.items() if p.requires_grad}
    state = model.trainer.optimizers[0].state
    assert {id(p) for p in state} == {id(named[n]) for n in with_grad}
    adapter_bytes = sum(named[n].numel() * 4 for n in with_grad)
    breakdown = model.summary["memory_breakdown"]
    assert breakdown["policy"]["gradients"] == adapter_bytes
    assert breakdown["policy"]["optimizer_state"] == 2 * adapter_bytes + 4 * len(with_grad)  # AdamW moments, step
    assert breakdown["reference"] == {"parameters": 0, "gradients": 0, "optimizer_state": 0}
    assert breakdown["policy"]["parameters"] == sum(p.numel() * 4 for p in named.values())


@pytest.mark.parametrize("merge", [False, True])
def test_saved_policy_loads_back_as_adapter_or_merged(tmp_path, merge):
    model = built(make(lora={**LORA, "merge": merge}, save_policy=True))
    perturb_adapters(model.policy)  # so that the saved adapter matters (a fresh one is a no-op)
    make_trainer(tmp_path, max_steps=2).fit(model, datamodule=ToyTask())
    out = tmp_path / "policy"
    assert model.summary["model_dir"] == str(out)
    x = torch.tensor([[3, 4, 5, 6, 7]])
    model.policy.eval()
    expected = model.policy(x).logits
    if merge:  # the base model's own format: no peft needed to load it
        assert (out / "model.safetensors").exists() and not (out / "adapter_config.json").exists()
        loaded = AutoModelForCausalLM.from_pretrained(out)
        assert not any("lora" in n for n, _ in loaded.named_parameters())
        torch.testing.assert_close(loaded(x).logits, expected, atol=1e-4, rtol=1e-4)
    else:
        assert (out / "adapter_config.json").exists() and not (out / "model.safetensors").exists()
        loaded = peft.AutoPeftModelForCausalLM.from_pretrained(out)
        assert torch.equal(loaded(x).logits, expected)
    assert (expected - load_policy("builtin:arith-sft")(x).logits).abs().max() > 1e-2  # not the base


def test_merged_weights_leave_the_policy_unchanged(tmp_path):
    policy = apply_lora(load_policy("builtin:arith-sft"), LoRA(r=4))
    perturb_adapters(policy)
    from rlpost.lora import merged_named_parameters

    x = torch.tensor([[3, 4, 5]])
    before = policy(x).logits
    merged = dict(merged_named_parameters(policy))
    base = load_policy("builtin:arith-sft")
    assert merged.keys() == dict(base.named_parameters()).keys()  # the base model's names, no adapter tensors
    assert torch.equal(policy(x).logits, before)  # computed out of place: the policy is untouched
    base.load_state_dict(merged, strict=False)
    torch.testing.assert_close(base(x).logits, before, atol=1e-4, rtol=1e-4)  # W + (alpha/r) B A


# --------------------------------------------------------------------------- PPO's critic under LoRA


def test_ppo_separate_critic_is_a_frozen_base_copy_with_its_own_adapters(tmp_path):
    model = make(PPO, critic_optimizer=lambda p: torch.optim.AdamW(p, lr=1e-2))
    make_trainer(tmp_path, max_steps=2).fit(model, datamodule=ToyTask())
    critic, policy = model.critic, model.policy
    trained = {n for n, p in critic.named_parameters() if p.requires_grad}
    assert trained and all("lora_" in n or n.startswith("head.") for n in trained)
    assert not {id(p) for p in critic.parameters()} & {id(p) for p in policy.parameters()}  # nothing shared
    # its frozen trunk is the base: equal to the policy's base weights
    base = {n.removeprefix("model."): p for n, p in load_policy("builtin:arith-sft").named_parameters()}
    for n, p in critic.trunk.named_parameters():
        if not p.requires_grad:
            assert torch.equal(p, base[n.removeprefix("base_model.model.").replace(".base_layer", "")])
    critic_state = model.trainer.optimizers[1].state
    assert {id(p) for p in critic_state} == {id(p) for p in critic.parameters() if p.requires_grad}
    assert model.history[-1]["train/value_loss"] > 0


def test_ppo_value_head_trains_the_policys_adapters(tmp_path):
    model = built(make(PPO, critic="value_head", vf_coef=1.0))
    rollout = attached(model, tmp_path)
    from rlpost.algorithms.base import Counts

    model.policy.zero_grad()
    scores = model.policy_scores(rollout)
    value_loss, _ = model.extra_loss(rollout, Counts(len(rollout), float(rollout.completion_mask.sum())), scores)
    value_loss.backward()
    grads = {n: p.grad for n, p in model.policy.named_parameters() if p.grad is not None}
    assert grads and all("lora_" in n for n in grads)  # the value loss reaches the shared adapters only
    assert sum(g.abs().sum() for g in grads.values()) > 0
    assert model.critic.head.weight.grad is not None


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("kwargs, match", [(dict(r=0), "lora.r must be >= 1"), (dict(alpha=0), "lora.alpha"),
                                           (dict(dropout=1.0), r"lora.dropout must be in \[0, 1\)"),
                                           (dict(target_modules=[]), "lora.target_modules must name")])
def test_bad_lora_settings_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make(lora=kwargs)


def test_unknown_target_modules_are_named():
    with pytest.raises(ValueError, match=r"lora.target_modules=\['nope'\]"):
        built(make(lora={"target_modules": ["nope"]}))


def test_without_peft_lora_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "peft", None)  # import peft -> ImportError
    with pytest.raises(ImportError, match=r"pip install 'rlpost\[peft\]'"):
        apply_lora(load_policy("builtin:arith-sft"), LoRA())
