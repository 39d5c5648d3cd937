"""Throughput: rlpost GRPO vs TRL's GRPOTrainer, step by step, on one pinned CPU thread, against the FLOP floor.

    python comparisons/throughput.py                                  # tiny + small, fp32 + bf16 (~8-10 min)
    python comparisons/throughput.py --configs tiny --precisions fp32 --pairs 20

Two configurations (the issue's):

- **tiny**: the shipped 1.05M-parameter demo model (``builtin:arith-sft``), 8 prompts x G=8, <= 6 new tokens,
  the demo's GRPO settings (beta 0.04, so a reference forward; lr 3e-4);
- **small**: a 27.5M-parameter Llama built from a config (6 layers, width 512, MLP 2304, character
  vocabulary), 4 prompts x G=8, 64 new tokens; its EOS id lies outside the model's vocabulary, so it
  is never sampled and every completion is 64 tokens long in both frameworks.

Each framework runs in its own process with one thread (``torch.set_num_threads(1)``,
``OMP_NUM_THREADS=1``), both (and, with ``--precisions fp32 bf16``, their bf16 twins) alive at once
and **taking turns one optimizer step at a time**: a process blocks before each step until the
coordinator lets it go, so the steps of one round run back to back, never at the same time, and a
drift of the shared machine hits both alike. A pair is one step of each, rlpost's and TRL's, in the
same round. Per step: wall and CPU time (``time.process_time``) from the start of one step to the
start of the next (the whole loop: rollout, update, logging, callbacks), completion tokens, and the
run record's phases (rlpost's own; TRL's by wrapping GRPOTrainer's methods, see
``rlpost.compare.trl_reference``). Both log every step (rlpost ``log_every_n_steps=1``, TRL
``logging_steps=1``; rlpost to TensorBoard) with their progress bars off (a display: Lightning's Rich bar
refreshes from a thread, ~5 ms of CPU per second of wall time, which the turn-taking would charge to
rlpost's waiting steps); the first ``--warmup`` steps are not measured. Matched precision: rlpost ``precision="bf16-mixed"`` vs TRL ``bf16=True`` (both autocast the
fp32 model to bf16 on CPU); the printed ratio is within one precision.

Also measured, by the coordinator between rounds (one thread):

- the **FLOP floor** of one step, from the model's shapes: the matrix products (and attention
  scores) of the decode (prefill + one token at a time, logits of the last position only), the
  reference forward, the policy forward and its backward (2x the forward), each prompt counted once
  per group, at the best rate of a GEMM of the model's MLP shape (fp32, or bf16 for bf16 runs);
- the **bare batched decode loop**: the same decode's matrix products alone (``F.linear`` on the
  model's weight shapes; no attention, norms, RoPE or sampling), timed;
- ``transformers`` ``generate`` (backend ``hf``) vs the ``lean`` backend on the same prompts, same seed.

Prints Markdown tables and writes ``comparisons/out/throughput/throughput.{json,md}``. Timing on a
shared machine: the spread over pairs is printed beside every median; rerun on a quiet machine for
absolute figures.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

OUT = Path(__file__).parent / "out" / "throughput"
FRAMEWORKS = ("rlpost", "trl")
CONFIGS = {
    "tiny": dict(model="builtin:arith-sft", prompts=8, G=8, T=6, P=6, warmup=2, pairs=20),
    "small": dict(model=None, hidden=512, intermediate=2304, layers=6, heads=8, prompts=4, G=8, T=64, P=6,
                  warmup=1, pairs=5),
}
HPARAMS = dict(temperature=1.0, top_p=1.0, top_k=0, beta=0.04, num_iterations=1, epsilon=0.2, epsilon_high=None,
               loss_type="grpo", scale_rewards="group", max_grad_norm=1.0, mini_batch_size=None, micro_batch_size=None,
               eval_temperature=1.0, dtype=None)
LR = 3e-4


# --------------------------------------------------------------------------- models


def build_small(path: Path, cfg: dict) -> str:
    """The small Llama, randomly initialised, with the character tokenizer whose EOS is out of the vocabulary."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from rlpost.models import build_char_tokenizer

    tok = build_char_tokenizer()
    vocab = len(tok)
    tok.add_special_tokens({"eos_token": "<never>"})  # id == vocab: the model has no logit for it
    config = LlamaConfig(vocab_size=vocab, hidden_size=cfg["hidden"], intermediate_size=cfg["intermediate"],
                         num_hidden_layers=cfg["layers"], num_attention_heads=cfg["heads"],
                         num_key_value_heads=cfg["heads"], max_position_embeddings=128, pad_token_id=0,
                         eos_token_id=tok.eos_token_id, bos_token_id=None, tie_word_embeddings=True)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def task_args(cfg: dict) -> dict:
    return {"class_path": "rlpost.data.ArithmeticTask",
            "init_args": {"num_prompts": 4000, "num_val_prompts": 8, "max_operand": 99, "eval_batch_size": 8,
                          "prompts_per_step": cfg["prompts"]}}


