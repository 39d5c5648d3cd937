"""One rollout path for every algorithm: prompt batch in, :class:`Rollout` record out.

Generation goes through a backend (:mod:`rlpost.generation`; ``transformers`` ``generate`` by
default), then the completions are scored and the log-probs the update needs are computed.
Imports no algorithm.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor, nn

from rlpost.chat import completions_for_scorers, render_prompts
from rlpost.forward import TokenScores, completion_logprobs, model_inputs  # noqa: F401 (part of this module's API)
from rlpost.generation import GenerationBackend, HFBackend, Sampling
from rlpost.losses import zero_signal_groups
from rlpost.sampling_correction import ImportanceSampling, sampling_metrics
from rlpost.scoring import ScorerSet

Phase = Callable[[str], AbstractContextManager]


def no_phase(name: str) -> AbstractContextManager:
    return nullcontext()


@dataclass
class Rollout:
    """Completions of one rollout step. N = B*G completions (groups contiguous), P prompt
    tokens (left padded), T completion tokens (right padded after EOS).

    Attributes:
        prompt_ids, prompt_mask: [N, P].
        completion_ids, completion_mask: [N, T]; the mask covers tokens up to and including EOS
            (with ``mask_truncated_completions``, none of a truncated completion's tokens).
        old_logprobs: [N, T] log pi_old, or None when the update's first forward serves (mu = 1,
            one optimizer step per rollout, and no sampling log-probs to compare with).
        ref_logprobs: [N, T] log pi_ref, or None when beta = 0 (no reference model).
        rewards: [N] weighted total score.
        scorer_rewards: scorer name -> [N] raw scores (NaN where a scorer said None).
        group_ids: [N] prompt index within the batch.
        truncated: [N] bool, no EOS within ``max_completion_length``.
        prompts, completions: N prompts (texts, or conversations: lists of messages) and completion texts.
        columns: extra dataset columns, repeated per completion.
        sampling_logprobs: [N, T] log-probs of the sampled tokens as the generation backend
            reported them, or None (the ``hf`` backend reports none).
        importance_weights: [N, T] or [N, 1] weights of the per-token loss correcting for the sampler
            (:mod:`rlpost.sampling_correction`), or None (no correction).
        advantages: [N] or [N, T], filled by the algorithm.
        values, returns: [N, T] the critic's V_old and the value targets (PPO), or None.
        group_size: G when the rows are whole groups in order (rows ``k*G .. k*G + G - 1`` share a
            prompt), as generated; 1 otherwise. Log-prob forwards then run each prompt once per group.
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
    sampling_logprobs: Tensor | None = None
    importance_weights: Tensor | None = None
    advantages: Tensor | None = None
    values: Tensor | None = None
    returns: Tensor | None = None
    group_size: int = 1

    def __len__(self) -> int:
        return self.completion_ids.shape[0]

    def select(self, index: Tensor | list[int]) -> "Rollout":
        """The completions at ``index`` ([M] long), every field sliced consistently. Give the index on the
        host (a CPU tensor or a list): a device index is read back first (a sync). A contiguous range is
        sliced (views, no copy); ``group_size`` is kept when the index is whole groups in order."""
        idx = index.tolist() if isinstance(index, Tensor) else list(index)
        rows = slice(idx[0], idx[0] + len(idx)) if idx and idx == list(range(idx[0], idx[0] + len(idx))) else None
        on_device: dict[torch.device, Tensor] = {}

        def take(t: Tensor) -> Tensor:
            if rows is not None:
                return t[rows]
            if t.device not in on_device:
                on_device[t.device] = torch.tensor(idx, dtype=torch.long).to(t.device, non_blocking=True)
            return t[on_device[t.device]]

        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, Tensor):
                out[f.name] = take(v)
            elif isinstance(v, list):
                out[f.name] = [v[i] for i in idx]
            elif isinstance(v, dict):
                out[f.name] = {k: take(t) if isinstance(t, Tensor) else [t[i] for i in idx] for k, t in v.items()}
        out["group_size"] = self.group_size if whole_groups(idx, self.group_size) else 1
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
        return cls(**torch.load(path, weights_only=True))


def whole_groups(index: list[int], group_size: int) -> bool:
    """``index`` is whole groups of ``group_size`` consecutive rows, each in order (e.g. 8..15, 0..7)."""
    g = group_size
    return g > 1 and len(index) % g == 0 and all(
        index[k] % g == 0 and index[k : k + g] == list(range(index[k], index[k] + g)) for k in range(0, len(index), g))


