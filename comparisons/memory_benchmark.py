"""Memory of GRPO vs PPO (with a critic) where model state dominates: a >=100M-parameter model on CPU.

    python comparisons/memory_benchmark.py               # 113M- and 227M-parameter Llamas, 3 steps each
    python comparisons/memory_benchmark.py --layers 12   # the 113M model alone
    python comparisons/memory_benchmark.py --layers 12 --lora-rank 16   # and a GRPO+LoRA row (needs peft)
    python comparisons/memory_benchmark.py --checkpointing   # gradient checkpointing off vs on, 113M, 64 tokens

A Llama config is built in code with rlpost's character tokenizer, randomly initialised, saved
to a temp dir and loaded by its local path (no download). GRPO and PPO then each run a few
steps of the arithmetic task with identical settings (prompts, G, completion length, beta,
optimizer, steps), each in its own subprocess so the peak RSS figures do not mix. Reported
side by side, with GRPO/PPO:

- accounted bytes: parameters, gradients and optimizer state of policy, reference and critic
  (``summary.json``'s ``memory_breakdown``, taken after the first optimizer step);
- measured peak: the training phase's own peak RSS (VmHWM reset at training start; on a GPU the
  allocator's peak), which still includes the interpreter and libraries;
- the measured peak less the RSS the worker had after its imports, before any model existed.

With ``--lora-rank R`` a third process runs GRPO with LoRA adapters of rank R on every linear
layer (beta as the others: the reference is the adapter-off base, no copy), reported in its own
table against PPO (:func:`lora_report`).

One table per model size (``--layers``): the interpreter and libraries (~470 MiB) are in both
processes' peaks and pull the measured ratio toward 1 on smaller models; the row "less the RSS
after imports" takes them out. Writes ``comparisons/out/memory/memory_benchmark.{json,md}`` and
prints the Markdown tables.

``--checkpointing`` measures gradient checkpointing instead (:func:`measure_checkpointing`): GRPO and PPO
each with ``gradient_checkpointing`` off and on, on the 113M model with 64-token completions (the
tokenizer's EOS lies outside the model's vocabulary, so no completion ends early), and writes
``memory_checkpointing.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

OUT = Path(__file__).parent / "out" / "memory"
ALGORITHMS = ("GRPO", "PPO")
LORA_ROW = "GRPO+LoRA"


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


# --------------------------------------------------------------------------- the model


def build_model(path: Path, hidden: int, layers: int, positions: int = 64, full_length: bool = False) -> int:
    """Save a randomly initialised Llama and the char tokenizer to ``path``; returns its parameter count.
    ``full_length``: the tokenizer's EOS is a token the model has no logit for, so every completion is
    ``max_completion_length`` long whatever the generation backend."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from rlpost.models import build_char_tokenizer

    tok = build_char_tokenizer()
    vocab = len(tok)
    if full_length:
        tok.add_special_tokens({"eos_token": "<never>"})  # id == vocab: never sampled
    config = LlamaConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=4 * hidden,
        num_hidden_layers=layers, num_attention_heads=hidden // 64, num_key_value_heads=hidden // 64,
        max_position_embeddings=positions, pad_token_id=0, eos_token_id=1, bos_token_id=1, tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------- one algorithm, in a subprocess


def worker(args) -> None:
    import torch
    from lightning import Trainer, seed_everything

    from rlpost.algorithms import GRPO, PPO
    from rlpost.data import ArithmeticTask

    baseline = rss_bytes()  # interpreter + torch/transformers/lightning/rlpost, no model yet

    seed_everything(0)
    common = dict(model_name_or_path=args.model, num_generations=args.num_generations,
                  max_completion_length=args.max_completion_length, beta=args.beta, save_policy=False,
                  optimizer=lambda p: torch.optim.AdamW(p, lr=1e-5), gradient_checkpointing=args.gradient_checkpointing)
    if args.worker == "PPO":
        model = PPO(critic=args.critic, critic_optimizer=lambda p: torch.optim.AdamW(p, lr=1e-5), **common)
    elif args.worker == LORA_ROW:
        model = GRPO(lora={"r": args.lora_rank, "alpha": 2 * args.lora_rank}, **common)
    else:
        model = GRPO(**common)
    task = ArithmeticTask(num_prompts=64, num_val_prompts=8, prompts_per_step=args.prompts_per_step, eval_batch_size=8)
    with tempfile.TemporaryDirectory() as root:
        trainer = Trainer(max_steps=args.steps, max_epochs=-1, accelerator="cpu", devices=1, logger=False,
                          enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                          num_sanity_val_steps=0, limit_val_batches=0, default_root_dir=root)
        trainer.fit(model, datamodule=task)
    s = model.summary
    result = dict(algorithm=s["algorithm"], steps=s["steps"], completions_generated=s["completions_generated"],
                  peak_memory_bytes=s["peak_memory_bytes"], peak_memory_measure=s["peak_memory_measure"],
                  memory_breakdown=s["memory_breakdown"], rss_after_imports_bytes=baseline,
                  training_s=s["training_s"], generation_s=s["generation_s"], phases=s["phases"],
                  completion_tokens=s["completion_tokens"])
    Path(args.result).write_text(json.dumps(result, indent=2))