# --------------------------------------------------------------------------- workers (one framework each)


class Turns:
    """The worker's side of the turn-taking: before each step, report the last one and wait for 'go'."""

    def __init__(self, link: int, warmup: int, tokens):
        self.out = os.fdopen(link, "w", buffering=1)
        self.warmup, self.tokens = warmup, tokens
        self.steps: list[dict] = []
        self._start: tuple | None = None

    def before_step(self, index: int) -> None:
        self.close_step()
        self.out.write(json.dumps({"ready": index}) + "\n")
        if sys.stdin.readline().strip() != "go":
            os._exit(0)
        self._start = (index, time.perf_counter(), time.process_time(), self.tokens())

    def close_step(self) -> None:
        if self._start is not None:
            index, wall, cpu, tokens = self._start
            self.steps.append({"index": index, "wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu,
                               "tokens": self.tokens() - tokens})
            self._start = None

    def finish(self, history: list[dict], **extra) -> None:
        """The last step closes; the measured steps' phases come from the run record's history; then exit (no
        final evaluation, no export)."""
        self.close_step()
        measured = [s for s in self.steps if s["index"] >= self.warmup]
        rows = history[-len(measured):] if measured else []
        for s, row in zip(measured, rows):
            s["phases"] = {k[len("time/"):-2]: v for k, v in row.items() if k.startswith("time/")}
            s["max_length"] = row.get("train/completions/max_length")
        for s in measured:
            s.update(extra)
        self.out.write(json.dumps({"done": measured}) + "\n")
        self.out.flush()
        os._exit(0)


