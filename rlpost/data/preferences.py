"""Pairwise preference data ``(prompt, chosen, rejected)`` for training a reward model.

- :class:`PreferenceData` loads any ``datasets`` preference set (a Hub name or local
  json/jsonl/parquet/csv files), mapping its columns onto ``prompt``/``chosen``/``rejected``.
- :class:`ArithmeticPreferences` is the set rlpost ships, built in code from a seed: for an
  addition prompt ``"47+38="`` a labeller prefers the true sum ``"85"`` over a wrong one
  (the carry dropped, ``"75"``; off by one or ten; a random number; a digit lost or added).
  Its held-out prompts are exactly :class:`~rlpost.data.ArithmeticTask`'s validation prompts
  (same operand range and ``data_seed``), so a reward model trained here never saw them.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Literal, get_args

from datasets import Dataset
from lightning import LightningDataModule
from torch.utils.data import DataLoader

from rlpost.data.arithmetic import ArithmeticProblems, carry_dropped_sum
from rlpost.data.loader import resumable_loader
from rlpost.data.source import DataSource, check_columns
from rlpost.data.task import collate_columns

PAIR_COLUMNS = ("prompt", "chosen", "rejected")
RejectedKind = Literal["carry_dropped", "off_by_one", "off_by_ten", "random", "digit_count"]


class PreferenceDataModule(LightningDataModule):
    """Base: a train and a validation ``Dataset`` with ``prompt``, ``chosen``, ``rejected`` columns.

    A batch is a dict of lists. Subclasses build ``train_dataset``/``val_dataset`` in ``setup``.

    Args:
        batch_size: pairs per training step (per device).
        eval_batch_size: pairs per validation batch.
    """

    def __init__(self, batch_size: int = 64, eval_batch_size: int = 256):
        super().__init__()
        if batch_size < 1 or eval_batch_size < 1:
            raise ValueError(f"batch_size and eval_batch_size must be >= 1, got {batch_size}, {eval_batch_size}")
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.train_dataset: Dataset | None = None
        self.val_dataset: Dataset | None = None

    @staticmethod
    def check_pairs(dataset: Dataset, where: str) -> Dataset:
        """Refuse an empty split or one without the pair columns, naming ``where``."""
        check_columns(dataset, {c: "pair column" for c in PAIR_COLUMNS}, where)
        if len(dataset) == 0:
            raise ValueError(f"{where} is empty: no preference pairs")
        return dataset

    def train_dataloader(self) -> DataLoader:
        ds = self._require("train")
        if len(ds) < self.batch_size:
            raise ValueError(f"train split has {len(ds)} pairs, fewer than batch_size={self.batch_size}")
        return resumable_loader(ds, self.batch_size, self.trainer, collate_columns)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self._require("validation"), batch_size=self.eval_batch_size, shuffle=False,
                          collate_fn=collate_columns)

    def _require(self, split: str) -> Dataset:
        if self.train_dataset is None:
            self.setup("fit")
        return self.train_dataset if split == "train" else self.val_dataset


class PreferenceData(DataSource, PreferenceDataModule):
    """Preference pairs from ``datasets``: a Hub name or local files (see :func:`load_splits`).

    Columns are mapped onto ``prompt``/``chosen``/``rejected``; the others are dropped.
    Values are strings (``prompt + chosen`` is scored) or, for conversational sets, message
    lists (scored through the reward model tokenizer's chat template).

    Args:
        path, name, data_files, train_split, val_split, val_fraction, data_seed: where the data comes
            from (:class:`~rlpost.data.source.DataSource`).
        prompt_column, chosen_column, rejected_column: the dataset's names for the three fields.
        batch_size, eval_batch_size: see :class:`PreferenceDataModule`.
    """

    def __init__(self, prompt_column: str = "prompt", chosen_column: str = "chosen", rejected_column: str = "rejected",
                 batch_size: int = 64, eval_batch_size: int = 256, **source):
        super().__init__(batch_size=batch_size, eval_batch_size=eval_batch_size, **source)
        self.columns = {prompt_column: "prompt", chosen_column: "chosen", rejected_column: "rejected"}

    def setup(self, stage: str | None = None) -> None:
        if self.train_dataset is not None:
            return
        mapping = self.columns
        names = dict(zip(mapping, ("prompt_column", "chosen_column", "rejected_column")))
        for (ds, where), attr in zip(self.load_source(), ("train_dataset", "val_dataset")):
            check_columns(ds, names, where)
            ds = ds.select_columns(list(mapping)).rename_columns({k: v for k, v in mapping.items() if k != v})
            setattr(self, attr, self.check_pairs(ds, where))


def rejected_answer(a: int, b: int, kind: str, rng: random.Random, max_sum: int) -> str | None:
    """A wrong answer to ``a+b=`` of the given kind, or None when that kind gives none here.

    >>> rng = random.Random(0)
    >>> rejected_answer(47, 38, "carry_dropped", rng, 198), rejected_answer(41, 38, "carry_dropped", rng, 198)
    ('75', None)
    """
    s = a + b
    if kind == "carry_dropped":
        wrong = carry_dropped_sum(a, b)
    elif kind == "off_by_one":
        wrong = s + rng.choice((-1, 1)) if s > 0 else 1
    elif kind == "off_by_ten":
        wrong = s + rng.choice((-10, 10)) if s >= 10 else s + 10
    elif kind == "random":
        wrong = rng.randrange(max_sum + 1)
    elif kind == "digit_count":  # a digit lost or a digit added
        text = str(s)
        return text[:-1] if len(text) > 1 and rng.random() < 0.5 else text + str(rng.randrange(10))
    else:
        raise ValueError(f"unknown rejected kind {kind!r}; choose from {list(get_args(RejectedKind))}")
    return None if wrong == s else str(wrong)


class ArithmeticPreferences(ArithmeticProblems, PreferenceDataModule):
    """The shipped preference set: true sums preferred over plausible wrong ones, built from a seed.

    For each prompt, ``pairs_per_prompt`` pairs with distinct rejected answers of distinct
    kinds drawn from ``rejected_kinds`` (a kind that gives no wrong answer for that prompt,
    such as ``carry_dropped`` on ``41+38=``, is not drawn). A ``kind`` column records which.
    The labels stand in for human preference labels; the data needs no download.

    Args:
        num_prompts, num_val_prompts, min_operand, max_operand, data_seed: the problems
            (:class:`~rlpost.data.arithmetic.ArithmeticProblems`: the same held-out problems as
            ArithmeticTask's); ``data_seed`` also seeds the rejected answers.
        pairs_per_prompt: pairs per prompt (at most the number of kinds).
        rejected_kinds: the kinds of wrong answer (see :func:`rejected_answer`).
        batch_size, eval_batch_size: see :class:`PreferenceDataModule`.
    """

    def __init__(
        self,
        pairs_per_prompt: int = 2,
        rejected_kinds: Sequence[RejectedKind] = ("carry_dropped", "off_by_one", "off_by_ten", "random", "digit_count"),
        batch_size: int = 64,
        eval_batch_size: int = 256,
        **problems,
    ):
        super().__init__(batch_size=batch_size, eval_batch_size=eval_batch_size, **problems)
        kinds = list(rejected_kinds)
        unknown = [k for k in kinds if k not in get_args(RejectedKind)]
        if unknown or not kinds or len(set(kinds)) != len(kinds):
            raise ValueError(f"rejected_kinds={kinds} must be distinct names from {list(get_args(RejectedKind))}")
        if not 1 <= pairs_per_prompt <= len(kinds):
            raise ValueError(f"pairs_per_prompt must be in [1, {len(kinds)}] (the number of kinds), got {pairs_per_prompt}")
        self.pairs_per_prompt, self.rejected_kinds = pairs_per_prompt, kinds

    def setup(self, stage: str | None = None) -> None:
        if self.train_dataset is None:
            seed = self.data_seed
            self.train_dataset = self.check_pairs(self.build(self.train_pairs, seed + 2), "ArithmeticPreferences train")
            self.val_dataset = self.check_pairs(self.build(self.val_pairs, seed + 3), "ArithmeticPreferences validation")

    def build(self, pairs: list[tuple[int, int]], seed: int) -> Dataset:
        rng = random.Random(seed)
        rows: dict[str, list] = {"prompt": [], "chosen": [], "rejected": [], "kind": []}
        for a, b in pairs:
            kinds = list(self.rejected_kinds)
            rng.shuffle(kinds)
            seen = {str(a + b)}
            for kind in kinds:
                wrong = rejected_answer(a, b, kind, rng, 2 * self.max_operand)
                if wrong is None or wrong in seen:
                    continue
                seen.add(wrong)
                for col, v in zip(rows, (f"{a}+{b}=", str(a + b), wrong, kind)):
                    rows[col].append(v)
                if len(seen) > self.pairs_per_prompt:
                    break
        return Dataset.from_dict(rows)
