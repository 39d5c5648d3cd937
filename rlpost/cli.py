"""``rlpost fit|validate --config ...`` through LightningCLI."""

from __future__ import annotations

import sys

from lightning.pytorch.cli import LightningCLI


class RLPostCLI(LightningCLI):
    """LightningCLI with rlpost's trainer defaults (TensorBoard logger, progress bar, step budget)."""


def cli_main(args: list[str] | None = None) -> RLPostCLI:
    from lightning import LightningDataModule, LightningModule

    return RLPostCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        seed_everything_default=0,
        trainer_defaults={"max_epochs": -1, "num_sanity_val_steps": 0, "enable_checkpointing": True},
        save_config_kwargs={"overwrite": True},
        args=args,
        auto_configure_optimizers=False,
    )


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "compare":
        from rlpost.compare import main as compare_main

        compare_main(sys.argv[2:])
        return
    cli_main()


if __name__ == "__main__":
    main()
