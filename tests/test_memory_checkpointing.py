"""comparisons/memory_benchmark.py --checkpointing end to end on a small model (the real run: 113M, 64 tokens)."""

import json

import pytest

from tests.conftest import load_script


@pytest.mark.slow
def test_checkpointing_table_reports_off_and_on_for_grpo_and_ppo(tmp_path, capsys):
    bench = load_script("comparisons/memory_benchmark.py")
    bench.main(["--checkpointing", "--hidden", "64", "--steps", "1", "--checkpointing-completion-length", "12",
                "--checkpointing-prompts-per-step", "2", "--out", str(tmp_path)])
    out = json.loads((tmp_path / "memory_checkpointing.json").read_text())
    r = out["results"]
    assert set(r) == {"GRPO off", "GRPO on", "PPO off", "PPO on"}
    # every completion has the forced length: 1 step x 2 prompts x G=4 x 12 tokens, in every run
    assert out["meta"]["completion_tokens"] == 2 * 4 * 12
    for alg in ("GRPO", "PPO"):  # checkpointing changes activations, not the model state
        assert r[f"{alg} off"]["memory_breakdown"] == r[f"{alg} on"]["memory_breakdown"]
    md = (tmp_path / "memory_checkpointing.md").read_text()
    assert "| **measured training peak** (peak RSS since training start) |" in md and md in capsys.readouterr().out
