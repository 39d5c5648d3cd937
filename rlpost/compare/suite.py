"""A comparison suite: one task, one budget, several algorithm entries, several seeds.

```yaml
name: arith
output_dir: comparisons/out/arith
task: {class_path: rlpost.data.ArithmeticTask, init_args: {num_prompts: 4000, max_operand: 99}}
budget:
  prompts_per_step: 8        # B
  num_generations: 8         # G, completions per prompt
  max_steps: 60              # optimizer steps
  eval_prompts: 256          # held-out prompts
  max_completion_length: 6   # optional: same for every entry
  eval_every: 20             # optional: held-out accuracy every N steps (0: before/after only)
seeds: [0, 1, 2]
trainer: {devices: 2, strategy: ddp}  # optional: put into every rlpost entry's trainer (e.g. its world size)
baseline: grpo               # ratios of s/step and tokens/s are to this entry (default: the first)
threads: 1                   # optional: CPU threads per run (--threads, OMP_NUM_THREADS); unset: the run's default
replay: {steps: 50}          # optional: the first 50 rollouts of every rlpost entry (or of `entries: [...]`) are
                             # the same samples, generated once per seed (rlpost.replay)
entries:
  - {name: grpo, config: configs/grpo_arith.yaml}
  - {name: grpo-lr, config: configs/grpo_arith.yaml, overrides: {model.init_args.optimizer.init_args.lr: 1.0e-4}}
  - {name: trl-grpo, trl_reference: grpo}   # TRL's GRPOTrainer mirroring entry 'grpo'
```

The budget is global: ``prompts_per_step`` counts the prompts of one optimizer step over all
processes, and an entry that runs on W processes (``trainer.devices`` x ``trainer.num_nodes``) gets
``prompts_per_step / W`` prompts per process; completions are counted over all ranks.

The budget is enforced, not trusted: :mod:`rlpost.compare.resolve` writes each entry's run config with
the task and the budget put in (``out/configs/<entry>.yaml``), resolves it with the rlpost CLI parser
(so class defaults count), and refuses the suite, naming the entry, when an entry would take a different
number of optimizer steps or generate a different number of completions (e.g. ``num_iterations``
or mini-batches giving several optimizer steps per rollout), or overrides a budget field.
After each run its ``summary.json`` is checked against the same numbers.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


SUITE_KEYS = {"name", "description", "output_dir", "task", "budget", "seeds", "baseline", "entries", "threads", "replay", "trainer"}
BUDGET_REQUIRED = ("prompts_per_step", "num_generations", "max_steps", "eval_prompts")
BUDGET_OPTIONAL = ("max_completion_length", "eval_every", "optimizer_steps_per_rollout")
ENTRY_KEYS = {"name", "config", "overrides", "trl_reference"}
# entry and suite names become directory and file names under output_dir: letters, digits, '-', '_' and '.',
# not leading with '.' (no '..', no hidden files), no separators, so nothing resolves outside output_dir
SAFE_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,99}")
# config keys the budget owns: an entry may not override them
BUDGET_OWNED = ("data", "trainer.max_steps", "model.init_args.num_generations", "model.init_args.max_completion_length",
                "seed_everything", "trainer.logger", "trainer.default_root_dir", "trainer.limit_val_batches",
                "trainer.val_check_interval", "trainer.check_val_every_n_epoch")

# trainer arguments the suite sets for every entry (a suite's own ``trainer`` may not set them)
BUDGET_TRAINER = ("max_steps", "max_epochs", "enable_checkpointing", "num_sanity_val_steps", "default_root_dir", "logger",
                  "limit_val_batches", "val_check_interval", "check_val_every_n_epoch")


class SuiteError(ValueError):
    """A suite that cannot run as written; the message names the entry and the numbers."""


@dataclass(frozen=True)
class Budget:
    """What every entry gets: B prompts (over all processes) x G completions per rollout, optimizer steps,
    held-out prompts."""

    prompts_per_step: int
    num_generations: int
    max_steps: int
    eval_prompts: int
    max_completion_length: int | None = None
    eval_every: int = 0
    optimizer_steps_per_rollout: int = 1

    @property
    def completions_per_rollout(self) -> int:
        return self.prompts_per_step * self.num_generations

    @property
    def completions(self) -> int:
        """Completions generated over the run: rollouts x B x G."""
        return self.max_steps // self.optimizer_steps_per_rollout * self.completions_per_rollout


@dataclass
class Replay:
    """The first ``steps`` rollouts of each entry in ``entries`` are replayed from one generator per
    seed (:mod:`rlpost.replay`): every one of them trains its loss on the very same samples."""

    steps: int
    entries: tuple[str, ...]
    # filled by resolve_suite: the entry whose run config (task, starting policy, sampling) the generator uses
    generator: str = ""
    run_config: dict[str, Any] = field(default_factory=dict)

    def fingerprint(self) -> str:
        blob = json.dumps({"steps": self.steps, "run_config": self.run_config}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass
class Plan:
    """What an entry will consume, from its resolved config (``prompts_per_step``: per process;
    ``completions``: over all ``world_size`` processes)."""

    optimizer_steps: int
    optimizer_steps_per_rollout: int
    completions: int
    prompts_per_step: int
    num_generations: int
    world_size: int = 1


@dataclass
class Entry:
    """One algorithm of the suite: an rlpost config, or the TRL reference mirroring another entry."""

    name: str
    config: Path | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    trl_reference: str | None = None
    # filled by resolve_suite
    algorithm: str = ""
    run_config: dict[str, Any] = field(default_factory=dict)  # what the run is given (yaml dict or TRL spec)
    resolved: dict[str, Any] = field(default_factory=dict)  # with class defaults (rlpost) / = run_config (TRL)
    changes: list[str] = field(default_factory=list)  # what the suite changed in the entry's config
    plan: Plan | None = None

    @property
    def kind(self) -> str:
        return "trl" if self.trl_reference else "rlpost"

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.run_config, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class Suite:
    path: Path
    name: str
    output_dir: Path
    task: dict[str, Any]
    budget: Budget
    seeds: list[int]
    entries: list[Entry]
    baseline: str
    description: str = ""
    threads: int | None = None
    replay: Replay | None = None
    trainer: dict[str, Any] = field(default_factory=dict)  # put into every rlpost entry's trainer section

    def entry(self, name: str) -> Entry:
        for e in self.entries:
            if e.name == name:
                return e
        raise SuiteError(f"no entry named {name!r}; entries are {[e.name for e in self.entries]}")


# ----------------------------------------------------------------------------- loading


def load_suite(path: str | Path, output_dir: str | Path | None = None) -> Suite:
    """Read and check a suite file (structure only; :func:`resolve_suite` checks the entries)."""
    path = Path(path)
    if not path.is_file():
        raise SuiteError(f"suite file {str(path)!r} not found")
    raw = yaml.safe_load(path.read_text())
    if not isinstance(raw, dict):
        raise SuiteError(f"{path}: a suite is a mapping with keys {sorted(SUITE_KEYS)}")
    _no_unknown(raw, SUITE_KEYS, f"{path}")
    for key in ("task", "budget", "seeds", "entries"):
        if key not in raw:
            raise SuiteError(f"{path}: missing {key!r}")
    task = raw["task"]
    if not isinstance(task, dict) or "class_path" not in task:
        raise SuiteError(f"{path}: task needs a class_path (and init_args), got {task!r}")
    task = {"class_path": task["class_path"], "init_args": dict(task.get("init_args") or {})}
    budget = _budget(raw["budget"], path)
    seeds = raw["seeds"]
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise SuiteError(f"{path}: seeds must be a non-empty list of integers, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise SuiteError(f"{path}: seeds repeat: {seeds}")
    entries = [_entry(e, i, path) for i, e in enumerate(raw["entries"] or [])]
    if not entries:
        raise SuiteError(f"{path}: entries is empty")
    names = [e.name for e in entries]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise SuiteError(f"{path}: entry names repeat: {dup}")
    for e in entries:
        if e.trl_reference is not None:
            target = next((x for x in entries if x.name == e.trl_reference), None)
            if target is None or target.kind != "rlpost":
                raise SuiteError(f"entry {e.name!r}: trl_reference {e.trl_reference!r} must name an rlpost entry of "
                                 f"this suite; rlpost entries are {[x.name for x in entries if x.kind == 'rlpost']}")
    baseline = raw.get("baseline", entries[0].name)
    if baseline not in names:
        raise SuiteError(f"{path}: baseline {baseline!r} is not an entry; entries are {names}")
    threads = raw.get("threads")
    if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool) or threads < 1):
        raise SuiteError(f"{path}: threads must be a positive integer, got {threads!r}")
    trainer = raw.get("trainer") or {}
    if not isinstance(trainer, dict):
        raise SuiteError(f"{path}: trainer must be a mapping of Trainer arguments, got {trainer!r}")
    owned = sorted(k for k in trainer if k in BUDGET_TRAINER)
    if owned:
        raise SuiteError(f"{path}: trainer sets {owned}, which the suite's budget sets for every entry")
    name = safe_name(raw.get("name") or path.stem, f"{path}: suite name")
    out = Path(output_dir) if output_dir is not None else Path(raw.get("output_dir") or f"comparisons/out/{name}")
    replay = _replay(raw.get("replay"), entries, budget, path) if raw.get("replay") is not None else None
    return Suite(path=path, name=name, output_dir=out, task=task, budget=budget, seeds=list(seeds),
                 entries=entries, baseline=baseline, description=str(raw.get("description") or ""),
                 threads=threads, replay=replay, trainer=dict(trainer))


def _replay(raw: Any, entries: list[Entry], b: Budget, path: Path) -> Replay:
    """``replay: {steps: K, entries: [...]}``: K rollouts, ending at a held-out evaluation (the loss-only
    difference is read there); entries default to every rlpost entry."""
    if not isinstance(raw, dict):
        raise SuiteError(f"{path}: replay must be a mapping {{steps: K, entries: [...]}}, got {raw!r}")
    _no_unknown(raw, {"steps", "entries"}, f"{path}: replay")
    steps, rollouts = raw.get("steps"), b.max_steps // b.optimizer_steps_per_rollout
    if not isinstance(steps, int) or isinstance(steps, bool) or not 1 <= steps <= rollouts:
        raise SuiteError(f"{path}: replay.steps must be an integer in [1, {rollouts}] (the rollouts of the budget), "
                         f"got {steps!r}")
    at = steps * b.optimizer_steps_per_rollout
    if at != b.max_steps and not (b.eval_every and at % b.eval_every == 0):
        raise SuiteError(f"{path}: replay.steps={steps} ends at optimizer step {at}, where no held-out evaluation "
                         f"happens: make it a multiple of budget.eval_every={b.eval_every} (or max_steps)")
    rlpost_names = [e.name for e in entries if e.kind == "rlpost"]
    names = raw.get("entries", rlpost_names)
    bad = [n for n in names if n not in rlpost_names] if isinstance(names, list) else names
    if bad or not names:
        raise SuiteError(f"{path}: replay.entries must name rlpost entries of this suite ({rlpost_names}); "
                         f"got {names!r}")
    return Replay(steps=steps, entries=tuple(names))


def _budget(raw: Any, path: Path) -> Budget:
    if not isinstance(raw, dict):
        raise SuiteError(f"{path}: budget must be a mapping with {list(BUDGET_REQUIRED)}")
    _no_unknown(raw, set(BUDGET_REQUIRED) | set(BUDGET_OPTIONAL), f"{path}: budget")
    missing = [k for k in BUDGET_REQUIRED if k not in raw]
    if missing:
        raise SuiteError(f"{path}: budget is missing {missing}")
    for k, v in raw.items():
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < (0 if k == "eval_every" else 1)):
            raise SuiteError(f"{path}: budget.{k} must be a positive integer, got {v!r}")
    b = Budget(**{k: v for k, v in raw.items() if v is not None})
    if b.num_generations < 2:
        raise SuiteError(f"{path}: budget.num_generations must be >= 2 (a group needs a baseline), got {b.num_generations}")
    if b.max_steps % b.optimizer_steps_per_rollout:
        raise SuiteError(f"{path}: budget.max_steps={b.max_steps} is not a multiple of "
                         f"optimizer_steps_per_rollout={b.optimizer_steps_per_rollout}")
    return b


def _entry(raw: Any, index: int, path: Path) -> Entry:
    if not isinstance(raw, dict) or "name" not in raw:
        raise SuiteError(f"{path}: entry #{index + 1} needs a name (and a config or trl_reference), got {raw!r}")
    name = safe_name(raw["name"], f"{path}: entry #{index + 1} name")
    _no_unknown(raw, ENTRY_KEYS, f"entry {name!r}")
    has_cfg, has_trl = raw.get("config") is not None, raw.get("trl_reference") is not None
    if has_cfg == has_trl:
        raise SuiteError(f"entry {name!r}: give exactly one of config (an rlpost config) or trl_reference "
                         f"(the rlpost entry TRL's GRPOTrainer mirrors)")
    overrides = dict(raw.get("overrides") or {})
    if has_trl and overrides:
        raise SuiteError(f"entry {name!r}: a TRL reference takes its settings from entry {raw['trl_reference']!r}; "
                         f"put overrides there")
    for key in overrides:
        if any(key == owned or key.startswith(owned + ".") for owned in BUDGET_OWNED):
            raise SuiteError(f"unequal budgets: entry {name!r} overrides {key!r}, which the suite's task and budget "
                             f"set for every entry")
    config = None
    if has_cfg:
        config = Path(raw["config"])
        if not config.is_absolute() and not config.exists() and (path.parent / config).exists():
            config = path.parent / config
    return Entry(name=name, config=config, overrides=overrides, trl_reference=raw.get("trl_reference"))


def safe_name(name: Any, where: str) -> str:
    """``name`` if it is a safe directory/file name (:data:`SAFE_NAME`), else a SuiteError naming it."""
    if not isinstance(name, (str, int)) or isinstance(name, bool) or not SAFE_NAME.fullmatch(str(name)):
        raise SuiteError(f"{where} {name!r} is not allowed: names become paths under output_dir, so use letters, "
                         "digits, '-', '_' and '.' (not first), at most 100 characters")
    return str(name)


def _no_unknown(raw: dict, allowed: set[str], where: str) -> None:
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise SuiteError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(allowed)}")
