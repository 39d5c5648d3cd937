"""The TRL reference row: TRL's ``GRPOTrainer`` on the same model, prompts, reward and budget.

``trl_spec`` turns a resolved rlpost GRPO entry into the keyword arguments of TRL's ``GRPOConfig``,
setting explicitly every field whose TRL default differs from rlpost's (TRL 1.16 defaults to
``loss_type="dapo"``, ``beta=0.0``, gradient checkpointing and bf16 on, a linear-decay schedule,
a KL term weighted by the importance ratio, ...). :data:`EXPLICIT_FIELDS` lists them with the
reason; TRL's defaults are read from ``dataclasses.fields(GRPOConfig)``; the report prints both.

``run`` (``python -m rlpost.compare.trl_reference --spec S --seed N --out DIR``) trains and writes its
``summary.json`` through the same run record as every rlpost fit (:class:`rlpost.run_record.RunRecord`):

- held-out accuracy and reward: :class:`rlpost.evaluation.HeldOutEvaluator`, the evaluator of every
  rlpost algorithm, with the mirrored entry's generation backend, before, every ``eval_every`` steps and
  after (TRL's own rollouts use ``generate``);
- peak memory reset after the first evaluation, model-state breakdown after the first optimizer step;
- phases, as rlpost's: ``generation`` (the ``model.generate`` calls), ``scoring`` (``_calculate_rewards``),
  ``ref_logprobs`` / ``old_logprobs`` (``_get_per_token_logps_and_entropies`` on the reference / on the
  policy inside the rollout) and ``rollout_other`` (the rest of ``_generate_and_score_completions``:
  tokenizing, decoding, advantages) make up ``generation_s``; ``forward`` (``compute_loss``), ``backward``
  (``accelerator.backward``), ``optimizer`` (gradient clipping and norm, ``optimizer.step``), ``logging``
  (``Trainer.log``, which also hands the step to the record: its time is charged to the next step's
  row, the totals are exact) and ``other`` make up the rest.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.cli import instantiate_class
from transformers import TrainerCallback, TrainerState

from rlpost.evaluation import HeldOutEvaluator
from rlpost.generation import make_backend
from rlpost.memory import breakdown_of
from rlpost.models import load_policy, load_tokenizer
from rlpost.run_record import RunRecord

# GRPOConfig fields the adapter always sets, whatever the entry: (value, why). TRL's defaults come
# from ``dataclasses.fields(GRPOConfig)`` (``None`` where GRPOConfig resolves it in ``__post_init__``).
EXPLICIT_FIELDS: dict[str, tuple[Any, str]] = {
    "gradient_checkpointing": (False, "rlpost does not checkpoint activations unless asked"),
    "bf16": (False, "rlpost trains in the policy's dtype (fp32 here); TRL's None means `not fp16`"),
    "fp16": (False, "fp32, as rlpost"),
    "lr_scheduler_type": ("constant", "rlpost's optimizer has no schedule"),
    "warmup_steps": (0, "no warm-up, as rlpost"),
    "optim": ("adamw_torch", "torch.optim.AdamW, as the rlpost config"),
    "use_bias_correction_kl": (False, "rlpost's KL term is plain k3; TRL multiplies it by the importance ratio, "
                                      "whose gradient differs even when the ratio is 1"),
    "disable_dropout": (True, "rlpost trains the policy as loaded (eval mode: no dropout); a no-op here"),
    "mask_truncated_completions": (False, "rlpost keeps truncated completions in the loss"),
    "importance_sampling_level": ("token", "per-token ratios, as rlpost's GRPO"),
    "top_entropy_quantile": (1.0, "no entropy masking"),
    "entropy_coef": (0.0, "no entropy bonus"),
    "repetition_penalty": (1.0, "plain sampling"),
    "min_p": (None, "plain sampling"),
    "delta": (None, "no upper clip of the unclipped ratio"),
    "sync_ref_model": (False, "frozen reference, as rlpost"),
    "multi_objective_aggregation": ("sum_then_normalize", "weighted sum of scorers, then group advantages, as rlpost"),
    "shuffle_dataset": (True, "prompts drawn in shuffled order (each trainer its own order from the seed)"),
    "use_vllm": (False, "transformers generate, as rlpost"),
    "use_transformers_continuous_batching": (False, "plain generate, as rlpost"),
    "cast_lm_head_to_fp32": (False, "no dtype change"),
    "gradient_accumulation_steps": (1, "one forward/backward per optimizer step, as rlpost's plan"),
    "steps_per_generation": (1, "one optimizer step per rollout (TRL's None means gradient_accumulation_steps)"),
    "remove_unused_columns": (False, "the scorer needs the task's extra columns (answer)"),
    "logging_steps": (1, "per-step curves"),
    "save_strategy": ("no", "no checkpoints (rlpost suite runs save none either)"),
    "eval_strategy": ("no", "held-out accuracy by the shared evaluator instead"),
    "report_to": ("none", "no external logger"),
    "log_completions": (False, ""),
    "dataloader_num_workers": (0, "same process, as rlpost"),
    "torch_compile": (False, ""),
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
SUPPORTED_ALGORITHMS = ("rlpost.algorithms.GRPO", "rlpost.algorithms.grpo.GRPO")
ADAMW = ("torch.optim.AdamW", "torch.optim.adamw.AdamW")


def trl_defaults() -> dict[str, Any]:
    """GRPOConfig's field defaults, as its dataclass declares them."""
    from trl import GRPOConfig

    out = {}
    for f in dataclasses.fields(GRPOConfig):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


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
        "generation_backend": h["generation_backend"],  # the held-out evaluator's, as the entry's
        "task": data,
        "eval_every": budget.get("eval_every", 0),
        "grpo_config": cfg,
    }


