"""The real-model recipes (configs/*_qwen_gsm8k.yaml) run as they are, with the model and the dataset
swapped for local stand-ins built here (tests/real_model.py: a random Qwen2-architecture model saved
with save_pretrained, a byte-level tokenizer with a Qwen-style chat template, GSM8K-format jsonl).
The other overrides only shrink the run: CPU, 2 optimizer steps, 24 new tokens."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.real_model import save_tiny_qwen, write_gsm8k

pytest.importorskip("peft", reason="the recipes train LoRA adapters: pip install 'rlpost[peft]'")

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory):
    root = tmp_path_factory.mktemp("stand_ins")
    return save_tiny_qwen(root / "qwen"), write_gsm8k(root / "gsm8k")


def run_recipe(config: str, model_dir: Path, files: dict, out: Path) -> dict:
    from rlpost.cli import cli_main

    cli_main(["fit", "--config", str(CONFIGS / config),
              "--model.init_args.model_name_or_path", str(model_dir),
              "--data.init_args.path", "null", "--data.init_args.name", "null",
              "--data.init_args.data_files", json.dumps(files),
              "--trainer.accelerator", "cpu", "--trainer.max_steps", "2", "--trainer.log_every_n_steps", "1",
              "--trainer.default_root_dir", str(out),
              "--model.init_args.max_completion_length", "24"])
    return json.loads(next(out.rglob("summary.json")).read_text())


@pytest.mark.slow
@pytest.mark.parametrize("config, algorithm", [("grpo_qwen_gsm8k.yaml", "GRPO"), ("ppo_qwen_gsm8k.yaml", "PPO")])
def test_recipe_runs_on_local_stand_ins(stand_ins, tmp_path, config, algorithm):
    model_dir, files = stand_ins
    s = run_recipe(config, model_dir, files, tmp_path)
    assert s["algorithm"] == algorithm and s["steps"] == 2 and s["completions_generated"] == 2 * 8 * 8
    assert s["eval_prompts"] == 2 and set(s["rewards_after"]) == {"correctness", "format"}
    h = s["hparams"]
    assert h["lora"]["r"] == 16 and h["dtype"] == "bfloat16" and h["mask_truncated_completions"]
    # LoRA: the reference is the adapter-off base (no parameters of its own); only adapters (and PPO's
    # critic adapters and head) have gradients and optimizer state
    # the saved policy is the adapter, loadable with peft over the stand-in base; its tensors are
    # exactly what has gradients (float32 adapters over the bf16 base)
    saved = Path(s["model_dir"])
    assert (saved / "adapter_config.json").exists() and not (saved / "model.safetensors").exists()
    adapter = load_file(saved / "adapter_model.safetensors")
    assert {t.dtype for t in adapter.values()} == {torch.float32}
    b = s["memory_breakdown"]
    assert b["reference"]["parameters"] == 0
    assert b["policy"]["gradients"] == sum(t.numel() * 4 for t in adapter.values())
    assert b["policy"]["optimizer_state"] == 2 * b["policy"]["gradients"] + 4 * len(adapter)  # AdamW: 2 moments, step
    from peft import AutoPeftModelForCausalLM

    assert AutoPeftModelForCausalLM.from_pretrained(saved) is not None
