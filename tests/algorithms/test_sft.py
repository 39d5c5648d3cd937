"""The warm start is rebuilt by the documented command: `rlpost fit --config configs/sft_arith.yaml`."""

from pathlib import Path

import pytest
import torch

from rlpost.cli import cli_main
from rlpost.data import ArithmeticDemos
from rlpost.data.arithmetic import carry_dropped_sum
from rlpost.models import load_policy, load_tokenizer

ROOT = Path(__file__).parents[2]


def test_carry_dropped_sum_hand_cases():
    assert carry_dropped_sum(47, 38) == 75  # 4+3=7, (7+8)%10=5
    assert carry_dropped_sum(95, 17) == 2  # (9+1)%10=0, (5+7)%10=2
    assert carry_dropped_sum(12, 34) == 46  # no carry: exact


def test_demonstrations_carry_the_systematic_error():
    demos = ArithmeticDemos(carry_error_rate=1.0, num_prompts=500, num_val_prompts=10).demonstrations()
    for prompt, completion in zip(demos["prompt"], demos["completion"]):
        a, b = map(int, prompt[:-1].split("+"))
        assert int(completion) == carry_dropped_sum(a, b)
    clean = ArithmeticDemos(carry_error_rate=0.0, num_prompts=500, num_val_prompts=10).demonstrations()
    assert all(int(c) == eval(p[:-1]) for p, c in zip(clean["prompt"], clean["completion"]))
    with pytest.raises(ValueError, match="carry_error_rate must be in"):
        ArithmeticDemos(carry_error_rate=1.5)


def test_sft_config_rebuilds_a_loadable_warm_start(tmp_path):
    out = tmp_path / "model"
    cli_main(["fit", "--config", str(ROOT / "configs/sft_arith.yaml"), "--trainer.max_steps", "30",
              "--trainer.val_check_interval", "30", "--trainer.enable_progress_bar", "false",
              "--trainer.default_root_dir", str(tmp_path), "--model.init_args.output_dir", str(out)])
    policy, tok = load_policy(str(out)), load_tokenizer(str(out))
    assert tok.decode(tok("12+34=")["input_ids"]) == "12+34="
    start = load_policy("builtin:tiny")
    assert not torch.equal(next(policy.parameters()), next(start.parameters()))  # trained
