"""Exact resume: what a checkpoint must hold besides the weights, and what a resume must refuse.

A run resumed from a mid-run checkpoint continues exactly as the uninterrupted run would have
(bit-identical on CPU; the test is ``tests/test_resume.py``). Four pieces make it so:

- the **data position**: the training loader is resumable (:mod:`rlpost.data.loader`);
- the **RNG states** (torch, CUDA, Python, numpy) of every rank: :class:`RNGState` checkpoints them and
  puts them back right before the first resumed step; a validation inside the fit is RNG-neutral
  (the states are put back when it ends), so a resume, which does not repeat the validation that
  followed its checkpoint, draws the same numbers;
- the **run record** (history, held-out history, counters, timers: :class:`rlpost.run_record.RunRecord`);
- the **arguments**: :func:`check_resume_args` applies a changed argument where that is safe and
  refuses it otherwise, naming the field and both values, so a checkpoint's value is never kept
  silently (nor silently overridden).

The frozen reference is not stored (:func:`drop_frozen`, :func:`restore_frozen`): it is rebuilt from
the base weights when the run resumes. :func:`check_checkpoint` refuses a ``ckpt_path`` that is not a
readable Lightning checkpoint before anything is built. Imports nothing of rlpost.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch
from lightning.fabric.utilities.seed import _collect_rng_states, _set_rng_states
from lightning.pytorch import Callback
from torch import nn


# Arguments a resumed run may change: they act only on what happens next, never on the meaning of the
# restored state (weights, optimizer moments, data position, counters). Every other difference is refused.
RESUME_SAFE = frozenset({
    "temperature", "top_p", "top_k", "eval_temperature", "beta", "epsilon", "epsilon_high", "max_grad_norm",
    "micro_batch_size", "save_policy", "max_entropy_collapse", "generation_backend", "eval_batch_size",
})
LIGHTNING_SPECIAL = ("last", "best", "hpc", "registry")


def run_seed() -> int:
    """The run's seed (``seed_everything`` sets ``PL_GLOBAL_SEED``); 0 when unset, as Lightning's own
    distributed sampler does, so that every rank draws the same permutation."""
    return int(os.environ.get("PL_GLOBAL_SEED", 0))


def check_resume_args(saved: Mapping[str, Any], current: Mapping[str, Any], where: str = "model",
                      safe: Iterable[str] = RESUME_SAFE, both_only: bool = False) -> list[str]:
    """Compare the checkpoint's arguments (``saved``) with the resumed run's (``current``).

    A difference in a ``safe`` field is applied (the current value is used; returned as a line to
    report); any other difference is refused with a ``ValueError`` naming every such field and both
    values. Keys starting with ``_`` are Lightning's bookkeeping; ``both_only`` ignores keys missing
    on one side (a parsed config lacks the arguments a subclass fixes)."""
    applied, refused = [], []
    keys = set(saved) & set(current) if both_only else set(saved) | set(current)
    for key in sorted(k for k in keys if not k.startswith("_")):
        a, b = _plain(saved.get(key, "<absent>")), _plain(current.get(key, "<absent>"))
        if a != b:
            (applied if key in safe else refused).append(f"{where}.{key}: checkpoint {a!r}, now {b!r}")
    if refused:
        raise ValueError("cannot resume with arguments that differ from the checkpoint's (they would change what the "
                         "restored weights, optimizer state or data position mean): " + "; ".join(refused)
                         + ". Resume with the checkpoint's values, or start a new run")
    return applied


def optimizer_settings(optimizer_states: list[dict]) -> list[list[dict]]:
    """Each optimizer's param-group settings (``lr``, ``betas``, ...; ``initial_lr`` instead of ``lr`` when a
    scheduler moves it) from optimizer state dicts, for :func:`check_optimizer_args`."""
    out = []
    for state in optimizer_states:
        groups = []
        for g in state["param_groups"]:
            skip = {"params", "lr"} if "initial_lr" in g else {"params"}
            groups.append({k: _plain(v) for k, v in g.items() if k not in skip})
        out.append(groups)
    return out


def check_optimizer_args(saved: list[list[dict]], optimizers: list) -> None:
    """Refuse a resume whose optimizer settings differ from the checkpoint's: Lightning would restore the
    checkpoint's (``Optimizer.load_state_dict`` replaces the param groups) and drop the new ones silently."""
    now = optimizer_settings([getattr(o, "optimizer", o).state_dict() for o in optimizers])
    diffs = [f"optimizer {i} group {j} {k}: checkpoint {a.get(k)!r}, now {b.get(k)!r}"
             for i, (gs_a, gs_b) in enumerate(zip(saved, now)) for j, (a, b) in enumerate(zip(gs_a, gs_b))
             for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    if len(saved) != len(now):
        diffs.append(f"{len(saved)} optimizers in the checkpoint, {len(now)} now")
    if diffs:
        raise ValueError("cannot resume with optimizer settings that differ from the checkpoint's (the checkpoint's would "
                         "be restored over them): " + "; ".join(diffs))


def _plain(v: Any) -> Any:
    if isinstance(v, Mapping):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v if isinstance(v, (str, int, float, bool, type(None))) else repr(v)


def check_checkpoint(path: str | os.PathLike) -> dict:
    """Load ``path`` as a Lightning training checkpoint (weights only, memory-mapped) or refuse it with a
    ``ValueError`` naming the path and what is wrong. Lightning's special values and remote URLs
    are not checked here (returns ``{}``)."""
    path = str(path)
    if path in LIGHTNING_SPECIAL or "://" in path:
        return {}
    if not os.path.exists(path):
        raise ValueError(f"ckpt_path {path!r} does not exist")
    if os.path.isdir(path):
        raise ValueError(f"ckpt_path {path!r} is a directory, not a checkpoint file")
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive
        size = os.path.getsize(path)
        raise ValueError(f"ckpt_path {path!r} is not a checkpoint: {'an empty file' if size == 0 else 'not a zip archive'} "
                         "(torch.save writes one; the file is another format or truncated)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:
        raise ValueError(f"ckpt_path {path!r} could not be read: {type(err).__name__}: {err}") from err
    missing = [k for k in ("state_dict", "loops", "global_step") if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise ValueError(f"ckpt_path {path!r} is not a Lightning training checkpoint: it has no {missing}")
    return ckpt


# ----------------------------------------------------------------------------- frozen models


def drop_frozen(checkpoint: dict, names: Iterable[str]) -> None:
    """Remove the weights of the frozen models ``names`` (e.g. ``reference``) from a checkpoint being saved."""
    prefixes = tuple(f"{n}." for n in names)
    for key in [k for k in checkpoint["state_dict"] if k.startswith(prefixes)]:
        del checkpoint["state_dict"][key]


def restore_frozen(checkpoint: dict, models: Mapping[str, nn.Module | None]) -> None:
    """Put the freshly built frozen models' weights into a checkpoint being loaded, so that a strict load
    finds them (they were dropped at save time and are rebuilt from the base weights)."""
    for name, model in models.items():
        if model is not None:
            checkpoint["state_dict"].update({f"{name}.{k}": v for k, v in model.state_dict().items()})


# ----------------------------------------------------------------------------- RNG


class RNGState(Callback):
    """Checkpoint the global RNG states of every rank and restore them before the first resumed step.

    ``state_dict`` runs on every rank when a checkpoint is saved (inside ``trainer.save_checkpoint``),
    so the states are gathered from all ranks; each rank restores its own. The state is put back at
    ``on_train_start`` (a catch-up evaluation then draws what the uninterrupted run drew) and again at
    the first ``on_train_batch_start``. Validation inside a fit is RNG-neutral: the states after each
    training batch are put back when validation ends. Resuming with another seed or world size is refused.
    """

    def __init__(self) -> None:
        self._pending: list[dict] | None = None
        self._after_batch: dict | None = None

    def state_dict(self) -> dict:
        states = _plain_rng(_collect_rng_states(include_cuda=torch.cuda.is_available()))
        ranks = [states]
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            ranks = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(ranks, states)
        return {"seed": run_seed(), "ranks": ranks}

    def load_state_dict(self, state: dict) -> None:
        if state["seed"] != run_seed():
            raise ValueError(f"cannot resume with seed_everything={run_seed()}: the checkpoint's run has seed "
                             f"{state['seed']} (its data order and random states continue); resume with "
                             f"--seed_everything {state['seed']}")
        self._pending = state["ranks"]

    def on_train_start(self, trainer, pl_module) -> None:
        if self._pending is not None:
            if len(self._pending) != trainer.world_size:
                raise ValueError(f"the checkpoint holds the random states of {len(self._pending)} processes; resuming "
                                 f"on world_size={trainer.world_size} cannot continue them")
            _set_rng_states(_rng_from_plain(self._pending[trainer.global_rank]))

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._pending is not None:
            _set_rng_states(_rng_from_plain(self._pending[trainer.global_rank]))
            self._pending = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._after_batch = _collect_rng_states(include_cuda=torch.cuda.is_available())

    def on_validation_end(self, trainer, pl_module) -> None:
        if self._after_batch is not None:  # set by training batches only: a validation inside a fit
            _set_rng_states(self._after_batch)

    def on_train_end(self, trainer, pl_module) -> None:
        self._after_batch = None


def _plain_rng(states: dict) -> dict:
    """numpy's state holds an ndarray; plain lists load with ``torch.load(weights_only=True)``."""
    if "numpy" in states:
        name, keys, pos, has_gauss, gauss = states["numpy"]
        states["numpy"] = (name, keys.tolist(), pos, has_gauss, gauss)
    return states


def _rng_from_plain(states: dict) -> dict:
    states = dict(states)
    if "numpy" in states:
        name, keys, pos, has_gauss, gauss = states["numpy"]
        states["numpy"] = (name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss)
    return states


def validation_was_due(trainer) -> bool:
    """On resume, whether the uninterrupted run validated right after the checkpointed step. Lightning
    saves a periodic checkpoint at the end of the training batch, before that batch's validation, and
    does not repeat that validation on resume (``_TrainingEpochLoop.advance`` fast-forwards it); the
    run record then evaluates itself so that its held-out history is complete. Uses the epoch loop's
    own decision (``_should_check_val_fx``, Lightning 2.6) on the restored progress counters."""
    loop = trainer.fit_loop.epoch_loop
    if trainer.limit_val_batches == 0 or not trainer.fit_loop.restarting:
        return False
    return bool(loop._should_check_val_fx(None))
