"""``rlpost fit|validate|test --config ...`` through LightningCLI, and ``rlpost compare <suite.yaml>``.

The entry point only: the parser's settings live in :mod:`rlpost.config`, which the comparison
suites use too. Nothing imports this module.
"""

from __future__ import annotations

import sys

from rlpost.config import CLI_SETTINGS, RLPostCLI


def cli_main(args: list[str] | None = None) -> RLPostCLI:
    from lightning import LightningDataModule, LightningModule

    return RLPostCLI(LightningModule, LightningDataModule, args=args, **CLI_SETTINGS)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "compare":
        from rlpost.compare import main as compare_main

        compare_main(sys.argv[2:])
        return
    cli_main()


if __name__ == "__main__":
    main()
