"""What every module that trains a causal-LM policy shares, apart from how it trains it.

:class:`PolicyModule` builds the policy in ``configure_model`` (so a sharded strategy wraps it at
construction), evaluates it on the task's held-out split (before training, at every validation
interval, at the end; ``rlpost validate``), exports it, and reports through its run record
(:class:`rlpost.run_record.RunRecord`). It checks every scorer once before the first evaluation
(:func:`rlpost.preflight.scorer_dry_run`), keeps frozen models (the reference) out of checkpoints,
and on resume applies or refuses arguments that differ from the checkpoint's (:mod:`rlpost.resume`).
The RL loop (:class:`~rlpost.algorithms.OnPolicyAlgorithm`) and supervised fine-tuning
(:class:`~rlpost.algorithms.SFT`) build on it.

A subclass sets ``self.tokenizer``, ``self.record`` and ``self.policy = None`` in ``__init__``, has
hyperparameters ``model_name_or_path``, ``dtype``, ``max_completion_length`` and ``eval_temperature``,
and builds any further models in :meth:`configure_models`.
"""

from __future__ import annotations

from pathlib import Path

from lightning import LightningModule
from lightning.pytorch.utilities import rank_zero_info
from torch import nn

from rlpost.evaluation import HeldOutEvaluator
from rlpost.models import load_policy
from rlpost.preflight import dry_run_line, scorer_dry_run
from rlpost.resume import (RNGState, check_optimizer_args, check_resume_args, drop_frozen, optimizer_settings,
                           restore_frozen)
from rlpost.run_record import RecordedModule


class PolicyModule(RecordedModule, LightningModule):
    """Policy building, held-out evaluation, export and reporting (see the module docstring)."""

    backend = None  # the generation backend; None: transformers generate

    def configure_model(self) -> None:
        if self.policy is None:  # idempotent: Lightning may call it again
            self.policy = load_policy(self.hparams.model_name_or_path, dtype=self.hparams.dtype)
            self.configure_models()

    def configure_models(self) -> None:
        """Build the models besides the policy (reference, critic), after the policy."""

    def configure_callbacks(self):
        return [RNGState(), self.record]  # this order: a resumed run's catch-up evaluation draws the restored RNG

    def frozen_models(self) -> dict[str, nn.Module | None]:
        """Models that are not trained and are rebuilt from the base weights: not stored in checkpoints."""
        return {"reference": getattr(self, "reference", None)}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        drop_frozen(checkpoint, self.frozen_models())

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Resume: the arguments must match the checkpoint's (safe changes are applied, with a note; the rest
        refused, :func:`~rlpost.resume.check_resume_args`); the frozen models are the freshly built ones."""
        applied = check_resume_args(checkpoint.get("hyper_parameters", {}), dict(self.hparams), "model")
        dm = self.trainer.datamodule if self._trainer is not None else None
        if dm is not None and "datamodule_hyper_parameters" in checkpoint:
            applied += check_resume_args(checkpoint["datamodule_hyper_parameters"], dict(dm.hparams), "data")
        for line in applied:
            rank_zero_info(f"[rlpost] resume: applying {line}")
        drop_frozen(checkpoint, self.frozen_models())  # a checkpoint written before frozen models were dropped
        restore_frozen(checkpoint, self.frozen_models())
        if "optimizer_states" in checkpoint:  # absent from weights-only checkpoints
            self._saved_optimizers = optimizer_settings(checkpoint["optimizer_states"])

    def on_fit_start(self) -> None:
        """Checks before the first evaluation: a resumed run's optimizer settings (the optimizers exist now and
        get the checkpoint's state next), then every scorer once on a few training prompts
        (:func:`~rlpost.preflight.scorer_dry_run`)."""
        saved, self._saved_optimizers = getattr(self, "_saved_optimizers", None), None
        if saved is not None:
            check_optimizer_args(saved, self.trainer.optimizers)
        dm = self.trainer.datamodule
        self.scorer_check = scorer_dry_run(self.scorer_set, dm.accuracy_scorer(), self.policy, self.tokenizer,
                                           dm.train_dataset, max_new_tokens=self.hparams.max_completion_length,
                                           backend=self.backend)
        rank_zero_info(dry_run_line(self.scorer_check))

    def setup(self, stage: str) -> None:
        dm = self.trainer.datamodule
        if dm is None:
            raise ValueError(f"{type(self).__name__} needs a task datamodule (trainer.fit(model, datamodule=task))")
        self.scorer_set = dm.scorers()
        self.evaluator = HeldOutEvaluator(dm.accuracy_scorer(), self.scorer_set, batch_size=dm.eval_batch_size,
                                          max_completion_length=self.hparams.max_completion_length,
                                          temperature=self.hparams.eval_temperature, backend=self.backend)
        dm.setup(stage)

    def held_out_evaluation(self) -> dict:
        """Held-out accuracy and reward (:class:`~rlpost.evaluation.HeldOutEvaluator`) over the task's
        validation split, sharded over ranks."""
        ds = self.trainer.datamodule.val_dataset
        if self.trainer.world_size > 1:
            ds = ds.shard(num_shards=self.trainer.world_size, index=self.trainer.global_rank, contiguous=True)
        return self.evaluator(self.policy, self.tokenizer, ds)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        pass  # held-out accuracy is measured over the whole split at once, in on_validation_epoch_end

    def on_validation_epoch_end(self) -> None:
        if not self.trainer.sanity_checking:
            loggers = self.trainer.loggers if self.trainer.is_global_zero else []
            self.record.evaluation(self.global_step, self.held_out_evaluation(), loggers)

    def on_history(self, rows: list[dict]) -> None:
        """Called with the training steps just read back from the device (every logging interval)."""

    # ------------------------------------------------------------------ what the run record asks
    def accounted_models(self) -> dict[str, nn.Module | None]:
        return {"policy": self.policy, "reference": getattr(self, "reference", None),
                "critic": getattr(self, "critic", None)}

    def summary_fields(self) -> dict:
        return {"algorithm": type(self).__name__, "hparams": dict(self.hparams),
                "scorer_dry_run": getattr(self, "scorer_check", None)}

    def export_model(self, log_dir: Path) -> Path:
        """Write the trained policy and its tokenizer (Hugging Face format); returns the directory."""
        out = Path(log_dir) / "policy"
        self.policy.save_pretrained(out)
        self.tokenizer.save_pretrained(out)
        return out

    def summary_line(self, s: dict) -> str:
        return (f"[rlpost] held-out accuracy {s['accuracy_before']:.3f} -> {s['accuracy_after']:.3f}, reward "
                f"{s['reward_before']:.3f} -> {s['reward_after']:.3f}" + (f"; model: {s['model_dir']}" if "model_dir" in s else ""))
