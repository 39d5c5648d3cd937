"""The memory plan (rlpost.memory_plan) equals the measured memory breakdown of a run, exactly, on CPU;
it is built from the config alone (meta device) and printed before training."""

import pytest
import torch
from torch import nn

from rlpost.algorithms import GRPO, PPO
from rlpost.memory_plan import memory_plan_of, plan_memory
from tests.conftest import ToyTask, make_trainer

CASES = {
    "grpo": (GRPO, {}),
    "grpo_beta0": (GRPO, {"beta": 0.0}),
    "ppo_separate": (PPO, {}),
    "ppo_value_head": (PPO, {"critic": "value_head"}),
    "grpo_lora": (GRPO, {"lora": {"r": 4}}),
    "ppo_separate_lora": (PPO, {"lora": {"r": 4}}),
    "ppo_value_head_lora": (PPO, {"critic": "value_head", "lora": {"r": 4}}),
    "grpo_sgd": (GRPO, {"optimizer": lambda p: torch.optim.SGD(p, lr=1e-3, momentum=0.9)}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_plan_equals_the_measured_breakdown(tmp_path, case, capsys):
    if "lora" in case:
        pytest.importorskip("peft", reason="LoRA needs peft: pip install 'rlpost[peft]'")
    cls, kw = CASES[case]
    model = cls(model_name_or_path="builtin:tiny", num_generations=4, max_completion_length=3, save_policy=False,
                **kw)
    planned = memory_plan_of(model)  # before any model exists: the config alone
    assert model.policy is None and model.reference is None and model.critic is None
    make_trainer(tmp_path, max_steps=1).fit(model, datamodule=ToyTask())
    assert planned.as_breakdown() == model.summary["memory_breakdown"]
    assert planned.accounted_bytes > 0


def test_plan_follows_a_true_half_precision(tmp_path):
    """bf16-true casts every model (adapters and heads too) to bf16: the plan says so, the run agrees."""
    model = PPO(model_name_or_path="builtin:tiny", num_generations=4, max_completion_length=3, save_policy=False)
    make_trainer(tmp_path, max_steps=1, precision="bf16-true").fit(model, datamodule=ToyTask())
    plan = memory_plan_of(model)
    assert plan.precision == "bf16-true"
    assert plan.as_breakdown() == model.summary["memory_breakdown"]
    fp32 = memory_plan_of(model, precision="32-true")
    assert fp32.models["policy"]["parameters"] == 2 * plan.models["policy"]["parameters"]


def test_sharded_plan_divides_by_the_world_size():
    model = nn.Linear(10, 10)  # 110 float32 parameters = 440 bytes
    opt = torch.optim.AdamW(model.parameters())
    whole = plan_memory({"policy": model}, [opt])
    # AdamW: two moments (4 bytes each per element) and one float32 step per tensor: 2*440 + 2*4
    assert whole.models["policy"] == {"parameters": 440, "gradients": 440, "optimizer_state": 888}
    halves = plan_memory({"policy": model}, [opt], world_size=2, sharded=True)
    assert halves.models["policy"] == {"parameters": 220, "gradients": 220, "optimizer_state": 444}
    assert plan_memory({"policy": model}, [opt], world_size=2).models == whole.models  # DDP: replicated


def test_plan_is_printed_before_training(tmp_path, capsys, caplog):
    model = GRPO(model_name_or_path="builtin:tiny", num_generations=4, max_completion_length=3, save_policy=False)
    with caplog.at_level("INFO"):
        make_trainer(tmp_path, max_steps=1).fit(model, datamodule=ToyTask())
    text = caplog.text + capsys.readouterr().out
    assert "[rlpost] memory plan per device" in text and "reference parameters 4.0 MiB" in text
    assert text.index("memory plan") < text.index("held-out accuracy")
