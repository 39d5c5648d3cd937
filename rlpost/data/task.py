"""The task interface every algorithm consumes unchanged."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from datasets import Dataset
from lightning import LightningDataModule
from torch.utils.data import DataLoader

from rlpost.data.loader import resumable_loader
from rlpost.scoring import ScorerSet, check_weights


def collate_columns(rows: list[dict]) -> dict[str, list]:
    """[{"prompt": p, "answer": a}, ...] -> {"prompt": [...], "answer": [...]}."""
    return {key: [row[key] for row in rows] for key in rows[0]}


class TaskDataModule(LightningDataModule):
    """Base task: a train and a validation ``datasets.Dataset`` of prompts, plus scorers.

    A batch is a dict of lists: ``prompt`` plus every extra column, which the rollout
    repeats per completion and hands to the scorers as keyword arguments.

    Subclasses build ``self.train_dataset`` / ``self.val_dataset`` (and, when the task has one,
    ``self.test_dataset``: ``rlpost test``) in ``setup`` and define :meth:`default_scorers` and
    :meth:`accuracy_scorer`. The training reward can be
    chosen by config (``scorers``, e.g. a preference reward model instead of the verifier)
    while :meth:`accuracy_scorer` stays the task's held-out metric.

    Args:
        prompts_per_step: prompts per rollout on each device (B); each gets G completions.
        eval_batch_size: prompts per generation batch during evaluation.
        required_columns: columns besides ``prompt`` that the scorers need.
        scorers: name -> scorer for the training reward, replacing :meth:`default_scorers`
            (None: the task's defaults). In YAML a scorer is an import path
            (``rlpost.data.arithmetic_verifier``) or ``class_path``/``init_args``.
        scorer_weights: name -> weight of each scorer in the reward (default 1.0 each).
    """

    prompt_column = "prompt"
    held_out_size_arg: str | None = None  # the __init__ argument that sets the held-out split's size
    test_split_arg: str | None = None  # the __init__ argument that gives the task a test split

    def __init__(
        self,
        prompts_per_step: int = 8,
        eval_batch_size: int = 128,
        required_columns: tuple[str, ...] = (),
        scorers: Mapping[str, Callable] | None = None,
        scorer_weights: Mapping[str, float] | None = None,
    ):
        super().__init__()
        if prompts_per_step < 1:
            raise ValueError(f"prompts_per_step must be >= 1, got {prompts_per_step}")
        if eval_batch_size < 1:
            raise ValueError(f"eval_batch_size must be >= 1, got {eval_batch_size}")
        self.prompts_per_step = prompts_per_step
        self.eval_batch_size = eval_batch_size
        self.required_columns = tuple(required_columns)
        self.scorer_choice = None if scorers is None else dict(scorers)
        self.scorer_weights = None if scorer_weights is None else check_weights(scorer_weights)
        if self.scorer_choice is not None:
            ScorerSet(self.scorer_choice, self.scorer_weights)  # empty, non-callable or unknown weights: refused now
        self.train_dataset: Dataset | None = None
        self.val_dataset: Dataset | None = None
        self.test_dataset: Dataset | None = None

    # ----------------------------------------------------------------- scoring
    def scorers(self) -> ScorerSet:
        """The scorers whose weighted sum is the training reward: ``scorers`` if given, else
        :meth:`default_scorers`; weighted by ``scorer_weights``."""
        chosen = self.scorer_choice if self.scorer_choice is not None else self.default_scorers()
        return ScorerSet(chosen, self.scorer_weights)

    def default_scorers(self) -> Mapping[str, Callable]:
        """The task's own scorers (name -> callable), used when no ``scorers`` are configured."""
        raise NotImplementedError(f"{type(self).__name__} has no default scorers; pass `scorers`")

    def accuracy_scorer(self) -> Callable:
        """A scorer returning 1.0 for a correct completion, 0.0 otherwise (held-out accuracy)."""
        raise NotImplementedError

    # ----------------------------------------------------------------- data
    def check_dataset(self, dataset: Dataset, where: str) -> Dataset:
        """Refuse an empty dataset or one missing a needed column, naming ``where`` it came from."""
        needed = (self.prompt_column, *self.required_columns)
        missing = [c for c in needed if c not in dataset.column_names]
        if missing:
            raise ValueError(f"{where} is missing column(s) {missing}; it has {dataset.column_names}")
        if len(dataset) == 0:
            raise ValueError(f"{where} is empty: no prompts to train or evaluate on")
        return dataset

    def train_dataloader(self) -> DataLoader:
        ds = self._require(self.train_dataset, "train")
        world = self.trainer.world_size if self.trainer is not None else 1
        if len(ds) < self.prompts_per_step * world:
            raise ValueError(
                f"train split has {len(ds)} prompts, fewer than prompts_per_step={self.prompts_per_step} "
                f"x world_size={world}"
            )
        # drop_last: every rank and every step sees exactly B prompts (whole, equal groups); the loader's
        # position is checkpointed, so a resumed run continues with the next prompts (rlpost.data.loader)
        return resumable_loader(ds, self.prompts_per_step, self.trainer, collate_columns)

    def val_dataloader(self) -> DataLoader:
        ds = self._require(self.val_dataset, "validation")
        return DataLoader(ds, batch_size=self.eval_batch_size, shuffle=False, collate_fn=collate_columns)

    def test_dataloader(self) -> DataLoader:
        ds = self._require(self.test_dataset, "test")
        return DataLoader(ds, batch_size=self.eval_batch_size, shuffle=False, collate_fn=collate_columns)

    def held_out_dataset(self, split: str) -> Dataset:
        """The held-out split ``validation`` or ``test`` (refused, naming the argument, when the task has none)."""
        return self._require(self.val_dataset if split == "validation" else self.test_dataset, split)

    def _require(self, ds: Dataset | None, split: str) -> Dataset:
        if ds is None:
            self.setup("fit")
            ds = {"train": self.train_dataset, "validation": self.val_dataset, "test": self.test_dataset}[split]
        if ds is None:
            how = f": set data.init_args.{self.test_split_arg}" if split == "test" and self.test_split_arg else ""
            raise ValueError(f"{type(self).__name__} has no {split} split{how}")
        return ds

    def sample_prompts(self, n: int, generator: torch.Generator | None = None) -> dict[str, list]:
        """``n`` training prompts drawn at random (with their columns), as a batch dict.

        For methods that need more prompts than the step's batch (DAPO's dynamic sampling).
        """
        ds = self._require(self.train_dataset, "train")
        idx = torch.randint(len(ds), (n,), generator=generator).tolist()
        return ds.select(idx).to_dict()

    @staticmethod
    def extra_columns(batch: Mapping[str, list]) -> dict[str, list]:
        return {k: v for k, v in batch.items() if k != TaskDataModule.prompt_column}
