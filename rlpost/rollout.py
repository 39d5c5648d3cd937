"""One rollout path for every algorithm: prompt batch in, :class:`Rollout` record out.

Generation uses ``transformers`` ``generate`` (KV cache, left padding, no autograd).
Imports no algorithm.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import torch
from torch import Tensor, nn

from rlpost.losses import entropy_from_logits, selective_log_softmax
from rlpost.scoring import ScorerSet


@dataclass
class Rollout:
    """Completions of one rollout step. N = B*G completions (groups contiguous), P prompt
    tokens (left padded), T completion tokens (right padded after EOS).

    Attributes:
        prompt_ids, prompt_mask: [N, P].
        completion_ids, completion_mask: [N, T]; the mask covers tokens up to and including EOS.
        old_logprobs: [N, T] log pi_old, or None when the update's first forward serves (mu = 1,
            one optimizer step per rollout).
        ref_logprobs: [N, T] log pi_ref, or None when beta = 0 (no reference model).
        rewards: [N] weighted total score.
        scorer_rewards: scorer name -> [N] raw scores (NaN where a scorer said None).
        group_ids: [N] prompt index within the batch.
        truncated: [N] bool, no EOS within ``max_completion_length``.
        prompts, completions: N texts.
        columns: extra dataset columns, repeated per completion.
        advantages: [N] or [N, T], filled by the algorithm.
        extras: algorithm-specific tensors with N as first dim (e.g. PPO's values).
    """

    prompt_ids: Tensor
    prompt_mask: Tensor
    completion_ids: Tensor
    completion_mask: Tensor
    rewards: Tensor
    group_ids: Tensor
    truncated: Tensor
    prompts: list
    completions: list
    scorer_rewards: dict[str, Tensor] = field(default_factory=dict)
    columns: dict[str, list] = field(default_factory=dict)
    old_logprobs: Tensor | None = None
    ref_logprobs: Tensor | None = None
    advantages: Tensor | None = None
    extras: dict[str, Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return self.completion_ids.shape[0]

    def select(self, index: Tensor) -> "Rollout":
        """The completions at ``index`` ([M] long), every field sliced consistently."""
        idx = index.tolist()
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, Tensor):
                out[f.name] = v[index.to(v.device)]
            elif isinstance(v, list):
                out[f.name] = [v[i] for i in idx]
            elif isinstance(v, dict):
                out[f.name] = {
                    k: (t[index.to(t.device)] if isinstance(t, Tensor) else [t[i] for i in idx]) for k, t in v.items()
                }
            else:
                out[f.name] = v
        return replace(self, **out)

    def to(self, device: torch.device | str) -> "Rollout":
        moved = {f.name: getattr(self, f.name) for f in fields(self)}
        for name, v in moved.items():
            if isinstance(v, Tensor):
                moved[name] = v.to(device)
            elif isinstance(v, dict):
                moved[name] = {k: t.to(device) if isinstance(t, Tensor) else t for k, t in v.items()}
        return replace(self, **moved)

    def save(self, path: str | Path) -> None:
        """Save for replay (train several losses on the very same samples)."""
        torch.save({f.name: getattr(self, f.name) for f in fields(self)}, path)

    @classmethod
    def load(cls, path: str | Path) -> "Rollout":
        return cls(**torch.load(path, weights_only=False))


def concat_rollouts(rollouts: list[Rollout], pad_token_id: int) -> Rollout:
    """Rollouts one after another along N, as if generated together (DAPO's dynamic sampling).

    Prompts are left padded and completion-aligned tensors ([N, T, ...]: ids, masks, log-probs,
    per-token advantages or extras) right padded to the longest, with ``pad_token_id`` for ids
    and 0 elsewhere; ``group_ids`` are renumbered 0, 1, ... in order. Needs at least one rollout.
    """
    P = max(r.prompt_ids.shape[1] for r in rollouts)
    T = max(r.completion_ids.shape[1] for r in rollouts)

    def cat(values: list, name: str):
        if all(v is None for v in values):
            return None
        if isinstance(values[0], list):
            return [x for v in values for x in v]
        if isinstance(values[0], dict):
            return {k: cat([v[k] for v in values], name) for k in values[0]}
        padded = []
        for r, v in zip(rollouts, values):
            fill = pad_token_id if name.endswith("_ids") else 0
            if name.startswith("prompt_"):
                v = torch.nn.functional.pad(v, (P - v.shape[1], 0), value=fill)
            elif v.dim() > 1 and v.shape[1] == r.completion_ids.shape[1]:
                v = torch.nn.functional.pad(v, (0, 0) * (v.dim() - 2) + (0, T - v.shape[1]), value=fill)
            padded.append(v)
        return torch.cat(padded)

    out = {f.name: cat([getattr(r, f.name) for r in rollouts], f.name) for f in fields(Rollout) if f.name != "group_ids"}
    offsets, seen = [], 0
    for r in rollouts:  # distinct ids per source rollout, then consecutive numbering
        offsets.append(r.group_ids + seen)
        seen += int(r.group_ids.max()) + 1 if len(r) else 0
    out["group_ids"] = torch.unique_consecutive(torch.cat(offsets), return_inverse=True)[1]
    return Rollout(**out)


# --------------------------------------------------------------------------- generation


@torch.no_grad()
def generate_completions(
    policy: nn.Module,
    tokenizer,
    prompts: list[str],
    *,
    num_generations: int,
    max_completion_length: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    do_sample: bool = True,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Sample ``num_generations`` completions per prompt (groups contiguous).

    Returns:
        prompt_ids, prompt_mask [N, P]; completion_ids, completion_mask [N, T]; truncated [N].
    """
    device = next(policy.parameters()).device
    enc = tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
    prompt_ids = enc["input_ids"].repeat_interleave(num_generations, dim=0).to(device)
    prompt_mask = enc["attention_mask"].repeat_interleave(num_generations, dim=0).to(device)
    was_training = policy.training
    policy.eval()
    sampling = dict(temperature=temperature, top_p=top_p, top_k=top_k) if do_sample else {}
    out = policy.generate(
        input_ids=prompt_ids,
        attention_mask=prompt_mask,
        do_sample=do_sample,
        max_new_tokens=max_completion_length,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        use_cache=True,
        **sampling,
    )
    policy.train(was_training)
    completion_ids = out[:, prompt_ids.shape[1] :]
    completion_mask, truncated = mask_after_eos(completion_ids, tokenizer.eos_token_id)
    completion_ids = completion_ids.masked_fill(completion_mask == 0, tokenizer.pad_token_id)
    return prompt_ids, prompt_mask, completion_ids, completion_mask, truncated


def mask_after_eos(completion_ids: Tensor, eos_token_id: int) -> tuple[Tensor, Tensor]:
    """[N, T] mask that is 1 up to and including the first EOS, 0 after; and [N] truncated flags."""
    is_eos = completion_ids == eos_token_id
    has_eos = is_eos.any(dim=1)
    first_eos = torch.where(has_eos, is_eos.int().argmax(dim=1), torch.full_like(has_eos, completion_ids.shape[1], dtype=torch.long))
    positions = torch.arange(completion_ids.shape[1], device=completion_ids.device)
    mask = (positions.unsqueeze(0) <= first_eos.unsqueeze(1)).long()
    return mask, ~has_eos




def completion_logprobs(
    model: nn.Module,
    prompt_ids: Tensor,
    prompt_mask: Tensor,
    completion_ids: Tensor,
    completion_mask: Tensor,
    temperature: float = 1.0,
    with_entropy: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """log pi(o_t | q, o_<t) of each completion token (and its entropy), one forward pass.

    Logits are divided by ``temperature`` so they match the sampling distribution.
    Position ids count only real tokens, so left padding changes nothing.

    Returns:
        logprobs [N, T] and entropy [N, T] (or None).
    """
    input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
    attention_mask = torch.cat([prompt_mask, completion_mask], dim=1)
    position_ids = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)
    logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False).logits
    logits = logits[:, prompt_ids.shape[1] - 1 : -1, :] / temperature  # position t predicts completion token t
    logprobs = selective_log_softmax(logits, completion_ids)
    entropy = entropy_from_logits(logits.detach()) if with_entropy else None
    return logprobs, entropy


def decode_completions(tokenizer, completion_ids: Tensor, completion_mask: Tensor) -> list[str]:
    return [
        tokenizer.decode(ids[: int(m.sum())].tolist(), skip_special_tokens=True)
        for ids, m in zip(completion_ids, completion_mask)
    ]


# --------------------------------------------------------------------------- the rollout


def make_rollout(
    policy: nn.Module,
    tokenizer,
    batch: Mapping[str, list],
    scorers: ScorerSet,
    *,
    num_generations: int,
    max_completion_length: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    reference: nn.Module | None = None,
    need_old_logprobs: bool = False,
) -> Rollout:
    """Generate G completions per prompt, score them, and compute the log-probs the update needs.

    Args:
        batch: ``{"prompt": [B], <column>: [B], ...}``.
        reference: the frozen reference policy, or None (beta = 0: never run).
        need_old_logprobs: compute log pi_old now (mu > 1 or several optimizer steps per rollout).
    """
    prompts = list(batch["prompt"])
    prompt_ids, prompt_mask, completion_ids, completion_mask, truncated = generate_completions(
        policy, tokenizer, prompts, num_generations=num_generations, max_completion_length=max_completion_length,
        temperature=temperature, top_p=top_p, top_k=top_k,
    )
    texts = decode_completions(tokenizer, completion_ids, completion_mask)
    rep_prompts = [p for p in prompts for _ in range(num_generations)]
    columns = {k: [v for v in vals for _ in range(num_generations)] for k, vals in batch.items() if k != "prompt"}
    scores = scorers(rep_prompts, texts, columns)
    device = completion_ids.device
    rollout = Rollout(
        prompt_ids=prompt_ids, prompt_mask=prompt_mask, completion_ids=completion_ids, completion_mask=completion_mask,
        rewards=scores.total.to(device), scorer_rewards={k: v.to(device) for k, v in scores.per_scorer.items()},
        group_ids=torch.arange(len(prompts), device=device).repeat_interleave(num_generations),
        truncated=truncated, prompts=rep_prompts, completions=texts, columns=columns,
    )
    with torch.no_grad():
        args = (prompt_ids, prompt_mask, completion_ids, completion_mask, temperature)
        if need_old_logprobs:
            rollout.old_logprobs = completion_logprobs(policy, *args)[0]
        if reference is not None:
            rollout.ref_logprobs = completion_logprobs(reference, *args)[0]
    return rollout