def differences(spec: dict) -> list[tuple[str, Any, Any]]:
    """(field, TRL default, value set) for every GRPOConfig field the spec sets away from TRL's default."""
    defaults = trl_defaults()
    return [(k, defaults.get(k), v) for k, v in spec["grpo_config"].items() if defaults.get(k) != v]


# ----------------------------------------------------------------------------- the run


class ReferenceRun:
    """One TRL GRPOTrainer run, measured through a :class:`~rlpost.run_record.RunRecord`."""

    def __init__(self, spec: dict, seed: int, out_dir: str | Path):
        self.spec, self.seed, self.out_dir = spec, seed, Path(out_dir)
        self.g = spec["grpo_config"]
        torch.manual_seed(seed)
        self.task = instantiate_class((), spec["task"])
        self.task.setup("fit")
        self.scorers = self.task.scorers()
        self.tokenizer = load_tokenizer(spec["model_name_or_path"])
        self.policy = load_policy(spec["model_name_or_path"], dtype=spec["dtype"])
        self.device = next(self.policy.parameters()).device
        self.evaluator = HeldOutEvaluator(self.task.accuracy_scorer(), self.scorers, batch_size=self.task.eval_batch_size,
                                          max_completion_length=self.g["max_completion_length"],
                                          temperature=spec["eval_temperature"],
                                          backend=make_backend(spec["generation_backend"]))
        self.record = RunRecord(save_model=False)
        self.trainer = None

    def held_out(self, step: int) -> dict:
        state = self.trainer.state if self.trainer is not None else TrainerState()
        return self.record.evaluation(step, self.evaluator(self.policy, self.tokenizer, self.task.val_dataset, state))

    def build_trainer(self):
        from trl import GRPOConfig, GRPOTrainer

        config = GRPOConfig(output_dir=str(self.out_dir / "trainer"), seed=self.seed,
                            use_cpu=not torch.cuda.is_available(),
                            reward_weights=[self.scorers.weights[n] for n in self.scorers.names], **self.g)
        trainer = GRPOTrainer(model=self.policy, reward_funcs=list(self.scorers.scorers.values()), args=config,
                              train_dataset=self.task.train_dataset, processing_class=self.tokenizer)
        self.instrument(trainer)
        trainer.add_callback(Probe(self))
        return trainer

    def instrument(self, trainer) -> None:
        """Time each phase of TRL's step under rlpost's phase names (see the module docstring)."""
        record, rollout, logps = self.record, trainer._generate_and_score_completions, trainer._get_per_token_logps_and_entropies

        def timed(name, fn):
            def call(*args, **kwargs):
                with record.phase(name):  # phases nest: an outer phase is charged only its own time
                    return fn(*args, **kwargs)
            return call

        def counted_rollout(inputs):
            out = timed("rollout_other", rollout)(inputs)
            record.count(completions=int(out["completion_ids"].shape[0]), tokens=int(out["completion_mask"].sum()))
            return out

        def rollout_logps(model, *args, **kwargs):  # in compute_loss it is the policy's forward: left to "forward"
            name = "ref_logprobs" if model is trainer.ref_model else "old_logprobs"
            call = timed(name, logps) if record.open_phase() == "rollout_other" else logps
            return call(model, *args, **kwargs)

        trainer._generate_and_score_completions = counted_rollout
        trainer._get_per_token_logps_and_entropies = rollout_logps
        trainer._calculate_rewards = timed("scoring", trainer._calculate_rewards)
        self.policy.generate = timed("generation", self.policy.generate)
        trainer.compute_loss = timed("forward", trainer.compute_loss)
        trainer.accelerator.backward = timed("backward", trainer.accelerator.backward)
        trainer._clip_grad_norm = timed("optimizer", trainer._clip_grad_norm)
        trainer._get_grad_norm = timed("optimizer", trainer._get_grad_norm)
        trainer.log = timed("logging", trainer.log)

    def train(self) -> dict:
        before = self.held_out(0)
        print(f"[trl-reference] held-out accuracy before training: greedy {before['accuracy_greedy']:.3f}, "
              f"sampled {before['accuracy_sampled']:.3f}")
        self.trainer = self.build_trainer()
        self.record.start(self.device)
        self.trainer.train()
        self.held_out(self.trainer.state.global_step)
        return self.write_summary()

    def write_summary(self) -> dict:
        import trl

        g, n = self.g, self.g["per_device_train_batch_size"]
        if self.record.breakdown is None:
            self.record.breakdown = breakdown_of({"policy": self.policy, "reference": self.trainer.ref_model})
        summary = self.record.summary(
            algorithm="TRL GRPOTrainer", seed=self.seed, steps=self.trainer.state.global_step,
            timing_measure="generation_s: GRPOTrainer._generate_and_score_completions (generate calls, rewards, "
                           "reference log-probs, advantages); training_s: the rest of each optimizer step; phases: "
                           "see rlpost.compare.trl_reference",
            plan={"prompts_per_step": n // g["num_generations"], "num_generations": g["num_generations"],
                  "completions_per_rollout": n, "mini_batch_size": n, "micro_batch_size": n,
                  "num_iterations": g["num_iterations"], "optimizer_steps_per_rollout": g["num_iterations"],
                  "world_size": 1, "reference_model": self.trainer.ref_model is not None, "critic": False},
            hparams={**g, "model_name_or_path": self.spec["model_name_or_path"], "trl_version": trl.__version__},
        )
        path = self.record.write(self.out_dir, summary)
        print(f"[trl-reference] accuracy {summary['accuracy_before']:.3f} -> {summary['accuracy_after']:.3f}; "
              f"summary: {path}")
        return summary


