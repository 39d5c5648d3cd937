"""The JSON Schema of ``results.json`` and a validator for the subset of JSON Schema it uses.

``RESULTS_SCHEMA`` is a standard JSON Schema (draft 2020-12) document: external tools can check a
results file with it. :func:`validate` implements the keywords used here (type, properties,
required, additionalProperties, items, enum, minimum, minItems), so no extra dependency is needed.
"""

from __future__ import annotations

from typing import Any

NUM = {"type": "number"}
INT0 = {"type": "integer", "minimum": 0}
STR = {"type": "string"}
CI = {"type": "object", "required": ["mean", "ci95", "n", "values"],
      "properties": {"mean": {"type": ["number", "null"]}, "ci95": {"type": ["number", "null"]}, "n": INT0,
                     "values": {"type": "array", "items": NUM}}}
STATE = {"type": "object", "required": ["parameters", "gradients", "optimizer_state"],
         "properties": {"parameters": INT0, "gradients": INT0, "optimizer_state": INT0}}
SUMMARY = {
    "type": "object",
    "required": ["algorithm", "seed", "steps", "accuracy_before", "accuracy_after", "eval_prompts", "peak_memory_bytes",
                 "peak_memory_measure", "memory_breakdown", "generation_s", "training_s", "completion_tokens_per_s",
                 "completions_generated", "phases", "plan", "hparams"],
    "properties": {
        "algorithm": STR, "seed": {"type": ["integer", "null"]}, "steps": INT0,
        "accuracy_before": {"type": "number", "minimum": 0}, "accuracy_after": {"type": "number", "minimum": 0},
        "eval_prompts": INT0, "peak_memory_bytes": INT0, "peak_memory_measure": STR,
        "memory_breakdown": {"type": "object", "required": ["policy", "reference", "critic", "accounted_bytes"],
                             "properties": {"policy": STATE, "reference": STATE, "critic": STATE, "accounted_bytes": INT0}},
        "generation_s": NUM, "training_s": NUM, "completion_tokens_per_s": NUM, "completions_generated": INT0,
        "phases": {"type": "object", "additionalProperties": {
            "type": "object", "required": ["s"],
            "properties": {"s": NUM, "peak_memory_bytes": {"type": ["integer", "null"], "minimum": 0}}}},
        "plan": {"type": "object"}, "hparams": {"type": "object"},
    },
}
HISTORY_ROW = {"type": "object", "required": ["step", "wall_s", "train/reward"],
               "properties": {"step": INT0, "wall_s": NUM, "train/reward": NUM}}
VAL_ROW = {"type": "object", "required": ["step", "wall_s", "accuracy_greedy"],
           "properties": {"step": INT0, "wall_s": NUM, "accuracy_greedy": NUM,
                          "accuracy_sampled": {"type": ["number", "null"]}}}
RUN = {
    "type": "object",
    "required": ["entry", "algorithm", "kind", "seed", "dir", "session", "order", "started_at", "finished_at", "wall_s",
                 "budget", "summary", "history", "val_history"],
    "properties": {
        "entry": STR, "algorithm": STR, "kind": {"enum": ["rlpost", "trl"]}, "seed": {"type": "integer"}, "dir": STR,
        "session": STR, "order": {"type": "integer", "minimum": 1}, "started_at": STR, "finished_at": STR, "wall_s": NUM,
        "budget": {"type": "object", "required": ["optimizer_steps", "completions_generated", "eval_prompts", "ok", "problems"],
                   "properties": {"optimizer_steps": INT0, "completions_generated": INT0, "eval_prompts": INT0,
                                  "ok": {"type": "boolean"}, "problems": {"type": "array", "items": STR}}},
        "summary": SUMMARY,
        "history": {"type": "array", "items": HISTORY_ROW, "minItems": 1},
        "val_history": {"type": "array", "items": VAL_ROW},
    },
}
ENTRY = {
    "type": "object",
    "required": ["name", "algorithm", "kind", "config", "overrides", "trl_reference", "changes", "plan", "run_config"],
    "properties": {
        "name": STR, "algorithm": STR, "kind": {"enum": ["rlpost", "trl"]}, "config": {"type": ["string", "null"]},
        "overrides": {"type": "object"}, "trl_reference": {"type": ["string", "null"]},
        "changes": {"type": "array", "items": STR},
        "plan": {"type": "object", "required": ["optimizer_steps", "completions"],
                 "properties": {"optimizer_steps": INT0, "completions": INT0}},
        "run_config": {"type": "object"},
    },
}
AGGREGATE = {
    "type": "object",
    "required": ["algorithm", "seeds", "accuracy_after", "accuracy_gain", "reward_auc", "peak_memory_bytes",
                 "memory_breakdown", "model_state_bytes", "seconds_per_step", "completion_tokens_per_s",
                 "ratio_seconds_per_step", "ratio_tokens_per_s", "ratio_pairs", "ratio_pairs_back_to_back",
                 "completions_generated", "optimizer_steps", "budget_ok", "phase_s_per_step"],
    "properties": {
        "algorithm": STR, "seeds": {"type": "array", "items": {"type": "integer"}},
        "accuracy_after": CI, "accuracy_gain": CI, "reward_auc": CI, "peak_memory_bytes": CI,
        "memory_breakdown": {"type": "object", "additionalProperties": CI}, "model_state_bytes": CI,
        "seconds_per_step": CI, "completion_tokens_per_s": CI, "ratio_seconds_per_step": CI, "ratio_tokens_per_s": CI,
        "ratio_pairs": INT0, "ratio_pairs_back_to_back": INT0,
        "completions_generated": {"type": "array", "items": INT0}, "optimizer_steps": {"type": "array", "items": INT0},
        "budget_ok": {"type": "boolean"}, "replayed_rollouts": INT0,
        "phase_s_per_step": {"type": "object", "additionalProperties": CI},
    },
}
REPLAY = {"type": "object", "required": ["steps", "at_step", "reference", "entries"],
          "properties": {"steps": INT0, "at_step": INT0, "reference": STR, "entries": {"type": "object"}}}
