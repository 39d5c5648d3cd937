"""Checks before compute: the step plan (``rlpost fit --print_plan``) and the scorer dry run.

- :func:`step_plan` checks an on-policy module's plan against its task (batch arithmetic, prompt
  lengths against the model's context, enough prompts for every rank) from the config alone: no
  model is loaded. The training loop uses it in ``setup``; :func:`print_plan` prints it, section by
  section (:func:`plan_sections`: add a section there, e.g. a memory plan, with one entry).
- :func:`scorer_dry_run` calls every scorer once on a few prompts before the first evaluation,
  checking what a scorer must satisfy (signature, count, type, NaN) and timing each call.

Imports no algorithm.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Mapping

from rlpost.evaluation import accuracy_scores
from rlpost.generation import GenerationBackend, Sampling
from rlpost.models import context_length, load_config
from rlpost.plan import RolloutPlan, check_prompt_lengths, rollout_plan
from rlpost.rollout import generate_completions, scorer_inputs
from rlpost.scoring import ScorerError, ScorerSet, run_scorer
from rlpost.scoring.combine import scorer_name


def step_plan(model, dm, max_steps: int | None, world_size: int = 1) -> RolloutPlan:
    """The rollout plan of ``model`` (an on-policy algorithm) on the set-up task ``dm``, or a ValueError
    with the numbers: batch arithmetic (:func:`~rlpost.plan.rollout_plan`), prompts that fit the
    model's context with ``max_completion_length``, and a train split with a batch for every rank."""
    h = model.hparams
    if "num_generations" not in h:
        raise ValueError(f"{type(model).__name__} has no rollout plan (it is not an on-policy algorithm)")
    plan = rollout_plan(dm.prompts_per_step, h.num_generations, h.mini_batch_size, h.micro_batch_size,
                        h.num_iterations, max_steps)  # max_steps counts optimizer steps
    check_prompt_lengths(model.tokenizer, {"train": dm.train_dataset, "validation": dm.val_dataset},
                         context_length(load_config(h.model_name_or_path)), h.max_completion_length)
    if len(dm.train_dataset) < dm.prompts_per_step * world_size:
        raise ValueError(f"train split has {len(dm.train_dataset)} prompts, fewer than prompts_per_step="
                         f"{dm.prompts_per_step} x world_size={world_size}")
    return plan


def plan_table(model, dm, trainer) -> dict:
    """The step plan in numbers, per device and for all ranks, per rollout and over the run."""
    p, world, max_steps = model.plan, trainer.world_size, trainer.max_steps
    rollouts = max_steps // p.optimizer_steps_per_rollout if max_steps and max_steps > 0 else None
    prompts = None if rollouts is None else rollouts * p.prompts_per_step * world
    return {
        "prompts_per_step (per device, B)": p.prompts_per_step, "num_generations (G)": p.num_generations,
        "world_size": world, "prompts_per_step (all ranks)": p.prompts_per_step * world,
        "completions_per_step (per device)": p.completions_per_rollout,
        "completions_per_step (all ranks)": p.completions_per_rollout * world,
        "mini_batch_size (completions per optimizer step, per device)": p.mini_batch_size,
        "micro_batch_size (per forward/backward)": p.micro_batch_size,
        "gradient_accumulation (micro-batches per optimizer step)": p.mini_batch_size // p.micro_batch_size,
        "num_iterations (mu)": p.num_iterations, "optimizer_steps_per_rollout": p.optimizer_steps_per_rollout,
        "max_steps (optimizer steps)": max_steps, "rollouts": rollouts,
        "completions_total (all ranks)": None if rollouts is None else rollouts * p.completions_per_rollout * world,
        "train_prompts": len(dm.train_dataset),
        "epochs over the train split": None if prompts is None else round(prompts / len(dm.train_dataset), 3),
        "held_out_prompts": len(dm.val_dataset),
        "old_logprobs at rollout time": model.needs_old_logprobs(),
        "reference model (beta > 0)": model.hparams.get("beta", 0) > 0,
    }


