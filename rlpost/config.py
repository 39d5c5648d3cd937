"""The one LightningCLI configuration of rlpost: ``rlpost fit|validate|test`` and the comparison
suites parse run configs with it, so a suite counts exactly what a run will get.

A leaf module: it imports nothing of rlpost, and nothing here imports ``rlpost.cli``.
"""

from __future__ import annotations

import logging
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
    """LightningCLI with rlpost's trainer defaults (TensorBoard logger, progress bar, step budget)."""


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
