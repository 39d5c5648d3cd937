"""Tasks: LightningDataModules that yield prompt batches and own their scorers."""

from rlpost.data.arithmetic import ArithmeticDemos, ArithmeticTask, arithmetic_verifier
from rlpost.data.task import TaskDataModule, collate_columns

__all__ = ["ArithmeticDemos", "ArithmeticTask", "TaskDataModule", "arithmetic_verifier", "collate_columns"]
