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
baseline: grpo               # ratios of s/step and tokens/s are to this entry (default: the first)
threads: 1                   # optional: CPU threads per run (OMP_NUM_THREADS); unset: inherit the environment
entries:
  - {name: grpo, config: configs/grpo_arith.yaml}
  - {name: grpo-lr, config: configs/grpo_arith.yaml, overrides: {model.init_args.optimizer.init_args.lr: 1.0e-4}}
  - {name: trl-grpo, trl_reference: grpo}   # TRL's GRPOTrainer mirroring entry 'grpo'
```

The budget is enforced, not trusted: the suite writes each entry's run config with the task and
the budget put in (``out/configs/<entry>.yaml``), resolves it with the rlpost CLI parser (so class
defaults count), and refuses the suite, naming the entry, when an entry would take a different
number of optimizer steps or generate a different number of completions (e.g. ``num_iterations``
or mini-batches giving several optimizer steps per rollout), or overrides a budget field.
After each run its ``summary.json`` is checked against the same numbers.
"""

from __future__ import annotations

import copy
import hashlib
import importlib
import inspect
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from rlpost.plan import rollout_plan

SUITE_KEYS = {"name", "description", "output_dir", "task", "budget", "seeds", "baseline", "entries", "threads"}
BUDGET_REQUIRED = ("prompts_per_step", "num_generations", "max_steps", "eval_prompts")
BUDGET_OPTIONAL = ("max_completion_length", "eval_every", "optimizer_steps_per_rollout")
ENTRY_KEYS = {"name", "config", "overrides", "trl_reference"}
# config keys the budget owns: an entry may not override them
BUDGET_OWNED = ("data", "trainer.max_steps", "model.init_args.num_generations", "model.init_args.max_completion_length",
                "seed_everything", "trainer.logger", "trainer.default_root_dir", "trainer.limit_val_batches",
                "trainer.val_check_interval", "trainer.check_val_every_n_epoch")


class SuiteError(ValueError):
    """A suite that cannot run as written; the message names the entry and the numbers."""


@dataclass(frozen=True)
class Budget:
    """What every entry gets: B prompts x G completions per rollout, optimizer steps, held-out prompts."""

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
class Plan:
    """What an entry will consume, from its resolved config."""

    optimizer_steps: int
    optimizer_steps_per_rollout: int
    completions: int
    prompts_per_step: int
    num_generations: int


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
    name = str(raw.get("name") or path.stem)
    out = Path(output_dir) if output_dir is not None else Path(raw.get("output_dir") or f"comparisons/out/{name}")
    return Suite(path=path, name=name, output_dir=out, task=task, budget=budget, seeds=list(seeds),
                 entries=entries, baseline=baseline, description=str(raw.get("description") or ""),
                 threads=threads)


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
    name = str(raw["name"])
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


def _no_unknown(raw: dict, allowed: set[str], where: str) -> None:
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise SuiteError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(allowed)}")


# ----------------------------------------------------------------------------- resolving entries


def known_algorithms() -> dict[str, type]:
    """Class name -> class of every on-policy algorithm rlpost ships."""
    import rlpost.algorithms as algos
    from rlpost.algorithms.base import OnPolicyAlgorithm

    return {n: c for n, c in vars(algos).items()
            if inspect.isclass(c) and issubclass(c, OnPolicyAlgorithm) and c is not OnPolicyAlgorithm}


def algorithm_class(class_path: Any, where: str) -> type:
    """Import ``class_path`` and check it is an rlpost on-policy algorithm, or raise naming ``where``."""
    from rlpost.algorithms.base import OnPolicyAlgorithm

    known = sorted(known_algorithms())
    hint = f"known algorithms: {', '.join(known)} (class_path rlpost.algorithms.<name>)"
    if not isinstance(class_path, str) or "." not in class_path:
        raise SuiteError(f"{where}: unknown algorithm {class_path!r}; {hint}")
    module, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as err:
        raise SuiteError(f"{where}: unknown algorithm {class_path!r} ({err}); {hint}") from None
    if not (inspect.isclass(cls) and issubclass(cls, OnPolicyAlgorithm)):
        raise SuiteError(f"{where}: {class_path!r} is not an on-policy algorithm; {hint}")
    return cls


def resolve_suite(suite: Suite) -> Suite:
    """Build every entry's run config, resolve it, and refuse unequal budgets (naming the entry)."""
    for e in suite.entries:
        if e.kind == "rlpost":
            _resolve_rlpost(e, suite)
    for e in suite.entries:
        if e.kind == "trl":
            _resolve_trl(e, suite)
    b = suite.budget
    for e in suite.entries:
        p = e.plan
        if p.optimizer_steps != b.max_steps or p.completions != b.completions:
            raise SuiteError(
                f"unequal budgets: entry {e.name!r} ({e.algorithm}) would take {p.optimizer_steps} optimizer steps on "
                f"{p.completions} completions ({p.optimizer_steps_per_rollout} optimizer step(s) per rollout of "
                f"{p.prompts_per_step} x {p.num_generations}), but the budget is {b.max_steps} steps on {b.completions} "
                f"completions ({b.optimizer_steps_per_rollout} per rollout); set num_iterations / mini_batch_size so "
                f"that num_iterations x (B*G / mini_batch_size) = {b.optimizer_steps_per_rollout}"
            )
    return suite


def _resolve_rlpost(e: Entry, suite: Suite) -> None:
    where = f"entry {e.name!r} ({e.config})"
    if not e.config.is_file():
        raise SuiteError(f"{where}: config file not found")
    original = yaml.safe_load(e.config.read_text()) or {}
    if not isinstance(original, dict):
        raise SuiteError(f"{where}: not a config mapping")
    cfg = copy.deepcopy(original)
    for key, value in e.overrides.items():
        _set_dotted(cfg, key, value)
    model = cfg.get("model")
    if not isinstance(model, dict):
        raise SuiteError(f"{where}: no model section (class_path + init_args)")
    cls = algorithm_class(model.get("class_path"), where)
    _apply_budget(cfg, cls, suite)
    e.run_config = cfg
    e.algorithm = cls.__name__
    e.changes = _diff(original, cfg)
    resolved = parse_config(cfg, where)
    e.resolved = resolved
    e.plan = _plan(resolved, where)


def _apply_budget(cfg: dict, algo_cls: type, suite: Suite) -> None:
    """Put the suite's task and budget into an entry's config (in place)."""
    b = suite.budget
    task_args = dict(suite.task["init_args"], prompts_per_step=b.prompts_per_step)
    task_cls = _import(suite.task["class_path"], "task")
    if "num_val_prompts" in inspect.signature(task_cls.__init__).parameters:
        task_args["num_val_prompts"] = b.eval_prompts
    cfg["data"] = {"class_path": suite.task["class_path"], "init_args": task_args}
    init = cfg["model"].setdefault("init_args", {})
    init["num_generations"] = b.num_generations
    if b.max_completion_length is not None:
        init["max_completion_length"] = b.max_completion_length
    init["save_policy"] = False
    trainer = cfg.setdefault("trainer", {})
    trainer.update(max_steps=b.max_steps, max_epochs=-1, enable_checkpointing=False, num_sanity_val_steps=0)
    trainer.pop("default_root_dir", None)
    trainer["logger"] = {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                         "init_args": {"save_dir": "RUN_DIR", "name": "", "version": ""}}
    if b.eval_every:
        trainer.update(limit_val_batches=1, val_check_interval=b.eval_every, check_val_every_n_epoch=None)
    else:
        trainer.update(limit_val_batches=0)
    cfg.pop("seed_everything", None)
    cfg.pop("ckpt_path", None)


def _resolve_trl(e: Entry, suite: Suite) -> None:
    from rlpost.compare.trl_reference import trl_spec

    target = suite.entry(e.trl_reference)
    r = target.resolved
    b = suite.budget
    try:
        spec = trl_spec(r["model"], r["data"], {"prompts_per_step": b.prompts_per_step, "max_steps": b.max_steps,
                                                "eval_every": b.eval_every}, e.trl_reference)
    except ValueError as err:
        raise SuiteError(f"entry {e.name!r}: {err}") from None
    e.run_config = e.resolved = spec
    e.algorithm = "TRL GRPOTrainer"
    e.changes = [f"mirrors entry {target.name!r} ({target.algorithm}); GRPOConfig fields set: see the report"]
    g = spec["grpo_config"]
    n = g["per_device_train_batch_size"]
    spr = g["num_iterations"] * g["steps_per_generation"]  # one rollout feeds steps_per_generation x mu steps
    e.plan = Plan(optimizer_steps=g["max_steps"], optimizer_steps_per_rollout=spr,
                  completions=g["max_steps"] // spr * n, prompts_per_step=n // g["num_generations"],
                  num_generations=g["num_generations"])


def _plan(resolved: dict, where: str) -> Plan:
    h, steps = resolved["model"]["init_args"], resolved["trainer"]["max_steps"]
    try:  # the training loop's own plan (rlpost.plan), so the suite counts as the run will
        p = rollout_plan(resolved["data"]["init_args"]["prompts_per_step"], h["num_generations"],
                         h.get("mini_batch_size"), h.get("micro_batch_size"), h.get("num_iterations", 1), steps)
    except ValueError as err:
        raise SuiteError(f"unequal budgets: {where}: {err}") from None
    return Plan(optimizer_steps=steps, optimizer_steps_per_rollout=p.optimizer_steps_per_rollout,
                completions=steps // p.optimizer_steps_per_rollout * p.completions_per_rollout,
                prompts_per_step=p.prompts_per_step, num_generations=p.num_generations)


def parse_config(cfg: dict, where: str) -> dict:
    """Resolve a run config with rlpost's CLI parser (class defaults filled in), without instantiating."""
    import tempfile
    import warnings

    from lightning import LightningDataModule, LightningModule

    from rlpost.cli import RLPostCLI

    class _ParseOnly(RLPostCLI):
        def _set_seed(self) -> None:
            pass

        def instantiate_classes(self) -> None:
            pass

        def _run_subcommand(self, subcommand: str) -> None:
            pass

    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        yaml.safe_dump(cfg, f, sort_keys=False)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*args parameter is intended.*")  # `rlpost compare` is in argv
            # the same parser settings as rlpost.cli.cli_main
            cli = _ParseOnly(LightningModule, LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
                             seed_everything_default=0, trainer_defaults={"max_epochs": -1, "num_sanity_val_steps": 0},
                             args=["fit", "--config", f.name], auto_configure_optimizers=False)
    except SystemExit as err:
        raise SuiteError(f"{where}: the rlpost CLI refused the run config (see the parser's message above)") from err
    finally:
        Path(f.name).unlink()
    return _plain(cli.config["fit"].as_dict())


def _plain(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items() if not k.startswith("__")}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x if isinstance(x, (str, int, float, bool, type(None))) else str(x)


def _import(class_path: str, what: str):
    module, _, name = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as err:
        raise SuiteError(f"{what} class {class_path!r} cannot be imported: {err}") from None


def _set_dotted(cfg: dict, key: str, value: Any) -> None:
    node = cfg
    parts = key.split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise SuiteError(f"override {key!r}: {p!r} is not a mapping in the config")
    node[parts[-1]] = value


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict) and d:
        out = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: d}


def _diff(before: dict, after: dict) -> list[str]:
    """'key: old -> new' for every leaf the suite changed (data shown as one line)."""
    b, a = _flatten(before), _flatten(after)
    lines = []
    data_b = {k: v for k, v in b.items() if k.startswith("data.")}
    data_a = {k: v for k, v in a.items() if k.startswith("data.")}
    if data_b != data_a:
        lines.append(f"data: replaced by the suite's task {after['data']['class_path']} {after['data']['init_args']}")
    for k in sorted(set(a) | set(b)):
        if k.startswith(("data.", "trainer.logger", "trainer.default_root_dir", "seed_everything")):
            continue  # data: one line above; logger, root dir, seed: set per run
        if b.get(k, "<unset>") != a.get(k, "<unset>"):
            lines.append(f"{k}: {b.get(k, '(default)')} -> {a.get(k, '(removed)')}")
    return lines