RESULTS_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "rlpost comparison suite results",
    "type": "object",
    "required": ["schema_version", "generated_at", "host", "suite", "runs", "aggregate"],
    "properties": {
        "schema_version": {"enum": [1]},
        "generated_at": STR,
        "host": {"type": "object", "required": ["summary"], "properties": {"summary": STR}},
        "suite": {
            "type": "object",
            "required": ["name", "path", "task", "budget", "seeds", "baseline", "entries"],
            "properties": {
                "name": STR, "path": STR,
                "task": {"type": "object", "required": ["class_path", "init_args"],
                         "properties": {"class_path": STR, "init_args": {"type": "object"}}},
                "budget": {"type": "object",
                           "required": ["prompts_per_step", "num_generations", "max_steps", "eval_prompts", "completions"],
                           "properties": {k: {"type": "integer", "minimum": 1} for k in
                                          ("prompts_per_step", "num_generations", "max_steps", "eval_prompts", "completions")}},
                "seeds": {"type": "array", "items": {"type": "integer"}, "minItems": 1},
                "baseline": STR,
                "entries": {"type": "array", "items": ENTRY, "minItems": 1},
                "replay": {"type": ["object", "null"]},
            },
        },
        "replay": REPLAY,
        "runs": {"type": "array", "items": RUN},
        "aggregate": {"type": "object", "additionalProperties": AGGREGATE},
    },
}

_TYPES = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
}


class SchemaError(ValueError):
    """The instance does not match the schema; the message gives the JSON path."""


def validate(instance: Any, schema: dict = RESULTS_SCHEMA, path: str = "$") -> None:
    """Raise :class:`SchemaError` at the first violation, naming its path (e.g. ``$.runs[2].summary.steps``)."""
    if "type" in schema:
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        if not any(_TYPES[t](instance) for t in types):
            raise SchemaError(f"{path}: expected {' or '.join(types)}, got {type(instance).__name__} {instance!r:.80}")
    if "enum" in schema and instance not in schema["enum"]:
        raise SchemaError(f"{path}: {instance!r} is not one of {schema['enum']}")
    if "minimum" in schema and _TYPES["number"](instance) and instance < schema["minimum"]:
        raise SchemaError(f"{path}: {instance} < minimum {schema['minimum']}")
    if isinstance(instance, dict):
        for key in schema.get("required", []):
            if key not in instance:
                raise SchemaError(f"{path}: missing required key {key!r}")
        props = schema.get("properties", {})
        for key, value in instance.items():
            if key in props:
                validate(value, props[key], f"{path}.{key}")
            elif isinstance(schema.get("additionalProperties"), dict):
                validate(value, schema["additionalProperties"], f"{path}.{key}")
            elif schema.get("additionalProperties") is False:
                raise SchemaError(f"{path}: unexpected key {key!r}")
    if isinstance(instance, list):
        if len(instance) < schema.get("minItems", 0):
            raise SchemaError(f"{path}: {len(instance)} items < minItems {schema['minItems']}")
        if "items" in schema:
            for i, item in enumerate(instance):
                validate(item, schema["items"], f"{path}[{i}]")
