"""Aggregate a suite's runs and write ``report.md``: one table, then a verdict computed from the numbers.

Every figure is a mean over seeds with the half-width of its 95% Student-t interval (± h; n seeds).
Timing ratios come from runs of the same seed taken back to back (the runner interleaves
A B C A B C), so the machine's drift between time windows mostly cancels.
"""

from __future__ import annotations

import math
from pathlib import Path

from rlpost.compare import replay_report
from rlpost.compare.stats import MeanCI, mean_ci, reward_auc, welch_diff_ci

MiB = 2**20
COMPONENTS = [("policy", "parameters"), ("policy", "gradients"), ("policy", "optimizer_state"),
              ("reference", "parameters"), ("critic", "parameters"), ("critic", "gradients"),
              ("critic", "optimizer_state")]


def _ci(values) -> dict:
    m = mean_ci(values)
    return {"mean": _num(m.mean), "ci95": _num(m.half_width), "n": m.n, "values": [float(v) for v in values]}


def _num(x: float) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def _m(stat: dict) -> MeanCI:
    return MeanCI(math.nan if stat["mean"] is None else stat["mean"],
                  math.nan if stat["ci95"] is None else stat["ci95"], stat["n"])


def seconds_per_step(summary: dict) -> float:
    """Rollout + update time per optimizer step (evaluation and start-up excluded)."""
    return (summary["generation_s"] + summary["training_s"]) / max(summary["steps"], 1)


def phase_seconds_per_step(summaries: list[dict]) -> dict[str, dict]:
    """Each phase's seconds per optimizer step (``summary["phases"]``), mean over the runs, in the order of
    :data:`~rlpost.run_record.PHASE_ORDER` (then any other phase a loop named); phases that took no time are left out."""
    from rlpost.run_record import PHASE_ORDER

    names = [p for p in PHASE_ORDER if any(p in x["phases"] for x in summaries)]
    names += sorted({p for x in summaries for p in x["phases"]} - set(names))
    per_step = {p: [x["phases"].get(p, {"s": 0.0})["s"] / max(x["steps"], 1) for x in summaries] for p in names}
    return {p: _ci(v) for p, v in per_step.items() if any(v)}


def run_reward_auc(record: dict) -> float:
    rows = [h for h in record["history"] if "train/reward" in h]
    return reward_auc([h["step"] for h in rows], [h["train/reward"] for h in rows])


def back_to_back(a: dict, b: dict, entries_per_seed: int) -> bool:
    """Both runs were taken in the same invocation within one seed's block of the interleaved order."""
    return a["session"] == b["session"] and abs(a["order"] - b["order"]) < entries_per_seed


def aggregate(results: dict) -> dict:
    """Per entry: accuracy, gain, reward AUC, memory, timing, ratios to the baseline, budget."""
    suite = results["suite"]
    runs = results["runs"]
    n_entries = len(suite["entries"])
    base_name = suite["baseline"]
    base = {r["seed"]: r for r in runs if r["entry"] == base_name}
    out = {}
    for e in suite["entries"]:
        rs = sorted((r for r in runs if r["entry"] == e["name"]), key=lambda r: r["seed"])
        if not rs:
            continue
        s = [r["summary"] for r in rs]
        pairs = [(r, base[r["seed"]]) for r in rs if r["seed"] in base]
        breakdown = {f"{m}.{c}": _ci([x["memory_breakdown"][m][c] for x in s]) for m, c in COMPONENTS}
        out[e["name"]] = {
            "algorithm": e["algorithm"],
            "seeds": [r["seed"] for r in rs],
            "accuracy_before": _ci([x["accuracy_before"] for x in s]),
            "accuracy_after": _ci([x["accuracy_after"] for x in s]),
            "accuracy_gain": _ci([x["accuracy_after"] - x["accuracy_before"] for x in s]),
            "reward_auc": _ci([run_reward_auc(r) for r in rs]),
            "peak_memory_bytes": _ci([x["peak_memory_bytes"] for x in s]),
            "memory_breakdown": breakdown,
            "model_state_bytes": _ci([x["memory_breakdown"]["accounted_bytes"] for x in s]),
            "seconds_per_step": _ci([seconds_per_step(x) for x in s]),
            "completion_tokens_per_s": _ci([x["completion_tokens_per_s"] for x in s]),
            "wall_s": _ci([r["wall_s"] for r in rs]),
            "ratio_seconds_per_step": _ci([seconds_per_step(r["summary"]) / seconds_per_step(b["summary"]) for r, b in pairs]),
            "ratio_tokens_per_s": _ci([r["summary"]["completion_tokens_per_s"] / b["summary"]["completion_tokens_per_s"]
                                       for r, b in pairs]),
            "ratio_pairs_back_to_back": sum(back_to_back(r, b, n_entries) for r, b in pairs),
            "ratio_pairs": len(pairs),
            "completions_generated": sorted({r["budget"]["completions_generated"] for r in rs}),
            "optimizer_steps": sorted({r["budget"]["optimizer_steps"] for r in rs}),
            "eval_prompts": sorted({r["budget"]["eval_prompts"] for r in rs}),
            "budget_ok": all(r["budget"]["ok"] for r in rs),
            "replayed_rollouts": min(x.get("replayed_rollouts", 0) for x in s),
            "phase_s_per_step": phase_seconds_per_step(s),
        }
    return out


