r"""The math of on-policy RL post-training, as pure tensor functions.

Every function is tensor-in, tensor-out, with no state and no config objects.
Shapes use named dims: B prompts, G completions per prompt, N = B*G completions,
T completion tokens, V vocabulary. ``completion_mask`` is 1 where a token counts.

This module imports nothing from rlpost.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

# --------------------------------------------------------------------------- log-probs


def selective_log_softmax(logits: Tensor, index: Tensor, max_elements: int = 2**22) -> Tensor:
    r"""Log-probability of the chosen token at every position.

        log pi(x_t) = z_{t, x_t} - logsumexp_v z_{t, v}

    A gather minus a logsumexp, so no [N, T, V] log-softmax copy is made. Logits of up to
    ``max_elements`` entries are done in one vectorised call; larger ones a block of rows at a
    time, so the temporaries stay bounded for large vocabularies. Half-precision logits are
    upcast block by block (a bf16 logsumexp loses ~1e-2).

    Kept instead of TRL's ``trl.trainer.utils.selective_log_softmax``, which loops over rows in
    Python: on the demo's shapes ([64, 7, 20], 1 CPU thread) TRL's takes 0.57 ms against 0.035 ms
    vectorised; on [16, 64, 32000] both take ~36 ms.

    Args:
        logits: [N, T, V] unnormalised scores.
        index: [N, T] chosen token ids.
    Returns:
        [N, T] log-probabilities, in the dtype of ``logits`` (float32 for half inputs).
    """
    def chosen_logprobs(z: Tensor, i: Tensor) -> Tensor:
        if z.dtype in (torch.float16, torch.bfloat16):
            z = z.float()
        return z.gather(-1, i.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(z, dim=-1)

    if logits.numel() <= max_elements or logits.shape[0] <= 1:
        return chosen_logprobs(logits, index)
    rows = max(1, max_elements // max(logits[0].numel(), 1))
    return torch.cat([chosen_logprobs(z, i) for z, i in zip(logits.split(rows), index.split(rows))])


def entropy_from_logits(logits: Tensor) -> Tensor:
    r"""Entropy of the categorical distribution at every position, in nats.

        H_t = -sum_v p_{t,v} log p_{t,v}

    TRL's chunked implementation (``trl.trainer.utils.entropy_from_logits``), measured faster than
    a vectorised one (~3x on [16, 64, 32000]); half-precision logits are upcast first.

    Args:
        logits: [..., V].
    Returns:
        [...] entropies.
    """
    from trl.trainer.utils import entropy_from_logits as trl_entropy

    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    return trl_entropy(logits)


# --------------------------------------------------------------------------- KL estimators
# Schulman, "Approximating KL divergence" (2020), http://joschu.net/blog/kl-approx.html.
# Each estimates KL(pi_theta || pi_ref) from samples x ~ pi_theta; r = pi_ref(x) / pi_theta(x).


def kl_k1(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    r"""k1 = -log r = log pi_theta - log pi_ref. Unbiased, high variance, can be negative."""
    return logprobs - ref_logprobs


def kl_k2(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    r"""k2 = (log r)^2 / 2. Biased, low variance, always >= 0."""
    return 0.5 * (ref_logprobs - logprobs) ** 2


def kl_k3(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    r"""k3 = r - log r - 1 (the GRPO paper's estimator, arXiv:2402.03300 eq. 4).

    Unbiased and always >= 0 since e^x >= 1 + x.
    """
    log_ratio = ref_logprobs - logprobs
    return torch.exp(log_ratio) - log_ratio - 1.0


# --------------------------------------------------------------------------- policy loss


class SurrogateOutput(NamedTuple):
    """Per-token clipped-surrogate loss and the clip bookkeeping (all [N, T])."""

    loss: Tensor
    ratio: Tensor
    clipped_low: Tensor
    clipped_high: Tensor


def clipped_surrogate(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    epsilon: float = 0.2,
    epsilon_high: float | None = None,
) -> SurrogateOutput:
    r"""PPO clipped surrogate, as a loss to minimise (Schulman et al., arXiv:1707.06347).

        rho_t  = exp(log pi_theta(o_t) - log pi_old(o_t))
        loss_t = -min(rho_t * A_t, clip(rho_t, 1 - eps_low, 1 + eps_high) * A_t)

    ``epsilon_high`` defaults to ``epsilon`` (symmetric); DAPO's clip-higher sets it larger.

    Args:
        logprobs, old_logprobs: [N, T].
        advantages: [N] (broadcast over tokens) or [N, T].
    Returns:
        SurrogateOutput; ``clipped_low`` marks tokens where A < 0 and rho < 1 - eps_low
        (the min picked the clipped term), ``clipped_high`` where A > 0 and rho > 1 + eps_high.
    """
    eps_high = epsilon if epsilon_high is None else epsilon_high
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(-1)
    ratio = torch.exp(logprobs - old_logprobs)
    clipped = torch.clamp(ratio, 1.0 - epsilon, 1.0 + eps_high)
    loss = -torch.min(ratio * advantages, clipped * advantages)
    clipped_low = (ratio < 1.0 - epsilon) & (advantages < 0)
    clipped_high = (ratio > 1.0 + eps_high) & (advantages > 0)
    return SurrogateOutput(loss, ratio, clipped_low, clipped_high)


def group_advantages(rewards: Tensor, group_size: int, scale: bool = True, eps: float = 1e-4) -> Tensor:
    r"""Group-relative advantage per completion (GRPO, arXiv:2402.03300 sec. 4.1.2).

        A_i = (r_i - mean(r_g)) / (std(r_g) + eps)   if scale
        A_i =  r_i - mean(r_g)                        otherwise (Dr. GRPO, arXiv:2503.20783)

    std is the unbiased sample std (as TRL). ``eps`` matches TRL's 1e-4.

    Args:
        rewards: [B*G], the G completions of each prompt contiguous.
    Returns:
        [B*G]. A group whose rewards are all equal gets exactly 0, never NaN.
    Raises:
        ValueError: if the rewards do not form whole groups, or G < 2.
    """
    _check_groups(rewards, group_size)
    r = rewards.view(-1, group_size)  # [B, G]
    adv = r - r.mean(dim=1, keepdim=True)
    if scale:
        adv = adv / (r.std(dim=1, keepdim=True) + eps)
    return adv.masked_fill(zero_signal_groups(rewards, group_size).unsqueeze(1), 0.0).view(-1)


def batch_scaled_group_advantages(rewards: Tensor, group_size: int, eps: float = 1e-4,
                                  sums: Tensor | None = None) -> Tensor:
    r"""Group mean as baseline, std over the whole batch as scale (TRL ``scale_rewards="batch"``).

        A_i = (r_i - mean(r_g)) / (std(r_batch) + eps)

    std is the unbiased sample std. Over several ranks "the batch" is every rank's rewards: pass
    ``sums``, the :func:`moment_sums` of the rewards summed over ranks (all-reduce); None: ``rewards``
    is the whole batch.

    Returns:
        [B*G]; zero-signal groups get exactly 0.
    """
    adv = group_advantages(rewards, group_size, scale=False)
    if sums is not None:
        return adv / (mean_var_from_sums(sums).var.sqrt().to(adv.dtype) + eps)
    return adv / (rewards.std() + eps) if rewards.numel() > 1 else adv


def leave_one_out_advantages(rewards: Tensor, group_size: int) -> Tensor:
    r"""RLOO baseline (Ahmadian et al., arXiv:2402.14740).

        A_i = r_i - 1/(G-1) * sum_{j != i} r_j  =  G/(G-1) * (r_i - mean(r_g))

    Returns:
        [B*G]; equal-reward groups get exactly 0.
    """
    _check_groups(rewards, group_size)
    r = rewards.view(-1, group_size)
    others = (r.sum(dim=1, keepdim=True) - r) / (group_size - 1)
    adv = (r - others).masked_fill(zero_signal_groups(rewards, group_size).unsqueeze(1), 0.0)
    return adv.view(-1)


def zero_signal_groups(rewards: Tensor, group_size: int) -> Tensor:
    """[B] bool: True where all G rewards of a prompt are equal (no learning signal)."""
    r = rewards.view(-1, group_size)
    return (r == r[:, :1]).all(dim=1)


def require_groups(num_generations: int) -> None:
    """A group baseline needs G >= 2 completions per prompt."""
    if num_generations < 2:
        raise ValueError(f"num_generations must be >= 2 (a group needs a baseline), got {num_generations}")


def _check_groups(rewards: Tensor, group_size: int) -> None:
    if group_size < 2:
        raise ValueError(f"group_size (num_generations) must be >= 2 for a group baseline, got {group_size}")
    if rewards.dim() != 1 or rewards.numel() % group_size != 0:
        raise ValueError(
            f"rewards of shape {tuple(rewards.shape)} do not hold whole groups of {group_size}: "
            "every prompt's completions must be in the same batch, contiguous"
        )


# --------------------------------------------------------------------------- masked reductions


def masked_sum(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    r"""sum_t x_t m_t over ``dim`` (all dims if None). Padding never contributes, even if NaN there."""
    x = torch.where(mask.bool(), x, torch.zeros_like(x))
    return x.sum() if dim is None else x.sum(dim=dim)


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    r"""sum_t x_t m_t / sum_t m_t. A fully masked row gives 0, not NaN."""
    return masked_sum(x, mask, dim) / mask.sum(dim=dim).clamp(min=1)


def masked_var(x: Tensor, mask: Tensor) -> Tensor:
    r"""Unbiased variance of the masked entries: sum m (x - mean)^2 / (sum m - 1)."""
    mean = masked_mean(x, mask)
    n = mask.sum()
    if n < 2:
        raise ValueError(f"masked_var needs at least 2 unmasked entries, got {int(n)}")
    return masked_sum((x - mean) ** 2, mask) / (n - 1)


class MeanVar(NamedTuple):
    mean: Tensor
    var: Tensor


def moment_sums(x: Tensor, mask: Tensor | None = None) -> Tensor:
    r"""[n, S_1, S_2] = [sum_t m_t, sum_t m_t x_t, sum_t m_t x_t^2], [3] float64 (S_2 - n mean^2 stays exact
    enough for float32 inputs). Sums add: summed over ranks (one all-reduce) they describe the global
    batch, whose mean and variance :func:`mean_var_from_sums` gives."""
    m = torch.ones_like(x, dtype=torch.float64) if mask is None else mask.to(torch.float64)
    x = torch.where(m.bool(), x.to(torch.float64), torch.zeros((), dtype=torch.float64, device=x.device))
    return torch.stack([m.sum(), (m * x).sum(), (m * x * x).sum()])


def mean_var_from_sums(sums: Tensor) -> MeanVar:
    r"""Mean and unbiased variance from :func:`moment_sums` (possibly summed over ranks), float64 scalars:

        mean = S_1 / n,   var = (S_2 - n mean^2) / (n - 1)      (var = 0, not NaN, for n < 2)
    """
    n, s1, s2 = sums.unbind()
    mean = s1 / n.clamp(min=1)
    var = ((s2 - n * mean**2) / (n - 1).clamp(min=1)).clamp(min=0)
    return MeanVar(mean, torch.where(n > 1, var, torch.zeros_like(var)))


def whiten(x: Tensor, mask: Tensor, shift_mean: bool = True, eps: float = 1e-8, sums: Tensor | None = None) -> Tensor:
    r"""Normalise the masked entries to zero mean and unit variance (PPO advantage whitening).

        x' = (x - mean) / sqrt(var + eps)      (mean added back if not shift_mean)

    mean and var are taken over unmasked entries only; masked entries come back 0. Over several
    ranks pass ``sums``, the :func:`moment_sums` of ``x`` summed over ranks, to whiten by the global
    batch's statistics; None: ``x`` is the whole batch.
    """
    if sums is None:
        mean, var = masked_mean(x, mask), masked_var(x, mask)
    else:
        mean, var = (t.to(x.dtype) for t in mean_var_from_sums(sums))
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return torch.where(mask.bool(), out, torch.zeros_like(out))


# --------------------------------------------------------------------------- aggregation
# Names follow verl's ``agg_loss`` vocabulary. Each takes optional global counts so a
# minibatch's share of the loss is normalised by the whole rollout's counts: the summed
# minibatch losses then equal the full-batch loss, whatever the split (see tests).


def seq_mean_token_mean(loss: Tensor, mask: Tensor, num_seqs: float | None = None) -> Tensor:
    r"""Original GRPO: mean over each completion's tokens, then mean over completions.

        L = 1/N sum_i (1/|o_i| sum_t l_{i,t})
    """
    per_seq = masked_sum(loss, mask, dim=-1) / mask.sum(dim=-1).clamp(min=1)
    return per_seq.sum() / (loss.shape[0] if num_seqs is None else num_seqs)


def token_mean(loss: Tensor, mask: Tensor, num_tokens: float | None = None) -> Tensor:
    r"""DAPO (arXiv:2503.14476): mean over every completion token in the batch.

        L = sum_{i,t} l_{i,t} / sum_i |o_i|
    """
    denom = mask.sum().clamp(min=1) if num_tokens is None else num_tokens
    return masked_sum(loss, mask) / denom


def token_sum_norm(loss: Tensor, mask: Tensor, max_len: int, num_seqs: float | None = None) -> Tensor:
    r"""Dr. GRPO (arXiv:2503.20783): token sum divided by a constant length, mean over completions.

        L = 1/(N * L_max) sum_{i,t} l_{i,t}
    """
    return masked_sum(loss, mask) / (max_len * (loss.shape[0] if num_seqs is None else num_seqs))


# --------------------------------------------------------------------------- KL-shaped rewards


def kl_shaped_token_rewards(
    scores: Tensor, logprobs: Tensor, ref_logprobs: Tensor | None, mask: Tensor, beta: float
) -> Tensor:
    r"""Per-token reward with the KL folded in (Ouyang et al., arXiv:2203.02155; PPO and REINFORCE++).

        r_t = -beta * (log pi_old(o_t) - log pi_ref(o_t)) + [t = last token] * score

    Args:
        scores: [N] sequence scores; logprobs, ref_logprobs, mask: [N, T]. ``ref_logprobs``
            None means beta = 0 (no reference model).
    Returns:
        [N, T], 0 where masked.
    """
    rewards = torch.zeros_like(logprobs)
    if ref_logprobs is not None and beta != 0:
        rewards = -beta * kl_k1(logprobs, ref_logprobs)
    last = (mask.sum(dim=1).long() - 1).clamp(min=0)  # completion tokens are a prefix of the row
    rewards = rewards.scatter_add(1, last.unsqueeze(1), scores.to(rewards.dtype).unsqueeze(1))
    return torch.where(mask.bool(), rewards, torch.zeros_like(rewards))


# --------------------------------------------------------------------------- PPO critic


class GAEOutput(NamedTuple):
    """Per-token advantages and value targets (both [N, T], 0 where masked)."""

    advantages: Tensor
    returns: Tensor


def gae(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float = 1.0, lam: float = 0.95) -> GAEOutput:
    r"""Generalised advantage estimation (Schulman et al., arXiv:1506.02438), per token.

        delta_t = r_t + gamma * V_{t+1} - V_t        (V past the last real token is 0)
        A_t     = delta_t + gamma * lam * A_{t+1}
        R_t     = A_t + V_t                          (value targets)

    Args:
        rewards, values, mask: [N, T]; a completion's tokens are a prefix of its row.
    Returns:
        GAEOutput(advantages, returns), both [N, T] and 0 where masked.
    """
    keep = mask.bool()
    values = torch.where(keep, values, torch.zeros_like(values))
    rewards = torch.where(keep, rewards, torch.zeros_like(rewards))
    mask = mask.to(values.dtype)
    adv = torch.zeros_like(values)
    last = torch.zeros_like(values[:, 0])
    for t in reversed(range(values.shape[1])):
        next_value = values[:, t + 1] if t + 1 < values.shape[1] else torch.zeros_like(last)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last = (delta + gamma * lam * last) * mask[:, t]
        adv[:, t] = last
    return GAEOutput(adv, (adv + values) * mask)


class ValueLossOutput(NamedTuple):
    """Per-token clipped value loss and where the clipped term won (both [N, T])."""

    loss: Tensor
    clipped: Tensor


def clipped_value_loss(values: Tensor, old_values: Tensor, returns: Tensor, clip: float = 0.2) -> ValueLossOutput:
    r"""PPO's clipped value loss, per token (as in OpenAI baselines ppo2).

        V_clip = V_old + clip(V - V_old, -c, c)
        l_t    = 1/2 * max((V - R)^2, (V_clip - R)^2)

    ``clipped`` marks tokens where the clipped term is the larger one (its gradient is 0).
    """
    v_clip = old_values + torch.clamp(values - old_values, -clip, clip)
    unclipped_sq, clipped_sq = (values - returns) ** 2, (v_clip - returns) ** 2
    return ValueLossOutput(0.5 * torch.max(unclipped_sq, clipped_sq), clipped_sq > unclipped_sq)
