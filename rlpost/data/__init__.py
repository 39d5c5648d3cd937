"""Tasks: LightningDataModules that yield prompt batches and own their scorers."""

from rlpost.data.arithmetic import ArithmeticDemos, ArithmeticTask, arithmetic_verifier
from rlpost.data.task import TaskDataModule, collate_columns

__all__ = ["ArithmeticDemos", "ArithmeticTask", "TaskDataModule", "arithmetic_verifier", "collate_columns"]
from rlpost.data.dataset_task import DatasetTask
from rlpost.data.preferences import ArithmeticPreferences, PreferenceData, PreferenceDataModule

__all__ += ["ArithmeticPreferences", "DatasetTask", "PreferenceData", "PreferenceDataModule"]
