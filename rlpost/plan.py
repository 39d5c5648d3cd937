"""The step plan of an on-policy run, checked before anything is generated.

One function serves the training loop (``OnPolicyAlgorithm.check_plan``) and the comparison
suites (which check budgets from configs before running them), so both count the same way;
:func:`check_prompt_lengths` checks the task's prompts (conversations rendered as the rollout
renders them) against the tokenizer and the model's context. Imports nothing of rlpost but the leaf
:mod:`rlpost.chat`.
"""

from __future__ import annotations

from dataclasses import dataclass

from lightning.pytorch.utilities import rank_zero_warn

from rlpost.chat import render_prompts

MAX_UNKNOWN_FRACTION = 0.1  # more unknown tokens than this in a prompt: warned


@dataclass(frozen=True)
class RolloutPlan:
    """Per device: B prompts x G completions per rollout, split into mini-batches (one optimizer
    step each) and micro-batches (one forward/backward each), for mu passes over the rollout."""

    prompts_per_step: int
    num_generations: int
    completions_per_rollout: int
    mini_batch_size: int
    micro_batch_size: int
    num_iterations: int
    optimizer_steps_per_rollout: int


def rollout_plan(prompts_per_step: int, num_generations: int, mini_batch_size: int | None = None,
                 micro_batch_size: int | None = None, num_iterations: int = 1, max_steps: int | None = None) -> RolloutPlan:
    """The plan, or a ValueError with the numbers that do not fit.

        completions per rollout n = B * G
        optimizer steps per rollout = mu * n / mini_batch_size

    ``mini_batch_size`` must divide n, ``micro_batch_size`` must divide the mini-batch, and
    ``max_steps`` (optimizer steps; None or <= 0: unbounded) must be a whole number of rollouts.
    """
    n = prompts_per_step * num_generations
    mini = mini_batch_size or n
    micro = micro_batch_size or mini
    if n % mini:
        raise ValueError(f"mini_batch_size={mini} does not divide the {n} completions per rollout "
                         f"(prompts_per_step={prompts_per_step} x num_generations={num_generations})")
    if mini % micro:
        raise ValueError(f"micro_batch_size={micro} does not divide mini_batch_size={mini}")
    steps_per_rollout = num_iterations * (n // mini)
    if max_steps and max_steps > 0 and max_steps % steps_per_rollout:
        raise ValueError(f"max_steps={max_steps} is not a multiple of the {steps_per_rollout} optimizer steps per "
                         f"rollout (num_iterations x rollout/mini_batch_size)")
    return RolloutPlan(prompts_per_step, num_generations, n, mini, micro, num_iterations, steps_per_rollout)


def check_prompt_lengths(tokenizer, splits: dict, context: int | None, max_completion_length: int) -> None:
    """Check every prompt against the tokenizer and the model's context. Refuses a split whose longest
    prompt plus ``max_completion_length`` exceeds the context, naming the split, the prompt and the
    numbers; warns (:func:`warn_unknown_tokens`) when the tokenizer cannot read a split's prompts.
    ``splits``: name -> dataset with a ``prompt`` column."""
    for split, ds in splits.items():
        prompts = render_prompts(tokenizer, list(ds["prompt"]))
        ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
        warn_unknown_tokens(tokenizer, split, prompts, ids)
        if context is None:
            continue
        lengths = [len(x) for x in ids]
        longest = max(range(len(lengths)), key=lengths.__getitem__)
        if lengths[longest] + max_completion_length > context:
            raise ValueError(f"{split} prompt {prompts[longest][:80]!r} has {lengths[longest]} tokens; with "
                             f"max_completion_length={max_completion_length} that exceeds the model's context of "
                             f"{context} tokens")


def warn_unknown_tokens(tokenizer, split: str, prompts: list[str], ids: list[list[int]]) -> int:
    """Warn, naming the worst prompt, when more than :data:`MAX_UNKNOWN_FRACTION` of a prompt's tokens are
    the tokenizer's unknown token (the policy would train on text it cannot read). Returns the number of
    such prompts."""
    unk = getattr(tokenizer, "unk_token_id", None)
    if unk is None:
        return 0
    fractions = [sum(t == unk for t in x) / max(len(x), 1) for x in ids]
    bad = [i for i, f in enumerate(fractions) if f > MAX_UNKNOWN_FRACTION]
    if bad:
        worst = max(bad, key=fractions.__getitem__)
        rank_zero_warn(f"{len(bad)} of {len(prompts)} {split} prompts have more than {MAX_UNKNOWN_FRACTION:.0%} of their "
                       f"tokens unknown to the tokenizer (mapped to {tokenizer.unk_token!r}); e.g. {prompts[worst][:80]!r}: "
                       f"{fractions[worst]:.0%} of its {len(ids[worst])} tokens. The policy cannot read these prompts: "
                       "use a model whose tokenizer covers the text (offline: builtin:tiny-text, byte-level).")
    return len(bad)