def concat_rollouts(rollouts: list[Rollout], pad_token_id: int) -> Rollout:
    """Rollouts one after another along N, as if generated together (DAPO's dynamic sampling).

    Prompts are left padded and completion-aligned tensors ([N, T, ...]: ids, masks, log-probs,
    per-token advantages, values) right padded to the longest, with ``pad_token_id`` for ids
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

    out = {f.name: cat([getattr(r, f.name) for r in rollouts], f.name) for f in fields(Rollout)
           if f.name not in ("group_ids", "group_size")}
    sizes = {r.group_size for r in rollouts}
    out["group_size"] = sizes.pop() if len(sizes) == 1 else 1  # whole groups stay whole groups
    offsets, seen = [], 0
    for r in rollouts:  # distinct ids per source rollout, then consecutive numbering
        offsets.append(r.group_ids + seen)
        seen += int(r.group_ids.max()) + 1 if len(r) else 0
    out["group_ids"] = torch.unique_consecutive(torch.cat(offsets), return_inverse=True)[1]
    return Rollout(**out)


# --------------------------------------------------------------------------- generation


class Generation(NamedTuple):
    """N = len(prompts) * G completions, groups contiguous.

    Attributes:
        prompt_ids, prompt_mask: [N, P], left padded.
        completion_ids, completion_mask: [N, T]; the mask covers tokens up to and including EOS,
            and masked positions hold the pad token.
        truncated: [N] bool, no EOS within ``max_new_tokens``.
        logprobs: [N, T] sampling log-probs from the backend (0 where masked), or None.
    """

    prompt_ids: Tensor
    prompt_mask: Tensor
    completion_ids: Tensor
    completion_mask: Tensor
    truncated: Tensor
    logprobs: Tensor | None = None


@torch.no_grad()
def generate_completions(policy: nn.Module, tokenizer, prompts: list, num_generations: int, sampling: Sampling,
                         backend: GenerationBackend | None = None) -> Generation:
    """Sample ``num_generations`` completions per prompt (groups contiguous) with ``backend``
    (default: ``transformers`` ``generate``). Conversations are rendered with the tokenizer's chat
    template first (:func:`rlpost.chat.render_prompts`)."""
    device = next(policy.parameters()).device
    enc = tokenizer(render_prompts(tokenizer, prompts), return_tensors="pt", padding=True, padding_side="left",
                    add_special_tokens=False)
    prompt_ids = enc["input_ids"].repeat_interleave(num_generations, dim=0).to(device)
    prompt_mask = enc["attention_mask"].repeat_interleave(num_generations, dim=0).to(device)
    out = (backend or HFBackend()).generate(policy, prompt_ids, prompt_mask, sampling,
                                            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    completion_mask, truncated = mask_after_eos(out.completion_ids, tokenizer.eos_token_id)
    completion_ids = out.completion_ids.masked_fill(completion_mask == 0, tokenizer.pad_token_id)
    logprobs = None if out.logprobs is None else out.logprobs.masked_fill(completion_mask == 0, 0.0)
    return Generation(prompt_ids, prompt_mask, completion_ids, completion_mask, truncated, logprobs)


def mask_after_eos(completion_ids: Tensor, eos_token_id: int) -> tuple[Tensor, Tensor]:
    """[N, T] mask that is 1 up to and including the first EOS, 0 after; and [N] truncated flags."""
    is_eos = completion_ids == eos_token_id
    has_eos = is_eos.any(dim=1)
    first_eos = torch.where(has_eos, is_eos.int().argmax(dim=1), torch.full_like(has_eos, completion_ids.shape[1], dtype=torch.long))
    positions = torch.arange(completion_ids.shape[1], device=completion_ids.device)
    mask = (positions.unsqueeze(0) <= first_eos.unsqueeze(1)).long()
    return mask, ~has_eos


def decode_completions(tokenizer, completion_ids: Tensor, completion_mask: Tensor) -> list[str]:
    """The completions' texts (special tokens skipped)."""
    return [tokenizer.decode(ids, skip_special_tokens=True) for ids in unpadded_ids(completion_ids, completion_mask)]


def unpadded_ids(completion_ids: Tensor, completion_mask: Tensor) -> list[list[int]]:
    """Each completion's token ids up to and including EOS (what scorers get as ``completion_ids``): ids
    and lengths come to the host in one transfer each, not one per row."""
    lengths = completion_mask.sum(dim=1).tolist()
    return [ids[:n] for ids, n in zip(completion_ids.tolist(), lengths)]


class ScorerInputs(NamedTuple):
    """N completions as the scorers see them (TRL's reward-function arguments).

    Attributes:
        texts: decoded completions (special tokens skipped).
        completions: ``texts``, or ``[{"role": "assistant", "content": text}]`` each for conversations.
        completion_ids: token ids up to and including EOS, unpadded.
    """

    texts: list[str]
    completions: list
    completion_ids: list[list[int]]


def scorer_inputs(tokenizer, prompts: list, gen: Generation) -> ScorerInputs:
    ids = unpadded_ids(gen.completion_ids, gen.completion_mask)
    texts = [tokenizer.decode(row, skip_special_tokens=True) for row in ids]
    return ScorerInputs(texts, completions_for_scorers(prompts, texts), ids)


# --------------------------------------------------------------------------- the rollout


