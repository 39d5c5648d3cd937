r"""Log-probabilities through the LM head a block of positions at a time: the [M, V] logits never exist.

For M positions with final hidden states h_m ([M, H]), LM head weight W ([V, H]) and bias b, at
temperature tau, and chosen tokens x_m:

    z_m = (W h_m + b) / tau,    log pi(x_m) = z_{m, x_m} - logsumexp_v z_{m, v},
    H_m = logsumexp_v z_{m, v} - sum_v softmax(z_m)_v z_{m, v}              (entropy, no gradient)

Backward, with g_m = dL / d log pi(x_m) and p_m = softmax(z_m):

    dL/dz_m = g_m (onehot(x_m) - p_m),   dL/dh_m = W^T dL/dz_m / tau,
    dL/dW = sum_m (dL/dz_m / tau) h_m^T,  dL/db = sum_m dL/dz_m / tau.

Each block of rows recomputes its logits in the backward (one more [rows, H] x [H, V] product per block
than a full-logits pass: the price of never holding [M, V]). Peak extra memory: a few [rows, V] blocks
instead of the [M, V] logits, their temperature-scaled copy and their gradient. The same idea as
TRL's fused LM head (``trl.trainer.utils.add_fused_lm_head``), written here against rlpost's forward.

Pure tensor math; imports nothing of rlpost.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor


class ChunkedScores(NamedTuple):
    """logprobs: [M] log pi(x_m) (differentiable); entropy: [M] (detached) or None."""

    logprobs: Tensor
    entropy: Tensor | None


def chunked_logprobs(hidden: Tensor, weight: Tensor, bias: Tensor | None, index: Tensor, temperature: float = 1.0,
                     block_rows: int = 1024, with_entropy: bool = False) -> ChunkedScores:
    """log pi(x_m) (and the entropy) of M positions through the LM head, ``block_rows`` positions at a time.

    Args:
        hidden: [M, H] final hidden states (any float dtype; the logits are computed in float32).
        weight: [V, H] LM head weight; bias: [V] or None.
        index: [M] chosen token ids.
    Returns:
        :class:`ChunkedScores`, float32.
    """
    if block_rows < 1:
        raise ValueError(f"block_rows must be >= 1, got {block_rows}")
    logprobs, entropy = _ChunkedLogprobs.apply(hidden, weight, bias, index, temperature, block_rows, with_entropy)
    return ChunkedScores(logprobs, entropy if with_entropy else None)


def _block_logits(h: Tensor, weight: Tensor, bias: Tensor | None, temperature: float) -> Tensor:
    z = torch.nn.functional.linear(h, weight, bias).float()
    return z / temperature if temperature != 1.0 else z


class _ChunkedLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, index, temperature, block_rows, with_entropy):
        device = hidden.device.type  # the backward recomputes the logits under the forward's autocast
        ctx.amp = (device, torch.get_autocast_dtype(device), torch.is_autocast_enabled(device))
        logprobs = hidden.new_empty(hidden.shape[0], dtype=torch.float32)
        entropy = torch.zeros_like(logprobs)
        lse_all = torch.empty_like(logprobs)
        for start in range(0, hidden.shape[0], block_rows):
            rows = slice(start, start + block_rows)
            z = _block_logits(hidden[rows], weight, bias, temperature)
            lse = torch.logsumexp(z, dim=-1)
            lse_all[rows] = lse
            logprobs[rows] = z.gather(-1, index[rows, None]).squeeze(-1) - lse
            if with_entropy:
                entropy[rows] = lse - (torch.softmax(z, dim=-1) * z).sum(-1)
        ctx.save_for_backward(hidden, weight, bias, index, lse_all)
        ctx.temperature, ctx.block_rows = temperature, block_rows
        ctx.mark_non_differentiable(entropy)
        return logprobs, entropy

    @staticmethod
    def backward(ctx, grad_logprobs, grad_entropy):
        device, dtype, enabled = ctx.amp
        with torch.autocast(device, dtype=dtype, enabled=enabled):
            return _ChunkedLogprobs._backward(ctx, grad_logprobs)

    @staticmethod
    def _backward(ctx, grad_logprobs):
        hidden, weight, bias, index, lse_all = ctx.saved_tensors
        tau, want_h, want_w = ctx.temperature, ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_h = torch.empty_like(hidden) if want_h else None
        grad_w = torch.zeros_like(weight, dtype=torch.float32) if want_w else None
        grad_b = torch.zeros(weight.shape[0], dtype=torch.float32, device=weight.device) \
            if bias is not None and ctx.needs_input_grad[2] else None
        for start in range(0, hidden.shape[0], ctx.block_rows):
            rows = slice(start, start + ctx.block_rows)
            z = _block_logits(hidden[rows], weight, bias, tau)
            dz = torch.exp(z - lse_all[rows, None]).mul_(-grad_logprobs[rows, None])  # -g p
            dz.scatter_add_(-1, index[rows, None], grad_logprobs[rows, None])  # + g onehot
            dz = dz / tau
            if want_h:
                grad_h[rows] = (dz.to(weight.dtype) @ weight).to(hidden.dtype)
            if want_w:
                grad_w += dz.t() @ hidden[rows].float()
            if grad_b is not None:
                grad_b += dz.sum(0)
        return (grad_h, None if grad_w is None else grad_w.to(weight.dtype),
                None if grad_b is None else grad_b.to(bias.dtype), None, None, None, None)
