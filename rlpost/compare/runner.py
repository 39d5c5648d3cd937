"""Run a suite: every (seed, entry) as its own process, interleaved by seed, resumable.

Order: ``for seed in seeds: for entry in entries`` (A B C A B C ...), so that the runs of one seed
are taken back to back and their timings can be compared as ratios on a drifting machine.
Each run lives in ``<out>/runs/<entry>/seed<S>/`` with ``run.json`` (what ran, when, exit status),
``log.txt`` (its output) and the ``summary.json`` the fit writes. A run is done when its
``summary.json`` exists and ``run.json`` records the same run config; anything else is rerun.
A replay suite first generates each seed's shared rollouts into ``<out>/replay/seed<S>/``
(:mod:`rlpost.replay`; ``generator.json`` records what ran), once, before that seed's first replayed entry.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import yaml

from rlpost.compare.suite import Entry, Suite, SuiteError


@dataclass
class Run:
    entry: Entry
    seed: int
    index: int  # 1-based position in the interleaved order
    total: int
    dir: Path

    @property
    def label(self) -> str:
        return f"{self.entry.name} seed {self.seed}"


Launcher = Callable[[list[str], Path, dict], int]


def plan_runs(suite: Suite) -> list[Run]:
    """Interleaved by seed: every entry once for the first seed, then for the next, ..."""
    pairs = [(seed, e) for seed in suite.seeds for e in suite.entries]
    return [Run(e, seed, i + 1, len(pairs), inside(suite, suite.output_dir / "runs" / e.name / f"seed{seed}"))
            for i, (seed, e) in enumerate(pairs)]


def inside(suite: Suite, path: Path) -> Path:
    """``path`` if it stays under the suite's ``output_dir`` once resolved (``..``, absolute parts and
    symbolic links followed), else a SuiteError: the runner writes and deletes only there."""
    root = suite.output_dir.resolve()
    if not path.resolve().is_relative_to(root) or path.resolve() == root:
        raise SuiteError(f"refusing to write or delete {str(path)!r}: it resolves to {str(path.resolve())!r}, outside "
                         f"the suite's output_dir {str(root)!r}")
    return path


def write_run_configs(suite: Suite) -> dict[str, Path]:
    """``<out>/configs/<entry>.yaml`` (rlpost) or ``.json`` (TRL spec): exactly what each run is given."""
    cfg_dir = suite.output_dir / "configs"
    cfg_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    if suite.replay is not None:
        path = cfg_dir / "replay_generator.yaml"
        path.write_text(f"# the rollouts every replayed entry shares: entry {suite.replay.generator!r}'s run config, "
                        f"its starting policy never updated (rlpost.replay)\n" + yaml.safe_dump(suite.replay.run_config, sort_keys=False))
        paths["<replay>"] = path
    for e in suite.entries:
        if e.kind == "rlpost":
            path = inside(suite, cfg_dir / f"{e.name}.yaml")
            header = f"# entry {e.name!r} of suite {suite.name!r}: {e.config} with the suite's task and budget\n"
            path.write_text(header + yaml.safe_dump(e.run_config, sort_keys=False))
        else:
            path = inside(suite, cfg_dir / f"{e.name}.json")
            path.write_text(json.dumps(e.run_config, indent=2))
        paths[e.name] = path
    return paths


def command(run: Run, config_path: Path, threads: int | None = None) -> list[str]:
    """The process that trains one (entry, seed)."""
    if run.entry.kind == "trl":
        return [sys.executable, "-m", "rlpost.compare.trl_reference", "--spec", str(config_path),
                "--seed", str(run.seed), "--out", str(run.dir)]
    return [sys.executable, "-m", "rlpost.cli", "fit", "--config", str(config_path),
            "--seed_everything", str(run.seed), "--trainer.default_root_dir", str(run.dir),
            "--trainer.logger.init_args.save_dir", str(run.dir), *(["--threads", str(threads)] if threads else [])]


def replay_rollouts(suite: Suite, seed: int, config_path: Path, launcher: Launcher, env: dict,
                    log: Callable[[str], None]) -> bool:
    """Generate seed ``seed``'s shared rollouts unless a finished generator with the same fingerprint
    made them; True when they are there."""
    r = suite.replay
    out = suite.output_dir / "replay" / f"seed{seed}"
    meta_path, fingerprint = out / "generator.json", r.fingerprint()
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        if meta.get("status") == "finished" and meta.get("fingerprint") == fingerprint:
            return True
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    cmd = [sys.executable, "-m", "rlpost.replay", "--config", str(config_path), "--seed", str(seed), "--steps",
           str(r.steps), "--out", str(out), "--fingerprint", fingerprint]
    log(f"[compare] replay: generating the {r.steps} shared rollouts of seed {seed} -> {out}")
    meta = {"seed": seed, "steps": r.steps, "fingerprint": fingerprint, "command": cmd, "started_at": _now()}
    rc = launcher(cmd, out / "log.txt", env)
    ok = rc == 0 and (out / "manifest.json").is_file()
    _write_json(meta_path, {**meta, "status": "finished" if ok else "failed", "returncode": rc, "finished_at": _now()})
    if not ok:
        log(f"[compare] replay: generator of seed {seed} FAILED (exit status {rc}); log: {out / 'log.txt'}\n"
            + _tail(out / "log.txt"))
    return ok


def is_done(run: Run) -> bool:
    meta = run.dir / "run.json"
    if not (run.dir / "summary.json").is_file() or not meta.is_file():
        return False
    info = json.loads(meta.read_text())
    return info.get("status") == "finished" and info.get("fingerprint") == run.entry.fingerprint()


def launch(cmd: list[str], log_path: Path, env: dict) -> int:
    """Run ``cmd``, showing its output (progress bar included) and copying it to ``log_path``."""
    out = sys.stdout.buffer
    with open(log_path, "wb") as log:
        if sys.stdout.isatty():  # a pseudo-terminal, so the run draws its live progress bar
            import pty

            master, slave = pty.openpty()
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave, env=env)
            os.close(slave)
            try:
                while True:
                    try:
                        data = os.read(master, 65536)
                    except OSError:  # EIO: the child closed the terminal
                        break
                    if not data:
                        break
                    out.write(data)
                    out.flush()
                    log.write(data)
                    log.flush()
            finally:
                os.close(master)
                if proc.poll() is None:
                    proc.terminate()
            return proc.wait()
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
        try:
            for chunk in iter(lambda: proc.stdout.read1(65536), b""):
                out.write(chunk)
                out.flush()
                log.write(chunk)
                log.flush()
        finally:
            if proc.poll() is None:
                proc.terminate()
        return proc.wait()


def execute(suite: Suite, launcher: Launcher | None = None, log: Callable[[str], None] = print) -> tuple[list[Run], list[Run]]:
    """Run every unfinished (seed, entry) in the interleaved order; return (all runs, failed runs).

    ``launcher(cmd, log_path, env) -> exit status`` runs one training process (default :func:`launch`).
    """
    launcher = launcher or launch
    configs = write_run_configs(suite)
    runs = plan_runs(suite)
    session = datetime.now(timezone.utc).isoformat(timespec="seconds")
    env = dict(os.environ, PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false")
    if suite.threads is not None:
        env.update(OMP_NUM_THREADS=str(suite.threads), MKL_NUM_THREADS=str(suite.threads))
    failed: list[Run] = []
    replayed: dict[int, bool] = {}  # seed -> its shared rollouts are there
    todo = [r for r in runs if not is_done(r)]
    log(f"[compare] suite {suite.name!r}: {len(runs)} runs ({len(suite.entries)} entries x {len(suite.seeds)} seeds), "
        f"{len(runs) - len(todo)} finished earlier, {len(todo)} to run; output {suite.output_dir}")
    for run in runs:
        head = f"[compare] run {run.index}/{run.total}: {run.label} ({run.entry.algorithm})"
        if is_done(run):
            log(f"{head}: finished earlier, skipped")
            continue
        if inside(suite, run.dir).exists():
            shutil.rmtree(run.dir)  # crashed, interrupted or stale: start clean
        if suite.replay is not None and run.entry.name in suite.replay.entries:
            if run.seed not in replayed:
                replayed[run.seed] = replay_rollouts(suite, run.seed, configs["<replay>"], launcher, env, log)
            if not replayed[run.seed]:
                failed.append(run)
                log(f"{head}: not run, its seed's shared rollouts are missing")
                continue
        run.dir.mkdir(parents=True)
        cmd = command(run, configs[run.entry.name], suite.threads)
        log(f"{head} -> {run.dir}")
        meta = {"entry": run.entry.name, "seed": run.seed, "fingerprint": run.entry.fingerprint(), "session": session,
                "order": run.index, "command": cmd, "status": "running", "started_at": _now()}
        _write_json(run.dir / "run.json", meta)
        t0 = time.perf_counter()
        try:
            rc = launcher(cmd, run.dir / "log.txt", env)
        except KeyboardInterrupt:
            _write_json(run.dir / "run.json", {**meta, "status": "interrupted", "finished_at": _now()})
            raise
        wall = time.perf_counter() - t0
        ok = rc == 0 and (run.dir / "summary.json").is_file()
        meta.update(status="finished" if ok else "failed", returncode=rc, finished_at=_now(), wall_s=wall)
        _write_json(run.dir / "run.json", meta)
        if ok:
            s = json.loads((run.dir / "summary.json").read_text())
            log(f"{head}: done in {wall:.0f} s, held-out accuracy {s['accuracy_before']:.3f} -> {s['accuracy_after']:.3f}")
        else:
            failed.append(run)
            log(f"{head}: FAILED (exit status {rc}) after {wall:.0f} s; log: {run.dir / 'log.txt'}\n" + _tail(run.dir / "log.txt"))
    return runs, failed


# ----------------------------------------------------------------------------- collecting


def collect(suite: Suite, runs: list[Run]) -> list[dict]:
    """One record per run: its summary, per-step curves, held-out accuracy over time, budget check."""
    records = []
    for run in runs:
        summary = json.loads((run.dir / "summary.json").read_text())
        meta = json.loads((run.dir / "run.json").read_text())
        history, val = summary.pop("history", []), summary.pop("val_history", [])
        records.append({
            "entry": run.entry.name,
            "algorithm": run.entry.algorithm,
            "kind": run.entry.kind,
            "seed": run.seed,
            "dir": str(run.dir),
            "session": meta["session"],
            "order": meta["order"],
            "started_at": meta["started_at"],
            "finished_at": meta["finished_at"],
            "wall_s": meta["wall_s"],
            "budget": check_budget(suite, summary),
            "summary": summary,
            "history": history,
            "val_history": val,
        })
    return records


def check_budget(suite: Suite, summary: dict) -> dict:
    """Compare what a run consumed (its summary) with the suite's budget.

    ``completions_generated`` is what the run counted as it generated, so completions that an
    algorithm drew and then dropped (DAPO's dynamic sampling) are in it.
    """
    b = suite.budget
    used = {"optimizer_steps": summary.get("steps"), "completions_generated": summary.get("completions_generated"),
            "eval_prompts": summary.get("eval_prompts")}
    expected = {"optimizer_steps": b.max_steps, "completions_generated": b.completions, "eval_prompts": b.eval_prompts}
    problems = [f"{k}: used {used[k]}, budget {expected[k]}" for k in used if used[k] != expected[k]]
    return {**used, "ok": not problems, "problems": problems}


def _tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_bytes().decode(errors="replace").replace("\r", "\n")
    except OSError:
        return ""
    return "\n".join("    " + ln for ln in [ln for ln in text.splitlines() if ln.strip()][-lines:])


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _write_json(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, indent=2, default=str))
