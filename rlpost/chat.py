"""Conversational prompts, as TRL's GRPOTrainer handles them.

A prompt is either text, which the policy continues as is, or a conversation: a list of messages
``[{"role": "system" | "user" | "assistant", "content": str}, ...]`` (TRL's conversational format).
Where the policy meets the prompt (the rollout and the held-out evaluator), a conversation is
rendered with the policy's own tokenizer's chat template, generation prompt added
(:func:`render_prompts`); the scorers receive the conversation itself and, for it, completions as
``[{"role": "assistant", "content": text}]`` (:func:`completions_for_scorers`), exactly as
``GRPOTrainer`` passes them to reward functions. A task therefore keeps conversations as data and
never needs the policy's tokenizer.

A leaf module: it imports nothing of rlpost.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def is_conversation(prompt: Any) -> bool:
    """True for a list of messages (dicts with a ``role``), TRL's ``is_conversational`` test."""
    return isinstance(prompt, (list, tuple)) and len(prompt) > 0 and isinstance(prompt[0], dict) and "role" in prompt[0]


def is_conversational(prompts: Sequence[Any]) -> bool:
    """Whether a batch of prompts is conversational; a batch mixing text and conversations is refused."""
    kinds = {is_conversation(p) for p in prompts}
    if len(kinds) > 1:
        raise ValueError("a batch mixes text prompts and conversations (lists of messages); a task gives one kind")
    return kinds == {True}


def render_prompts(tokenizer, prompts: Sequence[Any]) -> list[str]:
    """The text the policy continues: text prompts unchanged, conversations through the tokenizer's
    chat template with the generation prompt (``tokenize=False``; the rollout adds no special tokens)."""
    if not is_conversational(prompts):
        return list(prompts)
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"prompts are conversations but the policy's tokenizer ({tokenizer.name_or_path!r}) has no "
                         "chat template")
    return [tokenizer.apply_chat_template(list(p), tokenize=False, add_generation_prompt=True) for p in prompts]


def completions_for_scorers(prompts: Sequence[Any], texts: list[str]) -> list:
    """What scorers receive as ``completions``: the texts, or for conversations
    ``[[{"role": "assistant", "content": text}], ...]`` (TRL's conversational completions)."""
    if not is_conversational(prompts):
        return texts
    return [[{"role": "assistant", "content": t}] for t in texts]
