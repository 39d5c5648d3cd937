"""Supervised fine-tuning on demonstrations: builds the warm start RL begins from."""

from __future__ import annotations

from pathlib import Path

import torch
from lightning import LightningModule
from lightning.pytorch.cli import OptimizerCallable
from lightning.pytorch.utilities import rank_zero_info

from rlpost.models import load_policy, load_tokenizer
from rlpost.rollout import decode_completions, generate_completions


def default_sft_optimizer(params) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=1e-3, weight_decay=0.0)


class SFT(LightningModule):
    """Next-token cross-entropy on the completion tokens of (prompt, completion) pairs.

    At the end of training the model and tokenizer are saved with ``save_pretrained`` in
    ``output_dir``, from where any rlpost config loads them as ``model_name_or_path``.

    Args:
        model_name_or_path: starting model (``builtin:tiny`` builds one from a config).
        output_dir: where the trained model is written (None: ``<log_dir>/model``).
        max_completion_length: generation length of the held-out accuracy check.
        optimizer: optimizer factory.
        seed: initialisation seed of a built-in model.
    """

    def __init__(
        self,
        model_name_or_path: str = "builtin:tiny",
        output_dir: str | None = None,
        max_completion_length: int = 8,
        optimizer: OptimizerCallable = default_sft_optimizer,
        seed: int = 0,
    ):
        super().__init__()
        self.save_hyperparameters(ignore=["optimizer"])
        self.optimizer_factory = optimizer
        self.tokenizer = load_tokenizer(model_name_or_path)
        self.policy = load_policy(model_name_or_path, seed=seed)

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
        pad = lambda rows, v: torch.tensor([r + [v] * (width - len(r)) for r in rows], device=self.device)
        input_ids, labels = pad(ids, tok.pad_token_id), pad(labels, -100)
        return {"input_ids": input_ids, "attention_mask": (labels != -100) | (input_ids != tok.pad_token_id), "labels": labels}

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self.policy(**self.encode(batch["prompt"], batch["completion"])).loss
        self.log("train/sft_loss", loss, prog_bar=True)
        return loss

    @torch.no_grad()
    def validation_step(self, batch: dict, batch_idx: int) -> None:
        _, _, ids, mask, _ = generate_completions(
            self.policy, self.tokenizer, batch["prompt"], num_generations=1,
            max_completion_length=self.hparams.max_completion_length, do_sample=False,
        )
        scorer = self.trainer.datamodule.accuracy_scorer()
        extra = {k: v for k, v in batch.items() if k != "prompt"}
        scores = scorer(prompts=batch["prompt"], completions=decode_completions(self.tokenizer, ids, mask), **extra)
        self.log("val/accuracy_greedy", sum(scores) / len(scores), prog_bar=True, batch_size=len(scores), sync_dist=True)

    def on_train_end(self) -> None:
        if not self.trainer.is_global_zero:
            return
        out = Path(self.hparams.output_dir or Path(self.trainer.log_dir or self.trainer.default_root_dir) / "model")
        out.mkdir(parents=True, exist_ok=True)
        self.policy.save_pretrained(out)
        self.tokenizer.save_pretrained(out)
        rank_zero_info(f"[rlpost] SFT model saved to {out}")
