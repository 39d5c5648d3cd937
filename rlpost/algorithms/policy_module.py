"""What every module that trains a causal-LM policy shares, apart from how it trains it.

:class:`PolicyModule` builds the policy in ``configure_model`` (so a sharded strategy wraps it at
construction; under ``ModelParallelStrategy`` every model is sharded there, see
:mod:`rlpost.sharding`), evaluates it on the task's held-out split (before training, at every validation
interval, at the end; ``rlpost validate`` on the validation split and ``rlpost test`` on the test
split, each printed as Lightning's results table and written to ``<run>/validate.json`` /
``test.json``), exports it, and reports through its run record
(:class:`rlpost.run_record.RunRecord`). It checks every scorer once before the first evaluation
(:func:`rlpost.preflight.scorer_dry_run`), keeps frozen models (the reference) out of checkpoints,
and on resume applies or refuses arguments that differ from the checkpoint's (:mod:`rlpost.resume`).
The RL loop (:class:`~rlpost.algorithms.OnPolicyAlgorithm`) and supervised fine-tuning
(:class:`~rlpost.algorithms.SFT`) build on it.

A subclass sets ``self.tokenizer``, ``self.record`` and ``self.policy = None`` (and ``self.lora``, a
:class:`~rlpost.lora.LoRA`, to train adapters) in ``__init__``, has hyperparameters
``model_name_or_path``, ``dtype``, ``max_completion_length`` and ``eval_temperature``, and builds any
further models in :meth:`configure_models`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from lightning import LightningModule
from lightning.pytorch.utilities import rank_zero_info
from torch import nn
from transformers import TrainerState

from rlpost.evaluation import HeldOutEvaluator
from rlpost.loggers import flatten_metrics, rank_zero_loggers
from rlpost.lora import apply_lora, save_policy
from rlpost.models import load_policy
from rlpost.preflight import dry_run_line, scorer_dry_run
from rlpost.resume import (
    RNGState,
    check_optimizer_args,
    check_resume_args,
    drop_frozen,
    optimizer_settings,
    restore_frozen,
)
from rlpost.run_record import RecordedModule
from rlpost.sharding import check_strategy, full_state_dict, is_sharded, shard_models

EVAL_SEED = 0  # held-out sampling is seeded: the same weights give the same metrics, and training's RNG is untouched


class PolicyModule(RecordedModule, LightningModule):
    """Policy building, held-out evaluation, export and reporting (see the module docstring)."""

    backend = None  # the generation backend; None: transformers generate
    lora = None  # LoRA settings (rlpost.lora.LoRA); None: the whole policy is trained
    replay = None  # a ReplayRollouts callback, while it serves this run's first rollouts (rlpost.replay)
    checkpoint_step: int | None = None  # the global step of the checkpoint the weights came from, if any

    def configure_model(self) -> None:
        if self.policy is None:  # idempotent: Lightning may call it again
            if self._trainer is not None:
                check_strategy(self._trainer.strategy, self.device_mesh)
                if self.device_mesh is not None and self.lora is not None and self.lora.merge:
                    raise ValueError("lora.merge=true with a sharded policy (ModelParallelStrategy): save the adapter "
                                     "(lora.merge=false) and merge it offline with peft's merge_and_unload")
            self.policy = apply_lora(load_policy(self.hparams.model_name_or_path, dtype=self.hparams.dtype), self.lora)
            self.configure_models()
            if self.device_mesh is not None:  # ModelParallelStrategy: FSDP2 on its data-parallel dimension
                shard_models(self.accounted_models().values(), self.device_mesh["data_parallel"])

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
        self.checkpoint_step = checkpoint.get("global_step")
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
                                           backend=self.backend, trainer_state=self.trainer_state())
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

    def held_out_evaluation(self, split: str = "validation") -> dict:
        """Held-out accuracy and reward (:class:`~rlpost.evaluation.HeldOutEvaluator`) over the task's
        ``validation`` or ``test`` split, sharded over ranks. Sampling is seeded (:data:`EVAL_SEED`, plus
        the rank) inside a forked RNG: a function of the weights, and invisible to training's RNG. A
        sharded policy generates in collectives, so then every rank runs as many generation batches as
        the largest shard needs."""
        full, world = self.trainer.datamodule.held_out_dataset(split), self.trainer.world_size
        ds = full.shard(num_shards=world, index=self.trainer.global_rank, contiguous=True) if world > 1 else full
        largest = -(-len(full) // world) if is_sharded(self.policy) else 0
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(EVAL_SEED + self.trainer.global_rank)
            return self.evaluator(self.policy, self.tokenizer, ds, self.trainer_state(), pad_to=largest)

    def trainer_state(self) -> TrainerState:
        """What scorers receive as ``trainer_state``: a ``transformers.TrainerState`` (as TRL passes)
        with this run's ``global_step`` (optimizer steps so far), ``max_steps`` and ``epoch``."""
        return TrainerState(global_step=self.global_step, max_steps=self.trainer.max_steps, epoch=self.current_epoch)

    def held_out_samples(self) -> list[dict]:
        return self.evaluator.samples

    def next_rollout(self, batch: dict):
        """This step's rollout: :meth:`rollout` of ``batch``, or a replayed one while a
        :class:`~rlpost.replay.ReplayRollouts` callback serves this run's first rollouts."""
        replayed = None if self.replay is None else self.replay.rollout(self)
        return self.rollout(batch) if replayed is None else replayed

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        pass  # held-out accuracy is measured over the whole split at once, in on_validation_epoch_end

    def test_step(self, batch: dict, batch_idx: int) -> None:
        pass  # likewise, in on_test_epoch_end

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return
        if self.trainer.state.fn == "fit":
            result = self.held_out_evaluation()
            self.record.evaluation(self.global_step, result, rank_zero_loggers(self.trainer), self.held_out_samples())
        else:
            self.report_held_out("validate", "validation")

    def on_test_epoch_end(self) -> None:
        self.report_held_out("test", "test")

    def report_held_out(self, stage: str, split: str) -> None:
        """``rlpost validate`` / ``test``: evaluate, log under ``val/`` / ``test/`` (Lightning prints the
        results table) and have the run record write ``<run>/<stage>.json``."""
        result = self.held_out_evaluation(split)
        prefix = "val/" if split == "validation" else "test/"
        metrics = flatten_metrics({k: v for k, v in result.items() if k != "n"}, prefix)
        self.log_dict(metrics, sync_dist=False)  # already global: the evaluator's metrics sync over ranks
        step = self.checkpoint_step or 0
        self.record.held_out_result(stage, step, result, self.held_out_samples(), split=split,
                                    checkpoint=self.trainer.ckpt_path, model=self.hparams.model_name_or_path)

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
        """Write the trained policy and its tokenizer (Hugging Face format; with LoRA the adapter, or the
        merged weights with ``lora.merge``: :func:`rlpost.lora.save_policy`); returns the directory."""
        return self.write_policy(Path(log_dir) / "policy")

    def write_policy(self, out: Path) -> Path:
        """Save the policy and tokenizer to ``out``. Every rank calls it (gathering a sharded policy is
        a collective); rank 0 writes."""
        state = full_state_dict(self.policy)
        if self.trainer.is_global_zero:
            save_policy(self.policy, self.tokenizer, out, self.lora, state_dict=state)
        return out

    def summary_line(self, s: dict) -> str:
        return (f"[rlpost] held-out accuracy {s['accuracy_before']:.3f} -> {s['accuracy_after']:.3f}, reward "
                f"{s['reward_before']:.3f} -> {s['reward_after']:.3f}" + (f"; model: {s['model_dir']}" if "model_dir" in s else ""))
