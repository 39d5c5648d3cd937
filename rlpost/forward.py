"""The log-prob forward: log pi(o_t | q, o_<t) of completion tokens (and their entropy, and hidden states).

Used for the policy's update, log pi_old and the reference's log pi_ref. Two economies over a plain
forward of prompt + completion:

- **the prompt once per group**: the G completions of a prompt share it (``group_size`` = G
  consecutive rows with the same prompt). The prompt is run once per group, its keys and values are
  repeated for the group's rows (``DynamicCache.batch_repeat_interleave``; under autograd the
  gradients of the G rows add up in the prompt's activations), then the completions run on that
  cache. The same function of the parameters as the plain forward (equal up to float rounding), at
  (P + G*T) / (G*(P + T)) of its positions: 0.52 on the demo's shapes (P = 6, T <= 6, G = 8).
- **no prompt-position logits**: only the T positions that predict completion tokens reach the LM
  head (``logits_to_keep``), and for large vocabularies the LM head and log-softmax run a block of
  positions at a time (:func:`rlpost.lm_head.chunked_logprobs`), so the [N, T, V] logits are never
  materialised.

Imports no algorithm.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn
from transformers import DynamicCache

from rlpost.lm_head import chunked_logprobs
from rlpost.losses import entropy_from_logits, selective_log_softmax
from rlpost.sharding import is_sharded


class TokenScores(NamedTuple):
    """One forward pass over prompt + completion, at the T positions that predict completion tokens.

    Attributes:
        logprobs: [N, T] log pi(o_t | q, o_<t) at the sampling temperature.
        entropy: [N, T] entropy of that distribution (detached), or None.
        hidden: [N, T, H] the model's final hidden states there (a value head reads them), or None.
    """

    logprobs: Tensor
    entropy: Tensor | None = None
    hidden: Tensor | None = None


def model_inputs(prompt_ids: Tensor, prompt_mask: Tensor, completion_ids: Tensor, completion_mask: Tensor) -> dict:
    """prompt + completion as model inputs; position ids count only real tokens, so left padding
    changes nothing."""
    attention_mask = torch.cat([prompt_mask, completion_mask], dim=1)
    return {"input_ids": torch.cat([prompt_ids, completion_ids], dim=1), "attention_mask": attention_mask,
            "position_ids": (attention_mask.cumsum(dim=1) - 1).clamp(min=0)}


def completion_logprobs(
    model: nn.Module,
    prompt_ids: Tensor,
    prompt_mask: Tensor,
    completion_ids: Tensor,
    completion_mask: Tensor,
    temperature: float = 1.0,
    with_entropy: bool = False,
    with_hidden: bool = False,
    group_size: int = 1,
    max_logits: int = 2**22,
) -> TokenScores:
    """log pi(o_t | q, o_<t) of each completion token (and its entropy, and the hidden states).

    Logits are divided by ``temperature`` so they match the sampling distribution.

    Args:
        prompt_ids, prompt_mask: [N, P], left padded.
        completion_ids, completion_mask: [N, T].
        group_size: rows ``k*g .. k*g + g - 1`` share one prompt (a rollout's groups, in order): the prompt
            runs once per group. 1: every row runs its own prompt (a plain forward of prompt + completion),
            as under autograd on a gradient-checkpointed model (whose recomputation cannot share a cache).
        max_logits: above N*T*V logits, the LM head and log-softmax run a block of positions at a time
            (:func:`rlpost.lm_head.chunked_logprobs`) instead of materialising [N, T, V]; not for a model
            sharded by FSDP2, whose LM head may run only inside its forward.
    """
    n, t = completion_ids.shape
    if group_size > 1 and torch.is_grad_enabled() and _checkpointed(model):
        group_size = 1  # a checkpointed block recomputed in the backward would write the prompt's cache again
    if group_size > 1 and n % group_size:
        raise ValueError(f"group_size={group_size} does not divide the {n} rows")
    head = model.get_output_embeddings()
    # a sharded (FSDP2) model's LM head runs only inside its forward, where its unit's hooks gather it (a LoRA
    # reference is its policy's base: the policy decides)
    sharded = is_sharded(getattr(model, "policy", model))
    chunked = n * t * head.weight.shape[0] > max_logits and not _scales_logits(model.config) and not sharded
    inputs = model_inputs(prompt_ids, prompt_mask, completion_ids, completion_mask)
    if group_size == 1:
        out = _final(model, chunked, with_hidden, **inputs, use_cache=False, logits_to_keep=t + 1)
        scores, hidden = out[0][:, :-1], (out[1][:, :-1] if with_hidden else None)
    else:  # the prompt once per group, then the completions on its repeated keys and values
        p, g = prompt_ids.shape[1], group_size
        cache = DynamicCache(config=model.config)
        first = _final(model, chunked, with_hidden, input_ids=prompt_ids[::g], attention_mask=prompt_mask[::g],
                       position_ids=inputs["position_ids"][::g, :p], cache=cache, use_cache=True, logits_to_keep=1)
        cache.batch_repeat_interleave(g)
        parts = [[None if x is None else x.repeat_interleave(g, dim=0) for x in first]]
        if t > 1:  # the completion's own positions predict tokens 1 .. T-1
            parts.append(_final(model, chunked, with_hidden, input_ids=completion_ids[:, :-1], cache=cache,
                                attention_mask=inputs["attention_mask"][:, :-1], use_cache=True,
                                position_ids=inputs["position_ids"][:, p:-1]))
        scores = torch.cat([x[0] for x in parts], dim=1)
        hidden = torch.cat([x[1] for x in parts], dim=1) if with_hidden else None
    if chunked:
        out = chunked_logprobs(scores.flatten(0, 1), head.weight, head.bias, completion_ids.flatten(), temperature,
                               block_rows=max(1, max_logits // head.weight.shape[0]), with_entropy=with_entropy)
        return TokenScores(out.logprobs.view(n, t), None if out.entropy is None else out.entropy.view(n, t), hidden)
    logits = scores / temperature
    entropy = entropy_from_logits(logits.detach()) if with_entropy else None
    return TokenScores(selective_log_softmax(logits, completion_ids), entropy, hidden)


def _final(model: nn.Module, chunked: bool, with_hidden: bool, **inputs) -> tuple[Tensor, Tensor | None]:
    """One forward: (logits, final hidden states or None) at its ``logits_to_keep`` positions; ``chunked``:
    (final hidden states, the same) and the LM head runs on none (a pre-hook hands it zero positions)."""
    if not chunked:
        out = model(**inputs, output_hidden_states=with_hidden)
        keep = out.logits.shape[1]
        return out.logits, out.hidden_states[-1][:, -keep:] if with_hidden else None
    seen = []

    def take(module, args):
        seen.append(args[0])
        return (args[0][..., :0, :],)

    handle = model.get_output_embeddings().register_forward_pre_hook(take)
    try:
        model(**inputs)
    finally:
        handle.remove()
    return seen[0], seen[0]


def _checkpointed(model: nn.Module) -> bool:
    """Gradient checkpointing is on somewhere in ``model`` (transformers sets ``gradient_checkpointing`` on
    the modules it checkpoints; a LoRA reference is never trained)."""
    return any(getattr(m, "gradient_checkpointing", False) for m in model.modules())


def _scales_logits(config) -> bool:
    """The model changes its logits after the LM head (softcapping, a logit scale): keep its own head."""
    names = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier", "lm_head_multiplier")
    return any(getattr(config, k, None) is not None for k in names)
