"""The lean decode loop returns generate's token ids for a fixed seed, runs each prompt once, stops early."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM

from rlpost.generation import HFBackend, Sampling, make_backend
from rlpost.lean_generation import LeanBackend
from rlpost.models import build_char_tokenizer, load_policy
from rlpost.rollout import generate_completions

PROMPTS = ["1+2=", "47+38=", "5+99=", "12+3="]  # two lengths: the short ones are left padded

SETTINGS = {
    "greedy": Sampling(6, do_sample=False),
    "sampled": Sampling(6),
    "temperature-top-k-top-p": Sampling(6, temperature=0.7, top_k=5, top_p=0.9),
    "long": Sampling(12, temperature=1.3),
}


def _ids(backend, policy, tok, sampling, prompts=PROMPTS, g=4, seed=0):
    torch.manual_seed(seed)
    return generate_completions(policy, tok, prompts, g, sampling, backend).completion_ids


@pytest.mark.parametrize("sampling", list(SETTINGS.values()), ids=list(SETTINGS))
@pytest.mark.parametrize("model", ["builtin:tiny", "builtin:arith-sft"])
def test_lean_returns_generates_token_ids(model, sampling):
    tok, policy = build_char_tokenizer(), load_policy(model)
    for seed in range(3):
        hf = _ids(HFBackend(), policy, tok, sampling, seed=seed)
        lean = _ids(LeanBackend(), policy, tok, sampling, seed=seed)
        assert torch.equal(hf, lean), (seed, hf, lean)
    # a few tokens differ between seeds: the test compares real samples, not a constant
    assert not torch.equal(_ids(LeanBackend(), policy, tok, SETTINGS["sampled"], seed=0),
                           _ids(LeanBackend(), policy, tok, SETTINGS["sampled"], seed=1))


def test_lean_matches_generate_on_a_32k_vocabulary():
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=32000, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, pad_token_id=0,
                      eos_token_id=1, tie_word_embeddings=False)
    policy = LlamaForCausalLM(cfg).eval()
    ids = torch.randint(2, 32000, (3, 5))
    mask = torch.ones_like(ids)
    mask[0, :2] = 0  # left padding
    ids, mask = ids.repeat_interleave(2, 0), mask.repeat_interleave(2, 0)
    for sampling in (Sampling(8, do_sample=False), Sampling(8, top_k=50, top_p=0.95)):
        out = []
        for backend in (HFBackend(), LeanBackend()):
            torch.manual_seed(1)
            out.append(backend.generate(policy, ids, mask, sampling, eos_token_id=1, pad_token_id=0).completion_ids)
        assert torch.equal(*out)


def test_each_distinct_prompt_is_prefilled_once():
    tok, policy = build_char_tokenizer(), load_policy("builtin:arith-sft")
    rows = []
    hook = policy.get_input_embeddings().register_forward_hook(lambda m, args, out: rows.append(args[0].shape))
    try:
        _ids(LeanBackend(), policy, tok, Sampling(6), g=8)
    finally:
        hook.remove()
    assert rows[0] == (4, 6)  # 4 distinct prompts of 6 tokens (padded), not 4 x 8 rows
    assert all(r == (32, 1) for r in rows[1:])  # then one token per row per step


def test_stops_when_every_row_has_finished_and_stop_checks_can_be_spaced():
    tok, policy = build_char_tokenizer(), load_policy("builtin:arith-sft")  # answers are <= 3 digits + EOS
    calls = []
    hook = policy.register_forward_hook(lambda *a: calls.append(1))
    try:
        ids = _ids(LeanBackend(), policy, tok, Sampling(30), g=2)
    finally:
        hook.remove()
    assert ids.shape[1] == len(calls) < 30  # one model call per emitted column, none after the last EOS
    assert (ids == tok.eos_token_id).any(dim=1).all()
    # tests every 7 tokens: up to 6 extra calls, trimmed back to the same ids
    assert torch.equal(ids, _ids(LeanBackend(stop_check_every=7), policy, tok, Sampling(30), g=2))
    with pytest.raises(ValueError, match="stop_check_every must be >= 1, got 0"):
        LeanBackend(stop_check_every=0)


def test_lean_is_registered_and_refuses_an_attention_it_cannot_mask():
    assert isinstance(make_backend("lean"), LeanBackend)
    policy = load_policy("builtin:tiny")
    policy.config._attn_implementation = "flash_attention_2"
    ids = torch.ones(1, 3, dtype=torch.long)
    with pytest.raises(ValueError, match="'lean' supports attention .*LlamaForCausalLM uses 'flash_attention_2'"):
        LeanBackend().generate(policy, ids, torch.ones_like(ids), Sampling(2), eos_token_id=1, pad_token_id=0)


def test_lean_refuses_sliding_window_layers():
    cfg = MistralConfig(vocab_size=32, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                        num_key_value_heads=2, sliding_window=4, max_position_embeddings=64)
    ids = torch.ones(1, 3, dtype=torch.long)
    with pytest.raises(ValueError, match=r"full-attention layers only; MistralForCausalLM has \['sliding_attention'\]"):
        LeanBackend().generate(MistralForCausalLM(cfg), ids, torch.ones_like(ids), Sampling(2), eos_token_id=1,
                               pad_token_id=0)


def test_policy_mode_is_restored():
    tok, policy = build_char_tokenizer(), load_policy("builtin:tiny")
    policy.train()
    _ids(LeanBackend(), policy, tok, Sampling(3))
    assert policy.training