# ----------------------------------------------------------------------------- the report


def _mib(stat: dict) -> str:
    m = _m(stat)
    return MeanCI(m.mean / MiB, m.half_width / MiB, m.n).fmt(1) if m.n else "n/a"


def _breakdown(a: dict) -> str:
    b = {k: (v["mean"] or 0.0) / MiB for k, v in a["memory_breakdown"].items()}
    parts = [f"policy {b['policy.parameters']:.1f}+{b['policy.gradients']:.1f}+{b['policy.optimizer_state']:.1f}"]
    parts.append(f"ref {b['reference.parameters']:.1f}")
    critic = b["critic.parameters"] + b["critic.gradients"] + b["critic.optimizer_state"]
    parts.append(f"critic {b['critic.parameters']:.1f}+{b['critic.gradients']:.1f}+{b['critic.optimizer_state']:.1f}"
                 if critic else "critic 0")
    return " · ".join(parts) + f" = {(a['model_state_bytes']['mean'] or 0) / MiB:.1f}"


def _ratio(stat: dict, is_base: bool) -> str:
    return "1 (baseline)" if is_base else _m(stat).fmt(2) + "×"


def table(results: dict, agg: dict) -> str:
    base = results["suite"]["baseline"]
    head = ("| entry | algorithm | accuracy after | accuracy gain | reward AUC | peak memory (MiB) "
            "| model state (MiB): params+grads+optimizer | s/step | s/step ÷ " + base + " | tokens/s | tokens/s ÷ " + base
            + " | completions · optimizer steps |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for name, a in agg.items():
        is_base = name == base
        budget = f"{'/'.join(map(str, a['completions_generated']))} · {'/'.join(map(str, a['optimizer_steps']))}"
        if a.get("replayed_rollouts"):
            budget += f" (first {a['replayed_rollouts']} rollouts: *replay*)"
        if not a["budget_ok"]:
            budget += " **(mismatch)**"
        lines.append(
            f"| {name} | {a['algorithm']} | {_m(a['accuracy_after']).fmt(3)} | {_m(a['accuracy_gain']).fmt(3, signed=True)} "
            f"| {_m(a['reward_auc']).fmt(3)} | {_mib(a['peak_memory_bytes'])} | {_breakdown(a)} "
            f"| {_m(a['seconds_per_step']).fmt(3)} | {_ratio(a['ratio_seconds_per_step'], is_base)} "
            f"| {_m(a['completion_tokens_per_s']).fmt(0)} | {_ratio(a['ratio_tokens_per_s'], is_base)} | {budget} |"
        )
    return "\n".join(lines)


def phase_table(agg: dict) -> str:
    """Milliseconds per optimizer step in each phase, per entry (mean over seeds); the plot stacks them."""
    names = list(dict.fromkeys(p for a in agg.values() for p in a["phase_s_per_step"]))
    lines = ["| entry | " + " | ".join(names) + " | sum |", "|---|" + "---:|" * (len(names) + 1)]
    for name, a in agg.items():
        ms = [(a["phase_s_per_step"][p]["mean"] or 0.0) * 1e3 if p in a["phase_s_per_step"] else None for p in names]
        lines.append(f"| {name} | " + " | ".join("" if v is None else f"{v:.1f}" for v in ms)
                     + f" | {sum(v or 0.0 for v in ms):.1f} |")
    return "\n".join(lines)


def verdict(results: dict, agg: dict) -> list[str]:
    """Short statements, each computed from the aggregated numbers."""
    return [*_budget_and_learning(results, agg), *_memory_and_speed(results, agg), *_trl_verdict(results, agg)]


def _budget_and_learning(results: dict, agg: dict) -> list[str]:
    runs, b = results["runs"], results["suite"]["budget"]
    out = []
    bad = [f"{r['entry']} seed {r['seed']} ({'; '.join(r['budget']['problems'])})" for r in runs if not r["budget"]["ok"]]
    if bad:
        out.append("**Budgets differ**: " + "; ".join(bad) + ". Comparisons involving these runs are not fair.")
    else:
        out.append(f"Equal budgets, checked on every run's summary: each of the {len(runs)} runs took {b['max_steps']} "
                   f"optimizer steps on {b['completions']} generated completions ({b['prompts_per_step']} prompts × "
                   f"{b['num_generations']} per step) and was evaluated on {b['eval_prompts']} held-out prompts.")
    # learning
    improved, flat = [], []
    for name, a in agg.items():
        g = _m(a["accuracy_gain"])
        (improved if g.n >= 2 and g.mean - g.half_width > 0 else flat).append(f"{name} ({g.fmt(3, signed=True)})")
    if improved:
        out.append("Held-out accuracy rose, with the 95% interval above zero, for " + ", ".join(improved) + ".")
    if flat:
        out.append("No gain distinguishable from zero at this number of seeds for " + ", ".join(flat) + ".")
    # ranking by final accuracy, Welch intervals against the best
    by_acc = sorted(agg, key=lambda n: -(agg[n]["accuracy_after"]["mean"] or -1))
    best = by_acc[0]
    for other in by_acc[1:]:
        d = welch_diff_ci(agg[best]["accuracy_after"]["values"], agg[other]["accuracy_after"]["values"])
        if d.n >= 2 and d.mean - d.half_width > 0:
            out.append(f"{best} ends more accurate than {other}: {d.fmt(3, signed=True)} (Welch 95% interval).")
        else:
            out.append(f"{best} and {other} end at indistinguishable accuracy: difference {d.fmt(3, signed=True)} "
                       f"(Welch 95% interval includes 0 with {d.n} seeds).")
    return out


def _memory_and_speed(results: dict, agg: dict) -> list[str]:
    base = results["suite"]["baseline"]
    out = []
    ref = agg.get(base)
    if ref:
        for name, a in agg.items():
            if name == base:
                continue
            dm = ((a["model_state_bytes"]["mean"] or 0) - (ref["model_state_bytes"]["mean"] or 0)) / MiB
            dp = ((a["peak_memory_bytes"]["mean"] or 0) - (ref["peak_memory_bytes"]["mean"] or 0)) / MiB
            critic = sum((a["memory_breakdown"][f"critic.{c}"]["mean"] or 0) for c in ("parameters", "gradients", "optimizer_state"))
            why = f"; its critic holds {critic / MiB:.1f} MiB (parameters, gradients, optimizer state)" if critic else ""
            out.append(f"Memory, {name} vs {base}: model state {dm:+.1f} MiB{why}; peak process memory {dp:+.1f} MiB "
                       f"({_pct(dp, ref['peak_memory_bytes']['mean'] / MiB)}).")
        share = (ref["model_state_bytes"]["mean"] or 0) / max(ref["peak_memory_bytes"]["mean"] or 1, 1)
        out.append(f"On this task model state is {share:.1%} of {base}'s peak process memory: the figure is dominated "
                   f"by the interpreter, libraries and activations, so differences in model state barely move it.")
    # speed
    for name, a in agg.items():
        if name == base or not a["ratio_pairs"]:
            continue
        r, t = _m(a["ratio_seconds_per_step"]), _m(a["ratio_tokens_per_s"])
        out.append(f"Speed, {name} vs {base} (same-seed pairs, {a['ratio_pairs_back_to_back']}/{a['ratio_pairs']} back to "
                   f"back): {r.fmt(2)}× the seconds per step, {t.fmt(2)}× the completion tokens/s.")
    return out


def _trl_verdict(results: dict, agg: dict) -> list[str]:
    suite, runs = results["suite"], results["runs"]
    out = []
    for e in suite["entries"]:
        if e.get("trl_reference") and e["name"] in agg and e["trl_reference"] in agg:
            mine, trl = agg[e["trl_reference"]], agg[e["name"]]
            inv = _inverse_ratios(runs, e["trl_reference"], e["name"], len(suite["entries"]))
            d = welch_diff_ci(mine["accuracy_gain"]["values"], trl["accuracy_gain"]["values"])
            same = "indistinguishable" if not (d.n >= 2 and abs(d.mean) > d.half_width) else "different"
            out.append(f"rlpost {e['trl_reference']} / TRL ({e['name']}), same seeds, back to back: s/step ratio "
                       f"{inv['seconds_per_step'].fmt(2)}, tokens/s ratio {inv['tokens_per_s'].fmt(2)}; accuracy gain "
                       f"difference {d.fmt(3, signed=True)} ({same} at {d.n} seeds).")
    return out


def _inverse_ratios(runs: list[dict], mine: str, trl: str, n_entries: int) -> dict[str, MeanCI]:
    a = {r["seed"]: r for r in runs if r["entry"] == mine}
    b = {r["seed"]: r for r in runs if r["entry"] == trl}
    seeds = sorted(set(a) & set(b))
    return {
        "seconds_per_step": mean_ci([seconds_per_step(a[s]["summary"]) / seconds_per_step(b[s]["summary"]) for s in seeds]),
        "tokens_per_s": mean_ci([a[s]["summary"]["completion_tokens_per_s"] / b[s]["summary"]["completion_tokens_per_s"]
                                 for s in seeds]),
    }


def _pct(delta: float, base: float) -> str:
    return f"{delta / base:+.1%}" if base else "n/a"


def render(results: dict, agg: dict, plots: list[str], command: str) -> str:
    suite = results["suite"]
    b, base, seeds = suite["budget"], suite["baseline"], suite["seeds"]
    lines = [
        f"# Comparison suite `{suite['name']}`",
        "",
        f"Made by `{command}` on {results['generated_at']} ({results['host']['summary']}).",
        "",
        f"Task `{suite['task']['class_path']}` {suite['task']['init_args']}; budget per run: {b['max_steps']} optimizer "
        f"steps, {b['prompts_per_step']} prompts × {b['num_generations']} completions per step ({b['completions']} "
        f"completions), {b['eval_prompts']} held-out prompts"
        + (f", completions of at most {b['max_completion_length']} tokens" if b.get("max_completion_length") else "")
        + f"; seeds {seeds}.",
        "",
        "## Results",
        "",
        table(results, agg),
        "",
        f"Mean ± half-width of the 95% Student-t interval over {len(seeds)} seeds. *Accuracy*: greedy, held-out prompts, "
        "by the same evaluator for every entry. *Reward AUC*: mean training reward over the steps (trapezoid ÷ steps). "
        "*Peak memory*: " + _measure(results) + "; *model state*: bytes of parameters + gradients + optimizer state "
        "(policy · reference · critic), after the first optimizer step. *s/step*: rollout + update time per optimizer "
        "step (evaluation and start-up excluded). *tokens/s*: completion tokens generated per second of the rollout "
        f"phase. *÷ {base}*: ratio to the {base} run of the same seed taken back to back (see Timing).",
        "",
        "## Verdict",
        "",
        *[f"- {v}" for v in verdict(results, agg)],
        "",
        "## Timing on a noisy machine",
        "",
        "This host's speed drifts by ±15-25% between time windows, so absolute seconds from runs taken at different "
        "times are not comparable. The suite runs the entries interleaved by seed (" +
        " ".join(e["name"] for e in suite["entries"]) + ", then again for the next seed) and reports, beside the "
        f"absolute figures, each entry's s/step and tokens/s divided by those of the {base} run of the same seed, "
        "taken back to back. The ratio's interval is over seeds.",
        "",
        "Where a step goes: milliseconds per optimizer step in each phase (`phases` of each run's summary.json, "
        "mean over seeds; *other*: the rest of the loop, data loading and callbacks included; the TRL row's phases "
        "are taken by wrapping GRPOTrainer's methods, see its section below). The plot `phases.png` stacks them.",
        "",
        phase_table(agg),
        "",
        "| entry | seed | order | session | wall s | s/step | tokens/s |",
        "|---|---|---|---|---|---|---|",
        *[f"| {r['entry']} | {r['seed']} | {r['order']} | {r['session']} | {r['wall_s']:.0f} | "
          f"{seconds_per_step(r['summary']):.3f} | {r['summary']['completion_tokens_per_s']:.0f} |"
          for r in sorted(results["runs"], key=lambda r: (r["session"], r["order"]))],
        "",
    ]
    lines += replay_report.render(results)
    lines += _trl_section(results)
    lines += ["## What the suite set in each entry", ""]
    for e in suite["entries"]:
        src = e["config"] or f"trl_reference: {e['trl_reference']}"
        lines.append(f"- **{e['name']}** ({e['algorithm']}, `{src}`"
                     + (f", overrides {e['overrides']}" if e["overrides"] else "") + "): " + "; ".join(e["changes"]))
    lines += ["", "## Plots", ""] + [f"![{Path(p).stem}]({Path(p).name})" for p in plots] + [""]
    return "\n".join(lines)


def _measure(results: dict) -> str:
    measures = sorted({r["summary"].get("peak_memory_measure", "?") for r in results["runs"]})
    return "; ".join(measures)


def _trl_section(results: dict) -> list[str]:
    from rlpost.compare.trl_reference import EXPLICIT_FIELDS, MIRRORED, differences

    out = []
    for e in results["suite"]["entries"]:
        if not e.get("trl_reference"):
            continue
        spec = e["run_config"]
        mirrored = set(MIRRORED.values()) | {"learning_rate", "weight_decay", "adam_beta1", "adam_beta2", "adam_epsilon",
                                             "per_device_train_batch_size", "max_steps"}
        out += [f"## TRL reference `{e['name']}`", "",
                f"TRL {results['host'].get('trl', '?')} `GRPOTrainer` on the same model (`{spec['model_name_or_path']}`) "
                f"and tokenizer, the task's training prompts and its scorers as TRL reward functions, mirroring entry "
                f"`{e['trl_reference']}`. Every GRPOConfig field below is set explicitly; those whose TRL default differs:",
                "", "| GRPOConfig field | TRL default | set to | why |", "|---|---|---|---|"]
        for k, default, v in differences(spec):
            why = EXPLICIT_FIELDS[k][1] if k in EXPLICIT_FIELDS else (
                f"as entry `{e['trl_reference']}`" if k in mirrored else "")
            out.append(f"| `{k}` | {default} | {v} | {why} |")
        same = [k for k in spec["grpo_config"] if k not in {d[0] for d in differences(spec)}]
        out += ["", "Set explicitly to the value TRL would also use: " + ", ".join(f"`{k}`" for k in same) + ".", "",
                "Measured as for rlpost runs: the same evaluator before and after, peak RSS reset after the first "
                "evaluation. *Generation time* is the time inside `GRPOTrainer._generate_and_score_completions` "
                "(generation, decoding, rewards, reference log-probs, advantages: the counterpart of rlpost's rollout "
                "phases); `phases` in results.json splits it into the `model.generate` calls (`generation`), the reward "
                "functions (`scoring`), the reference log-probs (`ref_logprobs`) and the rest (`rollout_other`), and the "
                "update into `compute_loss` (`forward`), `backward`, clipping and `optimizer.step` (`optimizer`) and "
                "`Trainer.log` (`logging`). Remaining differences: "
                "each trainer draws its own shuffled prompt order from the seed (TRL's `RepeatSampler`, rlpost's "
                "resumable sampler), so the same seed does not give the same prompts per step; TRL's process imports "
                "more libraries, which shows in its peak RSS.", ""]
    return out


def write(results: dict, out_dir: Path, plots: list[str], command: str) -> Path:
    agg = results["aggregate"]
    path = out_dir / "report.md"
    path.write_text(render(results, agg, plots, command))
    return path
