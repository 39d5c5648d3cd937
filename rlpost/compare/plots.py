"""The suite's PNG plots (matplotlib, Agg): reward vs step, held-out accuracy vs wall time, memory, phases."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from rlpost.compare.report import COMPONENTS, MiB  # noqa: E402
from rlpost.compare.stats import mean_ci  # noqa: E402

SMOOTH = 5  # moving-average window (steps) of the reward curves


def _colors(names: list[str]) -> dict[str, str]:
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    return {n: cycle[i % len(cycle)] for i, n in enumerate(names)}


def _moving_average(xs: list[float], w: int) -> list[float]:
    out = []
    for i in range(len(xs)):
        window = xs[max(0, i - w + 1) : i + 1]
        out.append(sum(window) / len(window))
    return out


def metric_range(results: dict, key: str) -> tuple[float, float]:
    """The range ``key`` took over every step of every run: a band never reaches beyond what the metric
    can be (a mean of rewards in [0, 1] stays in [0, 1], however wide its interval over 3 seeds)."""
    values = [h[key] for r in results["runs"] for h in r["history"] if key in h]
    return (min(values), max(values)) if values else (float("-inf"), float("inf"))


def reward_vs_step(results: dict, path: Path) -> Path:
    names = [e["name"] for e in results["suite"]["entries"]]
    colors = _colors(names)
    lo, hi = metric_range(results, "train/reward")
    fig, ax = plt.subplots(figsize=(8, 4.8))
    for name in names:
        curves = {}
        for r in results["runs"]:
            if r["entry"] != name:
                continue
            rows = [h for h in r["history"] if "train/reward" in h]
            smooth = _moving_average([h["train/reward"] for h in rows], SMOOTH)
            curves[r["seed"]] = dict(zip((h["step"] for h in rows), smooth))
        if not curves:
            continue
        steps = sorted(set.intersection(*(set(c) for c in curves.values())))
        stats = [mean_ci([c[s] for c in curves.values()]) for s in steps]
        mean = [m.mean for m in stats]
        label = f"{name} (n = {len(curves)} seeds)" if len(curves) > 1 else f"{name} (n = 1: no band)"
        ax.plot(steps, mean, color=colors[name], label=label)
        if len(curves) > 1:
            ax.fill_between(steps, [max(m.mean - m.half_width, lo) for m in stats],
                            [min(m.mean + m.half_width, hi) for m in stats], color=colors[name], alpha=0.2, linewidth=0)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(f"training reward ({SMOOTH}-step moving average)")
    ax.set_title(f"{results['suite']['name']}: training reward, mean and 95% CI band across seeds\n"
                 f"(bands clipped to the range the reward took: [{lo:.2f}, {hi:.2f}])", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def accuracy_vs_wall_time(results: dict, path: Path) -> Path:
    names = [e["name"] for e in results["suite"]["entries"]]
    colors = _colors(names)
    markers = "osD^v<>"
    fig, ax = plt.subplots(figsize=(8, 4.8))
    seeds = results["suite"]["seeds"]
    for name in names:
        for r in sorted((r for r in results["runs"] if r["entry"] == name), key=lambda r: r["seed"]):
            v = r["val_history"]
            if not v:
                continue
            ax.plot([p["wall_s"] for p in v], [p["accuracy_greedy"] for p in v], color=colors[name],
                    marker=markers[seeds.index(r["seed"]) % len(markers)], markersize=4, alpha=0.85,
                    label=f"{name}, seed {r['seed']}")
    ax.set_xlabel("wall time since training start (s; includes held-out evaluations)")
    ax.set_ylabel(f"held-out accuracy (greedy, {results['suite']['budget']['eval_prompts']} prompts)")
    ax.set_title(f"{results['suite']['name']}: held-out accuracy vs wall time (absolute times: noisy host)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=max(1, len(names) // 4 + 1), loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def memory(results: dict, path: Path) -> Path:
    agg = results["aggregate"]
    names = list(agg)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.8))
    x = range(len(names))
    # left: peak process memory = model state + everything else
    state = [(agg[n]["model_state_bytes"]["mean"] or 0) / MiB for n in names]
    peak = [(agg[n]["peak_memory_bytes"]["mean"] or 0) / MiB for n in names]
    rest = [max(p - s, 0.0) for p, s in zip(peak, state)]
    ax1.bar(x, state, label="model state (params + grads + optimizer)", color="#d62728")
    ax1.bar(x, rest, bottom=state, label="rest of the process (interpreter, libraries, activations)", color="#7f7f7f")
    ax1.set_xticks(list(x), names, rotation=20)
    ax1.set_ylabel("peak memory (MiB)")
    ax1.set_title("peak memory per algorithm (mean over seeds)")
    ax1.set_ylim(0, max(peak + [1.0]) * 1.3)  # headroom: the legend sits above the bars, not on them
    ax1.legend(fontsize=8, loc="upper center")
    # right: model state by component
    bottom = [0.0] * len(names)
    palette = plt.get_cmap("tab10")
    for i, (model, comp) in enumerate(COMPONENTS):
        vals = [(agg[n]["memory_breakdown"][f"{model}.{comp}"]["mean"] or 0) / MiB for n in names]
        if not any(vals):
            continue
        ax2.bar(x, vals, bottom=bottom, label=f"{model} {comp.replace('_', ' ')}", color=palette(i))
        bottom = [b + v for b, v in zip(bottom, vals)]
    ax2.set_xticks(list(x), names, rotation=20)
    ax2.set_ylabel("model state (MiB)")
    ax2.set_title("model state by component")
    ax2.set_ylim(0, max(bottom + [1.0]) * 1.45)
    ax2.legend(fontsize=7, loc="upper center", ncol=2)
    fig.suptitle(f"{results['suite']['name']}: memory ({_measure(results)})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def phases(results: dict, path: Path) -> Path:
    """One stacked bar per entry: seconds per optimizer step in each phase (mean over seeds)."""
    agg = results["aggregate"]
    names = list(agg)
    order = list(dict.fromkeys(p for n in names for p in agg[n]["phase_s_per_step"]))
    palette = plt.get_cmap("tab20")
    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(names) + 3), 4.8))
    bottom = [0.0] * len(names)
    for i, phase in enumerate(order):
        ms = [(agg[n]["phase_s_per_step"].get(phase, {}).get("mean") or 0.0) * 1e3 for n in names]
        ax.bar(range(len(names)), ms, bottom=bottom, label=phase, color=palette(i % 20))
        bottom = [b + v for b, v in zip(bottom, ms)]
    ax.set_xticks(list(range(len(names))), names, rotation=20)
    ax.set_ylabel("milliseconds per optimizer step")
    ax.set_title(f"{results['suite']['name']}: where a step goes (summary.json phases, mean over seeds)")
    ax.set_ylim(0, max(bottom + [1.0]) * 1.05)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _measure(results: dict) -> str:
    return "; ".join(sorted({r["summary"].get("peak_memory_measure", "?") for r in results["runs"]}))


def make_all(results: dict, out_dir: Path) -> list[str]:
    return [str(reward_vs_step(results, out_dir / "reward_vs_step.png")),
            str(accuracy_vs_wall_time(results, out_dir / "accuracy_vs_wall_time.png")),
            str(memory(results, out_dir / "memory.png")), str(phases(results, out_dir / "phases.png"))]
