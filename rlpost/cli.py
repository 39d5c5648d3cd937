"""``rlpost fit|validate|test --config ...`` through LightningCLI, and ``rlpost compare <suite.yaml>``.

The entry point only: the parser's settings live in :mod:`rlpost.config`, which the comparison
suites use too. Nothing imports this module. ``python -m rlpost`` runs the same :func:`main`.

The current directory is importable (as under ``python -m``), so a config can name the user's own
classes and functions (``class_path: my_variant.MedianGRPO``, ``scorers: {mine: my_rewards.fn}``).
rlpost's algorithms and tasks are imported first, so short names resolve (``--model.help GRPO``,
``--model GRPO``) and ``fit --help`` lists them as known subclasses.
"""

from __future__ import annotations

import os
import sys
from argparse import RawDescriptionHelpFormatter

from jsonargparse import DefaultHelpFormatter

from rlpost.config import CLI_SETTINGS, RLPostCLI

DESCRIPTION = """rlpost: RL post-training of language models on PyTorch Lightning.

  rlpost fit --config CONFIG.yaml        train (GRPO, PPO, RLOO, DrGRPO, DAPO, GSPO, ReinforcePlusPlus, SFT)
  rlpost validate --config CONFIG.yaml   held-out evaluation of the configured policy (or --ckpt_path)
  rlpost test --config CONFIG.yaml       the same on the task's test split
  rlpost compare SUITE.yaml              a comparison suite: algorithms x seeds, equal budgets
                                         (rlpost compare --help)"""

NO_PREDICT = ("rlpost predict is not offered: `rlpost validate` (validation split) and `rlpost test` (test split) "
              "write every held-out prompt's greedy completion, with its accuracy and reward, to "
              "<run directory>/eval_completions.jsonl.")


def cli_main(args: list[str] | None = None) -> RLPostCLI:
    from lightning import LightningDataModule, LightningModule

    import rlpost.algorithms  # noqa: F401  registered as subclasses: short names and --help listings
    import rlpost.data  # noqa: F401

    return RLPostCLI(LightningModule, LightningDataModule, args=args, **CLI_SETTINGS,
                     parser_kwargs={"description": DESCRIPTION, "formatter_class": _HelpFormatter})


class _HelpFormatter(RawDescriptionHelpFormatter, DefaultHelpFormatter):
    """jsonargparse's help, with the description's lines kept as written."""


def main(argv: list[str] | None = None) -> None:
    given, argv = argv, list(sys.argv[1:] if argv is None else argv)
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())  # the user's own modules, as `python -m` would find them
    if argv[:1] == ["compare"]:
        from rlpost.compare import main as compare_main

        compare_main(argv[1:])
        return
    if argv[:1] == ["predict"]:
        print(NO_PREDICT, file=sys.stderr)
        raise SystemExit(2)
    cli_main(given)


if __name__ == "__main__":
    main()
