"""A training DataLoader whose position survives a checkpoint: exact resume of the prompt order.

Lightning checkpoints a train loader that has ``state_dict``/``load_state_dict`` on the loader
object itself (its ``_Stateful`` protocol; a stateful sampler behind a plain ``DataLoader`` is
ignored) and restores it before the first resumed batch. :class:`ResumableLoader` is such a loader:
its position is the epoch and the number of samples of that epoch already handed out, and its order
comes from :class:`ResumableSampler`, a :class:`~torch.utils.data.DistributedSampler` whose
permutation is drawn from a private generator seeded with ``seed + epoch``, never from the global
RNG. Because it *is* a ``DistributedSampler``, Lightning keeps it under DDP instead of swapping in
its own: each rank reads its own share (``indices[rank::world_size]``) and resumes its own position.

Resuming with another world size is refused: the per-rank shares would change, and prompts would
be repeated or skipped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch.utils.data import DataLoader, DistributedSampler

from rlpost.resume import run_seed


class ResumableSampler(DistributedSampler):
    """Per-epoch shuffled indices of this rank, from ``seed + epoch``; after a restore the first
    iterator skips the ``skip`` samples of the epoch already handed out."""

    def __init__(self, dataset, num_replicas: int = 1, rank: int = 0, seed: int = 0):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=False)
        self.skip = 0

    def set_epoch(self, epoch: int) -> None:  # Lightning calls it at every epoch start, also after a resume
        if epoch != self.epoch:
            self.skip = 0
        super().set_epoch(epoch)

    def __iter__(self) -> Iterator[int]:
        skip, self.skip = self.skip, 0  # a restored offset applies to the first iterator only
        yield from list(super().__iter__())[skip:]


class ResumableLoader(DataLoader):
    """A ``DataLoader`` over :class:`ResumableSampler` whose position Lightning checkpoints.

    ``len()`` stays the full epoch (Lightning counts the batches already done itself); the position
    counts batches actually yielded, so worker prefetching cannot run ahead of training.
    """

    def __init__(self, dataset, batch_size: int, *, num_replicas: int = 1, rank: int = 0, seed: int = 0,
                 collate_fn: Callable | None = None):
        super().__init__(dataset, batch_size=batch_size, drop_last=True, collate_fn=collate_fn,
                         sampler=ResumableSampler(dataset, num_replicas, rank, seed),
                         generator=torch.Generator().manual_seed(seed))  # iter() draws no seed from the global RNG
        self._epoch, self._samples_done = 0, 0

    def __iter__(self):
        self._epoch, self._samples_done = self.sampler.epoch, self.sampler.skip  # runs at the first next()
        for batch in super().__iter__():
            self._samples_done += self.batch_size
            yield batch

    def state_dict(self) -> dict[str, int]:
        s = self.sampler
        return {"epoch": self._epoch, "samples_done": self._samples_done, "seed": s.seed, "world_size": s.num_replicas}

    def load_state_dict(self, state: dict[str, int]) -> None:
        s = self.sampler
        if state["world_size"] != s.num_replicas:
            raise ValueError(f"the checkpoint's data position was taken with world_size={state['world_size']}; resuming "
                             f"with world_size={s.num_replicas} would repeat or skip prompts. Resume on "
                             f"{state['world_size']} processes")
        self._epoch, self._samples_done = state["epoch"], state["samples_done"]
        s.seed, s.epoch, s.skip = state["seed"], state["epoch"], state["samples_done"]


def resumable_loader(dataset, batch_size: int, trainer=None, collate_fn: Callable | None = None) -> ResumableLoader:
    """The training loader of ``dataset`` for ``trainer``'s rank (one process when there is no trainer)."""
    kwargs = (trainer.distributed_sampler_kwargs if trainer is not None else None) or {}
    return ResumableLoader(dataset, batch_size, num_replicas=kwargs.get("num_replicas", 1), rank=kwargs.get("rank", 0),
                           seed=run_seed(), collate_fn=collate_fn)
