"""comparisons/real_model_gpu_check.py's logic on CPU with a 2-layer model of the same architecture (the
real check needs a CUDA GPU and a 0.5B model), and its memory plans of Qwen2.5-0.5B's config."""

import json

import pytest

from tests.conftest import load_script


def load():
    return load_script("comparisons/real_model_gpu_check.py")


@pytest.mark.slow
def test_gpu_check_runs_on_cpu_with_a_tiny_model(tmp_path, capsys):
    pytest.importorskip("peft", reason="the LoRA run needs peft: pip install 'rlpost[peft]'")
    load().main(["--tiny", "--device", "cpu", "--steps", "2", "--max-new-tokens", "8", "--backends", "lean",
                 "--runs", "grpo_lora", "ppo_full", "--out", str(tmp_path / "out.json")])
    results = json.loads((tmp_path / "out.json").read_text())
    assert [(r["run"], r["backend"], r["steps"]) for r in results] == [("grpo_lora", "lean", 2), ("ppo_full", "lean", 2)]
    for r in results:
        assert r["planned_model_state"] == r["measured_model_state"]  # the memory plan, exact on CPU
        assert r["s_per_step"] > 0 and r["completion_tokens_per_s"] > 0 and r["peak_memory_bytes"] > 0


def test_memory_plans_of_qwen2_5_0_5b(capsys):
    pytest.importorskip("peft", reason="the LoRA plans need peft: pip install 'rlpost[peft]'")
    load().main(["--plan-only", "--runs", "grpo_lora"])
    out = capsys.readouterr().out
    # 494.0M parameters in bf16 = 942.3 MiB; a full fine-tune adds bf16 gradients, two bf16 AdamW moments
    # and a bf16 reference copy: 4 x 942.3 MiB + 24 x 4 bytes ... = 4.601 GiB (the figure in the recipe)
    assert "(494.0M parameters, 494.03M trained)" in out and "total     4.601 GiB" in out
    assert "total     1.051 GiB" in out  # GRPO + LoRA r=16: the recipe's figure
