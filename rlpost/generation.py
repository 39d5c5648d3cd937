"""Generation backends: prompt token ids and one set of sampling settings in, completion ids out.

The rollout (:func:`rlpost.rollout.generate_completions`) tokenizes the prompts, asks a backend
for completions and builds the same :class:`~rlpost.rollout.Rollout` whatever the backend:

- ``hf``: ``transformers`` ``generate`` on the policy itself (KV cache, left padding, no autograd);
  it samples from the live policy, so there are no weights to sync. A sharded (FSDP2) policy is
  gathered for the whole call (:func:`rlpost.sharding.gathered`).
- ``lean`` (the default): a bare decode loop on the policy (:mod:`rlpost.lean_generation`): the same
  token ids as ``hf`` for a fixed seed, each group's prompt run once, a static KV cache; a sharded
  policy is gathered as for ``hf``.
- ``vllm`` (``pip install rlpost[vllm]``, a GPU): a vLLM engine colocated in the training process
  (:mod:`rlpost.generation_vllm`).

A backend is chosen by name (``generation_backend``) and configured by a dict of settings
(``generation_kwargs``), which its constructor takes as keyword arguments and validates: an
unknown or invalid setting is refused naming the backend.

A backend that keeps its own copy of the weights (an inference engine) receives the policy's
weights through :meth:`GenerationBackend.sync_weights`, which the algorithm calls once after
every optimizer step of the policy. Imports no algorithm.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import NamedTuple

import torch
from torch import Tensor, nn

from rlpost.sharding import gathered


@dataclass(frozen=True)
class Sampling:
    """The sampling settings of one generation call (the rollout's, or the evaluator's).

    Attributes:
        max_new_tokens: new tokens per completion at most (``max_completion_length``).
        temperature, top_p, top_k: the sampling distribution (``top_k = 0``: off).
        do_sample: False for greedy decoding (the other settings are then unused).
    """

    max_new_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    do_sample: bool = True

    def greedy(self) -> "Sampling":
        return replace(self, do_sample=False)


class Completions(NamedTuple):
    """What a backend returns for N left-padded prompts.

    Attributes:
        completion_ids: [N, T] token ids as generated (tokens after EOS are not yet masked).
        logprobs: [N, T] log-probabilities of the sampled tokens under the backend's sampling
            distribution, or None where the backend does not report them.
    """

    completion_ids: Tensor
    logprobs: Tensor | None = None


class GenerationBackend:
    """Interface: ``generate`` completions; ``sync_weights`` after each optimizer step."""

    name = "base"

    def generate(self, policy: nn.Module, prompt_ids: Tensor, prompt_mask: Tensor, sampling: Sampling, *,
                 eos_token_id: int, pad_token_id: int) -> Completions:
        raise NotImplementedError

    def sync_weights(self, policy: nn.Module) -> None:
        """Receive the policy's current weights (no-op for backends that sample from the policy)."""


class HFBackend(GenerationBackend):
    """``transformers`` ``generate`` on the policy (KV cache; no autograd; eval mode during the call)."""

    name = "hf"

    @torch.no_grad()
    def generate(self, policy: nn.Module, prompt_ids: Tensor, prompt_mask: Tensor, sampling: Sampling, *,
                 eos_token_id: int, pad_token_id: int) -> Completions:
        was_training = policy.training
        policy.eval()
        settings = dict(temperature=sampling.temperature, top_p=sampling.top_p, top_k=sampling.top_k) \
            if sampling.do_sample else {}
        try:
            with gathered(policy):  # a sharded policy: gathered once for the whole decode (rlpost.sharding)
                out = policy.generate(input_ids=prompt_ids, attention_mask=prompt_mask, do_sample=sampling.do_sample,
                                      max_new_tokens=sampling.max_new_tokens, pad_token_id=pad_token_id,
                                      eos_token_id=eos_token_id, use_cache=True, **settings)
        finally:
            policy.train(was_training)
        return Completions(out[:, prompt_ids.shape[1]:])


def _vllm_backend(**settings) -> GenerationBackend:
    from rlpost.generation_vllm import VLLMBackend  # imports vllm only when chosen

    return VLLMBackend(**settings)


from rlpost.lean_generation import LeanBackend  # noqa: E402 (it builds on the interface above)

BACKENDS: dict = {"lean": LeanBackend, "hf": HFBackend, "vllm": _vllm_backend}


def make_backend(name: str, settings: dict | None = None) -> GenerationBackend:
    """The backend registered as ``name``, built with ``settings`` (``generation_kwargs``); an
    unknown name is refused with the known ones, a setting the backend does not take with its name."""
    if name not in BACKENDS:
        raise ValueError(f"generation_backend {name!r} is unknown; choose from {sorted(BACKENDS)}")
    try:
        return BACKENDS[name](**(settings or {}))
    except TypeError as err:  # an unknown keyword: named, with the backend
        raise ValueError(f"generation_kwargs {settings!r} are not settings of generation_backend {name!r}: {err}") \
            from err
