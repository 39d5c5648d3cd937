"""The log-prob forward: the prompt once per group gives the plain forward's values and gradients."""

import pytest
import torch

from rlpost.forward import completion_logprobs
from rlpost.models import build_char_tokenizer, load_policy


def _batch(g=4, t=5):
    """2 prompts (the first left padded) x g completions, some ending early (EOS then padding)."""
    tok = build_char_tokenizer()
    enc = tok(["1+2=", "47+38="], return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
    torch.manual_seed(0)
    prompt_ids, prompt_mask = enc["input_ids"].repeat_interleave(g, 0), enc["attention_mask"].repeat_interleave(g, 0)
    completion_ids = torch.randint(3, len(tok), (2 * g, t))
    completion_mask = torch.ones_like(completion_ids)
    completion_mask[::3, t - 2 :] = 0
    completion_ids = completion_ids.masked_fill(completion_mask == 0, tok.pad_token_id)
    return prompt_ids, prompt_mask, completion_ids, completion_mask


@pytest.mark.parametrize("t", [1, 5])
def test_prompt_once_per_group_equals_the_plain_forward(t):
    policy = load_policy("builtin:arith-sft")
    batch = _batch(t=t)
    mask = batch[3].bool()

    def run(group_size):
        policy.zero_grad()
        out = completion_logprobs(policy, *batch, temperature=0.7, with_entropy=True, with_hidden=True,
                                  group_size=group_size)
        (out.logprobs * batch[3]).sum().backward()
        return out, torch.cat([p.grad.flatten() for p in policy.parameters()])

    (plain, plain_grad), (shared, shared_grad) = run(1), run(4)
    torch.testing.assert_close(shared.logprobs[mask], plain.logprobs[mask], atol=1e-5, rtol=0)
    torch.testing.assert_close(shared.entropy[mask], plain.entropy[mask], atol=1e-5, rtol=0)
    torch.testing.assert_close(shared.hidden[mask], plain.hidden[mask], atol=1e-5, rtol=0)
    assert plain_grad.abs().sum() > 0
    # float rounding only: summation order differs (the group's gradients meet in the shared prompt)
    assert (shared_grad - plain_grad).norm() <= 1e-5 * plain_grad.norm()


def test_the_prompt_runs_once_per_group():
    policy = load_policy("builtin:tiny")
    rows = []
    hook = policy.get_input_embeddings().register_forward_hook(lambda m, args, out: rows.append(tuple(args[0].shape)))
    try:
        completion_logprobs(policy, *_batch(g=4, t=5), group_size=4)
        completion_logprobs(policy, *_batch(g=4, t=5), group_size=1)
    finally:
        hook.remove()
    # shared: 2 prompts of 6 tokens, then the 8 completions' first 4 tokens; plain: 8 rows of prompt + completion
    assert rows == [(2, 6), (8, 4), (8, 11)]


def test_group_size_must_divide_the_rows():
    with pytest.raises(ValueError, match="group_size=3 does not divide the 8 rows"):
        completion_logprobs(load_policy("builtin:tiny"), *_batch(g=4), group_size=3)
