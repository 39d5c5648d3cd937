"""The memory plan: bytes per device of every model's parameters, gradients and optimizer state,
known before any weight is loaded, so a user sees whether a run fits before launching it.

:func:`memory_plan_of` builds the algorithm's own models (policy from its config, LoRA, reference,
critic: the very hooks the run uses) on the ``meta`` device, casts them as the run's precision
will, builds the run's own optimizers over them, and counts (:func:`plan_memory`):

- parameters: every parameter's bytes (a LoRA reference shares the policy's and counts 0);
- gradients: the trainable parameters' bytes (a gradient has its parameter's dtype);
- optimizer state: per trainable parameter, what its optimizer keeps after a step, measured on two
  small probe tensors of the same optimizer class, settings and dtype (``a * numel + b``: AdamW keeps
  two moments and a step counter);
- per device: divided by the world size under a sharding strategy (FSDP, ModelParallel), up to
  each tensor's padding to a multiple of the world size; whole under DDP or one device.

What it leaves out is what cannot be known from the config: activations, the KV cache and
generation workspace, the allocator's fragmentation, and on CPU the interpreter and libraries
(~470 MiB). A test checks it equals the run's measured ``memory_breakdown`` exactly on CPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from rlpost.memory import tensor_bytes
from rlpost.models import BUILTIN_CONFIGS, load_config

PARTS = ("parameters", "gradients", "optimizer_state")
PRECISION_DTYPES = {"bf16-true": torch.bfloat16, "16-true": torch.float16, "64-true": torch.float64}


@dataclass
class MemoryPlan:
    """Bytes per device of each model's ``parameters``, ``gradients`` and ``optimizer_state``.

    Attributes:
        models: ``policy`` / ``reference`` / ``critic`` -> part -> bytes (the shape of ``summary.json``'s
            ``memory_breakdown`` without ``accounted_bytes``).
        counts: model -> (parameters, trainable parameters), in elements.
        world_size, sharded: the strategy's devices and whether it shards model state over them.
        precision: the trainer's precision setting.
    """

    models: dict[str, dict[str, int]]
    counts: dict[str, tuple[int, int]]
    world_size: int = 1
    sharded: bool = False
    precision: str = "32-true"

    @property
    def accounted_bytes(self) -> int:
        return sum(sum(parts.values()) for parts in self.models.values())

    def as_breakdown(self) -> dict:
        """The plan in ``memory_breakdown``'s shape, to compare with a run's."""
        return {**{k: dict(v) for k, v in self.models.items()}, "accounted_bytes": self.accounted_bytes}

    def format(self) -> str:
        lines = [f"[rlpost] memory plan per device (model state only; activations, KV cache and generation "
                 f"workspace come on top): precision {self.precision}, world size {self.world_size}, "
                 f"{'sharded' if self.sharded else 'replicated'}"]
        for name, parts in self.models.items():
            total, trainable = self.counts[name]
            detail = ", ".join(f"{part.replace('_', ' ')} {_gib(b)}" for part, b in parts.items())
            lines.append(f"  {name:9s} {detail} ({total / 1e6:,.1f}M parameters, {trainable / 1e6:,.2f}M trained)")
        lines.append(f"  total     {_gib(self.accounted_bytes)}")
        return "\n".join(lines)


def _gib(n: float) -> str:
    return f"{n / 2**30:,.3f} GiB" if n >= 2**30 else f"{n / 2**20:,.1f} MiB"


def plan_memory(models: dict[str, nn.Module | None], optimizers: list[torch.optim.Optimizer], world_size: int = 1,
                sharded: bool = False, precision: str = "32-true") -> MemoryPlan:
    """Count ``models`` (any device, ``meta`` included) and the state ``optimizers`` would keep for them."""
    per_param = {}
    for opt in optimizers:
        for group in opt.param_groups:
            for p in group["params"]:
                per_param[id(p)] = optimizer_state_bytes(opt, group, p)
    share = world_size if sharded else 1
    out, counts = {}, {}
    for name in ("policy", "reference", "critic"):
        params = list(models[name].parameters()) if models.get(name) is not None else []
        trained = [p for p in params if p.requires_grad]
        parts = (tensor_bytes(params), tensor_bytes(trained), sum(per_param.get(id(p), 0) for p in trained))
        out[name] = {part: -(-b // share) for part, b in zip(PARTS, parts)}
        counts[name] = (sum(p.numel() for p in params), sum(p.numel() for p in trained))
    return MemoryPlan(out, counts, world_size, sharded, precision)


def optimizer_state_bytes(opt: torch.optim.Optimizer, group: dict, param: torch.Tensor) -> int:
    """Bytes of the state ``opt`` keeps for ``param`` after a step: ``a * numel + b``, with a and b
    measured by stepping the same optimizer class and settings on probes of 1 and 3 elements."""
    a, b = _probe(type(opt), tuple(sorted((k, v) for k, v in group.items() if k != "params")), param.dtype)
    return a * param.numel() + b


_PROBES: dict = {}


def _probe(cls, settings: tuple, dtype: torch.dtype) -> tuple[int, int]:
    key = (cls, settings, dtype)
    if key not in _PROBES:
        probes = [torch.zeros(n, dtype=dtype, requires_grad=True) for n in (1, 3)]
        opt = cls(probes)
        opt.param_groups[0].update(dict(settings))  # the group's own settings, unvalidated as the run's are
        for p in probes:
            p.grad = torch.zeros_like(p)
        opt.step()
        one, three = (tensor_bytes(opt.state[p].values()) for p in probes)
        _PROBES[key] = ((three - one) // 2, one - (three - one) // 2)
    return _PROBES[key]


def meta_policy(model_name_or_path: str, dtype: str | torch.dtype | None) -> nn.Module:
    """The policy as :func:`rlpost.models.load_policy` would load it, on the ``meta`` device (no weights
    read): its config, in ``dtype`` or as ``from_pretrained`` picks it (the config's, else the default)."""
    from transformers import AutoModelForCausalLM

    config = load_config(model_name_or_path)
    if dtype is None:
        dtype = None if model_name_or_path in BUILTIN_CONFIGS else getattr(config, "dtype", None)
    dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, dtype=dtype or torch.get_default_dtype())


