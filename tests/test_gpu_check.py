"""comparisons/gpu_check.py's code path on CPU (--cpu-smoke: tiny Qwen2 model, 2 steps): FSDP2 through
ModelParallelStrategy on one device, bf16-mixed, gradient checkpointing, through the presets. The GPU run
itself (>= 0.5B parameters, 20 steps) needs a GPU: bash comparisons/gpu_check.sh."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


@pytest.mark.slow
def test_gpu_check_code_path_runs_on_cpu(tmp_path):
    proc = subprocess.run([sys.executable, "comparisons/gpu_check.py", "--cpu-smoke", "--out", str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = json.loads((tmp_path / "gpu_check.json").read_text())["rows"]
    assert [r["algorithm"] for r in rows] == ["GRPO", "PPO"]
    for r in rows:  # the script itself checked strategy, precision, checkpointing and the forced completion length
        assert r["steps"] == 2 and r["completions_generated"] == 2 * 2 * 4
        assert r["peak_memory_GiB"] > 0 and r["completion_tokens_per_s"] > 0 and r["s_per_step"] > 0
    assert "| GRPO |" in proc.stdout and "| PPO |" in proc.stdout
    summary = json.loads((tmp_path / "PPO" / "summary.json").read_text())
    assert (summary["strategy"], summary["precision"], summary["world_size"]) == ("ModelParallelStrategy", "bf16-mixed", 1)
