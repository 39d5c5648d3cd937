"""Completion samples: what the policy writes, for people to read in TensorBoard and the run directory.

TRL's ``log_completions`` is the anchor (prompt, completion, each reward function's score, the
advantage); ours also records the step and goes to TensorBoard's text plugin (``add_text``) and to
``<run>/completions.jsonl``. Held-out greedy completions of every evaluation go to
``<run>/eval_completions.jsonl``.

Training samples stay off the hot path: on a sampling step :meth:`CompletionSamples.take` keeps the
first :data:`SAMPLE_PROMPTS` prompts' completions (texts are already on the host) and their rewards
and advantages as one device tensor; :meth:`CompletionSamples.rows` reads them back at the next
logging interval, when the run record reads its metrics back anyway.

Imports no algorithm.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import Tensor

SAMPLE_PROMPTS = 2  # prompts per sample, each with all G of its completions
TEXT_ROWS = 16  # rows of a TensorBoard text table


class CompletionSamples:
    """Pending training samples of one run (see the module docstring).

    Args:
        every: take a sample every ``every`` rollouts (0: never; None: set later to the logging interval).
    """

    def __init__(self, every: int | None = None):
        if every is not None and every < 0:
            raise ValueError(f"log_completions_every_n_steps must be >= 0 or None, got {every}")
        self.every = every
        self._pending: list[tuple[int, list[dict], list[str], Tensor]] = []

    def take(self, step: int, rollouts_done: int, rollout) -> None:
        """Keep a sample of ``rollout`` (the ``rollouts_done``-th of the run) when it is a sampling step."""
        if not self.every or rollouts_done % self.every:
            return
        group = next((i for i, p in enumerate(rollout.prompts) if p != rollout.prompts[0]), len(rollout.prompts))
        n = min(len(rollout), SAMPLE_PROMPTS * group)  # groups are contiguous; texts are on the host: no sync
        adv = rollout.advantages[:n]
        if adv.dim() == 2:  # per-token advantages: their mean over the completion's tokens
            mask = rollout.completion_mask[:n].to(adv.dtype)
            adv = (adv * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)
        scorers = list(rollout.scorer_rewards)
        values = torch.stack([rollout.rewards[:n].float(), adv.float(),
                              *(rollout.scorer_rewards[k][:n].float().to(adv.device) for k in scorers)])
        texts = [{"prompt": p, "completion": c} for p, c in zip(rollout.prompts[:n], rollout.completions[:n])]
        self._pending.append((step, texts, scorers, values.detach()))

    def rows(self) -> list[dict]:
        """The pending samples as rows ``step, prompt, completion, reward, rewards{scorer}, advantage``; clears them."""
        out = []
        for step, texts, scorers, values in self._pending:
            table = values.tolist()
            for i, text in enumerate(texts):
                rewards = {k: _number(table[2 + j][i]) for j, k in enumerate(scorers)}
                out.append({"step": step, **text, "reward": table[0][i], "rewards": rewards, "advantage": table[1][i]})
        self._pending.clear()
        return out


def append_jsonl(path: Path, rows: Iterable[dict]) -> None:
    rows = list(rows)
    if rows:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)


def log_text(loggers: Iterable, tag: str, rows: list[dict], step: int) -> None:
    """``rows`` as a Markdown table in TensorBoard's text plugin, for every TensorBoard logger."""
    from lightning.pytorch.loggers import TensorBoardLogger

    if not rows:
        return
    text = markdown_table(rows[:TEXT_ROWS])
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.experiment.add_text(tag, text, global_step=step)


def markdown_table(rows: list[dict]) -> str:
    """Rows as a Markdown table; nested dicts (``rewards``) become one column per key."""
    flat = [{k2: v2 for k, v in r.items() for k2, v2 in (v.items() if isinstance(v, dict) else [(k, v)])} for r in rows]
    columns = list(dict.fromkeys(k for r in flat for k in r))
    cell = lambda v: f"{v:.3f}" if isinstance(v, float) else str(v).replace("|", "\\|").replace("\n", " ")  # noqa: E731
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(c, "")) for c in columns) + " |" for r in flat]
    return "\n".join(lines)


def _number(x: float) -> float | None:
    return None if x != x else x  # NaN: the scorer said "not applicable"
