"""Replayed rollouts: train several losses on the very same samples (replay suites).

Two runs of different losses normally differ in two ways at once: the loss, and the samples each
run drew from its own policy. A replay suite removes the second for the first K rollouts:

1. **One generator per seed** (:func:`generate`, ``python -m rlpost.replay``): the starting policy
   pi_0 of the suite (every entry starts from the same model) rolls out K batches of the task's
   training prompts, and each :class:`~rlpost.rollout.Rollout` is saved (``Rollout.save``; loaded
   with ``weights_only=True``) with pi_0's log-probs of its tokens as ``old_logprobs``.
2. **Every replayed entry** trains its own loss on those K rollouts, in order
   (:class:`ReplayRollouts`, a callback the suite adds to the entry's run config), instead of
   generating; from rollout K+1 on it generates from its own policy as usual.

The snapshot schedule is pi_0 for all K rollouts, deliberately: no entry is the generator, so no
entry is on-policy while the others are not (a schedule following one entry's training would
favour that entry). The samples are off-policy for every entry after its first update, by that
entry's own drift from pi_0; ``old_logprobs`` = log pi_0 makes each loss's importance ratio
pi_theta / pi_0 and its clipping correct for it exactly as PPO-style losses do for stale samples,
so keep K moderate (the clip then limits how far any entry moves on replayed samples). Each
entry computes its own reference log-probs (its own reference model, or none at beta = 0).

What replay can show: the effect of the loss (advantage, aggregation, clipping, KL term) on the
same data, as a paired difference per seed whose interval is not widened by sampling noise. What it
cannot show: anything that acts through sampling. An entry's rollout hook is replaced, so DAPO's
dynamic sampling and overlong reward shaping are off during replay (its clip-higher, token-level
loss and beta = 0 stay); and on-policy benefits (fresh samples from an improved policy) are absent
until rollout K+1.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import warnings
from dataclasses import asdict
from pathlib import Path

import torch
from lightning.pytorch import Callback

from rlpost.rollout import Rollout, completion_logprobs, make_rollout

MANIFEST = "manifest.json"


def rollout_path(directory: Path, index: int) -> Path:
    return Path(directory) / f"rollout_{index:05d}.pt"


class ReplayRollouts(Callback):
    """Serves a run's first ``steps`` rollouts from the files :func:`generate` wrote for its seed.

    Args:
        directory: the replay directory of the suite; the run reads ``<directory>/seed<S>/`` for its
            seed S (``seed_everything``).
        steps: rollouts to replay, the first ones of the run.
        fingerprint: if given, the generator's (its manifest's ``fingerprint``): other rollouts are refused.
    """

    def __init__(self, directory: str, steps: int, fingerprint: str | None = None):
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        self.directory, self.steps, self.fingerprint = Path(directory), steps, fingerprint
        self.seed_dir: Path | None = None

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage != "fit":
            return
        seed = os.environ.get("PL_GLOBAL_SEED")
        self.seed_dir = self.directory / f"seed{seed}"
        manifest = self.seed_dir / MANIFEST
        if not manifest.is_file():
            raise FileNotFoundError(f"replay: no {manifest} (rollouts of seed {seed}); generate them with "
                                    f"`python -m rlpost.replay --config CONFIG --seed {seed} --steps {self.steps} "
                                    f"--out {self.seed_dir}`")
        info = json.loads(manifest.read_text())
        if info["steps"] < self.steps:
            raise ValueError(f"replay: {manifest} holds {info['steps']} rollouts, fewer than steps={self.steps}")
        if self.fingerprint is not None and info.get("fingerprint") != self.fingerprint:
            raise ValueError(f"replay: {manifest} was generated for fingerprint {info.get('fingerprint')!r}, not "
                             f"{self.fingerprint!r}: regenerate the rollouts")
        pl_module.replay = self

    def rollout(self, pl_module) -> Rollout | None:
        """The saved rollout for this step of the run, or None once the replayed ones are used up."""
        index = pl_module.record.counters["rollouts"]
        if index >= self.steps:
            return None
        with pl_module.record.phase("replay"):
            rollout = Rollout.load(rollout_path(self.seed_dir, index)).to(pl_module.device)
            expected = pl_module.plan.completions_per_rollout
            if len(rollout) != expected:
                raise ValueError(f"replay: {rollout_path(self.seed_dir, index)} has {len(rollout)} completions; this "
                                 f"run's rollouts have {expected}")
        if pl_module.reference is not None:
            with pl_module.record.phase("ref_logprobs"), torch.no_grad():
                rollout.ref_logprobs = completion_logprobs(
                    pl_module.reference, rollout.prompt_ids, rollout.prompt_mask, rollout.completion_ids,
                    rollout.completion_mask, pl_module.sampling.temperature).logprobs
        pl_module.record.count(completions=len(rollout))  # generated once for every entry, counted in each budget
        pl_module.record.counters["replayed_rollouts"] = index + 1
        return rollout

    def teardown(self, trainer, pl_module, stage: str) -> None:
        pl_module.replay = None


@torch.no_grad()
def generate(run_config: dict, seed: int, steps: int, out: str | Path, fingerprint: str | None = None) -> Path:
    """Roll out ``steps`` batches of ``run_config``'s task with its starting policy pi_0 (never
    updated) and save them in ``out`` with a manifest (``fingerprint``: what a replaying run checks);
    returns ``out``."""
    from lightning import LightningDataModule, LightningModule

    import rlpost.algorithms  # noqa: F401  short class names in the config resolve
    from rlpost.config import CLI_SETTINGS, RLPostCLI

    cfg = copy.deepcopy(run_config)
    cfg["seed_everything"] = seed
    cfg["trainer"] = {**cfg.get("trainer", {}), "logger": False, "enable_checkpointing": False,
                      "enable_progress_bar": False, "callbacks": None}
    with warnings.catch_warnings():  # args given from code while the process has its own argv: intended here
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
        cli = RLPostCLI(LightningModule, LightningDataModule, args=cfg, run=False, **CLI_SETTINGS)
    model, task = cli.model, cli.datamodule
    model.configure_model()
    task.setup("fit")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    batches = iter(task.train_dataloader())
    h = model.hparams
    for index in range(steps):
        batch = next(batches, None)
        if batch is None:
            batches = iter(task.train_dataloader())
            batch = next(batches)
        rollout = make_rollout(model.policy, model.tokenizer, batch, task.scorers(), num_generations=h.num_generations,
                               sampling=model.sampling, backend=model.backend, need_old_logprobs=True)
        rollout.save(rollout_path(out, index))
        print(f"[replay] seed {seed}: rollout {index + 1}/{steps} (reward {float(rollout.rewards.mean()):.3f})", flush=True)
    manifest = {"seed": seed, "steps": steps, "completions_per_rollout": len(rollout),
                "model_name_or_path": h.model_name_or_path, "num_generations": h.num_generations,
                "sampling": asdict(model.sampling), "fingerprint": fingerprint}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str))
    return out


def main(argv: list[str] | None = None) -> None:
    import yaml

    p = argparse.ArgumentParser(prog="python -m rlpost.replay", description=generate.__doc__.split("\n")[0])
    p.add_argument("--config", required=True, help="the run config (YAML) whose task and starting policy roll out")
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--steps", type=int, required=True, help="rollouts to generate")
    p.add_argument("--out", required=True, help="directory for rollout_<i>.pt and manifest.json")
    p.add_argument("--fingerprint", help="recorded in the manifest; a ReplayRollouts given it refuses other rollouts")
    args = p.parse_args(argv)
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    generate(yaml.safe_load(Path(args.config).read_text()), args.seed, args.steps, args.out, args.fingerprint)


if __name__ == "__main__":
    main()
