r"""A reward model trained on pairwise preference labels, and its use as a scorer.

- :func:`bradley_terry_loss`: the pairwise loss, pure math.
- :class:`RewardModel`: a LightningModule, a ``transformers`` backbone with a scalar head
  (``AutoModelForSequenceClassification`` with ``num_labels=1``), trained on
  ``(prompt, chosen, rejected)`` batches; reports held-out pairwise accuracy and saves itself
  with ``save_pretrained`` (model + tokenizer), loadable by rlpost, TRL or plain transformers.
- :class:`RewardModelScorer`: a saved reward model as a scorer in TRL's reward-function
  convention ``f(prompts, completions, **columns) -> list[float]``; batched, no autograd.

Both score the same text, built by :func:`sequence_texts`: ``prompt + completion`` for strings,
the chat template over ``prompt + completion`` messages for conversational data, then EOS.

This module imports no algorithm.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from lightning import LightningModule
from lightning.pytorch.cli import OptimizerCallable
from torch import Tensor, nn
from transformers import AutoModelForSequenceClassification, LlamaForSequenceClassification

from rlpost.models import ASSETS, BUILTIN_CONFIGS, BUILTIN_PATHS, builtin_config, context_length, load_tokenizer
from rlpost.run_record import RecordedModule, RunRecord

REWARD_MODEL_PATHS = {"builtin:arith-rm": ASSETS / "arith-rm"}
REBUILD = {"builtin:arith-rm": "rlpost fit --config configs/rm_arith.yaml"}


def bradley_terry_loss(chosen_rewards: Tensor, rejected_rewards: Tensor) -> Tensor:
    r"""Pairwise preference loss (Bradley & Terry 1952; InstructGPT, arXiv:2203.02155 eq. 1).

        L = -mean_i log sigmoid(r(x_i, y_i^chosen) - r(x_i, y_i^rejected))

    Args:
        chosen_rewards, rejected_rewards: [B] scalar rewards of the two completions of each pair.
    Returns:
        scalar. Equal rewards give log 2 per pair.
    """
    return -F.logsigmoid(chosen_rewards - rejected_rewards).mean()


# --------------------------------------------------------------------------- text and tokens


def sequence_texts(tokenizer, prompts: Sequence[Any], completions: Sequence[Any]) -> list[str]:
    """The text a reward model scores: ``prompt + completion`` (strings), or the chat template
    over ``prompt + completion`` (message lists, TRL's conversational format)."""
    texts = []
    for p, c in zip(prompts, completions, strict=True):
        if isinstance(p, str) and isinstance(c, str):
            texts.append(p + c)
        elif not isinstance(p, str) and not isinstance(c, str):
            texts.append(tokenizer.apply_chat_template([*p, *c], tokenize=False))
        else:
            raise ValueError(f"prompt and completion must both be strings or both message lists, got "
                             f"{type(p).__name__} and {type(c).__name__}")
    return texts


def encode_sequences(tokenizer, texts: list[str], max_length: int | None, device: torch.device) -> dict[str, Tensor]:
    """Left-padded token ids with EOS appended, attention mask and position ids (real tokens only).

    A sequence longer than ``max_length`` raises (a truncated sequence would be scored wrongly).
    """
    ids = []
    for text in texts:
        row = tokenizer(text, add_special_tokens=False)["input_ids"]
        if tokenizer.eos_token_id is not None and (not row or row[-1] != tokenizer.eos_token_id):
            row = row + [tokenizer.eos_token_id]
        if max_length is not None and len(row) > max_length:
            raise ValueError(f"sequence of {len(row)} tokens exceeds the reward model's {max_length}: {text[:80]!r}")
        ids.append(row)
    width = max(map(len, ids))
    input_ids = torch.full((len(ids), width), tokenizer.pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(ids), width), dtype=torch.long)
    for i, row in enumerate(ids):
        input_ids[i, width - len(row):] = torch.tensor(row)
        attention_mask[i, width - len(row):] = 1
    position_ids = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)
    return {"input_ids": input_ids.to(device), "attention_mask": attention_mask.to(device),
            "position_ids": position_ids.to(device)}


