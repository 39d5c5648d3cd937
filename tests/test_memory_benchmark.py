"""comparisons/memory_benchmark.py end to end on a small model (the real run uses >= 100M parameters)."""

import json

import pytest

from tests.conftest import load_script


@pytest.mark.slow
def test_memory_benchmark_reports_grpo_and_ppo_side_by_side(tmp_path, capsys):
    bench = load_script("comparisons/memory_benchmark.py")
    bench.main(["--hidden", "64", "--layers", "1", "2", "--steps", "1", "--out", str(tmp_path)])
    sizes = json.loads((tmp_path / "memory_benchmark.json").read_text())["sizes"]
    assert [s["meta"]["layers"] for s in sizes] == [1, 2]
    assert sizes[1]["meta"]["parameters"] > sizes[0]["meta"]["parameters"]
    out = sizes[0]
    g, p = out["results"]["GRPO"], out["results"]["PPO"]
    assert g["memory_breakdown"]["critic"] == {"parameters": 0, "gradients": 0, "optimizer_state": 0}
    assert p["memory_breakdown"]["critic"]["optimizer_state"] > 0
    assert g["memory_breakdown"]["policy"] == p["memory_breakdown"]["policy"]
    assert 0 < out["grpo_over_ppo"]["accounted"] < 1 and out["grpo_over_ppo"]["measured_peak"] > 0
    md = (tmp_path / "memory_benchmark.md").read_text()
    assert md.count("| **accounted model state** |") == 2 and md in capsys.readouterr().out


@pytest.mark.slow
def test_memory_benchmark_lora_row(tmp_path, capsys):
    pytest.importorskip("peft", reason="the GRPO+LoRA row needs peft: pip install 'rlpost[peft]'")
    bench = load_script("comparisons/memory_benchmark.py")
    bench.main(["--hidden", "64", "--layers", "1", "--steps", "1", "--lora-rank", "4", "--out", str(tmp_path)])
    out = json.loads((tmp_path / "memory_benchmark.json").read_text())["sizes"][0]
    lora, ppo = out["results"]["GRPO+LoRA"]["memory_breakdown"], out["results"]["PPO"]["memory_breakdown"]
    assert lora["reference"] == {"parameters": 0, "gradients": 0, "optimizer_state": 0}  # the adapter-off base
    assert lora["policy"]["parameters"] > ppo["policy"]["parameters"]  # base + adapters
    assert 0 < lora["policy"]["gradients"] < ppo["policy"]["gradients"] / 4  # adapters only
    assert 0 < out["grpo_lora_over_ppo"]["accounted"] < out["grpo_over_ppo"]["accounted"]
    md = (tmp_path / "memory_benchmark.md").read_text()
    assert "| | GRPO+LoRA | PPO | GRPO+LoRA / PPO |" in md and md in capsys.readouterr().out
