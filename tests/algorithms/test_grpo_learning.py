"""GRPO learns the arithmetic task from the shipped warm start; the flipped update unlearns it."""

import pytest
import torch

from rlpost.algorithms import GRPO
from rlpost.data import ArithmeticTask
from tests.conftest import make_trainer


class FlippedGRPO(GRPO):
    """GRPO with the sign of the update reversed: what a sign bug would do."""

    def compute_advantages(self, rollout):
        return -super().compute_advantages(rollout)


def _fit(cls, tmp_path, steps=80):
    torch.manual_seed(0)
    model = cls(model_name_or_path="builtin:arith-sft", num_generations=8, max_completion_length=6, beta=0.04,
                save_policy=False, optimizer=lambda p: torch.optim.AdamW(p, lr=3e-4))
    trainer = make_trainer(tmp_path, max_steps=steps)
    trainer.fit(model, datamodule=ArithmeticTask(num_val_prompts=200, prompts_per_step=8))
    return model.summary


@pytest.mark.slow
def test_grpo_raises_held_out_accuracy_and_flipped_sign_lowers_it(tmp_path):
    up = _fit(GRPO, tmp_path / "grpo")
    assert up["accuracy_before"] <= 0.6
    assert up["accuracy_after"] - up["accuracy_before"] >= 0.2, up
    down = _fit(FlippedGRPO, tmp_path / "flipped")
    assert down["accuracy_after"] < down["accuracy_before"] - 0.1, down
