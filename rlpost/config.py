"""The one LightningCLI configuration of rlpost: ``rlpost fit|validate|test`` and the comparison
suites parse run configs with it, so a suite counts exactly what a run will get.

A leaf module: it imports nothing of rlpost, and nothing here imports ``rlpost.cli``.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from lightning import LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningCLI

# LightningCLI settings shared by the command line and the suites
CLI_SETTINGS: dict[str, Any] = dict(
    subclass_mode_model=True,
    subclass_mode_data=True,
    seed_everything_default=0,
    trainer_defaults={"max_epochs": -1, "num_sanity_val_steps": 0, "enable_checkpointing": True},
    save_config_kwargs={"overwrite": True},
    auto_configure_optimizers=False,
)


class RLPostCLI(LightningCLI):
    """LightningCLI with rlpost's trainer defaults (TensorBoard logger, progress bar, step budget), and:

    - ``--ckpt_path`` is checked before anything is built (:func:`rlpost.resume.check_checkpoint`), and the
      checkpoint's arguments do not silently replace the command line's (Lightning's CLI loads them over
      the parsed config): a difference is applied where safe or refused, naming the field and both values
      (:func:`rlpost.resume.check_resume_args`);
    - ``fit --print_plan`` prints and checks the step plan, then exits: no model is loaded, nothing is
      generated or written (:func:`rlpost.preflight.print_plan`).

    The rlpost modules these use are imported inside the methods: this module stays a leaf at import time.
    """

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument("--print_plan", action="store_true",
                            help="fit: print and check the step plan (batch arithmetic, prompts, optimizer steps, "
                                 "completions), then exit without loading a model")

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
        sub = self.config.get("subcommand")
        if sub and sub != "fit" and self.config[sub].get("print_plan"):
            print(f"rlpost {sub}: refused: --print_plan is a fit option (the step plan of a training run)", file=sys.stderr)
            raise SystemExit(2)

    def before_fit(self) -> None:
        if self.config.fit.get("print_plan"):
            from rlpost.preflight import print_plan

            print_plan(self.model, self.datamodule, self.trainer)
            raise SystemExit(0)


class _ParseOnly(RLPostCLI):
    """Parses and resolves a config (class defaults filled in) without building anything."""

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
        cli = _ParseOnly(LightningModule, LightningDataModule, args=config, run=False, **CLI_SETTINGS)
    finally:
        seed_log.setLevel(level)
    return _plain(cli.config.as_dict())


def _plain(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items() if not k.startswith("__")}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x if isinstance(x, (str, int, float, bool, type(None))) else str(x)
