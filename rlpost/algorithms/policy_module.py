"""What every module that trains a causal-LM policy shares, apart from how it trains it.

:class:`PolicyModule` builds the policy in ``configure_model`` (so a sharded strategy wraps it at
construction; under ``ModelParallelStrategy`` every model is sharded there, see
:mod:`rlpost.sharding`), evaluates it on the task's held-out split (before training, at every validation
interval, at the end; ``rlpost validate``), exports it, and reports through its run record
(:class:`rlpost.run_record.RunRecord`). The RL loop (:class:`~rlpost.algorithms.OnPolicyAlgorithm`)
and supervised fine-tuning (:class:`~rlpost.algorithms.SFT`) build on it.

A subclass sets ``self.tokenizer``, ``self.record`` and ``self.policy = None`` in ``__init__``, has
hyperparameters ``model_name_or_path``, ``dtype``, ``max_completion_length`` and ``eval_temperature``,
and builds any further models in :meth:`configure_models`.
"""

from __future__ import annotations

from pathlib import Path

from lightning import LightningModule
from torch import nn

from rlpost.evaluation import HeldOutEvaluator
from rlpost.models import load_policy
from rlpost.run_record import RecordedModule
from rlpost.sharding import check_strategy, full_state_dict, is_sharded, shard_models


class PolicyModule(RecordedModule, LightningModule):
    """Policy building, held-out evaluation, export and reporting (see the module docstring)."""

    backend = None  # the generation backend; None: transformers generate

    def configure_model(self) -> None:
        if self.policy is None:  # idempotent: Lightning may call it again
            if self._trainer is not None:
                check_strategy(self._trainer.strategy, self.device_mesh)
            self.policy = load_policy(self.hparams.model_name_or_path, dtype=self.hparams.dtype)
            self.configure_models()
            if self.device_mesh is not None:  # ModelParallelStrategy: FSDP2 on its data-parallel dimension
                shard_models(self.accounted_models().values(), self.device_mesh["data_parallel"])

    def configure_models(self) -> None:
        """Build the models besides the policy (reference, critic), after the policy."""

    def configure_callbacks(self):
        return [self.record]

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
        validation split, sharded over ranks. A sharded policy generates in collectives, so then every
        rank runs as many generation batches as the largest shard needs."""
        ds, world = self.trainer.datamodule.val_dataset, self.trainer.world_size
        if world > 1:
            ds = ds.shard(num_shards=world, index=self.trainer.global_rank, contiguous=True)
        largest = -(-len(self.trainer.datamodule.val_dataset) // world) if is_sharded(self.policy) else 0
        return self.evaluator(self.policy, self.tokenizer, ds, pad_to=largest)

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
        return {"algorithm": type(self).__name__, "hparams": dict(self.hparams)}

    def export_model(self, log_dir: Path) -> Path:
        """Write the trained policy and its tokenizer (Hugging Face format); returns the directory."""
        return self.write_policy(Path(log_dir) / "policy")

    def write_policy(self, out: Path) -> Path:
        """Save the policy and tokenizer to ``out``. Every rank calls it (gathering a sharded policy is
        a collective); rank 0 writes."""
        state = full_state_dict(self.policy)
        if self.trainer.is_global_zero:
            self.policy.save_pretrained(out, state_dict=state)
            self.tokenizer.save_pretrained(out)
        return out

    def summary_line(self, s: dict) -> str:
        return (f"[rlpost] held-out accuracy {s['accuracy_before']:.3f} -> {s['accuracy_after']:.3f}, reward "
                f"{s['reward_before']:.3f} -> {s['reward_after']:.3f}" + (f"; model: {s['model_dir']}" if "model_dir" in s else ""))
