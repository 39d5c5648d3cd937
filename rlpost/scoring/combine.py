"""Run several scorers on a batch of completions and combine them with weights.

A scorer follows TRL's reward-function convention::

    f(prompts: list, completions: list, completion_ids: list[list[int]], trainer_state, **columns)
        -> list[float | None]

``columns`` are the task's extra dataset columns, one entry per completion; ``completion_ids``
the completions' token ids (unpadded, up to and including EOS) and ``trainer_state`` the training
state (``transformers.TrainerState``: ``global_step``, ``max_steps``, ``epoch``), passed always, as
TRL passes them: a scorer takes ``**kwargs`` for what it does not use. ``None``
means "not applicable" for that completion: it adds 0 to the weighted total and is left
out of that scorer's logged mean. A score is a real number: ``int``, ``float``, a numpy
scalar, a one-element real tensor, or ``bool`` (``True`` counts 1.0: Python's ``bool`` is an
``int``, and a verifier returning ``answer == expected`` is common); a string is refused,
even ``"1.0"``. A scorer that raises, returns NaN/inf, a non-number or the wrong number of
values, or whose weighted total overflows, stops the run with a :class:`ScorerError` naming
the scorer and the prompt (and completion).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor


class Scorer(Protocol):
    def __call__(self, prompts: list, completions: list, **kwargs: Any) -> list[float | None]: ...


class ScorerError(RuntimeError):
    """A scorer failed on a batch; the message names the scorer and the culprit prompt/completion."""


@dataclass
class ScoreResult:
    """Scores of N completions.

    Attributes:
        total: [N] weighted sum over scorers (None counts 0).
        per_scorer: name -> [N] raw scores, NaN where the scorer said None.
    """

    total: Tensor
    per_scorer: dict[str, Tensor]


def scorer_name(fn: Callable) -> str:
    return getattr(fn, "name", None) or getattr(fn, "__name__", None) or type(fn).__name__


class ScorerSet:
    """Several scorers with weights; each is kept separately for logging.

    Args:
        scorers: name -> callable, or a list of callables (named by ``name``/``__name__``).
        weights: name -> weight (default 1.0 each). Unknown names raise ValueError.
    """

    def __init__(self, scorers: Mapping[str, Callable] | Sequence[Callable], weights: Mapping[str, float] | None = None):
        if not isinstance(scorers, Mapping):
            named: dict[str, Callable] = {}
            for fn in scorers:
                name = scorer_name(fn)
                if name in named:
                    raise ValueError(f"two scorers are both named {name!r}; pass a dict to name them")
                named[name] = fn
            scorers = named
        if not scorers:
            raise ValueError("a ScorerSet needs at least one scorer")
        for name, fn in scorers.items():
            if not callable(fn):
                raise ValueError(f"scorer {name!r} is not callable: {fn!r}")
        weights = check_weights(weights or {})
        unknown = set(weights) - set(scorers)
        if unknown:
            raise ValueError(f"weights given for unknown scorers {sorted(unknown)}; scorers are {sorted(scorers)}")
        self.scorers = dict(scorers)
        self.weights = {name: weights.get(name, 1.0) for name in scorers}

    @property
    def names(self) -> list[str]:
        return list(self.scorers)

    def __call__(self, prompts: list, completions: list, columns: Mapping[str, list] | None = None, *,
                 completion_ids: list[list[int]] | None = None, trainer_state: Any = None) -> ScoreResult:
        """Score N completions. rlpost's rollout and evaluator always pass ``completion_ids`` and
        ``trainer_state``; a call by hand may leave them None."""
        columns = dict(columns or {})
        reserved = sorted({"completion_ids", "trainer_state"} & set(columns))
        if reserved:
            raise ValueError(f"column(s) {reserved} clash with the arguments every scorer receives; rename them")
        n = len(completions)
        if len(prompts) != n:
            raise ValueError(f"{len(prompts)} prompts for {n} completions")
        for col, values in columns.items():
            if len(values) != n:
                raise ValueError(f"column {col!r} has {len(values)} values for {n} completions")
        kwargs = {**columns, "completion_ids": completion_ids, "trainer_state": trainer_state}
        per_scorer = {name: run_scorer(name, fn, prompts, completions, kwargs) for name, fn in self.scorers.items()}
        total = torch.zeros(n, dtype=torch.float32)
        for name, scores in per_scorer.items():
            total += self.weights[name] * torch.where(scores.isnan(), 0.0, scores)  # NaN encodes None; inf stays inf
        if not torch.isfinite(total).all():  # a host tensor: no device sync
            raise ScorerError(self._overflow_message(total, per_scorer, prompts, completions))
        return ScoreResult(total=total, per_scorer=per_scorer)

    def _overflow_message(self, total: Tensor, per_scorer: dict[str, Tensor], prompts: list, completions: list) -> str:
        rows = torch.nonzero(~torch.isfinite(total)).flatten().tolist()
        parts = [f"prompt {prompts[i]!r} and completion {completions[i]!r}: total {float(total[i])} from "
                 + ", ".join(f"{k}={float(v[i]):g} x weight {self.weights[k]:g}" for k, v in per_scorer.items())
                 for i in rows[:3]]
        return (f"non-finite reward after weighting (float32) for {len(rows)} of {len(total)} completions; "
                + "; ".join(parts))


def check_weights(weights: Mapping[str, float]) -> dict[str, float]:
    """``name -> weight`` as floats; a weight that is not a finite real number is refused, naming its scorer."""
    out = {}
    for name, w in dict(weights).items():
        if not _is_real(w) or not math.isfinite(float(w)):
            raise ValueError(f"scorer_weights[{name!r}] must be a finite number, got {w!r}")
        out[name] = float(w)
    return out


def _is_real(v: Any) -> bool:
    if isinstance(v, Tensor):
        return v.numel() == 1 and not v.is_complex()
    return isinstance(v, numbers.Real)


def run_scorer(name: str, fn: Callable, prompts: list, completions: list, columns: Mapping[str, list]) -> Tensor:
    """Call one scorer and check what it returns: one real number or None per completion, finite.
    Returns [N] float32 with NaN where it said None; raises :class:`ScorerError` naming the scorer and
    the culprit prompt and completion."""
    try:
        out = fn(prompts=prompts, completions=completions, **columns)
    except Exception as err:  # re-raised with context, never swallowed
        raise ScorerError(
            f"scorer {name!r} raised {type(err).__name__}: {err} on a batch of {len(completions)} completions; "
            f"first prompt: {prompts[0]!r}"
        ) from err
    if out is None or isinstance(out, str) or not hasattr(out, "__len__") or len(out) != len(completions):
        got = "None" if out is None or isinstance(out, str) else (
            f"{len(out)} values" if hasattr(out, "__len__") else repr(out))
        raise ScorerError(f"scorer {name!r} returned {got} for {len(completions)} completions "
                          f"(one number or None per completion); first prompt: {prompts[0]!r}")
    values = []
    for i, v in enumerate(out):
        if v is None:
            values.append(math.nan)
            continue
        if not _is_real(v):
            raise ScorerError(f"scorer {name!r} returned non-numeric {v!r} ({type(v).__name__}) for prompt "
                              f"{prompts[i]!r} and completion {completions[i]!r}; a score is a real number or None")
        v = float(v)
        if not math.isfinite(v):
            raise ScorerError(
                f"scorer {name!r} returned {v} for prompt {prompts[i]!r} and completion {completions[i]!r}"
            )
        values.append(v)
    return torch.tensor(values, dtype=torch.float32)
