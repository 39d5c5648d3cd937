"""Shared fixtures: everything is built in code or written to tmp paths; no network, no GPU."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from lightning import Trainer

from rlpost.config import apply_threads
from rlpost.data import TaskDataModule
from rlpost.plan import rollout_plan
from rlpost.scoring import ScorerSet

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
apply_threads(None, "cpu")  # rlpost's CPU rule: OMP_NUM_THREADS if set, else 1 (fastest on a small shared machine)


def starts_with_seven(prompts, completions, **_):
    """Toy reward: 1.0 when the completion starts with '7'."""
    return [float(c.startswith("7")) for c in completions]


class ToyTask(TaskDataModule):
    """A handful of prompts with an ``answer`` column, scored by an arbitrary scorer."""

    def __init__(self, prompts=None, answers=None, scorer=starts_with_seven, prompts_per_step=2, val_prompts=None):
        super().__init__(prompts_per_step=prompts_per_step, eval_batch_size=8, required_columns=("answer",))
        self.prompts = prompts or ["1+2=", "3+4=", "5+6=", "7+8=", "9+1=", "2+2=", "4+4=", "6+6="]
        self.answers = answers if answers is not None else ["7"] * len(self.prompts)
        self.val_prompts = val_prompts or self.prompts[:4]
        self.scorer = scorer

    def setup(self, stage=None):
        if self.train_dataset is None:
            self.train_dataset = self.check_dataset(
                Dataset.from_dict({"prompt": self.prompts, "answer": self.answers}), "ToyTask train")
            self.val_dataset = self.check_dataset(
                Dataset.from_dict({"prompt": self.val_prompts, "answer": ["7"] * len(self.val_prompts)}), "ToyTask validation")

    def scorers(self):
        return ScorerSet({"toy": self.scorer})

    def accuracy_scorer(self):
        return lambda prompts, completions, answer, **_: [float(c.strip() == a) for c, a in zip(completions, answer)]


def make_trainer(tmp_path, max_steps=2, **kwargs) -> Trainer:
    defaults = dict(
        max_steps=max_steps, max_epochs=-1, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
        default_root_dir=str(tmp_path),
    )
    defaults.update(kwargs)
    return Trainer(**defaults)


def assert_split_keeps_the_gradient(module, loss_of, n: int = 8, split=((0, 1, 2), (3, 4, 5, 6, 7))) -> None:
    """The gradient of ``module`` from ``loss_of(index)`` summed over the parts of ``split`` equals
    the gradient from one call on all ``n`` rows (global normalisers: splitting changes nothing)."""

    def grad(parts):
        module.zero_grad()
        for idx in parts:
            loss_of(torch.tensor(list(idx))).backward()
        return torch.cat([p.grad.flatten() for p in module.parameters() if p.grad is not None])

    whole = grad([range(n)])
    assert whole.abs().sum() > 0
    torch.testing.assert_close(whole, grad(split), atol=1e-6, rtol=1e-4)


def built(model):
    """The algorithm with its models built (Lightning builds them in ``configure_model`` at fit time)."""
    model.configure_model()
    return model


def attached(model, tmp_path, rewards=None):
    """The model wired to a trainer and a toy task, with one scored rollout of 2 prompts x 4."""
    torch.manual_seed(0)
    trainer = make_trainer(tmp_path)
    trainer.strategy.connect(model)
    model.trainer = trainer
    task = ToyTask()
    task.setup()
    model.scorer_set = task.scorers()
    model.plan = rollout_plan(2, model.hparams.num_generations)
    model.needs_old_logprobs = lambda: True
    rollout = model.rollout(task.sample_prompts(2, torch.Generator().manual_seed(0)))
    if rewards is not None:
        rollout.rewards = rewards
    model.on_rollout(rollout)
    rollout.advantages = model.compute_advantages(rollout)
    return rollout


@pytest.fixture
def toy_task():
    return ToyTask()


def load_script(relative: str):
    """A script of the repository (``comparisons/...py``, not a package) imported as a module."""
    path = Path(__file__).parents[1] / relative
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
