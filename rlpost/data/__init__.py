"""Tasks: LightningDataModules that yield prompt batches and own their scorers."""

from rlpost.data.arithmetic import ArithmeticDemos, ArithmeticTask, arithmetic_verifier
from rlpost.data.dataset_task import DatasetTask
from rlpost.data.preferences import ArithmeticPreferences, PreferenceData, PreferenceDataModule
from rlpost.data.task import TaskDataModule, collate_columns

__all__ = ["ArithmeticDemos", "ArithmeticPreferences", "ArithmeticTask", "DatasetTask", "PreferenceData",
           "PreferenceDataModule", "TaskDataModule", "arithmetic_verifier", "collate_columns"]