class Probe(TrainerCallback):
    """Feeds TRL's per-step logs, the first optimizer step's memory breakdown and periodic held-out
    evaluations into the run's record."""

    def __init__(self, run: ReferenceRun):
        self.run = run

    def on_train_begin(self, args, state, control, optimizer=None, **kw):
        step = optimizer.step

        def timed_step(*a, **k):
            with self.run.record.phase("optimizer"):
                return step(*a, **k)

        optimizer.step = timed_step

    def on_optimizer_step(self, args, state, control, **kw):
        run = self.run
        if run.record.breakdown is None:  # after the first step: gradients and optimizer state exist
            opt = getattr(run.trainer.optimizer, "optimizer", run.trainer.optimizer)
            run.record.breakdown = breakdown_of({"policy": run.policy, "reference": run.trainer.ref_model}, [opt])

    def on_log(self, args, state, control, logs=None, **kw):
        if not logs or "reward" not in logs:
            return
        run = self.run
        run.record.step(state.global_step, {f"train/{k}": float(v) for k, v in logs.items()
                                            if isinstance(v, (int, float))})
        run.record.flush()
        every = run.spec["eval_every"]
        if every and state.global_step % every == 0 and state.global_step < state.max_steps:
            run.held_out(state.global_step)


def run(spec: dict, seed: int, out_dir: str | Path) -> dict:
    """Train with TRL's GRPOTrainer as ``spec`` says; write ``summary.json`` into ``out_dir``."""
    return ReferenceRun(spec, seed, out_dir).train()


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
