"""Resolving a suite's entries: each entry's run config with the suite's task and budget put in,
resolved by rlpost's own CLI parser (:mod:`rlpost.config`), its plan counted the way the training
loop counts it (:mod:`rlpost.plan`), and unequal budgets refused naming the entry. An entry on W
processes gets the budget's prompts per step divided by W; its completions count over all of them.
"""

from __future__ import annotations

import copy
import importlib
import inspect
from typing import Any

import yaml

from rlpost.compare.suite import Entry, Plan, Suite, SuiteError

# what the replayed samples depend on: every replayed entry must agree with the generator on these
SAMPLING_FIELDS = ("model_name_or_path", "num_generations", "max_completion_length", "temperature", "top_p", "top_k",
                   "dtype", "generation_backend")
from rlpost.config import parse_run_config
from rlpost.plan import rollout_plan


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
    try:
        cls = import_class(class_path)
    except (ImportError, AttributeError, ValueError) as err:
        raise SuiteError(f"{where}: unknown algorithm {class_path!r} ({err}); {hint}") from None
    if not (inspect.isclass(cls) and issubclass(cls, OnPolicyAlgorithm)):
        raise SuiteError(f"{where}: {class_path!r} is not an on-policy algorithm; {hint}")
    return cls


def resolve_suite(suite: Suite) -> Suite:
    """Build every entry's run config, resolve it, and refuse unequal budgets (naming the entry)."""
    for e in suite.entries:
        if e.kind == "rlpost":
            _resolve_rlpost(e, suite)
    if suite.replay is not None:
        _resolve_replay(suite)
    for e in suite.entries:
        if e.kind == "trl":
            _resolve_trl(e, suite)
    _refuse_trl_on_several_devices(suite)
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
    _apply_budget(cfg, suite, where)
    resolved = parse_config(cfg, where)
    world = world_size(resolved["trainer"], where)
    if world > 1:  # the budget's prompts per step are global: each process gets its share
        if suite.budget.prompts_per_step % world:
            raise SuiteError(f"unequal budgets: {where} runs on {world} processes, which do not divide the budget's "
                             f"prompts_per_step={suite.budget.prompts_per_step} (prompts per step over all processes)")
        for c in (cfg, resolved):
            c["data"]["init_args"]["prompts_per_step"] = suite.budget.prompts_per_step // world
    e.run_config, e.resolved = cfg, resolved
    e.algorithm = cls.__name__
    e.changes = _diff(original, cfg)
    e.plan = _plan(resolved, where, world)


def _resolve_replay(suite: Suite) -> None:
    """The generator runs the baseline's config (or the first replayed entry's); every replayed entry must
    sample as it does, and gets the :class:`~rlpost.replay.ReplayRollouts` callback."""
    r = suite.replay
    r.generator = suite.baseline if suite.baseline in r.entries else r.entries[0]
    gen = suite.entry(r.generator)
    r.run_config = copy.deepcopy(gen.run_config)
    want = gen.resolved["model"]["init_args"]
    for name in r.entries:
        e = suite.entry(name)
        have = e.resolved["model"]["init_args"]
        for f in SAMPLING_FIELDS:
            if have.get(f) != want.get(f):
                raise SuiteError(f"replay: entry {name!r} samples with {f}={have.get(f)!r} but the replayed rollouts come "
                                 f"from entry {r.generator!r}'s settings ({f}={want.get(f)!r}); make them equal or leave "
                                 f"{name!r} out of replay.entries")
        callbacks = e.run_config["trainer"].setdefault("callbacks", [])
        callbacks.append({"class_path": "rlpost.replay.ReplayRollouts", "init_args": {
            "directory": str(suite.output_dir / "replay"), "steps": r.steps, "fingerprint": r.fingerprint()}})
        e.changes.append(f"the first {r.steps} rollouts are replayed: the samples every replayed entry shares, "
                         f"generated once per seed by the starting policy with entry {r.generator!r}'s settings")
        e.resolved = parse_config(e.run_config, f"entry {name!r} ({e.config})")


