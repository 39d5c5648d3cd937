"""The LM head a block of positions at a time: the full log-softmax's values and gradients, without the logits."""

import gc

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from rlpost.forward import completion_logprobs
from rlpost.lm_head import chunked_logprobs
from rlpost.memory import peak_memory_bytes, reset_peak_memory


def test_chunked_logprobs_equal_the_full_log_softmax_and_its_gradients():
    torch.manual_seed(0)
    hidden = torch.randn(7, 5, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(11, 5, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(11, dtype=torch.float64, requires_grad=True)
    index = torch.randint(0, 11, (7,))
    out = chunked_logprobs(hidden, weight, bias, index, temperature=0.7, block_rows=3, with_entropy=True)
    z = (hidden @ weight.T + bias) / 0.7
    logp = torch.log_softmax(z, dim=-1)
    torch.testing.assert_close(out.logprobs, logp.gather(-1, index[:, None]).squeeze(-1).float(), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.entropy, -(logp.exp() * logp).sum(-1).float(), atol=1e-5, rtol=0)  # float32 logits
    assert not out.entropy.requires_grad

    def f(h, w, b):  # float64 through the function's float32 logits: compare against the formula instead
        return chunked_logprobs(h, w, b, index, temperature=0.7, block_rows=3).logprobs.double()

    g = torch.randn(7, dtype=torch.float64)
    grads = torch.autograd.grad((f(hidden, weight, bias) * g).sum(), (hidden, weight, bias))
    ref = torch.autograd.grad((logp.gather(-1, index[:, None]).squeeze(-1) * g).sum(), (hidden, weight, bias))
    for a, b in zip(grads, ref):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_block_rows_must_be_positive():
    with pytest.raises(ValueError, match="block_rows must be >= 1, got 0"):
        chunked_logprobs(torch.zeros(2, 3), torch.zeros(4, 3), None, torch.zeros(2, dtype=torch.long), block_rows=0)


def _vocab_model(vocab=32000):
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=4, max_position_embeddings=256, pad_token_id=0, eos_token_id=1,
                      tie_word_embeddings=False)
    return LlamaForCausalLM(cfg)


def _batch(n=16, p=8, t=64, g=4, vocab=32000):
    prompt_ids = torch.randint(2, vocab, (n // g, p)).repeat_interleave(g, 0)
    completion_ids = torch.randint(2, vocab, (n, t))
    mask = torch.ones_like(completion_ids)
    mask[::3, t // 2 :] = 0
    return prompt_ids, torch.ones_like(prompt_ids), completion_ids, mask


@pytest.mark.parametrize("group_size", [1, 4])
def test_a_32k_vocabulary_goes_through_the_chunked_head_with_the_same_values_and_gradients(group_size):
    model, batch = _vocab_model(), _batch()

    def run(max_logits):
        model.zero_grad()
        out = completion_logprobs(model, *batch, temperature=0.9, with_entropy=True, group_size=group_size,
                                  max_logits=max_logits)
        (out.logprobs * batch[3]).sum().backward()
        return out, torch.cat([p.grad.flatten() for p in model.parameters()])

    (full, full_grad), (chunked, chunked_grad) = run(2**62), run(2**22)  # 16 x 64 x 32000 = 2**25 > 2**22
    m = batch[3].bool()
    torch.testing.assert_close(chunked.logprobs[m], full.logprobs[m], atol=1e-5, rtol=0)
    torch.testing.assert_close(chunked.entropy[m], full.entropy[m], atol=1e-4, rtol=0)
    assert (chunked_grad - full_grad).norm() <= 1e-5 * full_grad.norm()


def test_a_32k_vocabulary_log_prob_pass_never_holds_the_logits():
    """Peak memory (RSS high-water mark) of the reference's pass and of the policy's forward + backward: the
    full-logits path needs more than the [N, T, V] logits (128 MiB here); the chunked path a fraction of it."""
    if not reset_peak_memory(torch.device("cpu")):
        pytest.skip("this platform cannot reset the peak RSS (/proc/self/clear_refs)")
    model, batch = _vocab_model(), _batch()
    logits_bytes = 16 * 64 * 32000 * 4

    def peak(max_logits: int, grad: bool) -> int:
        model.zero_grad(set_to_none=True)
        gc.collect()
        reset_peak_memory(torch.device("cpu"))
        before = peak_memory_bytes(torch.device("cpu"))
        with torch.set_grad_enabled(grad):
            out = completion_logprobs(model, *batch, with_entropy=True, group_size=4, max_logits=max_logits)
            if grad:
                out.logprobs.sum().backward()
        return peak_memory_bytes(torch.device("cpu")) - before

    peak(2**22, True)  # warm-up: gradients and allocator pools exist before measuring
    for grad in (False, True):
        full, chunked = peak(2**62, grad), peak(2**22, grad)
        assert full > logits_bytes, (grad, full)  # the control: the measurement sees the logits
        assert chunked < 0.3 * logits_bytes, (grad, chunked, full)
