"""The one LightningCLI configuration of rlpost: ``rlpost fit|validate|test`` and the comparison
suites parse run configs with it, so a suite counts exactly what a run will get.

What it adds to Lightning's CLI, each in one place here:

- ``threads``: CPU threads of the run (:func:`apply_threads`), set before anything heavy;
- the default logger: TensorBoard under ``trainer.default_root_dir`` (``<root>/version_N``, no
  ``hp_metric``), so ``--trainer.default_root_dir`` moves every output of a run unless a logger is given;
- ``validate`` / ``test`` evaluate even where the config turns fit-time validation off
  (``limit_val_batches: 0``): the held-out evaluation covers the whole split at once;
- a progress bar counting optimizer steps out of ``max_steps`` (:class:`StepProgressBar`);
- a failed command leaves no run directory that holds nothing but its config (:func:`remove_if_unused`);
- ``--ckpt_path`` is checked before anything is built (:func:`rlpost.resume.check_checkpoint`), and the
  checkpoint's arguments do not silently replace the command line's (Lightning's CLI loads them over
  the parsed config): a difference is applied where safe or refused, naming the field and both values
  (:func:`rlpost.resume.check_resume_args`);
- ``fit --print_plan`` prints and checks the step plan and the memory plan, then exits: no model is
  loaded, nothing is generated or written (:func:`rlpost.preflight.print_plan`).

A leaf module: it imports nothing of rlpost, and nothing here imports ``rlpost.cli``.
"""

from __future__ import annotations

import copy
import logging
import os
import shutil
import sys
import warnings
from pathlib import Path
from typing import Any, Optional

import torch
from jsonargparse import Namespace
from lightning import LightningDataModule, LightningModule
from lightning.pytorch.callbacks import ProgressBar, RichProgressBar
from lightning.pytorch.callbacks.progress.rich_progress import _RICH_AVAILABLE
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.utilities import rank_zero_info

# LightningCLI settings shared by the command line and the suites
CLI_SETTINGS: dict[str, Any] = dict(
    subclass_mode_model=True,
    subclass_mode_data=True,
    seed_everything_default=0,
    trainer_defaults={"max_epochs": -1, "num_sanity_val_steps": 0, "enable_checkpointing": True},
    save_config_kwargs={"overwrite": True},
    auto_configure_optimizers=False,
)
DEFAULT_CPU_THREADS = 1  # measured fastest on a small shared CPU machine (README, "CPU threads")
# what a command writes into its run directory before it has produced anything
SCAFFOLDING = ("config.yaml", "hparams.yaml", "events.out.tfevents.")


class RLPostCLI(LightningCLI):
    """LightningCLI with rlpost's settings (see the module docstring). ``predict`` is not offered:
    ``validate`` and ``test`` write every held-out prompt's greedy completion to the run directory.

    The rlpost modules used for ``--ckpt_path`` and ``--print_plan`` are imported inside the methods:
    this module stays a leaf at import time."""

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        return {k: v for k, v in LightningCLI.subcommands().items() if k != "predict"}

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument("--threads", type=Optional[int], default=None,
                            help="CPU threads torch uses in this process (torch.set_num_threads). Default: "
                                 "OMP_NUM_THREADS when set, else 1 on CPU (fastest on a small shared machine; "
                                 "give the core count on an idle many-core machine), else torch's default.")
        parser.add_argument("--print_plan", action="store_true",
                            help="fit: print and check the step plan (batch arithmetic, prompts, optimizer steps, "
                                 "completions) and the memory plan, then exit without loading a model")

    def _parse_ckpt_path(self) -> None:  # replaces Lightning's, which loads the checkpoint's hparams over the config
        from rlpost.resume import check_checkpoint, check_resume_args

        sub = self.config.get("subcommand")
        path = self.config[sub].get("ckpt_path") if sub else None
        if path is None:
            return
        try:
            hparams = check_checkpoint(path).get("hyper_parameters", {})
            given = self.config[sub].get("model")
            if hparams and given is not None and "init_args" in given:
                check_resume_args(hparams, _plain(given.init_args.as_dict()), "model", both_only=True)
        except ValueError as err:
            print(f"rlpost {sub}: refused: {err}", file=sys.stderr)
            raise SystemExit(2) from None

    def before_instantiate_classes(self) -> None:
        # step=k.ckpt holds the state after the k-th optimizer step, which is what a resume wants
        warnings.filterwarnings("ignore", message="Using ModelCheckpoint with manual optimization")
        cfg = self.config[self.subcommand] if self.subcommand else self.config
        if self.subcommand and self.subcommand != "fit" and cfg.get("print_plan"):
            print(f"rlpost {self.subcommand}: refused: --print_plan is a fit option (the step plan of a training run)",
                  file=sys.stderr)
            raise SystemExit(2)
        apply_threads(cfg.get("threads"), cfg.trainer.accelerator)
        trainer = cfg.trainer
        if trainer.logger is None or trainer.logger is True:  # Lightning's default, placed under default_root_dir
            trainer.logger = Namespace(class_path="lightning.pytorch.loggers.TensorBoardLogger", init_args=Namespace(
                save_dir=trainer.default_root_dir or ".", name="", default_hp_metric=False))
        limit = {"validate": "limit_val_batches", "test": "limit_test_batches"}.get(self.subcommand)
        if limit and trainer[limit] == 0:
            trainer[limit] = 1  # evaluation covers the whole split at epoch end; 0 only turns off fit's periodic one
            rank_zero_info(f"[rlpost] {self.subcommand}: evaluating the whole held-out split "
                           f"(trainer.{limit}: 0 only turns off the evaluations during fit)")

    def before_fit(self) -> None:
        if self.config.fit.get("print_plan"):
            from rlpost.preflight import print_plan

            print_plan(self.model, self.datamodule, self.trainer)
            raise SystemExit(0)

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list) -> Any:
        given = [*(config.get("callbacks") or []), *callbacks]
        if config.get("enable_progress_bar") is not False and _RICH_AVAILABLE and \
                not any(isinstance(c, ProgressBar) for c in given):
            callbacks = [*callbacks, StepProgressBar()]
        return super()._instantiate_trainer(config, callbacks)

    def _run_subcommand(self, subcommand: str) -> None:
        try:
            super()._run_subcommand(subcommand)
        except BaseException:
            remove_if_unused(self.trainer)
            raise