def _apply_budget(cfg: dict, suite: Suite, where: str) -> None:
    """Put the suite's task and budget into an entry's config (in place). The held-out size goes into
    the argument the task declares as such (``held_out_size_arg``); a task without one is refused."""
    b = suite.budget
    task_args = dict(suite.task["init_args"], prompts_per_step=b.prompts_per_step)
    try:
        task_cls = import_class(suite.task["class_path"])
    except (ImportError, AttributeError, ValueError) as err:
        raise SuiteError(f"task class {suite.task['class_path']!r} cannot be imported: {err}") from None
    held_out_arg = getattr(task_cls, "held_out_size_arg", None)
    if held_out_arg is None:
        raise SuiteError(f"{where}: task {suite.task['class_path']} declares no held-out size argument "
                         f"(held_out_size_arg), so the budget's eval_prompts={b.eval_prompts} cannot apply to it")
    task_args[held_out_arg] = b.eval_prompts
    cfg["data"] = {"class_path": suite.task["class_path"], "init_args": task_args}
    cfg.setdefault("trainer", {}).update(copy.deepcopy(suite.trainer))
    init = cfg["model"].setdefault("init_args", {})
    init["num_generations"] = b.num_generations
    if b.max_completion_length is not None:
        init["max_completion_length"] = b.max_completion_length
    init["save_policy"] = False
    trainer = cfg.setdefault("trainer", {})
    trainer.update(max_steps=b.max_steps, max_epochs=-1, enable_checkpointing=False, num_sanity_val_steps=0)
    callbacks = trainer.pop("callbacks", None) or []  # checkpoints are off in suites: a ModelCheckpoint goes too
    kept = [c for c in (callbacks if isinstance(callbacks, list) else [callbacks])
            if not (isinstance(c, dict) and str(c.get("class_path", "")).endswith("ModelCheckpoint"))]
    if kept:
        trainer["callbacks"] = kept
    trainer.pop("default_root_dir", None)
    trainer["logger"] = {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                         "init_args": {"save_dir": "RUN_DIR", "name": "", "version": "", "default_hp_metric": False}}
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


def world_size(trainer: dict, where: str) -> int:
    """Processes a resolved trainer config runs on: ``devices`` x ``num_nodes``. ``devices: auto`` counts
    1 on CPU; elsewhere (a GPU count known only at run time) it is refused, naming ``where``."""
    devices, nodes = trainer.get("devices", "auto"), int(trainer.get("num_nodes") or 1)
    if isinstance(devices, str) and devices.strip().lstrip("-").isdigit():
        devices = int(devices)
    if isinstance(devices, list):
        devices = len(devices)
    if devices == "auto" and trainer.get("accelerator") == "cpu":
        devices = 1
    if not isinstance(devices, int) or devices < 1:
        raise SuiteError(f"{where}: trainer.devices={devices!r} (accelerator={trainer.get('accelerator')!r}) gives no "
                         "process count before the run; a suite splits its budget over the processes, so set "
                         "trainer.devices to a number")
    return devices * nodes


def _refuse_trl_on_several_devices(suite: Suite) -> None:
    several = [e for e in suite.entries if e.kind == "rlpost" and e.plan.world_size > 1]
    for e in suite.entries:
        if e.kind == "trl" and several:
            x = several[0]
            raise SuiteError(f"entry {e.name!r}: the TRL reference row runs on one process, but entry {x.name!r} runs on "
                             f"{x.plan.world_size} (trainer.devices x trainer.num_nodes); a multi-device suite cannot "
                             f"include it: remove entry {e.name!r}, or run the suite on one device")


def _plan(resolved: dict, where: str, world: int = 1) -> Plan:
    h, steps = resolved["model"]["init_args"], resolved["trainer"]["max_steps"]
    try:  # the training loop's own plan (rlpost.plan), so the suite counts as the run will
        p = rollout_plan(resolved["data"]["init_args"]["prompts_per_step"], h["num_generations"],
                         h.get("mini_batch_size"), h.get("micro_batch_size"), h.get("num_iterations", 1), steps)
    except ValueError as err:
        raise SuiteError(f"unequal budgets: {where}: {err}") from None
    return Plan(optimizer_steps=steps, optimizer_steps_per_rollout=p.optimizer_steps_per_rollout,
                completions=steps // p.optimizer_steps_per_rollout * p.completions_per_rollout * world,
                prompts_per_step=p.prompts_per_step, num_generations=p.num_generations, world_size=world)


def parse_config(cfg: dict, where: str) -> dict:
    """Resolve a run config with rlpost's CLI parser (:mod:`rlpost.config`; class defaults filled in)."""
    try:
        return parse_run_config(cfg)
    except SystemExit as err:
        raise SuiteError(f"{where}: the rlpost CLI refused the run config (see the parser's message above)") from err


def import_class(class_path: Any) -> type:
    """The object a dotted ``class_path`` names (ValueError when it is not a dotted path)."""
    if not isinstance(class_path, str) or "." not in class_path:
        raise ValueError("not a dotted import path")
    module, _, name = class_path.rpartition(".")
    return getattr(importlib.import_module(module), name)


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
