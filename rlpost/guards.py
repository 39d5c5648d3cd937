"""Guards: stop a run on garbage, naming the step and the prompt(s) and completion(s) responsible.

- :func:`check_step` (every optimizer step): the step's loss, the gradient norm before clipping,
  and the rewards and advantages of the mini-batch must be finite. It costs one host sync per
  optimizer step (one flag, and under DDP one all-reduce of it); the culprit rows are looked for
  only when the flag says something is wrong (:func:`culprit_rows`). Non-finite rewards are also
  refused at scoring time, naming the scorer (:class:`rlpost.scoring.ScorerSet`).
- :func:`check_entropy_floor`: the mean token entropy of a step fell below ``max_entropy_collapse``.
- :class:`DegenerationGuard` (optional callback): completions that repeat one n-gram too often.

Imports no algorithm: a guard is handed the module and reads its rollout and hooks.
"""

from __future__ import annotations

from collections import Counter
from typing import Literal

import torch
from lightning.pytorch import Callback
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from rlpost.checks import non_negative, positive, probability
from rlpost.rollout import Rollout

ROW_FIELDS = ("rewards", "advantages", "old_logprobs", "ref_logprobs", "sampling_logprobs", "values", "returns")
MAX_ROWS_RECOMPUTED = 32  # rows whose loss/gradient is recomputed one by one on the failure path


def grad_norm(opts: list) -> Tensor:
    """The 2-norm of the gradients of every parameter the optimizers ``opts`` update (before clipping)."""
    grads = [p.grad for opt in opts for g in getattr(opt, "optimizer", opt).param_groups for p in g["params"]
             if p.grad is not None]
    if not grads:
        return torch.zeros(())
    norm = torch.nn.utils.get_total_norm(grads)
    return norm.full_tensor() if hasattr(norm, "full_tensor") else norm  # a sharded (DTensor) norm


def check_step(module, loss: Tensor, rollout: Rollout, index: Tensor, counts, opts: list) -> Tensor:
    """Refuse to step on a non-finite loss, gradient norm, reward or advantage of the mini-batch ``index``.
    One host sync. Returns the gradient norm before clipping (a device tensor, logged as ``grad_norm``).

    Under fp16 mixed precision with a gradient scaler, inf gradients are the scaler's business (it
    skips the step), so only the loss, rewards and advantages are checked there."""
    norm = grad_norm(opts).to(loss.device)
    finite = torch.isfinite(loss) & _rows_finite(rollout, index, ("rewards", "advantages")).all()
    if getattr(module.trainer.precision_plugin, "scaler", None) is None:
        finite = finite & torch.isfinite(norm)
    bad = (~finite).float()
    if module.trainer.world_size > 1:  # every rank stops together
        bad = module.trainer.strategy.reduce(bad, reduce_op="max")
    if bool(bad):
        step = f"optimizer step {module.global_step + 1} (rollout {module.record.counters['rollouts'] + 1})"
        if bool(finite):
            raise FloatingPointError(f"non-finite values on another rank at {step}; that rank names the culprit")
        raise FloatingPointError(f"non-finite training values at {step}: loss {float(loss)}, gradient norm "
                                 f"{float(norm)}. {culprit_rows(module, rollout, index, counts)}")
    return norm


def _rows_finite(rollout: Rollout, index: Tensor, names=ROW_FIELDS) -> Tensor:
    """[M] whether each row of ``index`` has only finite values in the fields ``names`` (masked tokens excepted)."""
    mask = rollout.completion_mask[index].bool()
    ok = torch.ones(len(index), dtype=torch.bool, device=mask.device)
    for name in names:
        t = getattr(rollout, name)
        if t is None:
            continue
        t = t[index.to(t.device)]
        t = torch.where(mask, t, 0.0) if t.dim() == 2 and t.shape == mask.shape else t
        ok = ok & torch.isfinite(t).reshape(len(index), -1).all(dim=1).to(ok.device)
    return ok


def culprit_rows(module, rollout: Rollout, index: Tensor, counts) -> str:
    """The rows of the mini-batch responsible for a non-finite step, looked for in turn: non-finite inputs
    (rewards, advantages, log-probs, values), then each row's own loss, then each row's own gradient
    (both recomputed one row at a time for the first rows). Names each row's prompt and completion."""
    bad = torch.nonzero(~_rows_finite(rollout, index)).flatten().tolist()
    if bad:
        mb = rollout.select(index)
        fields = [[n for n in ROW_FIELDS if getattr(mb, n) is not None
                   and not _rows_finite(mb, torch.tensor([i]), (n,)).all()] for i in bad]
        return _describe(rollout, index, bad, [f"non-finite {', '.join(f)}" for f in fields])
    rows = index[:MAX_ROWS_RECOMPUTED]
    with torch.no_grad():
        losses = [module.minibatch_loss(rollout.select(rows[i:i + 1]), counts)[0] for i in range(len(rows))]
    bad = [i for i, loss in enumerate(losses) if not torch.isfinite(loss)]
    if bad:
        return _describe(rollout, index, bad, ["its own loss is non-finite"] * len(bad))
    params, names = [(n, p) for n, p in module.named_parameters() if p.requires_grad], []
    for i in range(len(rows)):
        for _, p in params:
            p.grad = None
        module.minibatch_loss(rollout.select(rows[i:i + 1]), counts)[0].backward()
        nonfinite = [n for n, p in params if p.grad is not None and not torch.isfinite(p.grad).all()]
        if nonfinite:
            bad.append(i)
            names = names or nonfinite[:5]
    if bad:
        return _describe(rollout, index, bad, ["its own gradient is non-finite"] * len(bad)) + (
            f"; parameters with non-finite gradients: {names}")
    return (f"No single row of the first {len(rows)} has a non-finite input, loss or gradient on its own: the mini-batch's "
            "combination is (e.g. a normaliser of the whole batch)")


