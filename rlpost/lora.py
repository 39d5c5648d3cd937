"""LoRA through ``peft`` (``pip install rlpost[peft]``): the policy trains low-rank adapters on a
frozen base, and the reference policy is that same base with the adapters switched off.

- :class:`LoRA`: the ``lora`` argument of every algorithm (``None``: full fine-tuning);
- :func:`apply_lora`: wraps the freshly loaded policy (``configure_model``); only the adapter
  parameters require gradients, so only they get gradients and optimizer state;
- :class:`AdapterDisabledReference`: the reference policy at no memory cost, a view of the policy
  whose forward runs under ``peft``'s ``disable_adapter()``: the base model's exact outputs;
- :func:`save_policy`: the saved policy is the adapter (PEFT format) or, with ``merge``, the
  merged weights in the base model's own format;
- :func:`merged_named_parameters`: the merged weights under the base model's parameter names, for
  an inference engine that holds its own copy (the vLLM backend), without changing the policy.

``peft`` is imported only when LoRA is used: without it, everything else works.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from rlpost.models import frozen_copy


@dataclass(frozen=True)
class LoRA:
    """Low-rank adapters on the policy (Hu et al., arXiv:2106.09685): W x + (alpha / r) B A x.

    Attributes:
        r: rank of the adapters (peft ``r``).
        alpha: scale numerator, alpha (peft ``lora_alpha``).
        dropout: dropout on the adapters' input (peft ``lora_dropout``).
        target_modules: module names (or suffixes) that get adapters, or ``"all-linear"`` (every linear
            layer but the output head; peft ``target_modules``).
        merge: save the merged weights (base format, loadable without peft) instead of the adapter.
    """

    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: str | list[str] = "all-linear"
    merge: bool = False

    def __post_init__(self):
        if self.r < 1:
            raise ValueError(f"lora.r must be >= 1, got {self.r}")
        if self.alpha <= 0:
            raise ValueError(f"lora.alpha must be > 0, got {self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"lora.dropout must be in [0, 1), got {self.dropout}")
        if not self.target_modules:
            raise ValueError(f"lora.target_modules must name at least one module, got {self.target_modules!r}")


def as_lora(value: LoRA | dict | None) -> LoRA | None:
    """The LoRA settings from a config value (the record itself, its fields as a dict, or None)."""
    return LoRA(**value) if isinstance(value, dict) else value


def reference_policy(policy: nn.Module, lora: LoRA | None) -> nn.Module:
    """The reference of a run: the adapter-off base under LoRA, else a frozen copy of the policy."""
    return AdapterDisabledReference(policy) if lora is not None else frozen_copy(policy)


def require_peft():
    """The ``peft`` package, or an ImportError that names the extra to install."""
    try:
        import peft
    except ImportError as err:
        raise ImportError("lora needs the peft package: pip install 'rlpost[peft]' (or pip install peft)") from err
    return peft


def apply_lora(policy: nn.Module, lora: LoRA | None) -> nn.Module:
    """``policy`` with LoRA adapters (a ``peft.PeftModel``; the base weights frozen), or itself when
    ``lora`` is None. Adapter weights are created in float32 whatever the base dtype (peft's
    ``autocast_adapter_dtype``)."""
    if lora is None:
        return policy
    return _with_adapters(policy, lora, task_type="CAUSAL_LM")


def _with_adapters(model: nn.Module, lora: LoRA, task_type: str | None) -> nn.Module:
    peft = require_peft()
    targets = lora.target_modules if isinstance(lora.target_modules, str) else list(lora.target_modules)
    config = peft.LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, task_type=task_type,
                             target_modules=targets)
    try:
        return peft.get_peft_model(model, config)
    except ValueError as err:  # e.g. target modules not found: re-raised naming the field
        raise ValueError(f"lora.target_modules={lora.target_modules!r}: {err}") from err


def trunk_copy(policy: nn.Module, lora: LoRA | None) -> nn.Module:
    """A copy of the policy's trunk (the model without its LM head; PPO's separate critic). Under LoRA:
    the frozen base trunk, without the policy's adapters, with fresh adapters of its own (only they
    train: the critic then costs one frozen copy of the base and a LoRA's gradients and state)."""
    if lora is None:
        return copy.deepcopy(policy.base_model)
    base = copy.deepcopy(policy).unload()  # the policy's adapters removed: the base causal LM
    return _with_adapters(base.base_model, lora, task_type=None)


