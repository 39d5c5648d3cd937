"""``rlpost compare <suite.yaml>``: several algorithms x seeds on one task with one budget.

Writes into the suite's output directory ``results.json`` (every run's summary and per-step
curves, validated against :data:`rlpost.compare.schema.RESULTS_SCHEMA`), ``report.md`` and PNG plots.
See :mod:`rlpost.compare.suite` for the suite file and :mod:`rlpost.compare.runner` for resuming.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path

from rlpost.compare.resolve import resolve_suite
from rlpost.compare.suite import Suite, SuiteError, load_suite

__all__ = ["SuiteError", "build_results", "load_suite", "main", "resolve_suite"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rlpost compare", description=__doc__.split("\n")[0])
    p.add_argument("suite", help="suite YAML (e.g. comparisons/arith.yaml)")
    p.add_argument("--output-dir", help="override the suite's output_dir")
    p.add_argument("--dry-run", action="store_true", help="check the suite and print the plan; run nothing")
    p.add_argument("--report-only", action="store_true", help="rebuild results.json, report.md and plots from finished runs")
    return p


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    command = "rlpost compare " + " ".join(argv)
    try:
        suite = resolve_suite(load_suite(args.suite, args.output_dir))
    except SuiteError as err:
        print(f"rlpost compare: refused: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    _print_plan(suite)
    if args.dry_run:
        return
    from rlpost.compare import runner

    load_start = _loadavg()
    if args.report_only:
        runs = runner.plan_runs(suite)
        missing = [r.label for r in runs if not runner.is_done(r)]
        if missing:
            print(f"rlpost compare: --report-only, but these runs are not finished: {missing}", file=sys.stderr)
            raise SystemExit(1)
    else:
        runs, failed = runner.execute(suite)
        if failed:
            print(f"rlpost compare: {len(failed)} of {len(runs)} runs failed ({', '.join(r.label for r in failed)}); "
                  f"their logs are in their run directories. Run `{command}` again to retry them "
                  "(finished runs are skipped).", file=sys.stderr)
            raise SystemExit(1)
    results = build_results(suite, runs, load_start)
    paths = write_outputs(results, suite.output_dir, command)
    for p in paths:
        print(f"[compare] wrote {p}")
    bad = [f"{r['entry']} seed {r['seed']}: {'; '.join(r['budget']['problems'])}" for r in results["runs"] if not r["budget"]["ok"]]
    if bad:
        print("rlpost compare: runs that did not consume the suite's budget:\n  " + "\n  ".join(bad), file=sys.stderr)
        raise SystemExit(1)


def build_results(suite: Suite, runs, load_start: tuple | None = None) -> dict:
    """The ``results.json`` document (aggregate included) from finished runs."""
    from rlpost.compare import replay_report, report, runner

    results = {
        "schema_version": 1,
        "generated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "host": _host(load_start),
        "suite": suite_dict(suite),
        "runs": runner.collect(suite, runs),
    }
    results["aggregate"] = report.aggregate(results)
    replay = replay_report.analyse(results)
    if replay is not None:
        results["replay"] = replay
    return results


def write_outputs(results: dict, out_dir: Path, command: str) -> list[Path]:
    from rlpost.compare import plots, report
    from rlpost.compare.schema import validate

    validate(results)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "results.json"
    path.write_text(json.dumps(results, indent=1, default=str))
    pngs = plots.make_all(results, out_dir)
    md = report.write(results, out_dir, pngs, command)
    return [path, md, *map(Path, pngs)]


def suite_dict(suite: Suite) -> dict:
    b = suite.budget
    return {
        "name": suite.name, "path": str(suite.path), "description": suite.description, "output_dir": str(suite.output_dir),
        "task": suite.task,
        "budget": {**{k: getattr(b, k) for k in b.__dataclass_fields__}, "completions": b.completions},
        "seeds": suite.seeds, "baseline": suite.baseline, "threads": suite.threads, "trainer": suite.trainer,
        "replay": None if suite.replay is None else {"steps": suite.replay.steps, "entries": list(suite.replay.entries),
                                                     "generator": suite.replay.generator,
                                                     "fingerprint": suite.replay.fingerprint()},
        "entries": [{"name": e.name, "algorithm": e.algorithm, "kind": e.kind,
                     "config": str(e.config) if e.config else None, "overrides": e.overrides,
                     "trl_reference": e.trl_reference, "changes": e.changes, "plan": vars(e.plan),
                     "run_config": e.run_config} for e in suite.entries],
    }


def _print_plan(suite: Suite) -> None:
    b = suite.budget
    print(f"[compare] suite {suite.name!r} ({suite.path}): task {suite.task['class_path']}; budget {b.max_steps} optimizer "
          f"steps x {b.prompts_per_step} prompts x {b.num_generations} completions = {b.completions} completions, "
          f"{b.eval_prompts} held-out prompts; seeds {suite.seeds}")
    if suite.replay is not None:
        print(f"[compare]   replay: the first {suite.replay.steps} rollouts of {', '.join(suite.replay.entries)} are the "
              f"same samples, generated once per seed from the starting policy with {suite.replay.generator!r}'s settings")
    for e in suite.entries:
        src = e.config or f"TRL GRPOTrainer mirroring {e.trl_reference!r}"
        print(f"[compare]   {e.name}: {e.algorithm} ({src}); plan {e.plan.optimizer_steps} steps, "
              f"{e.plan.completions} completions" + (f" over {e.plan.world_size} processes ({e.plan.prompts_per_step} "
                                                     "prompts per step each)" if e.plan.world_size > 1 else ""))


def _loadavg() -> tuple | None:
    try:
        return os.getloadavg()
    except OSError:
        return None


def _host(load_start: tuple | None) -> dict:
    import torch
    import transformers

    try:
        import trl

        trl_version = trl.__version__
    except ImportError:
        trl_version = None
    load_end = _loadavg()
    summary = (f"{os.cpu_count()} CPU cores, {platform.machine()}, torch {torch.__version__}, transformers "
               f"{transformers.__version__}, trl {trl_version}")
    if load_start and load_end:
        summary += f"; 1-min load average {load_start[0]:.1f} at start, {load_end[0]:.1f} at end"
    return {"summary": summary, "cpu_count": os.cpu_count(), "python": platform.python_version(),
            "torch": torch.__version__, "transformers": transformers.__version__, "trl": trl_version,
            "cuda": torch.cuda.is_available(), "load_average_start": load_start, "load_average_end": load_end}
