"""Peak memory and model-state accounting.

GPU: the CUDA caching allocator's peak (``torch.cuda.max_memory_allocated``).
CPU: the process's peak resident set size (``VmHWM`` in ``/proc/self/status``). Importing
torch/transformers/lightning alone costs ~450 MiB, so the high-water mark is reset when
training starts by writing ``5`` to ``/proc/self/clear_refs`` (Linux); the figure is then the
training phase's own peak RSS (which still includes the models and the interpreter).
"""

from __future__ import annotations

import resource
from pathlib import Path

import torch
from torch import nn


def reset_peak_memory(device: torch.device) -> bool:
    """Start a new high-water mark. Returns False where the platform cannot reset it."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return True
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_memory_bytes(device: torch.device) -> int:
    """Peak since the last reset: allocator peak on GPU, peak RSS on CPU."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux reports KiB


def tensor_bytes(tensors) -> int:
    """Bytes this process holds: a sharded tensor (FSDP2's DTensor) counts its local shard."""
    from torch.distributed.tensor import DTensor

    local = (t.to_local() if isinstance(t, DTensor) else t for t in tensors if isinstance(t, torch.Tensor))
    return sum(t.numel() * t.element_size() for t in local)


def model_state_bytes(model: nn.Module | None, optimizers: list[torch.optim.Optimizer] = ()) -> dict[str, int]:
    """Bytes of a model's parameters, their gradients and its optimizer state, as held by this process
    (of a sharded model, its shard).

    Only the optimizer state that belongs to this model's parameters is counted, so a
    policy and a critic sharing one process are accounted apart.
    """
    if model is None:
        return {"parameters": 0, "gradients": 0, "optimizer_state": 0}
    params = list(model.parameters())
    ids = {id(p) for p in params}
    opt_bytes = 0
    for opt in optimizers:
        for p, state in opt.state.items():
            if id(p) in ids:
                opt_bytes += tensor_bytes(state.values())
    return {
        "parameters": tensor_bytes(params),
        "gradients": tensor_bytes(p.grad for p in params if p.grad is not None),
        "optimizer_state": opt_bytes,
    }


def breakdown_of(models: dict, optimizers: list[torch.optim.Optimizer] = ()) -> dict:
    """Bytes of parameters, gradients and optimizer state of each model (``policy``, ``reference``,
    ``critic``: absent or None counts 0) and their total ``accounted_bytes``."""
    out = {name: model_state_bytes(models.get(name), optimizers) for name in ("policy", "reference", "critic")}
    out["accounted_bytes"] = sum(sum(v.values()) for v in out.values())
    return out
