"""The ``lean`` generation backend: a bare decode loop on the policy itself.

What ``transformers`` ``generate`` does for one batch of left-padded prompts, without its per-call
set-up and per-token bookkeeping:

- each distinct prompt is run once (a group's G rows share its prompt: the prefill costs 1/G of
  ``generate``'s) and its keys and values are copied to every row of the group;
- one preallocated KV cache (P + T positions per layer, :class:`FilledView`) filled in place, whose
  filled part (a view) is what attention reads: no copy of the cache per token (``generate``'s
  ``DynamicCache`` concatenates every layer's keys and values at every token), no attention over
  unfilled positions (a ``StaticCache`` attends over its whole length);
- one attention mask for the whole call (P + T positions), built once by the model's own mask
  function (``transformers.masking_utils``) and sliced per token, instead of a new 4D mask per token;
- logits for the last position only (``logits_to_keep=1``), in the prefill and every decode step;
- per token: the model call, the sampling warpers, ``multinomial`` (or ``argmax``), and a stop test
  (all rows finished); no other Python work.

The sampling math is ``generate``'s own: the same ``transformers`` warpers in the same order
(temperature, top-k, top-p), float32 scores, one ``torch.multinomial`` over the whole batch per
token (finished rows included, as ``generate`` does, so the random stream advances identically)
and the pad token after EOS. Positions count real tokens only, as ``generate`` derives them from the
attention mask. So for a fixed seed it returns the same token ids as ``generate``, greedy and
sampled (``tests/test_lean_generation.py`` checks it on ``builtin:tiny`` and a 32k-vocabulary model).
Where the two may differ:

- ``generate`` also applies what the model's own ``generation_config`` sets beyond rlpost's
  :class:`~rlpost.generation.Sampling` (e.g. a ``repetition_penalty``, ``suppress_tokens``,
  ``min_new_tokens`` in a Hub model's ``generation_config.json``); the lean loop samples from exactly the
  distribution whose log-probs the update computes (``softmax(logits / temperature)``, top-k/top-p).
- Rounding: the prefill runs a group's prompt once instead of G times (other matrix shapes); a kernel
  that blocks differently for other shapes can change the last bits of a logit, and a token only
  differs if a sampling threshold falls within that rounding (never seen in the tests).

Supported: ``transformers`` (>= 5) decoder-only models with full attention in every layer, whose
``forward`` takes ``cache``, ``position_ids``, a 4D ``attention_mask`` and ``logits_to_keep`` (Llama,
Qwen2/3, Mistral without sliding window, ...), with ``sdpa`` or ``eager`` attention; other attention
implementations and layer types (sliding windows, linear attention) are refused with the reason.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from transformers import DynamicCache
from transformers.cache_utils import Cache, StaticLayer, get_layer_types_and_kwargs
from transformers.generation.logits_process import (
    LogitsProcessorList,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)
from transformers.masking_utils import (
    ALL_MASK_ATTENTION_FUNCTIONS,
    causal_mask_function,
)

from rlpost.generation import Completions, GenerationBackend, Sampling
from rlpost.sharding import gathered

ATTENTION = ("sdpa", "eager")


def sampling_warpers(sampling: Sampling) -> LogitsProcessorList:
    """``generate``'s warpers for these settings, in ``generate``'s order (temperature, top-k, top-p)."""
    warpers = LogitsProcessorList()
    if sampling.temperature != 1.0:
        warpers.append(TemperatureLogitsWarper(sampling.temperature))
    if sampling.top_k:
        warpers.append(TopKLogitsWarper(top_k=sampling.top_k))
    if sampling.top_p < 1.0:
        warpers.append(TopPLogitsWarper(top_p=sampling.top_p))
    return warpers


def full_attention_mask(model: nn.Module, padding_mask: Tensor, dtype: torch.dtype) -> Tensor:
    """[N, 1, L, L] causal mask over prompt + completion (``padding_mask`` [N, L], 0 at left padding),
    in the format of the model's attention implementation, made by ``transformers``' own mask function."""
    impl = model.config._attn_implementation
    n, length = padding_mask.shape
    return ALL_MASK_ATTENTION_FUNCTIONS[impl](
        batch_size=n, q_length=length, kv_length=length, mask_function=causal_mask_function,
        attention_mask=padding_mask.bool(), allow_is_causal_skip=False, dtype=dtype, config=model.config,
        device=padding_mask.device)


def check_supported(model: nn.Module) -> None:
    """Refuse a model the lean loop cannot drive exactly (its attention or its layer types), naming why."""
    impl = getattr(getattr(model, "config", None), "_attn_implementation", None)
    if impl not in ATTENTION:
        raise ValueError(f"generation_backend 'lean' supports attention {list(ATTENTION)}; {type(model).__name__} uses "
                         f"{impl!r} (use generation_backend: hf)")
    kinds = set(get_layer_types_and_kwargs(model.config.get_text_config(decoder=True))[0])
    if kinds != {"full_attention"}:  # one causal mask for every layer: no sliding windows, no recurrent state
        raise ValueError(f"generation_backend 'lean' supports full-attention layers only; {type(model).__name__} has "
                         f"{sorted(kinds)} (use generation_backend: hf)")


class FilledView(StaticLayer):
    """A preallocated layer (``StaticLayer``: keys and values written in place) whose ``update`` returns only the
    positions filled so far, as views: attention runs over the P + t keys of step t, not the whole buffer, and no
    step copies the cache (a ``DynamicCache`` concatenates it at every token)."""

    def __init__(self, max_cache_len: int):
        super().__init__(max_cache_len=max_cache_len)
        self.filled = 0  # on the host: slicing needs no device sync

    def update(self, key_states: Tensor, value_states: Tensor, *args, **kwargs) -> tuple[Tensor, Tensor]:
        keys, values = super().update(key_states, value_states, *args, **kwargs)
        self.filled += key_states.shape[-2]
        return keys[:, :, : self.filled], values[:, :, : self.filled]


class LeanBackend(GenerationBackend):
    """A bare decode loop with a static KV cache on the live policy (see the module docstring).

    Args:
        stop_check_every: tokens between tests of "every row has finished" (each test reads one
            flag back to the host). None: every token on CPU (the test is free there), every 8 on
            an accelerator (fewer device syncs; the extra steps only append pad tokens, trimmed).
    """

    name = "lean"

    def __init__(self, stop_check_every: int | None = None):
        if stop_check_every is not None and stop_check_every < 1:
            raise ValueError(f"stop_check_every must be >= 1, got {stop_check_every}")
        self.stop_check_every = stop_check_every

    @torch.no_grad()
    def generate(self, policy: nn.Module, prompt_ids: Tensor, prompt_mask: Tensor, sampling: Sampling, *,
                 eos_token_id: int, pad_token_id: int) -> Completions:
        check_supported(policy)
        was_training = policy.training
        policy.eval()
        try:
            with gathered(policy):  # a sharded policy: gathered once for the whole decode (rlpost.sharding)
                ids = decode(policy, prompt_ids, prompt_mask, sampling, eos_token_id=eos_token_id,
                             pad_token_id=pad_token_id,
                             stop_check_every=self.stop_check_every or (1 if prompt_ids.device.type == "cpu" else 8))
        finally:
            policy.train(was_training)
        return Completions(ids)


def decode(model: nn.Module, prompt_ids: Tensor, prompt_mask: Tensor, sampling: Sampling, *, eos_token_id: int,
           pad_token_id: int, stop_check_every: int = 1) -> Tensor:
    """[N, T'] new token ids (T' <= ``max_new_tokens``: the loop stops once every row has emitted EOS,
    and rows that finished earlier hold ``pad_token_id``), as ``generate`` returns them after the prompt."""
    n, p = prompt_ids.shape
    t_max = sampling.max_new_tokens
    device = prompt_ids.device
    mask = full_attention_mask(model, torch.cat([prompt_mask, prompt_mask.new_ones(n, t_max)], dim=1),
                               next(model.parameters()).dtype)
    position = (prompt_mask.long().cumsum(-1) - 1).masked_fill(prompt_mask == 0, 0)  # generate's positions
    cache = Cache(layers=[FilledView(p + t_max) for _ in range(model.config.get_text_config(decoder=True).num_hidden_layers)])
    logits = shared_prefill(model, prompt_ids, prompt_mask, mask[:, :, :p, :p], position, cache)
    warpers = sampling_warpers(sampling) if sampling.do_sample else None
    out = torch.full((n, t_max), pad_token_id, dtype=prompt_ids.dtype, device=device)
    unfinished = torch.ones(n, dtype=torch.bool, device=device)
    lengths = torch.zeros(n, dtype=torch.long, device=device)  # tokens up to and including EOS
    next_position = position[:, -1:] + 1
    token = out[:, 0]  # each step's sampled token; the first comes from the prefill's logits
    for t in range(t_max):
        if t > 0:
            logits = model(input_ids=token[:, None], attention_mask=mask[:, :, p + t - 1 : p + t, : p + t],
                           position_ids=next_position + (t - 1), cache=cache, use_cache=True,
                           logits_to_keep=1).logits[:, -1].float()
        if warpers is not None:
            token = torch.multinomial(torch.softmax(warpers(None, logits), dim=-1), num_samples=1).squeeze(1)
        else:
            token = logits.argmax(dim=-1)
        token = torch.where(unfinished, token, pad_token_id)
        out[:, t] = token
        lengths += unfinished
        unfinished &= token != eos_token_id
        if (t + 1) % stop_check_every == 0 and not bool(unfinished.any()):
            break
    return out[:, : int(lengths.max())]  # steps after the last row finished (stop_check_every > 1) trimmed


def shared_prefill(model: nn.Module, prompt_ids: Tensor, prompt_mask: Tensor, mask: Tensor, position: Tensor,
                   cache: Cache) -> Tensor:
    """Run each distinct prompt once (consecutive repeats, e.g. the G completions of a group, share it), copy
    its keys and values into ``cache`` for every row, and return the [N, V] float32 next-token logits."""
    rows = torch.cat([prompt_ids, prompt_mask.to(prompt_ids.dtype)], dim=1)
    _, inverse, counts = torch.unique_consecutive(rows, dim=0, return_inverse=True, return_counts=True)
    first = counts.cumsum(0) - counts  # each distinct prompt's first row
    prompt_cache = DynamicCache(config=model.config)
    logits = model(input_ids=prompt_ids[first], attention_mask=mask[first], position_ids=position[first],
                   cache=prompt_cache, use_cache=True, logits_to_keep=1).logits[:, -1].float()
    for i, layer in enumerate(prompt_cache.layers):
        cache.update(layer.keys.index_select(0, inverse), layer.values.index_select(0, inverse), i)
    return logits.index_select(0, inverse)