class StepProgressBar(RichProgressBar):
    """Lightning's rich progress bar counting optimizer steps out of ``max_steps`` (an RL run's
    budget), not batches of an epoch: ``max_epochs: -1`` made it read ``Epoch 0/-2``."""

    @property
    def total_train_batches(self) -> int | float:
        steps = self.trainer.max_steps
        return steps if steps and steps > 0 else super().total_train_batches

    def _get_train_description(self, current_epoch: int) -> str:
        return "Training steps"

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, trainer.global_step - 1)  # shows global_step


def apply_threads(threads: int | None, accelerator: Any = "auto") -> int | None:
    """Set torch's CPU threads: ``threads`` if given; else ``OMP_NUM_THREADS`` if set (torch read it
    at import); else :data:`DEFAULT_CPU_THREADS` when the run is on CPU. Returns the number set, or None."""
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    if threads is None:
        on_cpu = str(accelerator) == "cpu" or (str(accelerator) == "auto" and not torch.cuda.is_available())
        if os.environ.get("OMP_NUM_THREADS") or not on_cpu:
            return None
        threads = DEFAULT_CPU_THREADS
    torch.set_num_threads(threads)
    return threads


def remove_if_unused(trainer) -> None:
    """After a failed command: remove its run directory when nothing was trained and it holds only
    what every command writes first (config, hyperparameters, an events file); on rank 0 only."""
    logger = getattr(trainer, "logger", None)
    if logger is None or not trainer.is_global_zero or trainer.global_step > 0 or logger.log_dir is None:
        return
    run_dir = Path(logger.log_dir)
    if run_dir.is_dir() and all(p.is_file() and p.name.startswith(SCAFFOLDING) for p in run_dir.iterdir()):
        shutil.rmtree(run_dir)


class _ParseOnly(RLPostCLI):
    """Parses and resolves a config (class defaults filled in) without building anything."""

    def before_instantiate_classes(self) -> None:
        pass

    def instantiate_classes(self) -> None:
        pass


def parse_run_config(config: dict) -> dict:
    """A run config (the dict of a ``fit`` YAML) resolved by rlpost's parser, with every class default
    filled in, as plain data. Nothing is instantiated. Raises ``SystemExit`` (after the parser's own
    message on stderr) when the parser refuses it."""
    seed_log = logging.getLogger("lightning.fabric.utilities.seed")
    level = seed_log.level
    seed_log.setLevel(logging.WARNING)  # the parser seeds the process; nothing is trained here, so say nothing
    try:
        with warnings.catch_warnings():  # args given from code while the process has its own argv: intended here
            warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
            # a copy: the parser turns nested mappings of its input into Namespaces in place
            cli = _ParseOnly(LightningModule, LightningDataModule, args=copy.deepcopy(config), run=False, **CLI_SETTINGS)
    finally:
        seed_log.setLevel(level)
    return _plain(cli.config.as_dict())


def _plain(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items() if not k.startswith("__")}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x if isinstance(x, (str, int, float, bool, type(None))) else str(x)