def rlpost_worker(cfg: dict, precision: str, link: int, root: str) -> None:
    import torch
    from lightning import Callback, Trainer, seed_everything
    from lightning.pytorch.loggers import TensorBoardLogger

    from rlpost.algorithms import GRPO
    from rlpost.data import ArithmeticTask

    seed_everything(0)
    backend = {"generation_backend": cfg["backend"]} if cfg["backend"] else {}  # default: GRPO's own
    model = GRPO(model_name_or_path=cfg["model"], num_generations=cfg["G"], max_completion_length=cfg["T"],
                 save_policy=False, optimizer=lambda p: torch.optim.AdamW(p, lr=LR, weight_decay=0.0),
                 **backend, **{k: v for k, v in HPARAMS.items() if k not in ("dtype",)})
    model.record.clock = time.process_time  # phases in CPU time: the shared machine's waits are not charged
    turns = Turns(link, cfg["warmup"], lambda: model.record.completion_tokens())

    class Hook(Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            turns.before_step(trainer.global_step)

        def on_train_end(self, trainer, pl_module):  # runs before the run record's (final evaluation)
            timed = sum(1 for k, v in model.record.history[-1].items()
                        if k.startswith("time/") and k != "time/other_s" and v > 0)
            turns.close_step()  # before measuring the accounting's own cost
            turns.finish(model.record.history, accounting_s=accounting_overhead_s(timed), timed_phases=timed)

    trainer = Trainer(max_steps=cfg["warmup"] + cfg["pairs"], max_epochs=-1, accelerator="cpu", devices=1,
                      precision="bf16-mixed" if precision == "bf16" else "32-true", log_every_n_steps=1,
                      logger=TensorBoardLogger(root, name=""), enable_checkpointing=False, enable_model_summary=False,
                      enable_progress_bar=False,
                      num_sanity_val_steps=0, limit_val_batches=0, default_root_dir=root, callbacks=[Hook()])
    trainer.fit(model, datamodule=ArithmeticTask(**task_args(cfg)["init_args"]))


def trl_worker(cfg: dict, precision: str, link: int, root: str) -> None:
    from transformers import TrainerCallback

    from rlpost.compare.trl_reference import ReferenceRun, trl_spec

    init = dict(HPARAMS, model_name_or_path=cfg["model"], num_generations=cfg["G"], max_completion_length=cfg["T"],
                generation_backend=cfg["backend"] or "lean",
                optimizer={"class_path": "torch.optim.AdamW", "init_args": {"lr": LR, "weight_decay": 0.0}})
    spec = trl_spec({"class_path": "rlpost.algorithms.GRPO", "init_args": init}, task_args(cfg),
                    {"prompts_per_step": cfg["prompts"], "max_steps": cfg["warmup"] + cfg["pairs"], "eval_every": 0},
                    "throughput")
    spec["grpo_config"].update(bf16=precision == "bf16", disable_tqdm=True)
    run = ReferenceRun(spec, seed=0, out_dir=root)
    run.record.clock = time.process_time
    turns = Turns(link, cfg["warmup"], lambda: run.record.completion_tokens())

    class Hook(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            turns.before_step(state.global_step)

        def on_train_end(self, args, state, control, **kw):
            turns.finish(run.record.history)

    run.trainer = run.build_trainer()
    run.trainer.add_callback(Hook())
    run.record.start(run.device)
    run.trainer.train()


def worker_main(args) -> None:
    import torch

    torch.set_num_threads(1)
    cfg = json.loads(args.cfg)
    with tempfile.TemporaryDirectory() as root:
        (rlpost_worker if args.worker == "rlpost" else trl_worker)(cfg, args.precision, args.link, root)


# --------------------------------------------------------------------------- the coordinator


class Worker:
    """One framework x precision in its own process, driven one step at a time."""

    def __init__(self, framework: str, precision: str, cfg: dict, log_dir: Path):
        self.name = f"{framework}-{precision}"
        read, write = os.pipe()
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
        log = open(log_dir / f"{self.name}.log", "w")
        self.proc = subprocess.Popen([sys.executable, __file__, "--worker", framework, "--precision", precision,
                                      "--cfg", json.dumps(cfg), "--link", str(write)], stdin=subprocess.PIPE,
                                     stdout=log, stderr=log, pass_fds=(write,), text=True, env=env)
        os.close(write)
        self.link = os.fdopen(read)
        self.result: list[dict] | None = None

    def wait(self) -> dict:
        line = self.link.readline()
        if not line:
            raise RuntimeError(f"{self.name} stopped (exit code {self.proc.wait()}); see its log")
        msg = json.loads(line)
        if "done" in msg:
            self.result = msg["done"]
        return msg

    def go(self) -> dict:
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        return self.wait()


def run_config(name: str, cfg: dict, precisions: list[str], log_dir: Path, between_rounds) -> dict[str, list[dict]]:
    """All workers of one config alive at once, taking turns step by step; ``between_rounds()`` runs after each round."""
    workers = [Worker(fw, p, cfg, log_dir) for p in precisions for fw in FRAMEWORKS]
    for w in workers:
        w.wait()  # loaded and ready for step 0
    rounds = cfg["warmup"] + cfg["pairs"]
    for r in range(rounds):
        order = workers[r % len(workers):] + workers[: r % len(workers)]
        for w in order:
            w.go()
        print(f"[throughput] {name}: round {r + 1}/{rounds}", flush=True)
        if r >= cfg["warmup"]:
            between_rounds()
    for w in workers:
        if w.result is None:
            w.wait()
        w.proc.wait()
    return {w.name: w.result for w in workers}


# --------------------------------------------------------------------------- the floor and the bare decode loop


def shapes(model_path: str) -> dict:
    from rlpost.models import load_config

    c = load_config(model_path)
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    return dict(H=c.hidden_size, I=c.intermediate_size, L=c.num_hidden_layers, V=c.vocab_size,
                q=c.num_attention_heads * head_dim, kv=c.num_key_value_heads * head_dim)


def forward_flops(s: dict, tokens: int, context: float, logits: int) -> float:
    """FLOPs (2 per multiply-add) of one forward over ``tokens`` positions attending over ``context`` keys on
    average, with ``logits`` positions through the LM head."""
    per_token = s["H"] * (s["q"] + 2 * s["kv"]) + s["q"] * s["H"] + 3 * s["H"] * s["I"] + 2 * context * s["q"]
    return 2.0 * (s["L"] * per_token * tokens + s["H"] * s["V"] * logits)


def step_floor_flops(s: dict, b: int, g: int, p: int, t: int) -> dict[str, float]:
    """The matrix products of one GRPO step (beta > 0, mu = 1) on b prompts x g completions: decode, reference
    forward, policy forward and backward; ``t`` tokens per completion (the batch's longest). Each prompt's
    positions count once per group (the least work: its keys and values serve the g completions)."""
    n = b * g
    decode = forward_flops(s, b * p, (p + 1) / 2, b) + sum(forward_flops(s, n, p + k + 1, n) for k in range(t - 1))
    forward = forward_flops(s, b * p, (p + 1) / 2, 0) + forward_flops(s, n * t, p + (t + 1) / 2, n * t)
    return {"decode": decode, "ref_forward": forward, "forward": forward, "backward": 2 * forward}


def gemm_rate(s: dict, rows: int, dtype) -> float:
    """Best FLOP/s of ``[rows, H] @ [H, I]`` over a few tries (one thread)."""
    import torch

    a, b = torch.randn(rows, s["H"], dtype=dtype), torch.randn(s["H"], s["I"], dtype=dtype)
    best = float("inf")
    for _ in range(5):
        t = time.process_time()
        a @ b
        best = min(best, time.process_time() - t)
    return 2.0 * rows * s["H"] * s["I"] / best


def bare_decode_s(s: dict, n: int, p: int, t: int, dtype) -> float:
    """Seconds of the decode's matrix products alone (prefill, then t - 1 single-token steps; LM head on the last
    position), ``F.linear`` on the model's weight shapes."""
    import torch
    from torch.nn.functional import linear

    layer = [torch.randn(o, i, dtype=dtype) * 0.02 for o, i in
             [(s["q"], s["H"]), (s["kv"], s["H"]), (s["kv"], s["H"]), (s["H"], s["q"]), (s["I"], s["H"]),
              (s["I"], s["H"]), (s["H"], s["I"])]]
    head = torch.randn(s["V"], s["H"], dtype=dtype)
    start = time.process_time()
    x = torch.randn(n * p, s["H"], dtype=dtype)
    for _ in range(t):
        for _ in range(s["L"]):
            q, _, _ = linear(x, layer[0]), linear(x, layer[1]), linear(x, layer[2])
            x = x + linear(q, layer[3])
            x = x + linear(linear(x, layer[4]) * linear(x, layer[5]), layer[6])
        linear(x[-n:], head)
        x = x[-n:]
    return time.process_time() - start


def accounting_overhead_s(phases: int, memory_every: int = 10, reps: int = 2000) -> float:
    """CPU seconds the run record spends timing ``phases`` phases of one step: the phase context itself, and on
    every ``memory_every``-th step the peak-memory reset and reads at each phase's start and end (measured in
    the training process, whose size sets the cost of resetting the RSS high-water mark)."""
    import torch

    from rlpost.run_record import RunRecord

    record = RunRecord()
    record.start(torch.device("cpu"))
    cost = {}
    for sampled in (False, True):
        record._sample_memory = sampled
        start = time.process_time()
        for _ in range(reps):
            with record.phase("generation"):
                pass
        cost[sampled] = (time.process_time() - start) / reps
    return phases * (cost[False] + (cost[True] - cost[False]) / memory_every)


class Probes:
    """What the coordinator measures between rounds: the bare decode loop and hf vs lean generation."""

    def __init__(self, cfg: dict, precisions: list[str]):
        import torch

        from rlpost.generation import HFBackend, Sampling
        from rlpost.lean_generation import LeanBackend
        from rlpost.models import load_policy, load_tokenizer

        self.cfg, self.s = cfg, shapes(cfg["model"])
        self.dtypes = {p: torch.bfloat16 if p == "bf16" else torch.float32 for p in precisions}
        self.bare = {p: [] for p in precisions}
        self.gen = {"hf": [], "lean": []}
        self.same_ids: list[bool] = []
        tok, self.policy = load_tokenizer(cfg["model"]), load_policy(cfg["model"]).eval()
        prompts = [f"{a}+{b}=" for a, b in [(47, 38), (5, 99), (12, 3), (88, 11), (3, 4), (60, 6), (99, 99), (1, 2)]]
        enc = tok(prompts[: cfg["prompts"]], return_tensors="pt", padding=True, padding_side="left",
                  add_special_tokens=False)
        self.ids = enc["input_ids"].repeat_interleave(cfg["G"], 0)
        self.mask = enc["attention_mask"].repeat_interleave(cfg["G"], 0)
        self.backends = {"hf": HFBackend(), "lean": LeanBackend()}
        self.sampling, self.tok = Sampling(cfg["T"]), tok

    def __call__(self) -> None:
        import torch

        n, c = self.cfg["prompts"] * self.cfg["G"], self.cfg
        for p, dtype in self.dtypes.items():
            self.bare[p].append(bare_decode_s(self.s, n, c["P"], c["T"], dtype))
        out = {}
        for name, backend in self.backends.items():
            torch.manual_seed(len(self.same_ids))
            start = time.process_time()
            out[name] = backend.generate(self.policy, self.ids, self.mask, self.sampling,
                                         eos_token_id=self.tok.eos_token_id, pad_token_id=self.tok.pad_token_id)
            self.gen[name].append(time.process_time() - start)
        self.same_ids.append(torch.equal(out["hf"].completion_ids, out["lean"].completion_ids))


# --------------------------------------------------------------------------- summary and tables


def spread(values: list[float], fmt: str = "{:.2f}") -> str:
    """Median [min-max] (n)."""
    if not values:
        return "n/a"
    return f"{fmt.format(statistics.median(values))} [{fmt.format(min(values))}-{fmt.format(max(values))}] (n={len(values)})"


def summarize(name: str, cfg: dict, steps: dict[str, list[dict]], probes: Probes) -> dict:
    import torch

    n = cfg["prompts"] * cfg["G"]
    out = {"config": name, "settings": {k: v for k, v in cfg.items()}, "steps": steps, "precisions": {}}
    for p in probes.dtypes:
        mine, trl = steps[f"rlpost-{p}"], steps[f"trl-{p}"]
        t = statistics.mean(s["max_length"] for s in mine if s.get("max_length")) if any(
            s.get("max_length") for s in mine) else cfg["T"]
        flops = step_floor_flops(probes.s, cfg["prompts"], cfg["G"], cfg["P"], round(t))
        rate = gemm_rate(probes.s, n * (cfg["P"] + round(t)), probes.dtypes[p])
        gen = statistics.median(s["phases"].get("generation", 0.0) for s in mine)
        step_cpu = statistics.median(s["cpu_s"] for s in mine)
        out["precisions"][p] = {
            "ratio_tokens_per_cpu_s": [(a["tokens"] / a["cpu_s"]) / (b["tokens"] / b["cpu_s"]) for a, b in zip(mine, trl)],
            "ratio_tokens_per_wall_s": [(a["tokens"] / a["wall_s"]) / (b["tokens"] / b["wall_s"]) for a, b in zip(mine, trl)],
            "tokens_per_cpu_s": {fw: [s["tokens"] / s["cpu_s"] for s in steps[f"{fw}-{p}"]] for fw in FRAMEWORKS},
            "phases_ms": {fw: {ph: 1e3 * statistics.mean(s["phases"].get(ph, 0.0) for s in steps[f"{fw}-{p}"])
                               for ph in dict.fromkeys(k for s in steps[f"{fw}-{p}"] for k in s["phases"])}
                          for fw in FRAMEWORKS},
            "floor": {"flops": flops, "gemm_flop_per_s": rate, "floor_s": sum(flops.values()) / rate,
                      "decode_floor_s": flops["decode"] / rate, "completion_tokens": round(t),
                      "rlpost_step_cpu_s": step_cpu,
                      "accounting_s": mine[-1]["accounting_s"], "timed_phases": mine[-1]["timed_phases"],
                      "rlpost_generation_s": gen, "bare_decode_s": statistics.median(probes.bare[p])},
        }
    if "bf16" in probes.dtypes and "fp32" in probes.dtypes:
        out["bf16_over_fp32_step"] = [b["wall_s"] / a["wall_s"] for a, b in zip(steps["rlpost-fp32"], steps["rlpost-bf16"])]
        out["bf16_over_fp32_step_cpu"] = [b["cpu_s"] / a["cpu_s"] for a, b in zip(steps["rlpost-fp32"], steps["rlpost-bf16"])]
    out["generation_backends"] = {"hf_s": probes.gen["hf"], "lean_s": probes.gen["lean"],
                                  "lean_over_hf": [b / a for a, b in zip(probes.gen["hf"], probes.gen["lean"])],
                                  "identical_ids": probes.same_ids}
    del torch
    return out


def tables(results: list[dict], command: str) -> str:
    lines = [f"Command: `{command}`", "", "**Throughput** (completion tokens per CPU-second of the training loop; "
             "ratio rlpost / TRL per pair of back-to-back steps: median [min-max] (n pairs)):", "",
             "| config | precision | rlpost tokens/CPU-s | TRL tokens/CPU-s | **rlpost / TRL** (CPU time) | rlpost / TRL (wall time) |",
             "|---|---|---:|---:|---:|---:|"]
    for r in results:
        for p, x in r["precisions"].items():
            lines.append(f"| {r['config']} | {p} | {spread(x['tokens_per_cpu_s']['rlpost'], '{:.0f}')} | "
                         f"{spread(x['tokens_per_cpu_s']['trl'], '{:.0f}')} | **{spread(x['ratio_tokens_per_cpu_s'])}** | "
                         f"{spread(x['ratio_tokens_per_wall_s'])} |")
    lines += ["", "**Where a step goes** (CPU ms per step, mean over the measured steps; the run record's phases "
              "timed with `time.process_time`):", ""]
    for r in results:
        for p, x in r["precisions"].items():
            names = list(dict.fromkeys([*x["phases_ms"]["rlpost"], *x["phases_ms"]["trl"]]))
            lines += [f"{r['config']}, {p}:", "", "| framework | " + " | ".join(names) + " | sum |",
                      "|---|" + "---:|" * (len(names) + 1)]
            for fw in FRAMEWORKS:
                ms = x["phases_ms"][fw]
                lines.append(f"| {fw} | " + " | ".join(f"{ms[k]:.1f}" if k in ms else "" for k in names)
                             + f" | {sum(ms.values()):.1f} |")
            lines.append("")
    lines += ["**Against the floor** (rlpost; FLOP floor = matrix products of decode + reference forward + policy "
              "forward + backward at the best measured GEMM rate of the model's MLP shape, one thread):", "",
              "| config | precision | GEMM GFLOP/s | floor s/step | rlpost CPU-s/step | **step / floor** | "
              "decode floor s | bare decode loop s | rlpost generation s | **generation / bare loop** | "
              "phase accounting per step |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        for p, x in r["precisions"].items():
            f = x["floor"]
            lines.append(f"| {r['config']} | {p} | {f['gemm_flop_per_s'] / 1e9:.0f} | {f['floor_s']:.4f} | "
                         f"{f['rlpost_step_cpu_s']:.4f} | **{f['rlpost_step_cpu_s'] / f['floor_s']:.2f}x** | "
                         f"{f['decode_floor_s']:.4f} | {f['bare_decode_s']:.4f} | {f['rlpost_generation_s']:.4f} | "
                         f"**{f['rlpost_generation_s'] / f['bare_decode_s']:.2f}x** | "
                         f"{f['accounting_s'] * 1e6:.0f} us ({f['accounting_s'] / f['rlpost_step_cpu_s']:.3%}) |")
    lines += ["", "**bf16 vs fp32** (rlpost's own step, bf16-mixed / fp32, per round) and **generation backends** "
              "(`lean` / `hf` CPU seconds per call on the config's batch, same seed; identical token ids?); all times "
              "here are CPU time (`time.process_time`) of one thread:", "",
              "| config | rlpost bf16 / fp32 step (CPU) | (wall) | lean / hf generate | identical ids |",
              "|---|---:|---:|---:|---:|"]
    for r in results:
        g = r["generation_backends"]
        lines.append(f"| {r['config']} | {spread(r.get('bf16_over_fp32_step_cpu', []))} | "
                     f"{spread(r.get('bf16_over_fp32_step', []))} | {spread(g['lean_over_hf'])} | "
                     f"{sum(g['identical_ids'])}/{len(g['identical_ids'])} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    ap.add_argument("--precisions", nargs="+", choices=["fp32", "bf16"], default=["fp32", "bf16"])
    ap.add_argument("--pairs", type=int, help="measured steps per worker (default: tiny 20, small 5)")
    ap.add_argument("--backend", help="rlpost's generation_backend (default: GRPO's default)")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--worker", choices=FRAMEWORKS, help=argparse.SUPPRESS)
    ap.add_argument("--precision", help=argparse.SUPPRESS)
    ap.add_argument("--cfg", help=argparse.SUPPRESS)
    ap.add_argument("--link", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker_main(args)
        return
    import torch

    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    command = "python " + " ".join([os.path.relpath(__file__), *(argv if argv is not None else sys.argv[1:])])
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.configs:
            cfg = dict(CONFIGS[name], backend=args.backend)
            if args.pairs:
                cfg["pairs"] = args.pairs
            if cfg["model"] is None:
                cfg["model"] = build_small(Path(tmp) / name, cfg)
            probes = Probes(cfg, args.precisions)
            steps = run_config(name, cfg, args.precisions, args.out, probes)
            results.append(summarize(name, cfg, steps, probes))
    md = tables(results, command)
    (args.out / "throughput.json").write_text(json.dumps({"command": command, "results": results}, indent=2))
    (args.out / "throughput.md").write_text(md + "\n")
    print(md)
    print(f"\n[throughput] wrote {args.out / 'throughput.json'} and {args.out / 'throughput.md'}; worker logs in {args.out}")


if __name__ == "__main__":
    main()
