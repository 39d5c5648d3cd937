"""Supervised fine-tuning on demonstrations: builds the warm start RL begins from."""

from __future__ import annotations

from pathlib import Path

import torch
from lightning.pytorch.cli import OptimizerCallable

from rlpost.algorithms.policy_module import PolicyModule
from rlpost.models import load_policy, load_tokenizer
from rlpost.run_record import RunRecord


def default_sft_optimizer(params) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=1e-3, weight_decay=0.0)


class SFT(PolicyModule):
    """Next-token cross-entropy on the completion tokens of (prompt, completion) pairs.

    Held-out accuracy is measured before and after (and at each validation interval) like an RL
    run's; at the end the model and tokenizer are saved with ``save_pretrained`` in ``output_dir``,
    from where any rlpost config loads them as ``model_name_or_path``.

    Args:
        model_name_or_path: starting model (``builtin:tiny`` builds one from a config).
        output_dir: where the trained model is written (None: ``<log_dir>/policy``).
        max_completion_length: generation length of the held-out accuracy check.
        optimizer: optimizer factory.
        seed: initialisation seed of a built-in model.
        eval_temperature: temperature of the sampled held-out accuracy.
        dtype: dtype the model is loaded in (None = as stored).
    """

    def __init__(
        self,
        model_name_or_path: str = "builtin:tiny",
        output_dir: str | None = None,
        max_completion_length: int = 8,
        optimizer: OptimizerCallable = default_sft_optimizer,
        seed: int = 0,
        eval_temperature: float = 1.0,
        dtype: str | None = None,
    ):
        super().__init__()
        self.save_hyperparameters(ignore=["optimizer"])
        self.optimizer_factory = optimizer
        self.tokenizer = load_tokenizer(model_name_or_path)
        self.record = RunRecord()
        self.policy = None

    def configure_model(self) -> None:
        if self.policy is None:
            self.policy = load_policy(self.hparams.model_name_or_path, dtype=self.hparams.dtype, seed=self.hparams.seed)

    def configure_optimizers(self):
        return self.optimizer_factory(self.policy.parameters())

    def encode(self, prompts: list[str], completions: list[str]) -> dict[str, torch.Tensor]:
        """Right-padded prompt+completion+EOS; labels are -100 on prompt and padding."""
        tok = self.tokenizer
        ids, labels = [], []
        for p, c in zip(prompts, completions):
            p_ids = tok(p, add_special_tokens=False)["input_ids"]
            c_ids = tok(c, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
            ids.append(p_ids + c_ids)
            labels.append([-100] * len(p_ids) + c_ids)
        width = max(map(len, ids))
        pad = lambda rows, v: torch.tensor([r + [v] * (width - len(r)) for r in rows], device=self.device)  # noqa: E731
        input_ids, labels = pad(ids, tok.pad_token_id), pad(labels, -100)
        return {"input_ids": input_ids, "attention_mask": (labels != -100) | (input_ids != tok.pad_token_id), "labels": labels}

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        with self.record.phase("forward"):
            loss = self.policy(**self.encode(batch["prompt"], batch["completion"])).loss
        self.log("train/sft_loss", loss, prog_bar=True)
        self.record.step(self.global_step, {"train/sft_loss": loss.detach()})
        return loss

    def export_model(self, log_dir: Path) -> Path:
        return self.write_policy(Path(self.hparams.output_dir) if self.hparams.output_dir else Path(log_dir) / "policy")
