"""The replay part of a suite's report: the loss-only difference between entries that trained on the
very same samples for their first K rollouts (:mod:`rlpost.replay`).

For each replayed entry and seed, the held-out greedy accuracy at the optimizer step where replay
ends (K rollouts) is compared with the reference entry's (the suite's baseline when it is replayed,
else the generator's entry) of the same seed. Same seed = same samples, so the per-seed difference
carries no sampling noise of the training data; its mean and 95% Student-t interval over seeds is the
loss-only difference. The same paired difference at the end of the run (after on-policy training from
rollout K+1) is shown beside it: there sampling noise is back.
"""

from __future__ import annotations

from rlpost.compare.stats import mean_ci


def _accuracy_at(run: dict, step: int) -> float | None:
    rows = [v for v in run["val_history"] if v["step"] == step]
    return rows[-1]["accuracy_greedy"] if rows else None


def _paired(values: dict[int, float | None], ref: dict[int, float | None]) -> dict:
    diffs = [values[s] - ref[s] for s in sorted(values) if values.get(s) is not None and ref.get(s) is not None]
    m = mean_ci(diffs)
    return {"mean": m.mean if m.n else None, "ci95": m.half_width if m.n >= 2 else None, "n": m.n, "values": diffs}


def analyse(results: dict) -> dict | None:
    """``{"steps", "at_step", "reference", "entries": {name: {accuracy_at_replay_end, diff_at_replay_end,
    accuracy_after, diff_after}}}``, or None when the suite replays nothing."""
    suite = results["suite"]
    replay = suite.get("replay")
    if not replay:
        return None
    spr = suite["budget"].get("optimizer_steps_per_rollout", 1)
    at = replay["steps"] * spr
    ref_name = suite["baseline"] if suite["baseline"] in replay["entries"] else replay["generator"]
    by_entry: dict[str, dict[int, dict]] = {}
    for r in results["runs"]:
        by_entry.setdefault(r["entry"], {})[r["seed"]] = r
    ref = by_entry.get(ref_name, {})
    ref_at = {s: _accuracy_at(r, at) for s, r in ref.items()}
    ref_end = {s: r["summary"]["accuracy_after"] for s, r in ref.items()}
    out = {"steps": replay["steps"], "at_step": at, "reference": ref_name, "entries": {}}
    for name in replay["entries"]:
        runs = by_entry.get(name, {})
        at_k = {s: _accuracy_at(r, at) for s, r in runs.items()}
        end = {s: r["summary"]["accuracy_after"] for s, r in runs.items()}
        known = [v for v in at_k.values() if v is not None]
        out["entries"][name] = {
            "replayed_rollouts": sorted({r["summary"].get("replayed_rollouts", 0) for r in runs.values()}),
            "accuracy_at_replay_end": _ci(known), "diff_at_replay_end": _paired(at_k, ref_at),
            "accuracy_after": _ci(list(end.values())), "diff_after": _paired(end, ref_end),
        }
    return out


def _ci(values: list[float]) -> dict:
    m = mean_ci(values)
    return {"mean": m.mean if m.n else None, "ci95": m.half_width if m.n >= 2 else None, "n": m.n, "values": values}


def _fmt(stat: dict, signed: bool = False) -> str:
    if not stat["n"]:
        return "n/a"
    m = f"{stat['mean']:+.3f}" if signed else f"{stat['mean']:.3f}"
    m = m if stat["ci95"] is None else f"{m} ± {stat['ci95']:.3f}"
    return m + (" (per seed " + ", ".join(f"{v:+.3f}" for v in stat["values"]) + ")" if signed else "")


def render(results: dict) -> list[str]:
    """The report's replay section (Markdown lines); empty when the suite replays nothing."""
    a = results.get("replay")
    if not a:
        return []
    k, at, ref = a["steps"], a["at_step"], a["reference"]
    lines = ["## Replay: the loss alone", "",
             f"Every replayed entry (marked *replay* in the table above) trained its first {k} rollouts on the very same "
             f"samples: one generator per seed rolled out the starting policy (never updated) and saved each rollout; "
             f"each entry then trained its own loss on them, with the starting policy's log-probs as the old "
             f"log-probs (importance ratio and clipping to the sampling policy), and generated its own rollouts from "
             f"rollout {k + 1} on. Δ is the entry minus `{ref}` on the same seed, so the same samples: its interval is "
             "over seeds and holds no sampling noise of the training data up to the end of replay. "
             "Replay replaces an entry's rollout hook, so sampling-side choices (DAPO's dynamic sampling and "
             "overlong reward shaping) are off during replay; the training reward of the replayed steps is the "
             "shared samples' and equal for every replayed entry.", "",
             f"| entry | replayed rollouts | accuracy at step {at} (end of replay) | Δ vs {ref} at step {at} (same samples) "
             f"| accuracy after | Δ vs {ref} after |", "|---|---|---|---|---|---|"]
    for name, e in a["entries"].items():
        lines.append(f"| {name} | {'/'.join(map(str, e['replayed_rollouts']))} | {_fmt(e['accuracy_at_replay_end'])} "
                     f"| {'0 (reference)' if name == ref else _fmt(e['diff_at_replay_end'], True)} "
                     f"| {_fmt(e['accuracy_after'])} | {'0 (reference)' if name == ref else _fmt(e['diff_after'], True)} |")
    lines += ["", "Mean ± half-width of the 95% Student-t interval over seeds; Δ: paired by seed.", ""]
    return lines
