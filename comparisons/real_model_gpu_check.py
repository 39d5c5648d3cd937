"""GPU check of the real-model path: GRPO with LoRA vs full fine-tuning vs PPO (full and LoRA), bf16, on a
Qwen2-architecture model of Qwen2.5-0.5B's size built from its published config (random weights, no
download), with the ``lean`` and ``hf`` backends and, where vLLM is installed, the ``vllm`` backend.

    python comparisons/real_model_gpu_check.py                 # on a CUDA machine: 10 steps per run
    python comparisons/real_model_gpu_check.py --plan-only     # anywhere: the memory plans (no weights)
    python comparisons/real_model_gpu_check.py --tiny --device cpu --steps 1   # the script's logic on CPU

Each run is a normal Lightning fit in its own process (so allocator peaks do not mix): 8 GSM8K-format
prompts x G=8 completions of up to ``--max-new-tokens`` per step, rendered with a Qwen-style chat
template by a byte-level tokenizer built in code; a randomly initialised model rarely emits EOS, so
almost every completion runs to the limit, which makes the token counts comparable. Printed per run:
the memory plan's model state, the peak allocator memory (``torch.cuda.max_memory_allocated`` since
training start), seconds per optimizer step and completion tokens per second of generation.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# Qwen2.5-0.5B(-Instruct)'s config.json, as published (494M parameters, bf16)
QWEN2_5_0_5B = dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                    num_key_value_heads=2, vocab_size=151936, max_position_embeddings=32768, rope_theta=1000000.0,
                    rms_norm_eps=1e-6, tie_word_embeddings=True, attention_dropout=0.0, hidden_act="silu",
                    initializer_range=0.02, use_sliding_window=False, sliding_window=32768, max_window_layers=21,
                    bos_token_id=151643, eos_token_id=151645)
TINY = dict(QWEN2_5_0_5B, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=512, max_position_embeddings=2048)
RUNS = {  # name -> (algorithm, lora, extra arguments)
    "grpo_lora": ("GRPO", {"r": 16, "alpha": 32}, {}),
    "grpo_full": ("GRPO", None, {}),
    "ppo_full": ("PPO", None, {"critic": "separate"}),
    "ppo_lora": ("PPO", {"r": 16, "alpha": 32}, {"critic": "separate"}),
}


def build(directory: Path, tiny: bool, weights: bool) -> Path:
    """The model directory: config (and, with ``weights``, random bf16 weights) and the chat tokenizer."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from tests.real_model import build_chat_tokenizer

    tok = build_chat_tokenizer()
    spec = dict(TINY if tiny else QWEN2_5_0_5B, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    config = Qwen2Config(**spec, dtype="bfloat16")
    if weights:
        torch.manual_seed(0)
        with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
            model = Qwen2ForCausalLM(config).to(torch.bfloat16)
        model.save_pretrained(directory)
    else:
        config.save_pretrained(directory)
    tok.save_pretrained(directory)
    return directory


def algorithm(name: str, model_dir: str, backend: str, max_new_tokens: int):
    import torch

    from rlpost.algorithms import GRPO, PPO

    cls, lora, extra = RUNS[name]
    settings = {"gpu_memory_utilization": 0.3, "sleep": True} if backend == "vllm" else None
    lr = 2e-5 if lora else 1e-6
    kwargs = dict(model_name_or_path=model_dir, dtype="bfloat16", lora=lora, num_generations=8,
                  max_completion_length=max_new_tokens, beta=0.04, mini_batch_size=64, micro_batch_size=16,
                  loss_type="dapo", save_policy=False, generation_backend=backend, generation_kwargs=settings,
                  optimizer=lambda p: torch.optim.AdamW(p, lr=lr), **extra)
    if cls == "PPO":
        kwargs["critic_optimizer"] = lambda p: torch.optim.AdamW(p, lr=1e-5)
    return {"GRPO": GRPO, "PPO": PPO}[cls](**kwargs)


def task(data_dir: Path):
    from rlpost.data import DatasetTask
    from rlpost.scoring.verifiers import FormatScorer, NumericMatchScorer
    from tests.real_model import write_gsm8k

    return DatasetTask(data_files=write_gsm8k(data_dir), prompt_column="question", use_chat_template=True,
                       system_prompt="Please reason step by step, and put your final answer within \\boxed{}.",
                       prompts_per_step=8, eval_batch_size=8, max_val_prompts=2,
                       scorers={"correctness": NumericMatchScorer(extract="boxed", name="correctness"),
                                "format": FormatScorer(r".*\\boxed\{.+\}.*", name="format")},
                       scorer_weights={"correctness": 1.0, "format": 0.1})


def worker(args) -> None:
    """One fit; writes the figures to ``args.result``."""
    from lightning import Trainer, seed_everything

    from rlpost.memory_plan import memory_plan_of

    seed_everything(0)
    model = algorithm(args.worker, args.model, args.backend, args.max_new_tokens)
    precision = "bf16-mixed"
    plan = memory_plan_of(model, precision=precision)
    with tempfile.TemporaryDirectory() as root:
        trainer = Trainer(max_steps=args.steps, max_epochs=-1, accelerator=args.device, devices=1, precision=precision,
                          logger=False, enable_checkpointing=False, enable_progress_bar=False,
                          enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
                          default_root_dir=root, log_every_n_steps=1)
        trainer.fit(model, datamodule=task(Path(root) / "data"))
    s = model.summary
    rows = s["history"]
    step_s = [b["wall_s"] - a["wall_s"] for a, b in zip(rows, rows[1:])]  # steps after the first (warm-up)
    result = dict(run=args.worker, backend=args.backend, steps=s["steps"], planned_model_state=plan.accounted_bytes,
                  measured_model_state=s["memory_breakdown"]["accounted_bytes"],
                  peak_memory_bytes=s["peak_memory_bytes"], peak_memory_measure=s["peak_memory_measure"],
                  s_per_step=sum(step_s) / max(len(step_s), 1), completion_tokens_per_s=s["completion_tokens_per_s"],
                  completion_tokens=s["completion_tokens"], generation_s=s["generation_s"], training_s=s["training_s"])
    Path(args.result).write_text(json.dumps(result, indent=2))


def print_plans(model_dir: Path) -> None:
    from rlpost.memory_plan import memory_plan_of

    for name in RUNS:
        print(f"== {name} (precision bf16-mixed, base weights bfloat16)")
        print(memory_plan_of(algorithm(name, str(model_dir), "lean", 384), precision="bf16-mixed").format())


def table(results: list[dict]) -> str:
    lines = ["| run | backend | steps | model state: planned / measured (GiB) | peak memory (GiB) | s/step | "
             "tokens/s |", "|---|---|---:|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r['run']} | {r['backend']} | {r['steps']} | {r['planned_model_state'] / 2**30:.3f} / "
                     f"{r['measured_model_state'] / 2**30:.3f} | {r['peak_memory_bytes'] / 2**30:.2f} | "
                     f"{r['s_per_step']:.2f} | {r['completion_tokens_per_s']:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--plan-only", action="store_true", help="print the memory plans and exit (no GPU, no weights)")
    ap.add_argument("--tiny", action="store_true", help="a 2-layer model of the same architecture (script check)")
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--backends", nargs="+", default=["lean", "hf", "vllm"], help="vllm runs only where it imports")
    ap.add_argument("--runs", nargs="+", default=list(RUNS), choices=list(RUNS))
    ap.add_argument("--out", type=Path, default=ROOT / "comparisons" / "out" / "real_model_gpu_check.json")
    ap.add_argument("--worker", choices=list(RUNS), help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--backend", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker(args)
        return
    with tempfile.TemporaryDirectory() as tmp:
        if args.plan_only:
            print_plans(build(Path(tmp) / "model", args.tiny, weights=False))
            return
        model_dir = build(Path(tmp) / "model", args.tiny, weights=True)
        backends = [b for b in args.backends if b != "vllm" or importlib.util.find_spec("vllm") is not None]
        if backends != args.backends:
            print("[gpu-check] vllm is not installed: the vllm backend is skipped (pip install 'rlpost[vllm]')")
        results = []
        for backend in backends:
            for name in args.runs:
                result = Path(tmp) / f"{name}-{backend}.json"
                cmd = [sys.executable, __file__, "--worker", name, "--model", str(model_dir), "--backend", backend,
                       "--result", str(result), "--device", args.device, "--steps", str(args.steps),
                       "--max-new-tokens", str(args.max_new_tokens)]
                print(f"[gpu-check] {name} with the {backend} backend ...", flush=True)
                done = subprocess.run(cmd, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
                if done.returncode != 0:  # reported, and the other runs still go
                    print(f"[gpu-check] {name} / {backend} failed with exit code {done.returncode}", flush=True)
                    continue
                results.append(json.loads(result.read_text()))
                print(table(results[-1:]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(table(results))
    if results:
        print(f"peak memory: {results[0]['peak_memory_measure']}; s/step: mean over the steps after the first; "
              "tokens/s: completion tokens per second of generation")
    print(f"[gpu-check] wrote {args.out}")


if __name__ == "__main__":
    main()