def sequence_rewards(model: nn.Module, batch: Mapping[str, Tensor]) -> Tensor:
    """[N] scalar rewards from a one-label sequence-classification model (pooled at the last
    non-pad token, i.e. the appended EOS)."""
    return model(**batch, use_cache=False).logits.squeeze(-1).float()


# --------------------------------------------------------------------------- loading


def resolve_reward_model(name_or_path: str) -> str:
    """A local directory or Hub name; ``builtin:arith-rm`` is the reward model shipped in rlpost/assets."""
    if name_or_path in REWARD_MODEL_PATHS:
        path = REWARD_MODEL_PATHS[name_or_path]
        if not (path / "config.json").exists():
            raise FileNotFoundError(f"{name_or_path!r} is missing at {path}; rebuild it with `{REBUILD[name_or_path]}`")
        return str(path)
    if name_or_path.startswith("builtin:"):
        raise ValueError(f"unknown built-in reward model {name_or_path!r}; choose from {sorted(REWARD_MODEL_PATHS)}")
    return name_or_path


def load_backbone(name_or_path: str, seed: int = 0) -> tuple[nn.Module, Any]:
    """(one-label sequence-classification model, tokenizer) to start reward-model training from.

    ``builtin:tiny`` builds the tiny Llama from its config; ``builtin:arith-sft`` and any HF
    causal LM get a freshly initialised scalar head on their trunk (its LM head is dropped).
    """
    if name_or_path in BUILTIN_CONFIGS:
        tokenizer = load_tokenizer(name_or_path)
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            model = LlamaForSequenceClassification(builtin_config(name_or_path, num_labels=1))
        return model, tokenizer
    path = str(BUILTIN_PATHS.get(name_or_path) or resolve_reward_model(name_or_path))
    tokenizer = load_tokenizer(path)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


# --------------------------------------------------------------------------- training


def default_rm_optimizer(params) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=3e-4, weight_decay=0.0)