def make_rollout(
    policy: nn.Module,
    tokenizer,
    batch: Mapping[str, list],
    scorers: ScorerSet,
    *,
    num_generations: int,
    sampling: Sampling,
    backend: GenerationBackend | None = None,
    reference: nn.Module | None = None,
    need_old_logprobs: bool = False,
    phase: Phase = no_phase,
    trainer_state=None,
    mask_truncated_completions: bool = False,
    importance_sampling: ImportanceSampling | None = None,
) -> Rollout:
    """Generate G completions per prompt, score them, and compute the log-probs the update needs.

    Args:
        batch: ``{"prompt": [B], <column>: [B], ...}``; prompts are texts or conversations.
        sampling, backend: sampling settings (log-probs at its temperature); generation backend (None: hf).
        reference: the frozen reference policy, or None (beta = 0: never run).
        need_old_logprobs: compute log pi_old now (mu > 1, several optimizer steps per rollout, or an
            algorithm whose advantages need them); also done when the backend reports sampling log-probs.
        phase: ``phase(name)`` times each part (:class:`rlpost.run_record.RunRecord`).
        trainer_state: every scorer's ``trainer_state`` (``transformers.TrainerState``).
        mask_truncated_completions: clear the mask of completions without EOS after scoring (TRL):
            scored and in their group's statistics, but no token of theirs enters a loss.
        importance_sampling: correct for the sampler's log-probs (needs a backend that reports them).
    """
    prompts = list(batch["prompt"])
    with phase("generation"):
        gen = generate_completions(policy, tokenizer, prompts, num_generations, sampling, backend)
    with phase("scoring"):
        rep_prompts = [p for p in prompts for _ in range(num_generations)]
        inputs = scorer_inputs(tokenizer, rep_prompts, gen)
        columns = {k: [v for v in vals for _ in range(num_generations)] for k, vals in batch.items() if k != "prompt"}
        scores = scorers(rep_prompts, inputs.completions, columns, completion_ids=inputs.completion_ids,
                         trainer_state=trainer_state)
    device = gen.completion_ids.device
    mask = gen.completion_mask * ~gen.truncated.unsqueeze(1) if mask_truncated_completions else gen.completion_mask
    rollout = Rollout(
        prompt_ids=gen.prompt_ids, prompt_mask=gen.prompt_mask, completion_ids=gen.completion_ids,
        completion_mask=mask, rewards=scores.total.to(device),
        scorer_rewards={k: v.to(device) for k, v in scores.per_scorer.items()},
        group_ids=torch.arange(len(prompts), device=device).repeat_interleave(num_generations),
        truncated=gen.truncated, prompts=rep_prompts, completions=inputs.texts, columns=columns,
        sampling_logprobs=gen.logprobs, group_size=num_generations,
    )
    with torch.no_grad():
        args = (gen.prompt_ids, gen.prompt_mask, gen.completion_ids, mask, sampling.temperature)
        if need_old_logprobs or gen.logprobs is not None:
            with phase("old_logprobs"):
                rollout.old_logprobs = completion_logprobs(policy, *args, group_size=num_generations).logprobs
        if reference is not None:
            with phase("ref_logprobs"):
                rollout.ref_logprobs = completion_logprobs(reference, *args, group_size=num_generations).logprobs
    if importance_sampling is not None:
        rollout.importance_weights = importance_sampling.weights(rollout.old_logprobs, gen.logprobs, mask, backend)
    return rollout


def completion_lengths(rollout: Rollout) -> Tensor:
    """[N] generated tokens per completion (EOS included): a truncated completion has all T, also when
    ``mask_truncated_completions`` cleared its mask."""
    T = rollout.completion_ids.shape[1]
    return torch.where(rollout.truncated, T, rollout.completion_mask.sum(dim=1))


def rollout_metrics(rollout: Rollout, num_generations: int) -> dict[str, Tensor]:
    """A rollout's training metrics, as device tensors (read back once per logging interval)."""
    lengths = completion_lengths(rollout).float()
    metrics = {
        "reward": rollout.rewards.mean(), "reward_std": rollout.rewards.std(),
        "frac_reward_zero_std": zero_signal_groups(rollout.rewards, num_generations).float().mean(),
        "completions/mean_length": lengths.mean(), "completions/max_length": lengths.max(),
        "completions/clipped_ratio": rollout.truncated.float().mean(),
    }
    for name, scores in rollout.scorer_rewards.items():
        metrics[f"rewards/{name}/mean"] = torch.nanmean(scores)
        metrics[f"rewards/{name}/std"] = nanstd(scores)
    if rollout.sampling_logprobs is not None:
        metrics.update(sampling_metrics(rollout.old_logprobs, rollout.sampling_logprobs, rollout.completion_mask,
                                        rollout.importance_weights))
    return {f"train/{k}": v for k, v in metrics.items()}


def nanstd(x: Tensor) -> Tensor:
    """Unbiased std of the non-NaN entries (0 for fewer than 2); no boolean indexing, so no host sync."""
    keep = ~torch.isnan(x)
    n = keep.sum()
    mean = torch.where(keep, x, 0.0).sum() / n.clamp(min=1)
    var = torch.where(keep, (x - mean) ** 2, 0.0).sum() / (n - 1).clamp(min=1)
    return torch.where(n > 1, var.sqrt(), 0.0)