# --------------------------------------------------------------------------- report


def mib(n: float) -> str:
    return f"{n / 2**20:,.0f} MiB"


def split(entry: dict) -> str:
    return " / ".join(f"{entry[k] / 2**20:,.0f}" for k in ("parameters", "gradients", "optimizer_state")) + " MiB"


def side_by_side(a: dict, b: dict) -> list[str]:
    """Table rows of two runs: each model's state, the accounted state, the measured peak, the peak above
    the RSS after imports; the last three with a / b."""
    rows = [(f"{part}: parameters / gradients / optimizer state", split(a["memory_breakdown"][part]),
             split(b["memory_breakdown"][part]), None) for part in ("policy", "reference", "critic")]
    acc = (a["memory_breakdown"]["accounted_bytes"], b["memory_breakdown"]["accounted_bytes"])
    peak = (a["peak_memory_bytes"], b["peak_memory_bytes"])
    above = (peak[0] - a["rss_after_imports_bytes"], peak[1] - b["rss_after_imports_bytes"])
    rows += [("**accounted model state**", *acc, acc[0] / acc[1]),
             ("**measured training peak** (peak RSS since training start)", *peak, peak[0] / peak[1]),
             ("measured peak less the RSS after imports (no model yet)", *above, above[0] / above[1])]
    lines = []
    for name, x, y, ratio in rows:
        x, y = (v if isinstance(v, str) else mib(v) for v in (x, y))
        lines.append(f"| {name} | {x} | {y} | {'' if ratio is None else f'**{ratio:.3f}**'} |")
    return lines


def report(results: dict, meta: dict) -> str:
    lines = [
        f"Model: Llama, {meta['parameters'] / 1e6:.1f}M parameters ({meta['layers']} layers, width {meta['hidden']}, "
        f"float32, character tokenizer), randomly initialised. Task: arithmetic; {meta['steps']} optimizer steps, "
        f"{meta['prompts_per_step']} prompts x G={meta['num_generations']} completions of <= "
        f"{meta['max_completion_length']} tokens per step, beta={meta['beta']} "
        f"({'a reference model in both' if meta['beta'] > 0 else 'no reference model'}), "
        f"AdamW for every trained model, PPO critic: {meta['critic']}. CPU, each algorithm in its own process.",
        "",
        "| | GRPO | PPO | GRPO / PPO |",
        "|---|---:|---:|---:|",
        *side_by_side(results["GRPO"], results["PPO"]),
    ]
    return "\n".join(lines + ["", f"Command: `{meta['command']}`"])


