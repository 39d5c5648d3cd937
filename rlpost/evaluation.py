"""Held-out evaluation: one evaluator for every method, rlpost's algorithms and the TRL reference row.

Imports no algorithm.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from datasets import Dataset
from torch import nn
from torchmetrics import MeanMetric, SumMetric

from rlpost.rollout import decode_completions, generate_completions
from rlpost.scoring import ScorerError, ScorerSet


class HeldOutEvaluator(nn.Module):
    """Held-out accuracy, greedy and sampled, and the training reward of the greedy completions.

    Returns ``{"greedy", "sampled", "n", "reward", "rewards"}``: accuracies by ``accuracy_fn``
    (1.0 = correct), the number of prompts, the scorers' weighted total and each scorer's mean
    (completions it returned ``None`` for are left out of its mean). The means are torchmetrics
    metrics: under DDP each rank evaluates its own shard of the split and ``compute`` syncs them.

    Args:
        accuracy_fn: the task's accuracy scorer.
        scorers: the task's training scorers (they run here once before training, so a broken
            scorer fails before any update).
        max_completion_length: new tokens per completion at most.
        batch_size: prompts per generation batch.
        temperature: temperature of the sampled accuracy.
    """

    def __init__(self, accuracy_fn: Callable, scorers: ScorerSet, *, max_completion_length: int, batch_size: int,
                 temperature: float):
        super().__init__()
        self.accuracy_fn, self.scorers = accuracy_fn, scorers
        self.max_completion_length, self.batch_size, self.temperature = max_completion_length, batch_size, temperature
        self.means = nn.ModuleDict({"greedy": MeanMetric(), "sampled": MeanMetric(), "reward": MeanMetric(), "n": SumMetric()})
        self.per_scorer = nn.ModuleList(MeanMetric(nan_strategy="ignore") for _ in scorers.names)

    @torch.no_grad()
    def forward(self, policy: nn.Module, tokenizer, dataset: Dataset) -> dict:
        for metric in [*self.means.values(), *self.per_scorer]:
            metric.reset()
        device = self.means["n"].device
        for start in range(0, len(dataset), self.batch_size):
            batch = dataset[start : start + self.batch_size]
            prompts, columns = batch["prompt"], {k: v for k, v in batch.items() if k != "prompt"}
            for name, sample in (("greedy", False), ("sampled", True)):
                _, _, ids, mask, _ = generate_completions(
                    policy, tokenizer, prompts, num_generations=1, max_completion_length=self.max_completion_length,
                    temperature=self.temperature, do_sample=sample,
                )
                texts = decode_completions(tokenizer, ids, mask)
                correct = self.accuracy_fn(prompts=prompts, completions=texts, **columns)
                self.means[name].update(torch.tensor(correct, dtype=torch.float32, device=device))
                if not sample:
                    self._update_rewards(prompts, texts, columns, device)
            self.means["n"].update(torch.tensor(float(len(prompts)), device=device))
        computed = {name: metric.compute() for name, metric in self.means.items()}
        return {"greedy": float(computed["greedy"]), "sampled": float(computed["sampled"]), "n": int(computed["n"]),
                "reward": float(computed["reward"]),
                "rewards": {name: float(m.compute()) for name, m in zip(self.scorers.names, self.per_scorer)}}

    def _update_rewards(self, prompts: list, texts: list, columns: dict, device: torch.device) -> None:
        try:
            rewards = self.scorers(prompts, texts, columns)
        except ScorerError as err:
            raise ScorerError(f"{err} (scoring held-out greedy completions)") from err
        self.means["reward"].update(rewards.total.to(device))
        for metric, values in zip(self.per_scorer, rewards.per_scorer.values()):
            metric.update(values.to(device))


def val_metrics(result: dict) -> dict[str, float]:
    """An evaluator's result as logged metrics: ``val/accuracy_greedy``, ``val/reward``, ``val/rewards/<scorer>``."""
    return {"val/accuracy_greedy": result["greedy"], "val/accuracy_sampled": result["sampled"],
            "val/reward": result["reward"], **{f"val/rewards/{name}": v for name, v in result["rewards"].items()}}
