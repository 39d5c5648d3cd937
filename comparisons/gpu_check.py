"""GPU check: GRPO and PPO (separate critic), 20 optimizer steps each, on a >= 0.5B-parameter
Qwen2-architecture model built from a config (random weights, rlpost's character tokenizer, no
download), under ``bf16-mixed``, sharded with FSDP2 on one device (``ModelParallelStrategy``) and with
gradient checkpointing. Prints, per algorithm, the peak allocator memory, completion tokens/s and s/step.

    bash comparisons/gpu_check.sh                    # one GPU
    python comparisons/gpu_check.py --cpu-smoke      # the same code path on CPU: tiny model, 2 steps

Each algorithm trains in its own process through the command line a user types: the run config this
script writes, then the trainer presets ``configs/trainer/fsdp.yaml`` and ``configs/trainer/bf16_mixed.yaml``
(data_parallel_size 1 on one device). The tokenizer's EOS is a token the model has no logit for, so
every completion is ``max_completion_length`` tokens long (a random model would otherwise stop at a
random EOS) and the figures are for that length, whatever the generation backend. Summaries and logs go to
``--out`` (default ``comparisons/out/gpu_check``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).parents[1]
ALGORITHMS = {"GRPO": {}, "PPO": {"critic": "separate", "critic_optimizer": {
    "class_path": "torch.optim.AdamW", "init_args": {"lr": 1.0e-6, "weight_decay": 0.0}}}}
# Qwen2-0.5B's shape (24 layers, width 896, 14 heads, 2 KV heads, MLP 4864) with a 20-symbol vocabulary
# instead of 151,936 has 358M parameters; width 1024 and MLP 5632 (16 heads of 64) bring it to 0.47B and
# 26 layers to 0.51B.
GPU_MODEL = dict(hidden_size=1024, intermediate_size=5632, num_hidden_layers=26, num_attention_heads=16,
                 num_key_value_heads=2, max_position_embeddings=512)
SMOKE_MODEL = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, max_position_embeddings=128)


def build_model(path: Path, shape: dict) -> int:
    """A random Qwen2 model and the character tokenizer saved to ``path``; returns the parameter count."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from rlpost.models import build_char_tokenizer

    tok = build_char_tokenizer()
    vocab = len(tok)
    tok.add_special_tokens({"eos_token": "<never>"})  # id == vocab: never sampled, every completion full length
    config = Qwen2Config(vocab_size=vocab, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                         bos_token_id=tok.eos_token_id, tie_word_embeddings=True, **shape)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return sum(p.numel() for p in model.parameters())


def run_config(algorithm: str, model_dir: Path, out: Path, args) -> dict:
    """The ``rlpost fit`` config of one algorithm (the trainer presets come on top of it)."""
    return {
        "seed_everything": 0,
        "trainer": {"accelerator": args.accelerator, "max_steps": args.steps, "log_every_n_steps": 5,
                    "limit_val_batches": 0, "enable_checkpointing": False, "enable_progress_bar": False,
                    "default_root_dir": str(out), "logger": False},
        "model": {"class_path": f"rlpost.algorithms.{algorithm}", "init_args": {
            "model_name_or_path": str(model_dir), "num_generations": args.num_generations,
            "max_completion_length": args.completion_length, "beta": 0.04, "gradient_checkpointing": True,
            "save_policy": False,
            "optimizer": {"class_path": "torch.optim.AdamW", "init_args": {"lr": 1.0e-6, "weight_decay": 0.0}},
            **ALGORITHMS[algorithm]}},
        "data": {"class_path": "rlpost.data.ArithmeticTask", "init_args": {
            "prompts_per_step": args.prompts_per_step, "num_prompts": 512, "num_val_prompts": args.val_prompts,
            "eval_batch_size": args.val_prompts}},
    }


