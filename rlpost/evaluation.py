"""Held-out evaluation: one evaluator for every method, rlpost's algorithms and the TRL reference row.

Imports no algorithm.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from datasets import Dataset
from torch import nn
from torchmetrics import MeanMetric, SumMetric

from rlpost.generation import GenerationBackend, Sampling
from rlpost.rollout import decode_completions, generate_completions
from rlpost.scoring import ScorerError, ScorerSet, run_scorer
from rlpost.scoring.combine import scorer_name


class HeldOutEvaluator(nn.Module):
    """Held-out accuracy, greedy and sampled, and the training reward of the greedy completions.

    Returns ``{"accuracy_greedy", "accuracy_sampled", "reward", "rewards", "n"}``: accuracies by
    ``accuracy_fn`` (1.0 = correct), the scorers' weighted total and each scorer's mean
    (completions it returned ``None`` for are left out of its mean), and the number of prompts. The means are torchmetrics
    metrics: under DDP each rank evaluates its own shard of the split and ``compute`` syncs them.

    Args:
        accuracy_fn: the task's accuracy scorer: checked as a training scorer is (count, type, NaN), and
            every value must be in [0, 1] (None is refused: accuracy needs a verdict on every completion).
        scorers: the task's training scorers (they run here once before training, so a broken
            scorer fails before any update).
        max_completion_length: new tokens per completion at most.
        batch_size: prompts per generation batch.
        temperature: temperature of the sampled accuracy.
        backend: the generation backend (default: ``transformers`` ``generate``).
    """

    def __init__(self, accuracy_fn: Callable, scorers: ScorerSet, *, max_completion_length: int, batch_size: int,
                 temperature: float, backend: GenerationBackend | None = None):
        super().__init__()
        self.accuracy_fn, self.scorers, self.batch_size, self.backend = accuracy_fn, scorers, batch_size, backend
        self.sampling = Sampling(max_new_tokens=max_completion_length, temperature=temperature)
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
            for name, sampling in (("greedy", self.sampling.greedy()), ("sampled", self.sampling)):
                gen = generate_completions(policy, tokenizer, prompts, 1, sampling, self.backend)
                texts = decode_completions(tokenizer, gen.completion_ids, gen.completion_mask)
                correct = accuracy_scores(self.accuracy_fn, prompts, texts, columns, f"held-out {name} completions")
                self.means[name].update(correct.to(device))
                if not sampling.do_sample:
                    self._update_rewards(prompts, texts, columns, device)
            self.means["n"].update(torch.tensor(float(len(prompts)), device=device))
        computed = {name: metric.compute() for name, metric in self.means.items()}
        return {"accuracy_greedy": float(computed["greedy"]), "accuracy_sampled": float(computed["sampled"]),
                "reward": float(computed["reward"]),
                "rewards": {name: float(m.compute()) for name, m in zip(self.scorers.names, self.per_scorer)},
                "n": int(computed["n"])}

    def _update_rewards(self, prompts: list, texts: list, columns: dict, device: torch.device) -> None:
        try:
            rewards = self.scorers(prompts, texts, columns)
        except ScorerError as err:
            raise ScorerError(f"{err} (scoring held-out greedy completions)") from err
        self.means["reward"].update(rewards.total.to(device))
        for metric, values in zip(self.per_scorer, rewards.per_scorer.values()):
            metric.update(values.to(device))


def accuracy_scores(fn: Callable, prompts: list, completions: list, columns: dict, where: str) -> torch.Tensor:
    """[N] accuracy of each completion by the task's accuracy scorer, checked like a training scorer
    (:func:`~rlpost.scoring.run_scorer`) and refused unless every value is in [0, 1]."""
    name = scorer_name(fn)
    try:
        values = run_scorer(name, fn, prompts, completions, columns)
    except ScorerError as err:
        raise ScorerError(f"accuracy {err} (scoring {where})") from err
    bad = [i for i, v in enumerate(values.tolist()) if not 0.0 <= v <= 1.0]  # NaN (None) fails too
    if bad:
        i = bad[0]
        got = "None" if values[i].isnan() else f"{float(values[i]):g}"
        raise ScorerError(f"accuracy scorer {name!r} returned {got} for prompt {prompts[i]!r} and completion "
                          f"{completions[i]!r} ({where}); accuracy must be a number in [0, 1] for every completion")
    return values
