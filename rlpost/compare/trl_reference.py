"""The TRL reference row: TRL's ``GRPOTrainer`` on the same model, prompts, reward and budget.

``trl_spec`` turns a resolved rlpost GRPO entry into the keyword arguments of TRL's ``GRPOConfig``,
setting explicitly every field whose TRL default differs from rlpost's (TRL 1.16 defaults to
``loss_type="dapo"``, ``beta=0.0``, gradient checkpointing and bf16 on, a linear-decay schedule,
a KL term weighted by the importance ratio, ...). :data:`EXPLICIT_FIELDS` lists them with the
reason; the report prints that list.

``run`` (``python -m rlpost.compare.trl_reference --spec S --seed N --out DIR``) trains and writes a
``summary.json`` with the same fields as an rlpost fit, measured the same way:

- held-out accuracy and reward before/after: :class:`rlpost.evaluation.HeldOutEvaluator`, the
  evaluator of every rlpost algorithm;
- peak memory: :mod:`rlpost.memory` (peak RSS reset after the first evaluation, as rlpost does at
  ``on_train_start``), model-state breakdown after the first optimizer step;
- ``generation_s``: time inside ``GRPOTrainer._generate_and_score_completions`` (generation,
  decoding, rewards, reference log-probs, advantages), the counterpart of rlpost's rollout phase;
  ``generate_call_s``: the ``model.generate`` calls alone; ``training_s``: the rest of each step.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import time
from pathlib import Path
from typing import Any

import torch

from rlpost.evaluation import HeldOutEvaluator
from rlpost.memory import model_state_bytes, peak_memory_bytes, reset_peak_memory
from rlpost.models import load_policy, load_tokenizer

# GRPOConfig fields the adapter always sets, whatever the entry: (value, TRL 1.16 default, why).
EXPLICIT_FIELDS: dict[str, tuple[Any, Any, str]] = {
    "gradient_checkpointing": (False, True, "rlpost does not checkpoint activations"),
    "bf16": (False, "True (unless fp16)", "rlpost trains in the policy's dtype (fp32 here)"),
    "fp16": (False, False, "fp32, as rlpost"),
    "lr_scheduler_type": ("constant", "linear", "rlpost's optimizer has no schedule"),
    "warmup_steps": (0, 0, "no warm-up, as rlpost"),
    "optim": ("adamw_torch", "adamw_torch_fused / adamw_torch", "torch.optim.AdamW, as the rlpost config"),
    "use_bias_correction_kl": (False, True, "rlpost's KL term is plain k3; TRL multiplies it by the importance "
                                            "ratio, whose gradient differs even when the ratio is 1"),
    "disable_dropout": (True, False, "rlpost trains the policy as loaded (eval mode: no dropout); a no-op here"),
    "mask_truncated_completions": (False, False, "rlpost keeps truncated completions in the loss"),
    "importance_sampling_level": ("token", "token", "per-token ratios, as rlpost's GRPO"),
    "top_entropy_quantile": (1.0, 1.0, "no entropy masking"),
    "entropy_coef": (0.0, 0.0, "no entropy bonus"),
    "repetition_penalty": (1.0, 1.0, "plain sampling"),
    "min_p": (None, None, "plain sampling"),
    "delta": (None, None, "no upper clip of the unclipped ratio"),
    "sync_ref_model": (False, False, "frozen reference, as rlpost"),
    "multi_objective_aggregation": ("sum_then_normalize", "sum_then_normalize",
                                    "weighted sum of scorers, then group advantages, as rlpost"),
    "shuffle_dataset": (True, True, "prompts drawn in shuffled order (each trainer its own order from the seed)"),
    "use_vllm": (False, False, "transformers generate, as rlpost"),
    "use_transformers_continuous_batching": (False, False, "plain generate, as rlpost"),
    "cast_lm_head_to_fp32": (False, False, "no dtype change"),
    "gradient_accumulation_steps": (1, 1, "one forward/backward per optimizer step, as rlpost's plan"),
    "steps_per_generation": (1, "gradient_accumulation_steps", "one optimizer step per rollout"),
    "remove_unused_columns": (False, False, "the scorer needs the task's extra columns (answer)"),
    "logging_steps": (1, 10, "per-step curves"),
    "save_strategy": ("no", "steps", "no checkpoints (rlpost suite runs save none either)"),
    "eval_strategy": ("no", "no", "held-out accuracy by the shared evaluator instead"),
    "report_to": ("none", "all", "no external logger"),
    "log_completions": (False, False, ""),
    "dataloader_num_workers": (0, 0, "same process, as rlpost"),
    "torch_compile": (False, False, ""),
}

# rlpost hyperparameter -> GRPOConfig field, copied from the mirrored entry.
MIRRORED = {
    "num_generations": "num_generations",
    "max_completion_length": "max_completion_length",
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "beta": "beta",
    "epsilon": "epsilon",
    "epsilon_high": "epsilon_high",
    "num_iterations": "num_iterations",
    "loss_type": "loss_type",
    "scale_rewards": "scale_rewards",
    "max_grad_norm": "max_grad_norm",
}
TRL_DEFAULTS = {"num_generations": 8, "max_completion_length": 512, "temperature": 1.0, "top_p": 1.0, "top_k": 0,
                "beta": 0.0, "epsilon": 0.2, "epsilon_high": None, "num_iterations": 1, "loss_type": "dapo",
                "scale_rewards": "group", "max_grad_norm": 1.0, "learning_rate": 1e-6, "weight_decay": 0.0,
                "adam_beta1": 0.9, "adam_beta2": 0.999, "adam_epsilon": 1e-8,
                "per_device_train_batch_size": 8, "max_steps": -1}
SUPPORTED_ALGORITHMS = ("rlpost.algorithms.GRPO", "rlpost.algorithms.grpo.GRPO")
ADAMW = ("torch.optim.AdamW", "torch.optim.adamw.AdamW")


def trl_spec(model: dict, data: dict, budget: dict, entry_name: str) -> dict:
    """The adapter's run spec from a resolved rlpost entry (``model``/``data``: class_path + init_args).

    Refuses (ValueError, naming the field) what TRL's GRPOTrainer cannot mirror.
    """
    where = f"TRL reference of entry {entry_name!r}"
    if model["class_path"] not in SUPPORTED_ALGORITHMS:
        raise ValueError(f"{where}: TRL's GRPOTrainer mirrors rlpost.algorithms.GRPO only, not {model['class_path']!r}")
    h = model["init_args"]
    if h.get("mini_batch_size") is not None or h.get("micro_batch_size") is not None:
        raise ValueError(f"{where}: mini_batch_size/micro_batch_size must be unset (one optimizer step on the "
                         f"whole rollout); got {h.get('mini_batch_size')}, {h.get('micro_batch_size')}")
    opt = h["optimizer"]
    if opt["class_path"] not in ADAMW:
        raise ValueError(f"{where}: optimizer {opt['class_path']!r} has no GRPOConfig equivalent; use torch.optim.AdamW")
    o = opt["init_args"]
    for flag in ("amsgrad", "maximize"):
        if o.get(flag):
            raise ValueError(f"{where}: AdamW {flag}=True has no GRPOConfig equivalent")
    betas = o.get("betas", (0.9, 0.999))
    n = budget["prompts_per_step"] * h["num_generations"]
    cfg = {trl: h[ours] for ours, trl in MIRRORED.items()}
    cfg.update(
        learning_rate=o["lr"], weight_decay=o.get("weight_decay", 0.01), adam_beta1=betas[0], adam_beta2=betas[1],
        adam_epsilon=o.get("eps", 1e-8), per_device_train_batch_size=n, max_steps=budget["max_steps"],
    )
    cfg.update({k: v[0] for k, v in EXPLICIT_FIELDS.items()})
    return {
        "entry": entry_name,
        "model_name_or_path": h["model_name_or_path"],
        "dtype": h.get("dtype"),
        "eval_temperature": h.get("eval_temperature", 1.0),
        "task": data,
        "eval_every": budget.get("eval_every", 0),
        "grpo_config": cfg,
    }


def differences(spec: dict) -> list[tuple[str, Any, Any]]:
    """(field, TRL default, value set) for every GRPOConfig field the spec sets away from TRL's default."""
    out = []
    for k, v in spec["grpo_config"].items():
        default = EXPLICIT_FIELDS[k][1] if k in EXPLICIT_FIELDS else TRL_DEFAULTS[k]
        if default != v:
            out.append((k, default, v))
    return out


