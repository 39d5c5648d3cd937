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
from rlpost.rollout import generate_completions, scorer_inputs
from rlpost.scoring import ScorerError, ScorerSet, run_scorer
from rlpost.scoring.combine import scorer_name


class HeldOutEvaluator(nn.Module):
    """Held-out accuracy, greedy and sampled, and the training reward of the greedy completions.

    Returns ``{"accuracy_greedy", "accuracy_sampled", "reward", "rewards", "n"}``: accuracies by
    ``accuracy_fn`` (1.0 = correct; it and the scorers are called as in training: conversations and
    conversational completions, ``completion_ids`` and ``trainer_state``), the scorers' weighted total and each scorer's mean
    (completions it returned ``None`` for are left out of its mean), and the number of prompts. The means are torchmetrics
    metrics: under DDP each rank evaluates its own shard of the split and ``compute`` syncs them.
    After a call, :attr:`samples` holds this rank's greedy completions, one row per prompt
    (``prompt``, ``completion``, ``accuracy``, ``reward``), for the run directory.

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
        self.samples: list[dict] = []

    @torch.no_grad()
    def forward(self, policy: nn.Module, tokenizer, dataset: Dataset, trainer_state=None, pad_to: int = 0) -> dict:
        """Evaluate on ``dataset``. ``pad_to``: generate as many batches as ``pad_to`` prompts would
        need, the extra ones on the first prompt and counted nowhere (a sharded policy generates in
        collectives, so every rank must call generate the same number of times)."""
        for metric in [*self.means.values(), *self.per_scorer]:
            metric.reset()
        self.samples = []
        device = self.means["n"].device
        if pad_to > len(dataset) == 0:
            raise ValueError(f"this rank's shard of the held-out split is empty (the largest has {pad_to} prompts): "
                             "give the validation split at least one prompt per rank")
        for start in range(0, max(len(dataset), pad_to), self.batch_size):
            if start >= len(dataset):  # greedy: draws no random numbers, so the sampling stays as without padding
                for _ in range(2):
                    generate_completions(policy, tokenizer, dataset[:1]["prompt"], 1, self.sampling.greedy(), self.backend)
                continue
            batch = dataset[start : start + self.batch_size]
            prompts, columns = batch["prompt"], {k: v for k, v in batch.items() if k != "prompt"}
            for name, sampling in (("greedy", self.sampling.greedy()), ("sampled", self.sampling)):
                gen = generate_completions(policy, tokenizer, prompts, 1, sampling, self.backend)
                inputs = scorer_inputs(tokenizer, prompts, gen)
                kwargs = dict(columns, completion_ids=inputs.completion_ids, trainer_state=trainer_state)
                correct = accuracy_scores(self.accuracy_fn, prompts, inputs.completions, kwargs,
                                          f"held-out {name} completions")
                self.means[name].update(correct.to(device))
                if not sampling.do_sample:
                    rewards = self._update_rewards(prompts, inputs, columns, trainer_state, device)
                    self.samples += [{"prompt": p, "completion": t, "accuracy": float(c), "reward": r}
                                     for p, t, c, r in zip(prompts, inputs.texts, correct, rewards.tolist())]
            self.means["n"].update(torch.tensor(float(len(prompts)), device=device))
        computed = {name: metric.compute() for name, metric in self.means.items()}
        return {"accuracy_greedy": float(computed["greedy"]), "accuracy_sampled": float(computed["sampled"]),
                "reward": float(computed["reward"]),
                "rewards": {name: float(m.compute()) for name, m in zip(self.scorers.names, self.per_scorer)},
                "n": int(computed["n"])}

    def _update_rewards(self, prompts: list, inputs, columns: dict, trainer_state, device: torch.device) -> torch.Tensor:
        try:
            rewards = self.scorers(prompts, inputs.completions, columns, completion_ids=inputs.completion_ids,
                                   trainer_state=trainer_state)
        except ScorerError as err:
            raise ScorerError(f"{err} (scoring held-out greedy completions)") from err
        self.means["reward"].update(rewards.total.to(device))
        for metric, values in zip(self.per_scorer, rewards.per_scorer.values()):
            metric.update(values.to(device))
        return rewards.total


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
