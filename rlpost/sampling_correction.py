"""When the sampler is not the trained policy: a backend that generates with its own engine (vLLM)
reports the log-probs it sampled with, which differ from the trained policy's (other kernels,
precision, a weight copy). Two things follow, both as TRL's GRPOTrainer does them:

- the difference is logged (``train/sampling/sampling_logp_difference/{mean,max}``, and the
  importance weights' ``train/sampling/importance_sampling_ratio/{min,mean,max}`` when corrected);
- optionally (:class:`ImportanceSampling`, the algorithms' ``importance_sampling_correction``), the
  per-token loss is reweighted by truncated importance sampling
  (:func:`sampling_importance_weights`).

Imports nothing of rlpost.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import torch
from torch import Tensor

ImportanceSamplingMode = Literal["token_truncate", "token_mask", "sequence_truncate", "sequence_mask"]


@dataclass(frozen=True)
class ImportanceSampling:
    """Truncated importance-sampling correction against the sampler's log-probs; TRL's
    ``vllm_importance_sampling_mode`` / ``_clip_min`` / ``_clip_max``, with TRL's defaults.

    Attributes:
        mode: ``token_truncate`` (per-token weights clipped to [clip_min, clip_max]), ``token_mask``
            (per-token weights outside set to 0), ``sequence_truncate`` / ``sequence_mask`` (one weight
            per completion, from its summed log-ratio, clipped or masked).
        clip_min: C_min (None: no lower bound).
        clip_max: C_max (None: no upper bound).
    """

    mode: ImportanceSamplingMode = "sequence_mask"
    clip_min: float | None = None
    clip_max: float | None = 3.0

    def __post_init__(self):
        if self.mode not in get_args(ImportanceSamplingMode):
            raise ValueError(f"importance_sampling_correction.mode {self.mode!r} is unknown; choose from "
                             f"{list(get_args(ImportanceSamplingMode))}")
        if self.clip_min is not None and self.clip_max is not None and self.clip_min >= self.clip_max:
            raise ValueError(f"importance_sampling_correction.clip_min={self.clip_min} must be below "
                             f"clip_max={self.clip_max}")
        if self.mode.endswith("truncate") and self.clip_min is None and self.clip_max is None:
            raise ValueError(f"importance_sampling_correction.mode={self.mode!r} needs clip_min or clip_max")

    def weights(self, old_logprobs: Tensor, sampling_logprobs: Tensor | None, mask: Tensor, backend=None) -> Tensor:
        """[N, T] or [N, 1] weights of the per-token loss; refused when ``backend`` reported no log-probs."""
        if sampling_logprobs is None:
            raise ValueError(f"importance_sampling_correction needs the sampler's log-probs, but the generation "
                             f"backend {'hf' if backend is None else backend.name!r} reports none")
        level, bound = self.mode.split("_")
        return sampling_importance_weights(old_logprobs, sampling_logprobs, mask, sequence_level=level == "sequence",
                                           truncate=bound == "truncate", clip_min=self.clip_min, clip_max=self.clip_max)


def as_importance_sampling(value: ImportanceSampling | dict | None) -> ImportanceSampling | None:
    """The correction from a config value (the record itself, its fields as a dict, or None)."""
    return ImportanceSampling(**value) if isinstance(value, dict) else value


def sampling_metrics(old_logprobs: Tensor, sampling_logprobs: Tensor, mask: Tensor,
                     weights: Tensor | None) -> dict[str, Tensor]:
    """TRL's ``sampling/sampling_logp_difference/{mean,max}`` (|log pi_old - log pi_sampler| over the
    completion tokens the sampler scored) and, with a correction, ``sampling/importance_sampling_ratio/
    {min,mean,max}`` (over completions for sequence-level weights, over tokens otherwise). Device
    tensors, no host sync; 0 where nothing was scored."""
    delta = (old_logprobs - sampling_logprobs).abs()
    scored = mask.bool() & ~torch.isnan(delta)
    n = scored.sum()
    delta = delta.masked_fill(~scored, 0.0)
    out = {"sampling/sampling_logp_difference/mean": delta.sum() / n.clamp(min=1),
           "sampling/sampling_logp_difference/max": delta.max()}
    if weights is not None:
        over = torch.ones_like(weights, dtype=torch.bool) if weights.shape[-1] == 1 else mask.bool()
        count = over.sum().clamp(min=1)
        out["sampling/importance_sampling_ratio/min"] = weights.masked_fill(~over, float("inf")).min()
        out["sampling/importance_sampling_ratio/mean"] = weights.masked_fill(~over, 0.0).sum() / count
        out["sampling/importance_sampling_ratio/max"] = weights.masked_fill(~over, -float("inf")).max()
    return out


def sampling_importance_weights(
    old_logprobs: Tensor,
    sampling_logprobs: Tensor,
    mask: Tensor,
    sequence_level: bool,
    truncate: bool,
    clip_min: float | None = None,
    clip_max: float | None = 3.0,
) -> Tensor:
    r"""Importance weights that correct for sampling with an engine whose probabilities differ from
    the trained policy's (truncated importance sampling, Yao et al. 2025, "Your efficient RL framework
    secretly brings you off-policy RL training"; TRL's ``vllm_importance_sampling_*`` modes):

        d_t = (log pi_old(o_t) - log pi_sampler(o_t)) * m_t        (NaN sampler log-probs: d_t = 0)
        w   = exp(d_t)              per token              (``sequence_level=False``, TRL ``token_*``)
        w   = exp(sum_t d_t)        one per completion     (``sequence_level=True``, TRL ``sequence_*``)
        truncate:  w <- clamp(w, C_min, C_max)                               (TRL ``*_truncate``)
        mask:      w <- 0 where w < C_min or w > C_max                       (TRL ``*_mask``)

    The per-token loss is multiplied by w (before the KL term is added), as TRL's GRPOTrainer does.

    Args:
        old_logprobs: [N, T] log pi_old under the trained policy.
        sampling_logprobs: [N, T] log-probs the sampler reported (NaN where it had none).
        mask: [N, T] completion mask.
        clip_min, clip_max: C_min, C_max (None: no bound on that side; truncation needs at least one).
    Returns:
        [N, T] (token level) or [N, 1] (sequence level) weights. Masked tokens have d_t = 0.
    """
    if truncate and clip_min is None and clip_max is None:
        raise ValueError("truncated importance sampling needs clip_min or clip_max")
    diff = torch.nan_to_num((old_logprobs - sampling_logprobs) * mask, nan=0.0)  # NaN here only marks "no log-prob"
    weights = torch.exp(diff.sum(dim=-1, keepdim=True) if sequence_level else diff)
    if truncate:
        return torch.clamp(weights, min=clip_min, max=clip_max)
    low = -float("inf") if clip_min is None else clip_min
    high = float("inf") if clip_max is None else clip_max
    return weights.masked_fill((weights < low) | (weights > high), 0.0)


# --------------------------------------------------------------------------- advantages