class RewardModel(RecordedModule, LightningModule):
    r"""A Bradley-Terry reward model: a scalar head on a ``transformers`` backbone.

        r(x, y) = w^T h_EOS(x + y),   L = -log sigmoid(r(x, y_chosen) - r(x, y_rejected))

    Trained on a preference datamodule yielding ``prompt``/``chosen``/``rejected`` batches
    (:class:`~rlpost.data.PreferenceData`, :class:`~rlpost.data.ArithmeticPreferences`). Logs
    ``train/loss``, ``train/accuracy`` (pairwise: r_chosen > r_rejected), ``train/margin`` and the
    same under ``val/``. Its run record (:class:`~rlpost.run_record.RunRecord`) measures held-out
    pairwise accuracy over the whole validation split before and after training, saves model and
    tokenizer to ``output_dir`` and writes ``summary.json`` (``accuracy_before``/``accuracy_after``
    are pairwise accuracies; ``accuracy_after_by_kind`` per ``kind`` when the data has that column).

    Args:
        model_name_or_path: backbone: HF name or local path, ``builtin:tiny``, ``builtin:arith-sft``.
        output_dir: where the trained model is saved (None: ``<log_dir>/reward_model``); load it
            with :class:`RewardModelScorer`.
        center_rewards_coefficient: adds ``coef * mean((r_chosen + r_rejected)^2)`` to keep rewards
            centred on 0 (TRL's ``RewardConfig`` name; arXiv:2312.09244). 0 disables.
        max_length: tokens per sequence at most; longer ones raise (None: the model's context).
        optimizer: optimizer factory.
        seed: initialisation seed of the scalar head (and of ``builtin:tiny``).
    """

    def __init__(
        self,
        model_name_or_path: str = "builtin:arith-sft",
        output_dir: str | None = None,
        center_rewards_coefficient: float = 0.0,
        max_length: int | None = None,
        optimizer: OptimizerCallable = default_rm_optimizer,
        seed: int = 0,
    ):
        super().__init__()
        if center_rewards_coefficient < 0:
            raise ValueError(f"center_rewards_coefficient must be >= 0, got {center_rewards_coefficient}")
        self.save_hyperparameters(ignore=["optimizer"])
        self.optimizer_factory = optimizer
        self.model, self.tokenizer = load_backbone(model_name_or_path, seed=seed)
        self.model.train()  # from_pretrained returns eval mode
        self.max_length = max_length or context_length(self.model)
        self.record = RunRecord()

    def configure_callbacks(self):
        return [self.record]

    def configure_optimizers(self):
        return self.optimizer_factory(self.model.parameters())

    def forward(self, prompts: Sequence[Any], completions: Sequence[Any]) -> Tensor:
        """[N] rewards of ``prompt + completion``."""
        texts = sequence_texts(self.tokenizer, prompts, completions)
        return sequence_rewards(self.model, encode_sequences(self.tokenizer, texts, self.max_length, self.device))

    def pair_rewards(self, batch: Mapping[str, list]) -> tuple[Tensor, Tensor]:
        """(r_chosen [B], r_rejected [B]) in one forward over the 2B sequences."""
        n = len(batch["prompt"])
        rewards = self(list(batch["prompt"]) * 2, [*batch["chosen"], *batch["rejected"]])
        return rewards[:n], rewards[n:]

    def pair_loss(self, chosen: Tensor, rejected: Tensor) -> Tensor:
        loss = bradley_terry_loss(chosen, rejected)
        if self.hparams.center_rewards_coefficient > 0:
            loss = loss + self.hparams.center_rewards_coefficient * ((chosen + rejected) ** 2).mean()
        return loss

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        chosen, rejected = self.pair_rewards(batch)
        loss = self.pair_loss(chosen, rejected)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite reward-model loss {loss.item()} at step {self.global_step}; "
                                     f"first prompt of the batch: {batch['prompt'][0]!r}")
        n = len(chosen)
        metrics = {"train/loss": loss.detach(), "train/accuracy": (chosen > rejected).float().mean(),
                   "train/margin": (chosen - rejected).mean().detach()}
        self.log_dict(metrics, prog_bar=True, batch_size=n)
        self.record.step(self.global_step, metrics)
        return loss

    @torch.no_grad()
    def validation_step(self, batch: dict, batch_idx: int) -> None:
        chosen, rejected = self.pair_rewards(batch)
        n = len(chosen)
        self.log("val/loss", self.pair_loss(chosen, rejected), batch_size=n, sync_dist=True)
        self.log("val/accuracy", (chosen > rejected).float().mean(), prog_bar=True, batch_size=n, sync_dist=True)
        self.log("val/margin", (chosen - rejected).mean(), batch_size=n, sync_dist=True)

    @torch.no_grad()
    def pairwise_accuracy(self, dataset, batch_size: int) -> dict[str, float]:
        """Held-out pairwise accuracy (ties count as wrong) over ``dataset``, sharded by rank;
        also per ``kind`` when the dataset has that column."""
        world, rank = (self.trainer.world_size, self.trainer.global_rank) if self._trainer else (1, 0)
        all_kinds = sorted(set(dataset["kind"])) if "kind" in dataset.column_names else []  # same on every rank
        if world > 1:
            dataset = dataset.shard(num_shards=world, index=rank, contiguous=True)
        was_training = self.model.training
        self.model.eval()
        correct = []
        for start in range(0, len(dataset), batch_size):
            chosen, rejected = self.pair_rewards(dataset[start : start + batch_size])
            correct += (chosen > rejected).tolist()
        self.model.train(was_training)
        groups = {"all": range(len(correct))}
        for k in all_kinds:
            groups[k] = [i for i, kk in enumerate(dataset["kind"]) if kk == k]
        out = {}
        for name, idx in groups.items():
            sums = torch.tensor([float(sum(correct[i] for i in idx)), float(len(idx))], device=self.device)
            if world > 1:  # kinds absent from one rank's shard still reduce as zeros
                sums = self.trainer.strategy.reduce(sums, reduce_op="sum")
            out[name] = float(sums[0] / sums[1]) if sums[1] > 0 else float("nan")
        return out

    # ------------------------------------------------------------------ what the run record asks
    def held_out_evaluation(self) -> dict:
        dm = self.trainer.datamodule
        acc = self.pairwise_accuracy(dm.val_dataset, dm.eval_batch_size)
        return {"accuracy": acc.pop("all"), "accuracy_by_kind": acc}

    def on_history(self, rows: list[dict]) -> None:
        pass

    def accounted_models(self) -> dict:
        return {"policy": self.model}

    def summary_fields(self) -> dict:
        dm = self.trainer.datamodule
        return {"algorithm": type(self).__name__, "hparams": dict(self.hparams),
                "accuracy_measure": "held-out pairwise accuracy: r(chosen) > r(rejected)",
                "train_pairs": len(dm.train_dataset), "val_pairs": len(dm.val_dataset)}

    def export_model(self, log_dir: Path) -> Path:
        out = Path(self.hparams.output_dir or Path(log_dir) / "reward_model")
        if self.trainer.is_global_zero:  # the run record asks every rank
            out.mkdir(parents=True, exist_ok=True)
            self.model.save_pretrained(out)
            self.tokenizer.save_pretrained(out)
        return out

    def summary_line(self, s: dict) -> str:
        return (f"[rlpost] held-out pairwise accuracy {s['accuracy_before']:.3f} -> {s['accuracy_after']:.3f}; "
                f"reward model saved to {s['model_dir']}")