def _describe(rollout: Rollout, index: Tensor, rows: list[int], why: list[str], limit: int = 5) -> str:
    parts = [f"prompt {rollout.prompts[int(index[i])]!r} -> completion {rollout.completions[int(index[i])]!r} ({w})"
             for i, w in zip(rows[:limit], why)]
    more = f" and {len(rows) - limit} more" if len(rows) > limit else ""
    return f"Responsible ({len(rows)} of the mini-batch's {len(index)} rows): " + "; ".join(parts) + more


def check_entropy_floor(rows: list[dict], floor: float, rollout: Rollout | None) -> None:
    """Stop when a step's mean token entropy is below ``floor`` (``max_entropy_collapse``; 0 disables),
    naming the step and an example of the latest rollout."""
    for row in rows:
        if floor > 0 and row.get("train/entropy", float("inf")) < floor:
            example = "" if rollout is None else f"; e.g. prompt {rollout.prompts[0]!r} -> {rollout.completions[0]!r}"
            raise RuntimeError(f"entropy collapsed to {row['train/entropy']:.4f} < max_entropy_collapse={floor} "
                               f"at step {row['step']}{example}")


def max_ngram_count(ids: list[int], n: int) -> int:
    """How often the most frequent n-gram of ``ids`` occurs (overlapping). ``[7, 7, 7, 7]``, n=2 -> 3."""
    grams = Counter(tuple(ids[i:i + n]) for i in range(len(ids) - n + 1))
    return max(grams.values(), default=0)


class DegenerationGuard(Callback):
    """Warn or stop when too many completions of a step repeat one n-gram (degenerate, looping output).

    A completion is degenerate when one n-gram of ``ngram`` tokens occurs more than ``max_repeats``
    times in it; the guard acts when more than ``max_fraction`` of a step's completions are. Add it
    to ``trainer.callbacks`` (``class_path: rlpost.guards.DegenerationGuard``). It reads the
    algorithm's latest rollout (``last_rollout``) and costs one device-to-host copy of the completion
    ids per step.

    Args:
        ngram: n-gram length in tokens.
        max_repeats: occurrences of one n-gram a completion may have.
        max_fraction: fraction of a step's completions that may be degenerate, in (0, 1].
        action: ``stop`` (raise, naming the step and examples) or ``warn``.
        examples: degenerate completions shown in the message.
    """

    def __init__(self, ngram: int = 3, max_repeats: int = 4, max_fraction: float = 0.5,
                 action: Literal["stop", "warn"] = "stop", examples: int = 3):
        positive(ngram=ngram)
        non_negative(max_repeats=max_repeats, examples=examples)
        probability(max_fraction=max_fraction)
        if action not in ("stop", "warn"):
            raise ValueError(f"action must be 'stop' or 'warn', got {action!r}")
        self.ngram, self.max_repeats, self.max_fraction, self.action, self.examples = (
            ngram, max_repeats, max_fraction, action, examples)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        rollout = getattr(pl_module, "last_rollout", None)
        if rollout is None:
            raise ValueError(f"DegenerationGuard needs an algorithm that keeps its last rollout; "
                             f"{type(pl_module).__name__} has no last_rollout")
        lengths = rollout.completion_mask.sum(dim=1).tolist()
        ids = [row[:n] for row, n in zip(rollout.completion_ids.tolist(), lengths)]
        counts = [max_ngram_count(x, self.ngram) for x in ids]
        bad = [i for i, c in enumerate(counts) if c > self.max_repeats]
        if len(bad) <= self.max_fraction * len(ids):
            return
        shown = "; ".join(f"prompt {rollout.prompts[i]!r} -> {rollout.completions[i]!r} (an n-gram {counts[i]} times)"
                          for i in bad[:self.examples])
        msg = (f"degenerate output at step {trainer.global_step}: {len(bad)} of {len(ids)} completions repeat one "
               f"{self.ngram}-gram more than max_repeats={self.max_repeats} times (max_fraction={self.max_fraction}); "
               f"e.g. {shown}")
        if self.action == "stop":
            raise RuntimeError(msg)
        rank_zero_warn(msg)
