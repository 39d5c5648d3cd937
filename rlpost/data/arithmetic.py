"""The built-in arithmetic task: ``"47+38="`` -> ``"85"``, generated from a seed, no download.

Why RL has something to fix here: the shipped warm start (``builtin:arith-sft``) imitated
demonstrations in which a fraction of the sums that need a carry were written with the
carry dropped (``47+38=75``). The model therefore puts real probability on both the right
answer and the carry-dropped one: greedy decoding is often wrong, but among G samples the
right answer is usually present (high pass@G). The group-relative advantage then pushes
probability toward the right answer. A warm start that is merely under-trained on clean
data makes prompt-specific errors that sampling rarely fixes, and GRPO gains little there.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping

from datasets import Dataset
from torch.utils.data import DataLoader

from rlpost.data.loader import resumable_loader
from rlpost.data.task import TaskDataModule, collate_columns


def arithmetic_verifier(prompts: list, completions: list, answer: list, **_) -> list[float]:
    """1.0 when the completion, stripped, is exactly the answer; else 0.0."""
    return [float(str(c).strip() == str(a).strip()) for c, a in zip(completions, answer)]


arithmetic_verifier.name = "accuracy"


def carry_dropped_sum(a: int, b: int) -> int:
    """Digit-wise sum with every carry dropped: 47+38 -> 75, 95+17 -> 2 (i.e. '02')."""
    out, place = 0, 1
    while a or b:
        out += ((a % 10 + b % 10) % 10) * place
        a, b, place = a // 10, b // 10, place * 10
    return out


def split_pairs(min_operand: int, max_operand: int, num_train: int, num_val: int, seed: int):
    """Disjoint train/val operand pairs drawn from all (a, b) in [min, max]^2, and the rest (shuffled)."""
    if min_operand < 0 or max_operand < min_operand:
        raise ValueError(f"need 0 <= min_operand <= max_operand, got {min_operand}, {max_operand}")
    pairs = [(a, b) for a in range(min_operand, max_operand + 1) for b in range(min_operand, max_operand + 1)]
    if num_train + num_val > len(pairs):
        raise ValueError(
            f"num_prompts={num_train} + num_val_prompts={num_val} exceeds the {len(pairs)} distinct "
            f"problems with operands in [{min_operand}, {max_operand}]"
        )
    random.Random(seed).shuffle(pairs)
    return pairs[num_val : num_val + num_train], pairs[:num_val], pairs[num_val + num_train :]


class ArithmeticProblems:
    """Mixin for data modules: addition problems ``a+b=`` with operands in ``[min_operand, max_operand]``,
    split into disjoint training and held-out sets (``self.train_pairs``, ``self.val_pairs``); the
    problems in neither are ``self.spare_pairs`` (shuffled by ``data_seed``).

    Args:
        num_prompts: training problems.
        num_val_prompts: held-out problems.
        min_operand, max_operand: operand range (difficulty).
        data_seed: seed of the problem set; independent of the run's seed so that every
            algorithm and seed of a comparison sees the same problems.
    """

    def __init__(self, num_prompts: int = 4000, num_val_prompts: int = 256, min_operand: int = 0,
                 max_operand: int = 99, data_seed: int = 1234, **kwargs):
        super().__init__(**kwargs)
        if num_prompts < 1 or num_val_prompts < 1:
            raise ValueError(f"num_prompts and num_val_prompts must be >= 1, got {num_prompts}, {num_val_prompts}")
        self.data_seed, self.max_operand = data_seed, max_operand
        self.train_pairs, self.val_pairs, self.spare_pairs = split_pairs(min_operand, max_operand, num_prompts,
                                                                         num_val_prompts, data_seed)


def _rows(pairs) -> dict[str, list]:
    return {"prompt": [f"{a}+{b}=" for a, b in pairs], "answer": [str(a + b) for a, b in pairs]}


class ArithmeticTask(ArithmeticProblems, TaskDataModule):
    """Addition prompts with a verifier; the validation and test splits are held out (disjoint pairs).

    Args:
        num_prompts, num_val_prompts, min_operand, max_operand, data_seed: the problems
            (:class:`ArithmeticProblems`); ``num_val_prompts`` of them are held out for accuracy.
        num_test_prompts: problems of the test split (``rlpost test``), disjoint from the training and
            validation problems. None: 256, or as many as the operand range has left when fewer
            (none left: ``rlpost test`` refuses); a number that does not fit is refused.
        prompts_per_step: prompts per rollout per device (B).
        eval_batch_size: prompts per evaluation batch.
        scorers, scorer_weights: the training reward (default: the verifier, named ``accuracy``);
            see :class:`~rlpost.data.task.TaskDataModule`. Held-out accuracy always uses the verifier.
    """

    held_out_size_arg = "num_val_prompts"  # the argument a comparison suite's eval_prompts sets
    test_split_arg = "num_test_prompts"

    def __init__(self, prompts_per_step: int = 8, eval_batch_size: int = 256,
                 scorers: Mapping[str, Callable] | None = None, scorer_weights: Mapping[str, float] | None = None,
                 num_test_prompts: int | None = None, **problems):
        super().__init__(prompts_per_step=prompts_per_step, eval_batch_size=eval_batch_size, required_columns=("answer",),
                         scorers=scorers, scorer_weights=scorer_weights, **problems)
        self.save_hyperparameters(ignore=["scorers"])
        if num_test_prompts is not None and not 0 <= num_test_prompts <= len(self.spare_pairs):
            raise ValueError(f"num_test_prompts={num_test_prompts}: the operand range has {len(self.spare_pairs)} "
                             "problems left beside num_prompts and num_val_prompts")
        self.test_pairs = self.spare_pairs[: 256 if num_test_prompts is None else num_test_prompts]

    def setup(self, stage: str | None = None) -> None:
        if self.train_dataset is None:
            self.train_dataset = self.check_dataset(Dataset.from_dict(_rows(self.train_pairs)), "ArithmeticTask train")
            self.val_dataset = self.check_dataset(Dataset.from_dict(_rows(self.val_pairs)), "ArithmeticTask validation")
            if self.test_pairs:
                self.test_dataset = self.check_dataset(Dataset.from_dict(_rows(self.test_pairs)), "ArithmeticTask test")

    def default_scorers(self) -> dict[str, Callable]:
        return {"accuracy": arithmetic_verifier}

    def accuracy_scorer(self):
        return arithmetic_verifier


class ArithmeticDemos(ArithmeticTask):
    """Supervised demonstrations for the warm start, with a systematic error.

    Each training prompt's demonstration is its sum, except that with probability
    ``carry_error_rate`` a sum that needs a carry is written with the carry dropped.
    Validation uses the true answers (the held-out accuracy).

    Args:
        carry_error_rate: fraction of carry-needing demonstrations written wrong.
        sft_batch_size: sequences per SFT step.
        (other args as :class:`ArithmeticTask`.)
    """

    def __init__(self, carry_error_rate: float = 0.7, sft_batch_size: int = 128, **task_kwargs):
        super().__init__(**task_kwargs)
        if not 0.0 <= carry_error_rate <= 1.0:
            raise ValueError(f"carry_error_rate must be in [0, 1], got {carry_error_rate}")
        self.carry_error_rate = carry_error_rate
        self.sft_batch_size = sft_batch_size

    def demonstrations(self) -> Dataset:
        rng = random.Random(self.data_seed + 1)
        completions = []
        for a, b in self.train_pairs:
            wrong = carry_dropped_sum(a, b)
            flawed = wrong != a + b and rng.random() < self.carry_error_rate
            completions.append(str(wrong if flawed else a + b))
        return Dataset.from_dict({"prompt": [f"{a}+{b}=" for a, b in self.train_pairs], "completion": completions})

    def train_dataloader(self) -> DataLoader:
        demos = self.demonstrations()
        return resumable_loader(demos, self.sft_batch_size, self.trainer, collate_columns)