def memory_plan_of(module, precision: str | None = None, world_size: int | None = None,
                   sharded: bool | None = None) -> MemoryPlan:
    """The plan of an on-policy algorithm (or any :class:`~rlpost.algorithms.policy_module.PolicyModule`
    with ``configure_models`` and ``configure_optimizers``), before its models exist. ``precision``,
    ``world_size`` and ``sharded`` default to its trainer's (``--print_plan`` can pass them without one)."""
    from rlpost.lora import apply_lora

    trainer = module._trainer
    if precision is None:
        precision = str(trainer.precision) if trainer is not None else "32-true"
    if world_size is None:
        world_size = trainer.world_size if trainer is not None else 1
    if sharded is None:
        sharded = trainer is not None and shards(trainer.strategy)
    saved = {name: getattr(module, name, None) for name in ("policy", "reference", "critic")}
    try:
        with torch.device("meta"):
            module.policy = apply_lora(meta_policy(module.hparams.model_name_or_path, module.hparams.dtype),
                                       module.lora)
            module.configure_models()
        models = {name: getattr(module, name, None) for name in saved}
        if precision in PRECISION_DTYPES:  # Lightning's convert_module: the whole module cast
            for m in models.values():
                if m is not None:
                    m.to(PRECISION_DTYPES[precision])
        opts = module.configure_optimizers()
        return plan_memory(models, opts if isinstance(opts, list) else [opts], world_size, sharded, precision)
    finally:
        for name, value in saved.items():
            setattr(module, name, value)


def shards(strategy) -> bool:
    from lightning.pytorch.strategies import FSDPStrategy, ModelParallelStrategy

    return isinstance(strategy, (FSDPStrategy, ModelParallelStrategy))