# --------------------------------------------------------------------------- scoring


class RewardModelScorer:
    """A saved reward model as a scorer: ``f(prompts, completions, **columns) -> list[float]``.

    Scores ``prompt + completion`` (the text :class:`RewardModel` trained on) in batches under
    ``torch.no_grad``; the model is frozen, in eval mode and outside any optimizer. It moves to
    ``device`` on the first call, so that under DDP each process uses its own GPU. Works as a
    TRL reward function too.

    Args:
        model_name_or_path: directory written by :class:`RewardModel` (or any one-label
            ``AutoModelForSequenceClassification``), or ``builtin:arith-rm`` (shipped).
        batch_size: sequences per forward pass.
        device: ``"auto"``: the current CUDA device if there is one, else CPU.
        dtype: dtype the model is loaded in (None = as stored).
        name: metric label (``train/rewards/<name>/mean``).
    """

    def __init__(self, model_name_or_path: str = "builtin:arith-rm", batch_size: int = 64, device: str = "auto",
                 dtype: str | None = None, name: str = "reward_model"):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model_name_or_path = model_name_or_path
        self.batch_size = batch_size
        self.device = device
        self.name = self.__name__ = name
        path = resolve_reward_model(model_name_or_path)
        kwargs = {} if dtype is None else {"dtype": getattr(torch, dtype)}
        self.model = AutoModelForSequenceClassification.from_pretrained(path, **kwargs).eval().requires_grad_(False)
        if self.model.config.num_labels != 1:
            raise ValueError(f"{model_name_or_path!r} has {self.model.config.num_labels} labels; a reward model has 1")
        self.tokenizer = load_tokenizer(path)
        if self.model.config.pad_token_id is None:
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.max_length = context_length(self.model)
        self._placed = False

    def _place(self) -> torch.device:
        if not self._placed:
            target = self.device
            if target == "auto":
                target = f"cuda:{torch.cuda.current_device()}" if torch.cuda.is_available() else "cpu"
            self.model.to(target)
            self._placed = True
        return next(self.model.parameters()).device

    @torch.no_grad()
    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], **columns: Any) -> list[float]:
        device = self._place()
        texts = sequence_texts(self.tokenizer, prompts, completions)
        scores: list[float] = []
        for start in range(0, len(texts), self.batch_size):
            batch = encode_sequences(self.tokenizer, texts[start : start + self.batch_size], self.max_length, device)
            scores += sequence_rewards(self.model, batch).tolist()
        return scores

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.model_name_or_path!r}, batch_size={self.batch_size}, name={self.name!r})"