class AdapterDisabledReference(nn.Module):
    """The reference policy of a LoRA run: the policy's own base, adapters off (no second copy).

    Its forward is the policy's forward under ``disable_adapter()`` in eval mode (as a frozen copy
    would be), so its outputs are exactly the base model's. It registers no parameters: the base
    weights are the policy's, and they are counted there.
    """

    def __init__(self, policy: nn.Module):
        super().__init__()
        self._policy = [policy]  # a list: not a submodule, so not counted, moved or saved twice

    @property
    def config(self):
        return self._policy[0].config

    @property
    def policy(self) -> nn.Module:
        """The policy whose base this is."""
        return self._policy[0]

    def get_output_embeddings(self) -> nn.Module:
        return self._policy[0].get_output_embeddings()

    def forward(self, *args, **kwargs):
        policy = self._policy[0]
        was_training = policy.training
        policy.eval()
        try:
            with torch.no_grad(), policy.disable_adapter():
                return policy(*args, **kwargs)
        finally:
            policy.train(was_training)


def base_parameter_name(name: str) -> str:
    """A PEFT-wrapped parameter's name in the base model: ``base_model.model.`` and ``.base_layer`` dropped.

    >>> base_parameter_name("base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight")
    'model.layers.0.self_attn.q_proj.weight'
    """
    return name.removeprefix("base_model.model.").replace(".base_layer", "")


def merged_named_parameters(policy: nn.Module) -> Iterator[tuple[str, Tensor]]:
    """The policy's weights with its adapters merged in, under the base model's names (what the base
    model, or an inference engine, loads), one tensor at a time.

        W' = W + (alpha / r) B A      for every adapted weight (peft's ``get_delta_weight``)

    Computed out of place: the policy is not changed. (Merging in place and unmerging, as
    ``merge_adapter``/``unmerge_adapter`` do, does not restore a bf16 base exactly: the frozen base,
    and with it the reference, would drift at every sync.) A policy without adapters yields its own
    parameters."""
    if not hasattr(policy, "peft_config"):
        yield from ((name, p.detach()) for name, p in policy.named_parameters())
        return
    from peft.tuners.lora import LoraLayer

    layers = {name: m for name, m in policy.named_modules() if isinstance(m, LoraLayer)}
    for name, p in policy.named_parameters():
        if policy.prefix in name:  # "lora_": the adapters themselves, merged into their base weight
            continue
        owner, _, leaf = name.rpartition(".")
        layer = layers.get(owner.removesuffix(".base_layer")) if owner.endswith(".base_layer") else None
        if layer is not None and leaf == "weight" and not layer.merged:
            with torch.no_grad():
                delta = sum(layer.get_delta_weight(a) for a in layer.active_adapters if a in layer.lora_A)
                p = (p + delta).to(p.dtype)
        yield base_parameter_name(name), p.detach()


def save_policy(policy: nn.Module, tokenizer, out: str | Path, lora: LoRA | None, state_dict: dict | None = None) -> Path:
    """Write the policy and its tokenizer to ``out``: the full model (no LoRA), the adapter in PEFT
    format (``adapter_config.json``, ``adapter_model.safetensors``; load with
    ``peft.AutoPeftModelForCausalLM.from_pretrained(out)``), or with ``lora.merge`` the merged weights
    in the base model's format (load with ``AutoModelForCausalLM.from_pretrained(out)``). ``state_dict``:
    the full weights of a sharded policy, gathered by the caller (:func:`rlpost.sharding.full_state_dict`)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if lora is not None and lora.merge:
        merged = {name: p.clone() for name, p in merged_named_parameters(policy)}
        policy.get_base_model().save_pretrained(out, state_dict=merged)
    else:
        policy.save_pretrained(out, state_dict=state_dict)
    tokenizer.save_pretrained(out)
    return out