def train(algorithm: str, model_dir: Path, out: Path, args) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    cfg = out / "run.yaml"
    cfg.write_text(yaml.safe_dump(run_config(algorithm, model_dir, out, args), sort_keys=False))
    cmd = [sys.executable, "-m", "rlpost.cli", "fit", "--config", str(cfg),
           "--config", str(ROOT / "configs/trainer/fsdp.yaml"), "--config", str(ROOT / "configs/trainer/bf16_mixed.yaml"),
           "--trainer.accelerator", args.accelerator, "--trainer.devices", "1",
           "--trainer.strategy.init_args.data_parallel_size", "1"]
    print(f"[gpu_check] {algorithm}: {' '.join(cmd)}", flush=True)
    with open(out / "log.txt", "w") as log:
        rc = subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "TOKENIZERS_PARALLELISM": "false"}).returncode
    if rc != 0:
        tail = (out / "log.txt").read_text()[-3000:]
        raise SystemExit(f"[gpu_check] {algorithm} failed (exit status {rc}); log {out / 'log.txt'}:\n{tail}")
    summary = json.loads((out / "summary.json").read_text())
    check(algorithm, summary, args)
    return summary


def check(algorithm: str, s: dict, args) -> None:
    """The run trained what this check says it measures, or stop naming what differs."""
    want = {"strategy": "ModelParallelStrategy", "precision": "bf16-mixed", "steps": args.steps,
            "gradient_checkpointing": True, "completion_tokens": args.steps * args.prompts_per_step
            * args.num_generations * args.completion_length}
    got = {**{k: s[k] for k in ("strategy", "precision", "steps", "completion_tokens")},
           "gradient_checkpointing": s["hparams"]["gradient_checkpointing"]}
    if got != want:
        raise SystemExit(f"[gpu_check] {algorithm} ran {got}, expected {want}")


def row(algorithm: str, s: dict) -> dict:
    steps = s["steps"]
    return {"algorithm": algorithm, "steps": steps, "peak_memory_GiB": s["peak_memory_bytes"] / 2**30,
            "peak_memory_measure": s["peak_memory_measure"], "completion_tokens_per_s": s["completion_tokens_per_s"],
            "s_per_step": (s["generation_s"] + s["training_s"]) / steps, "generation_s_per_step": s["generation_s"] / steps,
            "training_s_per_step": s["training_s"] / steps, "completions_generated": s["completions_generated"],
            "model_state_GiB": s["memory_breakdown"]["accounted_bytes"] / 2**30}


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cpu-smoke", action="store_true", help="tiny model, 2 steps, on CPU (checks the code path)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--prompts-per-step", type=int, default=8)
    ap.add_argument("--num-generations", type=int, default=8)
    ap.add_argument("--completion-length", type=int, default=128)
    ap.add_argument("--val-prompts", type=int, default=16)
    ap.add_argument("--out", type=Path, default=ROOT / "comparisons/out/gpu_check")
    args = ap.parse_args(argv)
    args.accelerator, shape = "gpu", GPU_MODEL
    if args.cpu_smoke:
        args.accelerator, shape = "cpu", SMOKE_MODEL
        args.steps, args.prompts_per_step, args.num_generations, args.completion_length, args.val_prompts = 2, 2, 4, 8, 4
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "qwen2"
        n = build_model(model_dir, shape)
        print(f"[gpu_check] built a {n / 1e6:,.1f}M-parameter Qwen2-architecture model in {model_dir}", flush=True)
        if not args.cpu_smoke and n < 5e8:
            raise SystemExit(f"[gpu_check] the model has {n:,} parameters; the check needs >= 0.5B")
        rows = [row(alg, train(alg, model_dir, args.out / alg, args)) for alg in ALGORITHMS]
    lines = [f"Qwen2-architecture model, {n / 1e6:,.1f}M parameters, bf16-mixed, FSDP2 (ModelParallelStrategy, 1 device), "
             f"gradient checkpointing; {args.steps} steps of {args.prompts_per_step} prompts x {args.num_generations} "
             f"completions of {args.completion_length} tokens ({args.accelerator}).", "",
             "| algorithm | peak memory | model state | completion tokens/s | s/step | generation s/step | training s/step |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['algorithm']} | {r['peak_memory_GiB']:.2f} GiB | {r['model_state_GiB']:.2f} GiB | "
              f"{r['completion_tokens_per_s']:,.0f} | {r['s_per_step']:.2f} | {r['generation_s_per_step']:.2f} | "
              f"{r['training_s_per_step']:.2f} |" for r in rows]
    lines += ["", f"Peak memory: {rows[0]['peak_memory_measure']}."]
    text = "\n".join(lines)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_check.json").write_text(json.dumps({"parameters": n, "rows": rows}, indent=2))
    (args.out / "gpu_check.md").write_text(text + "\n")
    print(text)
    return rows


if __name__ == "__main__":
    main()