# ----------------------------------------------------------------------------- evaluation


@torch.no_grad()
def build_task(task: dict):
    module, _, name = task["class_path"].rpartition(".")
    dm = getattr(importlib.import_module(module), name)(**task.get("init_args", {}))
    dm.setup("fit")
    return dm


# ----------------------------------------------------------------------------- the run


def run(spec: dict, seed: int, out_dir: str | Path) -> dict:
    """Train with TRL's GRPOTrainer as ``spec`` says; write ``summary.json`` into ``out_dir``."""
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    dm = build_task(spec["task"])
    scorer_set = dm.scorers()
    tokenizer = load_tokenizer(spec["model_name_or_path"])
    policy = load_policy(spec["model_name_or_path"], dtype=spec["dtype"])
    g = spec["grpo_config"]
    evaluator = HeldOutEvaluator(dm.accuracy_scorer(), scorer_set, max_completion_length=g["max_completion_length"],
                                 batch_size=dm.eval_batch_size, temperature=spec["eval_temperature"])

    def held_out() -> dict:
        return evaluator(policy, tokenizer, dm.val_dataset)

    timers = {"generation_s": 0.0, "generate_call_s": 0.0, "completion_tokens": 0, "completions": 0, "rollouts": 0}
    state: dict[str, Any] = {"in_rollout": False, "breakdown": None, "history": [], "val_history": []}

    before = held_out()
    print(f"[trl-reference] held-out accuracy before training: greedy {before['greedy']:.3f}, sampled {before['sampled']:.3f}")
    config = GRPOConfig(output_dir=str(out_dir / "trainer"), seed=seed, use_cpu=not torch.cuda.is_available(),
                        reward_weights=[scorer_set.weights[n] for n in scorer_set.names], **g)
    trainer = GRPOTrainer(model=policy, reward_funcs=list(scorer_set.scorers.values()), args=config,
                          train_dataset=dm.train_dataset, processing_class=tokenizer)

    # generation time: the rollout phase and the generate calls inside it
    generate_and_score = trainer._generate_and_score_completions
    model_generate = policy.generate

    def timed_generate_and_score(inputs):
        t0 = time.perf_counter()
        state["in_rollout"] = True
        try:
            out = generate_and_score(inputs)
        finally:
            state["in_rollout"] = False
        timers["generation_s"] += time.perf_counter() - t0
        state["step_generation_s"] += time.perf_counter() - t0
        timers["completion_tokens"] += int(out["completion_mask"].sum())
        state["step_tokens"] += int(out["completion_mask"].sum())
        timers["completions"] += int(out["completion_ids"].shape[0])
        timers["rollouts"] += 1
        return out

    def timed_generate(*args, **kwargs):
        t0 = time.perf_counter()
        out = model_generate(*args, **kwargs)
        if state["in_rollout"]:
            timers["generate_call_s"] += time.perf_counter() - t0
        return out

    trainer._generate_and_score_completions = timed_generate_and_score
    policy.generate = timed_generate
    eval_every = spec["eval_every"]

    class Probe(TrainerCallback):
        def on_step_begin(self, args, st, control, **kw):
            state.update(step_t0=time.perf_counter(), step_generation_s=0.0, step_tokens=0)

        def on_optimizer_step(self, args, st, control, **kw):
            if state["breakdown"] is None:  # after the first step: gradients and optimizer state exist
                opt = getattr(trainer.optimizer, "optimizer", trainer.optimizer)
                state["breakdown"] = {"policy": model_state_bytes(policy, [opt]),
                                      "reference": model_state_bytes(trainer.ref_model, [opt]),
                                      "critic": model_state_bytes(None)}

        def on_step_end(self, args, st, control, **kw):
            step_s = time.perf_counter() - state["step_t0"]
            state["step_training_s"] = step_s - state["step_generation_s"]
            state["training_s"] = state.get("training_s", 0.0) + state["step_training_s"]

        def on_log(self, args, st, control, logs=None, **kw):
            if not logs or "reward" not in logs:
                return
            gen_s = state["step_generation_s"]
            row = {"step": st.global_step, "wall_s": time.perf_counter() - state["t_start"]}
            row.update({f"train/{k}": float(v) for k, v in logs.items() if isinstance(v, (int, float))})
            row.update({"train/time/generation_s": gen_s, "train/time/training_s": state["step_training_s"],
                        "train/completion_tokens_per_s": state["step_tokens"] / max(gen_s, 1e-9),
                        "train/peak_memory_bytes": float(peak_memory_bytes(device))})
            state["history"].append(row)
            if eval_every and st.global_step % eval_every == 0 and st.global_step < st.max_steps:
                acc = held_out()
                state["val_history"].append({"step": st.global_step, "wall_s": time.perf_counter() - state["t_train"],
                                             "accuracy_greedy": acc["greedy"], "accuracy_sampled": acc["sampled"]})

    trainer.add_callback(Probe())
    device = next(policy.parameters()).device
    state["t_start"] = state["t_train"] = time.perf_counter()
    state["val_history"].append({"step": 0, "wall_s": 0.0, "accuracy_greedy": before["greedy"],
                                 "accuracy_sampled": before["sampled"]})
    peak_reset = reset_peak_memory(device)
    trainer.train()
    after = held_out()
    peak = peak_memory_bytes(device)
    state["val_history"].append({"step": trainer.state.global_step, "wall_s": time.perf_counter() - state["t_train"],
                                 "accuracy_greedy": after["greedy"], "accuracy_sampled": after["sampled"]})
    breakdown = state["breakdown"] or {"policy": model_state_bytes(policy), "reference": model_state_bytes(trainer.ref_model),
                                       "critic": model_state_bytes(None)}
    breakdown["accounted_bytes"] = sum(sum(v.values()) for v in breakdown.values() if isinstance(v, dict))
    n = g["per_device_train_batch_size"]
    import trl

    summary = {
        "algorithm": "TRL GRPOTrainer",
        "seed": seed,
        "steps": trainer.state.global_step,
        "rollouts": timers["rollouts"],
        "accuracy_before": before["greedy"],
        "accuracy_before_sampled": before["sampled"],
        "accuracy_after": after["greedy"],
        "accuracy_after_sampled": after["sampled"],
        "reward_before": before["reward"],
        "reward_after": after["reward"],
        "rewards_before": before["rewards"],
        "rewards_after": after["rewards"],
        "eval_prompts": after["n"],
        "peak_memory_bytes": peak,
        "peak_memory_measure": ("cuda max_memory_allocated" if device.type == "cuda" else
                                "peak RSS (VmHWM) since training start" + ("" if peak_reset else " (reset unavailable)")),
        "memory_breakdown": breakdown,
        "generation_s": timers["generation_s"],
        "generate_call_s": timers["generate_call_s"],
        "training_s": state.get("training_s", 0.0),
        "completion_tokens": timers["completion_tokens"],
        "completion_tokens_per_s": timers["completion_tokens"] / max(timers["generation_s"], 1e-9),
        "completions_generated": timers["completions"],
        "timing_measure": "generation_s: GRPOTrainer._generate_and_score_completions (generate, decode, rewards, "
                          "reference log-probs, advantages); training_s: rest of each optimizer step",
        "plan": {"prompts_per_step": n // g["num_generations"], "num_generations": g["num_generations"],
                 "completions_per_rollout": n, "mini_batch_size": n, "micro_batch_size": n,
                 "num_iterations": g["num_iterations"], "optimizer_steps_per_rollout": g["num_iterations"],
                 "world_size": 1, "reference_model": trainer.ref_model is not None, "critic": False},
        "hparams": {**g, "model_name_or_path": spec["model_name_or_path"], "trl_version": trl.__version__},
        "history": state["history"],
        "val_history": state["val_history"],
    }
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    print(f"[trl-reference] accuracy {before['greedy']:.3f} -> {after['greedy']:.3f}; summary: {out_dir / 'summary.json'}")
    return summary


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m rlpost.compare.trl_reference", description=__doc__.split("\n")[0])
    p.add_argument("--spec", required=True, help="JSON spec written by `rlpost compare` (trl_spec)")
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--out", required=True, help="run directory (summary.json goes here)")
    a = p.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    run(json.loads(Path(a.spec).read_text()), a.seed, a.out)


if __name__ == "__main__":
    main()