def plan_sections(model, dm, trainer) -> list[tuple[str, Mapping]]:
    """What ``--print_plan`` prints, as (title, name -> value) sections. A new plan (e.g. memory) is one
    more entry of this list."""
    return [("step plan", plan_table(model, dm, trainer))]


def print_plan(model, dm, trainer, out: Callable[[str], None] = print) -> None:
    """Set up the task, check the plan (:func:`step_plan`) and print it, then the memory plan
    (:func:`rlpost.memory_plan.memory_plan_of`: the models built on the ``meta`` device from their
    configs); loads no weights, generates nothing."""
    from rlpost.memory_plan import memory_plan_of, shards

    dm.setup("fit")
    model.plan = step_plan(model, dm, trainer.max_steps, trainer.world_size)
    for title, table in plan_sections(model, dm, trainer):
        out(f"[rlpost] {title}:")
        width = max(map(len, table))
        for name, value in table.items():
            out(f"  {name:<{width}}  {value}")
    out(memory_plan_of(model, precision=str(trainer.precision), world_size=trainer.world_size,
                       sharded=shards(trainer.strategy)).format())


# ----------------------------------------------------------------------------- scorers


def check_signature(name: str, fn: Callable, columns: list[str]) -> None:
    """Refuse a scorer that cannot be called as ``f(prompts=..., completions=..., <column>=...)``."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):  # a builtin without a signature: the call itself will tell
        return
    try:
        sig.bind(prompts=[], completions=[], **dict.fromkeys(columns, []))
    except TypeError as err:
        call = ", ".join(["prompts", "completions", *columns])
        raise ScorerError(f"scorer {name!r} cannot be called as f({call}) (the task's columns are passed by name; add "
                          f"**kwargs to ignore the others): {err}; its signature is {sig}") from err


def scorer_dry_run(scorers: ScorerSet, accuracy_fn: Callable, policy, tokenizer, dataset, *, max_new_tokens: int,
                   backend: GenerationBackend | None = None, trainer_state=None, n: int = 4) -> dict[str, dict]:
    """Call each training scorer and the held-out accuracy scorer once on the greedy completions of the
    first ``n`` prompts of ``dataset``: signature, count, type, NaN and (accuracy) range are checked as
    in training (the same arguments: conversations where the task has them, ``completion_ids``,
    ``trainer_state``), and each call is timed. Returns ``name -> {"s_per_call", "completions", "none"}``.
    Greedy decoding draws no random numbers, so the run's random stream is untouched."""
    rows = dataset[: min(n, len(dataset))]
    prompts, columns = rows["prompt"], {k: v for k, v in rows.items() if k != "prompt"}
    named = {**scorers.scorers, f"held-out accuracy ({scorer_name(accuracy_fn)})": accuracy_fn}
    for name, fn in named.items():
        check_signature(name, fn, [*columns, "completion_ids", "trainer_state"])
    gen = generate_completions(policy, tokenizer, prompts, 1, Sampling(max_new_tokens, do_sample=False), backend)
    inputs = scorer_inputs(tokenizer, prompts, gen)
    texts, kwargs = inputs.completions, dict(columns, completion_ids=inputs.completion_ids, trainer_state=trainer_state)
    report = {}
    for name, fn in named.items():
        t0 = time.perf_counter()
        if name.startswith("held-out accuracy ("):
            values = accuracy_scores(fn, prompts, texts, kwargs, "the scorer dry run")
        else:
            values = run_scorer(name, fn, prompts, texts, kwargs)
        report[name] = {"s_per_call": time.perf_counter() - t0, "completions": len(texts),
                        "none": int(values.isnan().sum())}
    return report


def dry_run_line(report: dict[str, dict]) -> str:
    parts = [f"{name} {r['s_per_call'] * 1e3:.2f} ms/call" + (f" ({r['none']} None)" if r["none"] else "")
             for name, r in report.items()]
    n = next(iter(report.values()))["completions"] if report else 0
    return f"[rlpost] scorers checked on {n} prompts (greedy completions): " + ", ".join(parts)
