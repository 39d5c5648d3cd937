"""Tiny suites for the comparison tests: builtin:tiny GRPO configs written to tmp paths."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

TINY_GRPO = {
    "trainer": {"accelerator": "cpu", "devices": 1, "max_steps": 50, "enable_progress_bar": False},
    "model": {
        "class_path": "rlpost.algorithms.GRPO",
        "init_args": {
            "model_name_or_path": "builtin:tiny", "num_generations": 4, "max_completion_length": 4, "beta": 0.0,
            "optimizer": {"class_path": "torch.optim.AdamW", "init_args": {"lr": 0.003, "weight_decay": 0.0}},
        },
    },
    "data": {"class_path": "rlpost.data.ArithmeticTask", "init_args": {"num_prompts": 64, "max_operand": 9}},
}


def write_suite(tmp_path: Path, *, entries=None, budget=None, seeds=(0, 1), config=None, **extra) -> Path:
    """A suite of builtin:tiny GRPO entries (two learning rates) plus whatever ``entries`` says."""
    cfg = tmp_path / "tiny_grpo.yaml"
    cfg.write_text(yaml.safe_dump(config or TINY_GRPO))
    suite = {
        "name": "tiny",
        "output_dir": str(tmp_path / "out"),
        "task": {"class_path": "rlpost.data.ArithmeticTask",
                 "init_args": {"num_prompts": 32, "max_operand": 9, "eval_batch_size": 8}},
        "budget": budget or {"prompts_per_step": 2, "num_generations": 2, "max_steps": 2, "eval_prompts": 8},
        "seeds": list(seeds),
        "entries": entries if entries is not None else [
            {"name": "grpo", "config": str(cfg)},
            {"name": "grpo-lr", "config": str(cfg), "overrides": {"model.init_args.optimizer.init_args.lr": 0.001}},
        ],
        **extra,
    }
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(suite, sort_keys=False))
    return path


def fake_summary(algorithm: str, seed: int, steps: int, completions: int, eval_prompts: int, *, speed: float = 1.0,
                 critic: bool = False) -> dict:
    """A summary.json as a fit writes it; ``speed`` scales the time figures (2.0 = twice as slow)."""
    state = {"parameters": 4_000_000, "gradients": 4_000_000, "optimizer_state": 8_000_000}
    none = {"parameters": 0, "gradients": 0, "optimizer_state": 0}
    history = [{"step": s, "wall_s": 0.1 * s * speed, "train/reward": min(1.0, 0.3 + 0.1 * s + 0.01 * seed)}
               for s in range(1, steps + 1)]
    breakdown = {"policy": state, "reference": none, "critic": state if critic else none}
    breakdown["accounted_bytes"] = sum(sum(v.values()) for v in breakdown.values())
    return {
        "algorithm": algorithm, "seed": seed, "steps": steps, "rollouts": steps,
        "accuracy_before": 0.5, "accuracy_after": 0.6 + 0.05 * seed + (0.1 if critic else 0.0),
        "eval_prompts": eval_prompts, "peak_memory_bytes": 600 * 2**20 + (16_000_000 if critic else 0),
        "peak_memory_measure": "peak RSS (VmHWM) since training start", "memory_breakdown": breakdown,
        "generation_s": 1.0 * speed * steps, "training_s": 1.0 * speed * steps, "completion_tokens": 100 * steps,
        "completion_tokens_per_s": 100.0 / speed, "completions_generated": completions,
        "phases": {"generation": {"s": 0.75 * speed * steps, "peak_memory_bytes": None},
                   "scoring": {"s": 0.25 * speed * steps, "peak_memory_bytes": None},
                   "forward": {"s": 0.5 * speed * steps, "peak_memory_bytes": None},
                   "backward": {"s": 0.5 * speed * steps, "peak_memory_bytes": None}},
        "plan": {"num_generations": 2}, "hparams": {}, "history": history,
        "val_history": [{"step": 0, "wall_s": 0.0, "accuracy_greedy": 0.5, "accuracy_sampled": 0.5},
                        {"step": steps, "wall_s": 1.0, "accuracy_greedy": 0.6, "accuracy_sampled": 0.55}],
    }


class FakeLauncher:
    """Stands in for the training process: writes a summary.json into the run directory."""

    def __init__(self, fail: set[tuple[str, int]] = frozenset(), completions: dict[str, int] | None = None):
        self.calls: list[tuple[str, int]] = []
        self.fail = set(fail)
        self.completions = completions or {}

    def __call__(self, cmd: list[str], log_path: Path, env: dict) -> int:
        run_dir = log_path.parent
        entry, seed = run_dir.parent.name, int(run_dir.name.removeprefix("seed"))
        self.calls.append((entry, seed))
        log_path.write_text(f"fake run {entry} seed {seed}\n")
        if (entry, seed) in self.fail:
            log_path.write_text("Traceback: boom\n")
            return 1
        summary = fake_summary(entry.upper(), seed, 2, self.completions.get(entry, 8), 8,
                               speed=2.0 if entry == "grpo-lr" else 1.0)
        (run_dir / "summary.json").write_text(json.dumps(summary))
        return 0


@pytest.fixture
def fake_launcher():
    return FakeLauncher()
