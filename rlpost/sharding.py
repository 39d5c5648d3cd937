"""Scaling a module's models out: FSDP2 sharding under Lightning's ``ModelParallelStrategy``,
generation from a sharded policy, its export, and activation (gradient) checkpointing.

Why FSDP2 through ``ModelParallelStrategy``: rlpost trains with manual optimization (several
forwards and backwards, two optimizers, per rollout), and Lightning's ``FSDPStrategy`` (FSDP1)
fails there ("Expects BACKWARD_PRE or BACKWARD_POST state but got HandleTrainingState.FORWARD",
Lightning issues #19626 / #19685). ``ModelParallelStrategy`` gives the module a device mesh and
leaves the wrapping to ``configure_model``, where :func:`shard_models` applies torch's
``fully_shard`` (FSDP2) per transformer block and then to each model as a whole, on the mesh's
``data_parallel`` dimension. rlpost does no tensor parallelism, so that dimension must span every
process (``data_parallel_size`` = world size, ``tensor_parallel_size`` = 1): the default
``ModelParallelStrategy()`` puts the processes of a node on the tensor-parallel dimension, where
FSDP2 would never synchronise their gradients; :func:`check_strategy` refuses it.

Imports no algorithm.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from torch import nn

FSDP_PRESET = "configs/trainer/fsdp.yaml"


def check_strategy(strategy, mesh) -> None:
    """Refuse a strategy rlpost cannot train under, naming the fields to change.

    Args:
        strategy: the trainer's strategy.
        mesh: the module's device mesh (``LightningModule.device_mesh``; None without one).
    """
    from lightning.pytorch.strategies import FSDPStrategy

    if isinstance(strategy, FSDPStrategy):
        raise ValueError(f"trainer.strategy={type(strategy).__name__} (FSDP1) fails under rlpost's manual optimization "
                         "(Lightning issues #19626, #19685); shard with ModelParallelStrategy (FSDP2): "
                         f"--config {FSDP_PRESET}")
    if mesh is None:
        return
    dp, world = mesh["data_parallel"].size(), strategy.world_size
    if dp < world:
        tp = mesh["tensor_parallel"].size() if "tensor_parallel" in (mesh.mesh_dim_names or ()) else world // dp
        raise ValueError(f"ModelParallelStrategy(data_parallel_size={dp}, tensor_parallel_size={tp}) on {world} "
                         "processes: rlpost does no tensor parallelism, so ranks outside one data-parallel group would "
                         f"never synchronise gradients; set trainer.strategy.init_args.data_parallel_size={world} and "
                         "tensor_parallel_size=1")


def shard_models(models: Iterable[nn.Module | None], mesh) -> None:
    """Shard every model on ``mesh`` (the ``data_parallel`` dimension of the strategy's mesh), in place.

    A Hugging Face model (it names its transformer blocks in ``_no_split_modules``) is sharded per
    block, then as a whole (the root unit: embeddings, final norm, LM head). Any other model with
    children (a critic: trunk and head) is called through its children, so each child is sharded
    the same way as its own root; a leaf module (a value head) is one unit. Build the optimizers
    after this: they must hold the sharded parameters.
    """
    for model in models:
        if model is not None:
            _shard(model, mesh)


def _shard(model: nn.Module, mesh) -> None:
    from torch.distributed.fsdp import fully_shard

    blocks = getattr(model, "_no_split_modules", None)
    children = list(model.children())
    if blocks is None and children and not list(model.parameters(recurse=False)):
        for child in children:
            _shard(child, mesh)
        return
    names = set(blocks or ())
    for module in model.modules():
        if module is not model and type(module).__name__ in names:
            fully_shard(module, mesh=mesh)
    fully_shard(model, mesh=mesh)


def is_sharded(model: nn.Module | None) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


@contextmanager
def gathered(model: nn.Module) -> Iterator[None]:
    """Keep a sharded model's parameters gathered for the duration (generation); a no-op otherwise.

    Decoding runs one forward per new token. FSDP2's hooks would all-gather every block at each of
    them; here each block stays gathered after its first forward (``set_reshard_after_forward(False)``),
    so a whole ``generate`` costs one all-gather per unit, and no collective runs after the first
    step (ranks may stop at different lengths). Afterwards the setting is restored and every unit is
    resharded (the root unit keeps its parameters gathered after a forward unless told). Every rank
    must enter this the same number of times.
    """
    from torch.distributed.fsdp import FSDPModule

    if not isinstance(model, FSDPModule):
        yield
        return
    units = [m for m in model.modules() if isinstance(m, FSDPModule)]
    inner = [m for m in units if m is not model]
    for unit in inner:
        unit.set_reshard_after_forward(False, recurse=False)
    try:
        yield
    finally:
        for unit in inner:
            unit.set_reshard_after_forward(True, recurse=False)
        for unit in units:
            unit.reshard()


def full_state_dict(model: nn.Module) -> dict | None:
    """The full (unsharded) state dict of a sharded model on rank 0 (on CPU; empty elsewhere), or
    None for a model that is not sharded. A collective: every rank must call it."""
    if not is_sharded(model):
        return None
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def checkpoint_activations(*models: nn.Module | None) -> None:
    """Gradient checkpointing: each transformer block's activations are recomputed in the backward
    pass instead of kept from the forward (Hugging Face ``activation_checkpointing_enable``, formerly
    ``gradient_checkpointing_enable``, with the non-reentrant torch implementation). Applies to a
    Hugging Face model, or to the Hugging Face models among a module's children (a separate critic's
    trunk); a model that cannot is refused.

    transformers checkpoints only modules in training mode, and ``from_pretrained`` returns a model
    in eval mode (which Lightning keeps), so the checkpointed model is put in training mode: its
    dropout, if its config has any (causal LMs rarely do), is then active in the update too.
    Generation still runs in eval mode."""
    from transformers import PreTrainedModel

    for model in models:
        if model is None:
            continue
        targets = [model] if isinstance(model, PreTrainedModel) else \
            [m for m in model.children() if isinstance(m, PreTrainedModel)]
        for target in targets:
            if not target.supports_gradient_checkpointing:
                raise ValueError(f"gradient_checkpointing=True: {type(target).__name__} does not support it")
            if hasattr(target, "activation_checkpointing_enable"):  # the name in recent transformers (5.24 here)
                target.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                target.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            target.train()