def lora_report(results: dict, meta: dict) -> str:
    """GRPO with LoRA (beta > 0, reference = the adapter-off base) against PPO with a separate critic."""
    lines = [f"GRPO with LoRA (rank {meta['lora_rank']}, alpha {2 * meta['lora_rank']}, every linear layer; "
             f"beta={meta['beta']}: the reference is the adapter-off base, no copy) against PPO with a "
             f"{meta['critic']} critic, on the same {meta['parameters'] / 1e6:.1f}M-parameter model, steps and "
             "rollouts as above.", "", f"| | {LORA_ROW} | PPO | {LORA_ROW} / PPO |", "|---|---:|---:|---:|",
             *side_by_side(results[LORA_ROW], results["PPO"])]
    return "\n".join(lines + ["", f"Command: `{meta['command']}`"])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hidden", type=int, default=768, help="model width (heads = width / 64)")
    ap.add_argument("--layers", type=int, nargs="+", default=[12, 24], help="one run per depth (12: 113M, 24: 227M)")
    ap.add_argument("--steps", type=int, default=3, help="optimizer steps per algorithm")
    ap.add_argument("--num-generations", type=int, default=4)
    ap.add_argument("--prompts-per-step", type=int, default=2)
    ap.add_argument("--max-completion-length", type=int, default=4)
    ap.add_argument("--beta", type=float, default=0.04)
    ap.add_argument("--critic", choices=["separate", "value_head"], default="separate")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--lora-rank", type=int, default=0, help="also run GRPO+LoRA with this rank (0: no LoRA row)")
    ap.add_argument("--worker", choices=[*ALGORITHMS, LORA_ROW], help=argparse.SUPPRESS)
    ap.add_argument("--checkpointing", action="store_true",
                    help="gradient checkpointing off vs on (GRPO and PPO) instead of the GRPO vs PPO tables")
    ap.add_argument("--checkpointing-completion-length", type=int, default=64)
    ap.add_argument("--checkpointing-prompts-per-step", type=int, default=4)
    ap.add_argument("--gradient-checkpointing", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker(args)
        return

    args.out.mkdir(parents=True, exist_ok=True)
    command = "python " + " ".join([os.path.relpath(__file__), *(argv if argv is not None else sys.argv[1:])])
    if args.checkpointing:
        checkpointing_main(args, command)
        return
    sizes = [measure_size(args, layers, command) for layers in args.layers]
    md = "\n\n".join(report(size["results"], size["meta"]) for size in sizes)
    if args.lora_rank:
        md += "\n\n" + "\n\n".join(lora_report(size["results"], size["meta"]) for size in sizes)
    (args.out / "memory_benchmark.json").write_text(json.dumps(dict(sizes=sizes), indent=2))
    (args.out / "memory_benchmark.md").write_text(md + "\n")
    print(md)
    print(f"\n[memory] wrote {args.out / 'memory_benchmark.json'} and {args.out / 'memory_benchmark.md'}")


def measure_size(args, layers: int, command: str) -> dict:
    """GRPO and PPO, each in its own process, on one randomly initialised model of ``layers`` layers."""
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "model"
        n_params = build_model(model_dir, args.hidden, layers)
        print(f"[memory] built a {n_params / 1e6:.1f}M-parameter Llama in {model_dir}", flush=True)
        results = {}
        for alg in [*ALGORITHMS, *([LORA_ROW] if args.lora_rank else [])]:
            result = Path(tmp) / f"{alg}.json"
            cmd = [sys.executable, __file__, "--worker", alg, "--model", str(model_dir), "--result", str(result),
                   "--steps", str(args.steps), "--num-generations", str(args.num_generations),
                   "--prompts-per-step", str(args.prompts_per_step), "--beta", str(args.beta),
                   "--max-completion-length", str(args.max_completion_length), "--critic", args.critic,
                   "--lora-rank", str(args.lora_rank)]
            print(f"[memory] running {alg} ...", flush=True)
            subprocess.run(cmd, check=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
            results[alg] = json.loads(result.read_text())
    g, p = results["GRPO"], results["PPO"]
    if LORA_ROW in results and results[LORA_ROW]["completions_generated"] != p["completions_generated"]:
        raise RuntimeError(f"unequal budgets: GRPO+LoRA {results[LORA_ROW]['completions_generated']} completions, "
                           f"PPO {p['completions_generated']}")
    if g["completions_generated"] != p["completions_generated"] or g["steps"] != p["steps"]:
        raise RuntimeError(f"unequal budgets: GRPO {g['steps']} steps / {g['completions_generated']} completions, "
                           f"PPO {p['steps']} / {p['completions_generated']}")
    meta = dict(parameters=n_params, hidden=args.hidden, layers=layers, steps=args.steps,
                prompts_per_step=args.prompts_per_step, num_generations=args.num_generations,
                max_completion_length=args.max_completion_length, beta=args.beta, critic=args.critic, command=command,
                lora_rank=args.lora_rank)
    ratios = dict(accounted=g["memory_breakdown"]["accounted_bytes"] / p["memory_breakdown"]["accounted_bytes"],
                  measured_peak=g["peak_memory_bytes"] / p["peak_memory_bytes"],
                  measured_peak_less_imports=(g["peak_memory_bytes"] - g["rss_after_imports_bytes"])
                  / (p["peak_memory_bytes"] - p["rss_after_imports_bytes"]))
    out = dict(meta=meta, results=results, grpo_over_ppo=ratios)
    if LORA_ROW in results:
        lo = results[LORA_ROW]
        out["grpo_lora_over_ppo"] = dict(
            accounted=lo["memory_breakdown"]["accounted_bytes"] / p["memory_breakdown"]["accounted_bytes"],
            measured_peak=lo["peak_memory_bytes"] / p["peak_memory_bytes"],
            measured_peak_less_imports=(lo["peak_memory_bytes"] - lo["rss_after_imports_bytes"])
            / (p["peak_memory_bytes"] - p["rss_after_imports_bytes"]))
    return out


def run_worker(args, alg: str, model_dir: Path, result: Path, max_completion_length: int, prompts_per_step: int,
               checkpointing: bool = False) -> dict:
    cmd = [sys.executable, __file__, "--worker", alg, "--model", str(model_dir), "--result", str(result),
           "--steps", str(args.steps), "--num-generations", str(args.num_generations),
           "--prompts-per-step", str(prompts_per_step), "--beta", str(args.beta),
           "--max-completion-length", str(max_completion_length), "--critic", args.critic]
    print(f"[memory] running {alg}{' with gradient checkpointing' if checkpointing else ''} ...", flush=True)
    subprocess.run(cmd + ["--gradient-checkpointing"] * checkpointing, check=True,
                   env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    return json.loads(result.read_text())


# --------------------------------------------------------------------------- gradient checkpointing


def measure_checkpointing(args, command: str) -> dict:
    """GRPO and PPO, each with gradient checkpointing off and on (4 processes), on the 113M-parameter model
    (width ``--hidden``, 12 layers) with completions of ``--checkpointing-completion-length`` tokens."""
    length, layers = args.checkpointing_completion_length, 12
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "model"
        n_params = build_model(model_dir, args.hidden, layers, positions=length + 32, full_length=True)
        print(f"[memory] built a {n_params / 1e6:.1f}M-parameter Llama in {model_dir}", flush=True)
        results = {f"{alg} {mode}": run_worker(args, alg, model_dir, Path(tmp) / f"{alg}-{mode}.json", length,
                                               args.checkpointing_prompts_per_step, checkpointing=mode == "on")
                   for alg in ALGORITHMS for mode in ("off", "on")}
    tokens = {r["completion_tokens"] for r in results.values()}
    if len(tokens) != 1:
        raise RuntimeError(f"the runs generated different numbers of completion tokens: {tokens}")
    meta = dict(parameters=n_params, hidden=args.hidden, layers=layers, steps=args.steps,
                prompts_per_step=args.checkpointing_prompts_per_step, num_generations=args.num_generations,
                completion_length=length, completion_tokens=tokens.pop(), beta=args.beta, critic=args.critic,
                command=command)
    return dict(meta=meta, results=results)


def report_checkpointing(out: dict) -> str:
    m, r = out["meta"], out["results"]
    rows = [("accounted model state", lambda x: x["memory_breakdown"]["accounted_bytes"]),
            ("**measured training peak** (peak RSS since training start)", lambda x: x["peak_memory_bytes"]),
            ("measured peak less the RSS after imports", lambda x: x["peak_memory_bytes"] - x["rss_after_imports_bytes"]),
            ("peak during forward (first step)", lambda x: x["phases"]["forward"]["peak_memory_bytes"]),
            ("peak during backward (first step)", lambda x: x["phases"]["backward"]["peak_memory_bytes"])]
    lines = [
        f"Gradient checkpointing. Model: Llama, {m['parameters'] / 1e6:.1f}M parameters ({m['layers']} layers, width "
        f"{m['hidden']}, float32), randomly initialised. {m['steps']} optimizer steps of {m['prompts_per_step']} prompts "
        f"x G={m['num_generations']} completions of exactly {m['completion_length']} tokens ({m['completion_tokens']} "
        f"completion tokens per run), beta={m['beta']}, PPO critic: {m['critic']} (its trunk checkpointed too). CPU, "
        "each run in its own process.", "",
        "| | GRPO off | GRPO on | on / off | PPO off | PPO on | on / off |", "|---|---:|---:|---:|---:|---:|---:|"]
    for name, get in rows:
        cells = []
        for alg in ALGORITHMS:
            off, on = get(r[f"{alg} off"]), get(r[f"{alg} on"])
            cells += [mib(off), mib(on), f"**{on / off:.3f}**"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    cells = []
    for alg in ALGORITHMS:
        off, on = (r[f"{alg} {mode}"]["training_s"] / m["steps"] for mode in ("off", "on"))
        cells += [f"{off:.2f}", f"{on:.2f}", f"{on / off:.2f}"]
    lines.append("| training s/step (one run each, shared CPU) | " + " | ".join(cells) + " |")
    lines += ["", f"Command: `{m['command']}`"]
    return "\n".join(lines)


def checkpointing_main(args, command: str) -> None:
    out = measure_checkpointing(args, command)
    md = report_checkpointing(out)
    (args.out / "memory_checkpointing.json").write_text(json.dumps(out, indent=2))
    (args.out / "memory_checkpointing.md").write_text(md + "\n")
    print(md)
    print(f"\n[memory] wrote {args.out / 'memory_checkpointing.json'} and {args.out / 'memory_checkpointing.md'}")


if __name__ == "__main__":
    main()
